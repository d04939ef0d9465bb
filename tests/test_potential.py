"""Physics tests of the e3md potential: derivatives, symmetries, locality, extensivity, padding,
compile discipline, and host-side input errors."""

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from e3md.potentials import (
    ModelConfig,
    Potential,
    atomic_energies,
    energy_forces_stress,
    species_index,
)
from jax_md import space

CUTOFF = 3.0
_atomic_energies = jax.jit(atomic_energies, static_argnums=0)

# ethanol (Å), a realistic small molecule with three elements
ETHANOL_R = np.array(
    [
        [-0.0487, 1.4166, 0.0000],  # C
        [0.0000, 0.0000, 0.0000],  # C
        [1.2740, -0.5810, 0.0000],  # O
        [-1.0800, 1.7460, 0.0000],  # H
        [0.4540, 1.8210, 0.8870],  # H
        [0.4540, 1.8210, -0.8870],  # H
        [-0.5050, -0.3790, 0.8870],  # H
        [-0.5050, -0.3790, -0.8870],  # H
        [1.2210, -1.5420, 0.0000],  # H
    ]
)
ETHANOL_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])

# a triclinic cell, lattice vectors as columns (jax-md), all widths > 2 * CUTOFF
TRICLINIC_BOX = np.array([[6.6, 1.1, 0.7], [0.0, 6.4, -0.9], [0.0, 0.0, 6.5]])


def small_config(dtype="float64", **kw):
    base = dict(
        species=(1, 6, 8),
        cutoff=CUTOFF,
        max_degree=2,
        num_features=8,
        num_iterations=2,
        num_basis=6,
        readout_features=8,
        avg_num_neighbors=4.0,
        e0=(-13.6, -1029.0, -2041.0),
        scale=0.7,
        shift=0.1,
        dtype=dtype,
    )
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def pot64():
    # e0 = 0: the ~-4000 eV reference energies would only add round-off to finite differences
    return Potential.init(small_config("float64", e0=(0.0, 0.0, 0.0)), jax.random.PRNGKey(7))


@pytest.fixture(scope="module")
def pot32():
    # e0 = 0 here: reference energies of ~-4000 eV would leave f32 only ~5e-4 eV resolution
    return Potential.init(small_config("float32", e0=(0.0, 0.0, 0.0)), jax.random.PRNGKey(7))


def random_cell_atoms(rng, box, n, min_dist=1.1):
    """Random fractional positions in a periodic cell with all image distances > min_dist."""
    box = np.asarray(box)
    pts = []
    while len(pts) < n:
        s = rng.uniform(size=3)
        ok = True
        for t in pts:
            d = s - t
            d -= np.round(d)
            if np.linalg.norm(box @ d) < min_dist:
                ok = False
                break
        if ok:
            pts.append(s)
    return np.array(pts)


def all_pairs(R, pad_edges=0):
    """Every ordered pair (i != j) of a small molecule as (r_ij, src, dst, mask) (free space)."""
    N = len(R)
    dst, src = np.nonzero(~np.eye(N, dtype=bool))
    r = R[src] - R[dst]
    mask = np.ones(len(src), bool)
    if pad_edges:
        r = np.vstack([r, np.zeros((pad_edges, 3))])
        src = np.append(src, np.full(pad_edges, N))
        dst = np.append(dst, np.full(pad_edges, N))
        mask = np.append(mask, np.zeros(pad_edges, bool))
    return jnp.asarray(r), jnp.asarray(src), jnp.asarray(dst), jnp.asarray(mask)


@pytest.fixture(scope="module")
def ethanol64(pot64):
    """jax-md free-space functions for ethanol, compiled once per module."""
    disp, _ = space.free()
    nf, ef = pot64.neighbor_list(disp, None, ETHANOL_Z)
    R = jnp.asarray(ETHANOL_R)
    nbrs = nf.allocate(R)
    return SimpleNamespace(
        nf=nf,
        ef=ef,
        nbrs=nbrs,
        energy=jax.jit(ef),
        efs=jax.jit(lambda R, nbrs: energy_forces_stress(ef, R, nbrs)),
    )


@pytest.fixture(scope="module")
def triclinic64(pot64):
    """A random 10-atom triclinic cell, real and fractional jax-md functions."""
    rng = np.random.default_rng(99)
    box = TRICLINIC_BOX
    S = random_cell_atoms(rng, box, 10)
    Z = rng.choice([1, 6, 8], size=len(S))
    disp, _ = space.periodic_general(box, fractional_coordinates=False)
    nf, ef = pot64.neighbor_list(disp, box, Z, fractional_coordinates=False)
    dispf, _ = space.periodic_general(box, fractional_coordinates=True)
    nff, eff = pot64.neighbor_list(dispf, box, Z, fractional_coordinates=True)
    return SimpleNamespace(
        box=box,
        S=S,
        R=S @ box.T,
        Z=Z,
        nf=nf,
        nff=nff,
        energy=jax.jit(ef),
        energy_f=jax.jit(eff),
        efs=jax.jit(lambda R, nbrs, b: energy_forces_stress(ef, R, nbrs, box=b)),
        efs_f=jax.jit(lambda S, nbrs, b: energy_forces_stress(eff, S, nbrs, box=b)),
        ef_f=eff,
    )


# --------------------------------------------------------------------------- derivatives


def _fd_forces(energy, R, h=1e-4):
    fd = np.zeros_like(R)
    for a in range(R.shape[0]):
        for k in range(3):
            Rp, Rm = R.copy(), R.copy()
            Rp[a, k] += h
            Rm[a, k] -= h
            fd[a, k] = -(float(energy(Rp)) - float(energy(Rm))) / (2 * h)
    return fd


def test_forces_match_finite_differences_free_space(ethanol64):
    m = ethanol64
    R = ETHANOL_R.copy()
    out = m.efs(jnp.asarray(R), m.nbrs)
    # the list stays valid for these tiny moves
    fd = _fd_forces(lambda R: m.energy(jnp.asarray(R), m.nbrs), R)
    F = np.asarray(out.forces)
    assert np.linalg.norm(F) > 1e-3  # a non-trivial force field
    assert np.linalg.norm(F - fd) / np.linalg.norm(F) < 1e-6
    np.testing.assert_allclose(F.sum(0), 0.0, atol=1e-10)  # Newton's third law


def test_virial_matches_strain_derivative_free_space(ethanol64):
    """Free space: W = -dE/dε where every position is strained R -> (1+ε) R."""
    m = ethanol64
    R = jnp.asarray(ETHANOL_R)
    out = m.efs(R, m.nbrs)
    assert out.stress is None
    h = 1e-5
    dE = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = np.zeros((3, 3))
            e[a, b] = h
            Ep = float(m.energy(R @ (np.eye(3) + e).T, m.nbrs))
            Em = float(m.energy(R @ (np.eye(3) - e).T, m.nbrs))
            dE[a, b] = (Ep - Em) / (2 * h)
    dE = 0.5 * (dE + dE.T)
    W = np.asarray(out.virial)
    assert np.linalg.norm(W) > 1e-3
    assert np.linalg.norm(W + dE) / np.linalg.norm(W) < 1e-6
    # for a free molecule W = sum_i R_i ⊗ F_i (symmetrised)
    RF = np.asarray(R).T @ np.asarray(out.forces)
    np.testing.assert_allclose(W, 0.5 * (RF + RF.T), atol=1e-9)


def test_forces_and_stress_match_finite_differences_triclinic(triclinic64):
    m = triclinic64
    box = jnp.asarray(m.box)
    R = m.R.copy()
    nbrs = m.nf.allocate(jnp.asarray(R))
    assert nbrs.idx.shape[1] > 0
    out = m.efs(jnp.asarray(R), nbrs, box)
    fd = _fd_forces(lambda R: m.energy(jnp.asarray(R), nbrs), R)
    F = np.asarray(out.forces)
    assert np.linalg.norm(F) > 1e-3
    assert np.linalg.norm(F - fd) / np.linalg.norm(F) < 1e-6

    # fractional coordinates: same energy and forces; stress = (1/V) dE/dε by straining the box
    S = jnp.asarray(m.S)
    nbrsf = m.nff.allocate(S)
    outf = m.efs_f(S, nbrsf, box)
    np.testing.assert_allclose(float(outf.energy), float(out.energy), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(outf.forces), F, atol=1e-10)
    h = 1e-5
    dE = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = np.zeros((3, 3))
            e[a, b] = h
            Ep = float(m.energy_f(S, nbrsf, box=jnp.asarray((np.eye(3) + e) @ m.box)))
            Em = float(m.energy_f(S, nbrsf, box=jnp.asarray((np.eye(3) - e) @ m.box)))
            dE[a, b] = (Ep - Em) / (2 * h)
    vol = abs(np.linalg.det(m.box))
    sigma_fd = 0.5 * (dE + dE.T) / vol
    sigma = np.asarray(outf.stress)
    assert np.linalg.norm(sigma) > 1e-5
    assert np.linalg.norm(sigma - sigma_fd) / np.linalg.norm(sigma) < 1e-6
    np.testing.assert_allclose(np.asarray(out.stress), sigma, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(outf.virial), -sigma * vol, rtol=1e-9, atol=1e-12)


def test_stress_sign_opposite_to_jax_md_quantity_stress(triclinic64):
    from jax_md import quantity

    m = triclinic64
    S, box = jnp.asarray(m.S), jnp.asarray(m.box)
    nbrs = m.nff.allocate(S)
    ours = m.efs_f(S, nbrs, box).stress
    theirs = jax.jit(lambda S, b: quantity.stress(lambda R, **kw: m.ef_f(R, nbrs, **kw), S, b))
    np.testing.assert_allclose(np.asarray(ours), -np.asarray(theirs(S, box)), rtol=1e-9, atol=1e-12)


def test_periodic_lattice_shift_invariance(triclinic64):
    m = triclinic64
    E0 = float(m.energy(jnp.asarray(m.R), m.nf.allocate(jnp.asarray(m.R))))
    R2 = m.R.copy()
    R2[3] += m.box[:, 0] - m.box[:, 2]  # move one atom by a lattice vector
    E2 = float(m.energy(jnp.asarray(R2), m.nf.allocate(jnp.asarray(R2))))
    np.testing.assert_allclose(E2, E0, rtol=1e-12)


def test_jit_compiles_once_while_positions_change(ethanol64):
    m = ethanol64
    traces = []

    @jax.jit
    def step(R, nbrs):
        traces.append(1)
        nbrs = nbrs.update(R)
        return m.ef(R, nbrs), nbrs

    R0 = jnp.asarray(ETHANOL_R)
    d = jnp.asarray(np.random.default_rng(3).normal(size=ETHANOL_R.shape))
    nbrs = m.nbrs
    energies = []
    for k in range(4):
        e, nbrs = step(R0 + 0.01 * k * d, nbrs)
        energies.append(float(e))
    assert len(traces) == 1
    assert len(set(energies)) == 4
    # the shared energy/force function also compiled exactly once across all tests so far
    for k in range(3):
        m.efs(R0 + 0.001 * k * d, m.nbrs)
    assert m.efs._cache_size() == 1


# --------------------------------------------------------------------------- symmetries


def random_o3(key, reflect):
    Q, Rm = jnp.linalg.qr(jax.random.normal(key, (3, 3), jnp.float64))
    Q = np.array(Q * jnp.sign(jnp.diag(Rm)))
    if np.linalg.det(Q) < 0:
        Q[:, 0] *= -1
    if reflect:
        Q = Q @ np.diag([1.0, 1.0, -1.0])
    return Q


@pytest.fixture(scope="module")
def core32(pot32):
    """Energy and forces of ethanol via the core function on all pairs, float32."""
    cfg, params = pot32.config, pot32.params
    zi = jnp.asarray(species_index(cfg, ETHANOL_Z))
    _, src, dst, mask = all_pairs(ETHANOL_R)
    am = jnp.ones(len(ETHANOL_Z), bool)

    def energies(R, zi):
        r = R[src] - R[dst]
        return atomic_energies(cfg, params, r, zi, src, dst, mask, am)

    @jax.jit
    def energy_forces(R, zi):
        E, g = jax.value_and_grad(lambda R: energies(R, zi).sum())(R)
        return E, -g, energies(R, zi)

    return lambda R, z=zi: energy_forces(jnp.asarray(R, jnp.float32), z), zi


@pytest.mark.parametrize("reflect", [False, True])
def test_energy_invariant_forces_covariant_o3_f32(core32, keys, reflect):
    ef, _ = core32
    R = ETHANOL_R.astype(np.float32)
    E0, F0, _ = ef(R)
    assert F0.dtype == jnp.float32 and E0.dtype == jnp.float32
    for _ in range(3):
        Q = random_o3(next(keys), reflect).astype(np.float32)
        E1, F1, _ = ef(R @ Q.T)
        assert abs(float(E1) - float(E0)) <= 1e-5 * max(1.0, abs(float(E0)))
        np.testing.assert_allclose(np.asarray(F1), np.asarray(F0) @ Q.T, atol=1e-5)


def test_energy_is_not_trivially_invariant(core32):
    ef, _ = core32
    R2 = ETHANOL_R.copy()
    R2[2] += [0.05, -0.03, 0.02]
    assert abs(float(ef(R2)[0]) - float(ef(ETHANOL_R)[0])) > 1e-4


def test_translation_and_permutation_f32(core32, rng):
    ef, zi = core32
    R = ETHANOL_R.astype(np.float32)
    E0, F0, e0 = ef(R)
    t = np.array([3.7, -12.1, 0.4], np.float32)
    E1, F1, _ = ef(R + t)
    np.testing.assert_allclose(float(E1), float(E0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(F1), np.asarray(F0), atol=1e-5)
    perm = rng.permutation(len(R))
    E2, F2, e2 = ef(R[perm], zi[perm])
    np.testing.assert_allclose(float(E2), float(E0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(F2), np.asarray(F0)[perm], atol=1e-5)
    np.testing.assert_allclose(np.asarray(e2), np.asarray(e0)[perm], atol=1e-5)


# --------------------------------------------------------------------------- locality, size


def test_locality(pot64):
    """An atom beyond the cutoff of every other atom changes no other atom's energy."""
    cfg, params = pot64.config, pot64.params
    Z = np.append(ETHANOL_Z, 8)
    zi = jnp.asarray(species_index(cfg, Z))
    far = ETHANOL_R.max(0) + CUTOFF + 0.5

    def energies(R, atom_mask):
        r, src, dst, mask = all_pairs(R)
        return _atomic_energies(cfg, params, r, zi, src, dst, mask, atom_mask)

    # reference: the extra atom masked out (padding invariance makes this the bare molecule)
    alone = np.asarray(energies(np.vstack([ETHANOL_R, far]), jnp.arange(10) < 9))
    for offset in ([0.0, 0.0, 0.0], [0.3, -0.2, 1.0], [0.0, 7.0, 0.0]):
        e = np.asarray(energies(np.vstack([ETHANOL_R, far + offset]), jnp.ones(10, bool)))
        np.testing.assert_allclose(e[:-1], alone[:-1], rtol=1e-14, atol=0)
    # while inside the cutoff it does interact
    near = ETHANOL_R[2] + [0.0, -1.0, 1.5]
    e = np.asarray(energies(np.vstack([ETHANOL_R, near]), jnp.ones(10, bool)))
    assert np.max(np.abs(e[:-1] - alone[:-1])) > 1e-6


def test_extensivity_supercell(pot64, triclinic64):
    m = triclinic64
    E1 = float(m.energy(jnp.asarray(m.R), m.nf.allocate(jnp.asarray(m.R))))
    shifts = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)])
    R8 = (m.R[None, :, :] + (shifts @ m.box.T)[:, None, :]).reshape(-1, 3)
    Z8 = np.tile(m.Z, 8)
    box8 = 2 * m.box
    disp8, _ = space.periodic_general(box8, fractional_coordinates=False)
    nf8, ef8 = pot64.neighbor_list(disp8, box8, Z8, fractional_coordinates=False)
    E8 = float(jax.jit(ef8)(jnp.asarray(R8), nf8.allocate(jnp.asarray(R8))))
    np.testing.assert_allclose(E8, 8 * E1, rtol=1e-12)


# --------------------------------------------------------------------------- padding, misc


def test_padding_invariance(pot64, rng):
    cfg, params = pot64.config, pot64.params
    R, Z = ETHANOL_R, ETHANOL_Z
    r, src, dst, mask = all_pairs(R)
    N, E = len(R), r.shape[0]
    zi = jnp.asarray(species_index(cfg, Z))
    e_ref = _atomic_energies(cfg, params, r, zi, src, dst, mask, jnp.ones(N, bool))

    # 3 padded atoms (real-looking species) and 20 padded edges with random junk, some touching
    # real atoms, some touching padded ones, one with a zero vector
    P, Ep = 3, 20
    zi_p = jnp.concatenate([zi, jnp.asarray([0, 1, 2])])
    atom_mask = jnp.arange(N + P) < N
    r_pad = jnp.asarray(rng.normal(size=(Ep, 3)))
    r_pad = r_pad.at[0].set(0.0)
    src_pad = jnp.asarray(rng.integers(0, N + P, size=Ep))
    dst_pad = jnp.asarray(rng.integers(0, N + P, size=Ep))
    # a real-flagged edge that touches a padded atom must be ignored as well
    src_pad = src_pad.at[1].set(N + 1)
    dst_pad = dst_pad.at[1].set(0)
    m_pad = jnp.zeros(Ep, bool).at[1].set(True)
    r2 = jnp.concatenate([r, r_pad])
    s2 = jnp.concatenate([src, src_pad])
    d2 = jnp.concatenate([dst, dst_pad])
    m2 = jnp.concatenate([mask, m_pad])

    def total(r2):
        return atomic_energies(cfg, params, r2, zi_p, s2, d2, m2, atom_mask).sum()

    e_pad = _atomic_energies(cfg, params, r2, zi_p, s2, d2, m2, atom_mask)
    np.testing.assert_allclose(np.asarray(e_pad[:N]), np.asarray(e_ref), rtol=1e-13, atol=0)
    np.testing.assert_array_equal(np.asarray(e_pad[N:]), 0.0)
    g = jax.jit(jax.grad(total))(r2)
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_array_equal(np.asarray(g[E:]), 0.0)


def test_float32_default_dtype(pot32):
    assert ModelConfig(species=(1,)).dtype == "float32"
    for leaf in jax.tree_util.tree_leaves(pot32.params):
        assert leaf.dtype == jnp.float32


def test_reference_energy_scale_shift(pot64):
    """e_i = scale * NN_i + shift + e0[Z_i]: the config's affine readout, exactly."""
    cfg = pot64.config.replace(e0=(-13.6, -1029.0, -2041.0))
    r, src, dst, mask = all_pairs(ETHANOL_R)
    zi = jnp.asarray(species_index(cfg, ETHANOL_Z))
    am = jnp.ones(len(ETHANOL_Z), bool)
    e = _atomic_energies(cfg, pot64.params, r, zi, src, dst, mask, am)
    cfg2 = cfg.replace(e0=(0.0, 0.0, 0.0), shift=0.0, scale=1.0)
    nn_i = _atomic_energies(cfg2, pot64.params, r, zi, src, dst, mask, am)
    expect = cfg.scale * np.asarray(nn_i) + cfg.shift + np.asarray(cfg.e0)[np.asarray(zi)]
    np.testing.assert_allclose(np.asarray(e), expect, rtol=1e-12)


def test_jax_md_path_equals_core(ethanol64, pot64):
    """energy_fn (jax-md neighbour list) == core function on all pairs."""
    r, src, dst, mask = all_pairs(ETHANOL_R, pad_edges=5)
    zi = jnp.asarray(species_index(pot64.config, ETHANOL_Z))
    am = jnp.ones(len(ETHANOL_Z), bool)
    e = _atomic_energies(pot64.config, pot64.params, r, zi, src, dst, mask, am)
    E = ethanol64.energy(jnp.asarray(ETHANOL_R), ethanol64.nbrs)
    np.testing.assert_allclose(float(E), float(e.sum()), rtol=1e-12)


# --------------------------------------------------------------------------- host errors


def test_unknown_element_is_refused(pot64):
    disp, _ = space.free()
    with pytest.raises(ValueError, match=r"\[26\]"):
        pot64.neighbor_list(disp, None, np.array([6, 26, 1]))
    with pytest.raises(ValueError, match="not known"):
        pot64.species_index([1, 2])


def test_nan_and_overlapping_positions_are_refused(pot64):
    disp, _ = space.free()
    nf, _ = pot64.neighbor_list(disp, None, ETHANOL_Z)
    R = ETHANOL_R.copy()
    R[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        nf.allocate(jnp.asarray(R))
    R = ETHANOL_R.copy()
    R[5] = R[4] + [0.0, 0.0, 0.2]
    with pytest.raises(ValueError, match=r"atoms 5 and 4|atoms 4 and 5"):
        nf.allocate(jnp.asarray(R))


def test_thin_cell_is_refused(pot64):
    box = np.array([[6.6, 3.0, 0.0], [0.0, 5.5, 0.0], [0.0, 0.0, 7.0]])  # width 5.5 < 6
    disp, _ = space.periodic_general(box, fractional_coordinates=False)
    with pytest.raises(ValueError, match=r"widths .* 2 x cutoff = 6.0"):
        pot64.neighbor_list(disp, box, ETHANOL_Z, fractional_coordinates=False)
    # also when a thin box arrives at allocate time
    ok = TRICLINIC_BOX
    disp, _ = space.periodic_general(ok, fractional_coordinates=False)
    nf, _ = pot64.neighbor_list(disp, ok, ETHANOL_Z, fractional_coordinates=False)
    with pytest.raises(ValueError, match="too small"):
        nf.allocate(jnp.asarray(ETHANOL_R + 3.0), box=jnp.asarray(box))


def test_energy_fn_checks_atom_count(pot64):
    disp, _ = space.free()
    nf, ef = pot64.neighbor_list(disp, None, ETHANOL_Z)
    nbrs = nf.allocate(jnp.asarray(ETHANOL_R))
    with pytest.raises(ValueError, match="9 atoms"):
        ef(jnp.asarray(ETHANOL_R[:5]), nbrs)


# --------------------------------------------------------------------------- config


def test_config_json_round_trip_and_errors():
    cfg = small_config()
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    hash(cfg)
    import json

    d = json.loads(cfg.to_json())
    with pytest.raises(ValueError, match="unknown keys \\['bogus'\\]"):
        ModelConfig.from_dict({**d, "bogus": 1})
    d2 = dict(d)
    del d2["cutoff"]
    with pytest.raises(ValueError, match="missing keys \\['cutoff'\\]"):
        ModelConfig.from_dict(d2)
    with pytest.raises(ValueError, match="strictly increasing"):
        ModelConfig(species=(6, 1))
    with pytest.raises(ValueError, match="e0 has 1 entries"):
        ModelConfig(species=(1, 6), e0=(1.0,))
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig(species=(1,), dtype="float16")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelConfig.from_json("{")


def test_model_equals_the_architecture_built_from_e3x_layers(pot64):
    """The independent oracle: e3md's network written with e3x's MessagePass, FusedTensor,
    Dense, Embed and basis (the peer of ``benchmarks/bench_performance.py``) gives the same
    atomic energies and forces with the same parameters -- whatever contraction strategies and
    factorisations e3md's own layers use."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_performance import _peer_module

    cfg, params = pot64.config, pot64.params
    r, src, dst, mask = all_pairs(ETHANOL_R)
    z = jnp.asarray(species_index(cfg, ETHANOL_Z))
    atoms = jnp.ones(len(ETHANOL_Z), bool)
    peer = _peer_module(cfg, fused=True)

    def ours(r):
        return _atomic_energies(cfg, params, r, z, src, dst, mask, atoms)

    def ref(r):
        return peer.apply(params, r, z, src, dst, mask)

    np.testing.assert_allclose(ours(r), ref(r), rtol=1e-10, atol=1e-12)
    g_ours = jax.grad(lambda r: ours(r).sum())(r)
    g_ref = jax.grad(lambda r: ref(r).sum())(r)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-9, atol=1e-11)


def test_edge_blocks_give_the_same_energies_and_forces(pot64):
    """``atomic_energies(edge_chunk=...)``: message passing over blocks of edges (11 here, not
    a divisor of the 72 + 5 padded edges) is the same function as over all edges at once."""
    cfg, params = pot64.config, pot64.params
    r, src, dst, mask = all_pairs(ETHANOL_R, pad_edges=5)
    z = jnp.asarray(species_index(cfg, ETHANOL_Z))
    atoms = jnp.ones(len(ETHANOL_Z), bool)

    @functools.partial(jax.jit, static_argnums=0)
    def energies_and_grad(chunk, r):
        def total(r):
            e = atomic_energies(cfg, params, r, z, src, dst, mask, atoms, edge_chunk=chunk)
            return e.sum(), e

        return jax.grad(total, has_aux=True)(r)

    g_all, e_all = energies_and_grad(None, r)
    g_blocks, e_blocks = energies_and_grad(11, r)
    np.testing.assert_allclose(e_blocks, e_all, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g_blocks, g_all, rtol=1e-10, atol=1e-12)
    assert float(jnp.max(jnp.abs(g_all))) > 1e-3


def test_dense_and_sparse_neighbour_lists_are_the_same_function(pot64, triclinic64):
    """The default jax-md ``Dense`` list (rows of a symmetric list, evaluated with the
    symmetry-based reverse-mode rule) and the ``Sparse`` list give the same energies, forces
    and stress; the Sparse path also supports forward-mode derivatives (a Hessian column)."""
    m = triclinic64
    box = jnp.asarray(m.box)
    R = jnp.asarray(m.R)
    disp, _ = space.periodic_general(m.box, fractional_coordinates=False)
    out = {}
    for fmt in ("dense", "sparse"):
        nf, ef = pot64.neighbor_list(disp, m.box, m.Z, fractional_coordinates=False, format=fmt)
        nbrs = nf.allocate(R)
        assert nbrs.idx.shape[0] == (len(m.Z) if fmt == "dense" else 2)
        out[fmt] = (energy_forces_stress(ef, R, nbrs, box=box), ef, nbrs)
    dense, sparse = out["dense"][0], out["sparse"][0]
    np.testing.assert_allclose(float(dense.energy), float(sparse.energy), rtol=1e-12)
    np.testing.assert_allclose(dense.forces, sparse.forces, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dense.stress, sparse.stress, rtol=1e-10, atol=1e-12)
    assert float(jnp.max(jnp.abs(dense.forces))) > 1e-3

    _, ef, nbrs = out["sparse"]
    v = jnp.zeros_like(R).at[2, 1].set(1.0)
    column = jax.jvp(jax.grad(lambda R: ef(R, nbrs)), (R,), (v,))[1]
    h = 1e-5
    fd = (jax.grad(ef)(R + h * v, nbrs) - jax.grad(ef)(R - h * v, nbrs)) / (2 * h)
    np.testing.assert_allclose(column, fd, rtol=1e-5, atol=1e-8)
