"""e3md.integrators: units, initial velocities, chunked driver mechanics (overflow replay,
restart, compile discipline, replicas, output files, blow-up guard, bad input).

Physics is checked with a cheap jax-md Lennard-Jones argon (sigma 3.4 Å, epsilon 10.4 meV).
"""

import csv
import functools

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from e3md.integrators import (
    EnsembleConfig,
    MDBlowUpError,
    load_checkpoint,
    make_space,
    maxwell_boltzmann,
    min_cell_width,
    run_md,
)
from e3md.integrators.atoms import run_atoms

from e3md import units

SIGMA, EPSILON = 3.4, 0.0104  # Å, eV (argon)
R_CUT = 1.5  # in units of sigma -> 5.1 Å


def lj_builder(displacement_fn, box, capacity_multiplier=1.25, format="sparse", **kw):
    from jax_md import energy, partition

    return energy.lennard_jones_neighbor_list(
        displacement_fn,
        box,
        sigma=SIGMA,
        epsilon=EPSILON,
        r_onset=1.2,
        r_cutoff=R_CUT,
        format=partition.Sparse if format == "sparse" else partition.Dense,
        capacity_multiplier=capacity_multiplier,
        **kw,
    )


def argon(reps=2, a=5.26):
    return bulk("Ar", "fcc", a=a, cubic=True).repeat((reps, reps, reps))


def lj_system(atoms, **nl):
    jax.clear_caches()  # jax-md 0.2.29 dislikes building the same neighbour system twice
    sp = make_space(atoms, R_CUT * SIGMA)
    neighbor_fn, energy_fn = lj_builder(sp.displacement_fn, sp.box, **sp.neighbor_kwargs, **nl)
    return sp, neighbor_fn, energy_fn


@pytest.fixture(scope="module")
def lj():
    """32 argon atoms (fcc 2x2x2) with a Lennard-Jones potential, built once per module so
    runs with equal settings share one compilation (driver cache)."""
    atoms = argon(2)
    return (atoms, *lj_system(atoms, capacity_multiplier=3.0))


def run_lj(atoms, sp, neighbor_fn, energy_fn, **kw):
    kw.setdefault("numbers", atoms.numbers)
    return run_md(
        neighbor_fn,
        energy_fn,
        sp.shift_fn,
        sp.positions,
        atoms.get_masses(),
        box=sp.box,
        fractional=sp.fractional,
        **kw,
    )


# ------------------------------------------------------------------------------- units
def test_units_against_si_constants():
    # independent oracle: SI constants (CODATA 2018), not ase.units
    e, amu, kB_si = 1.602176634e-19, 1.66053906660e-27, 1.380649e-23
    time_unit_s = 1e-10 * np.sqrt(amu / e)  # Å sqrt(amu/eV) in s
    cfg = EnsembleConfig("npt", dt_fs=2.0, temperature_K=300.0, pressure_bar=1000.0)
    np.testing.assert_allclose(cfg.dt, 2e-15 / time_unit_s, rtol=1e-6)
    np.testing.assert_allclose(cfg.kT, kB_si * 300.0 / e, rtol=1e-6)
    np.testing.assert_allclose(cfg.pressure, 1000.0 * 1e5 * 1e-30 / e, rtol=1e-6)
    np.testing.assert_allclose(units.FS * 1e3, units.PS)


def test_ensemble_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown ensemble"):
        EnsembleConfig("nph")
    with pytest.raises(ValueError, match="dt_fs"):
        EnsembleConfig("nve", dt_fs=-1.0)
    with pytest.raises(ValueError, match="temperature_K > 0"):
        EnsembleConfig("nvt", temperature_K=0.0)
    cfg = EnsembleConfig("nvt-nh", tau_thermostat_fs=50.0)
    assert EnsembleConfig.from_dict(cfg.to_dict()) == cfg


def test_maxwell_boltzmann(keys):
    n = 20000
    masses = jax.random.uniform(next(keys), (n,), minval=1.0, maxval=200.0)
    key = next(keys)
    p = maxwell_boltzmann(key, masses, 250.0)
    np.testing.assert_allclose(jnp.sum(p, axis=0), 0.0, atol=1e-9)
    ekin = 0.5 * jnp.sum(p**2 / masses[:, None])
    expected = 1.5 * n * units.KB_EV_PER_K * 250.0
    # relative standard deviation of the kinetic energy: sqrt(2 / (3N)) = 0.58 %
    assert abs(ekin / expected - 1) < 4 * np.sqrt(2 / (3 * n))
    # per-atom velocity variance kT/m (heavy and light atoms alike)
    v2 = jnp.sum((p / masses[:, None]) ** 2, axis=1) * masses / (3 * units.KB_EV_PER_K * 250.0)
    assert abs(float(jnp.mean(v2)) - 1) < 0.03
    np.testing.assert_array_equal(p, maxwell_boltzmann(key, masses, 250.0))
    assert not np.allclose(p, maxwell_boltzmann(next(keys), masses, 250.0))


# ------------------------------------------------------------------------------- space
def test_make_space_triclinic_roundtrip():
    atoms = bulk("Ar", "fcc", a=5.26).repeat((4, 4, 4))  # primitive, triclinic cell
    atoms.rotate(30, "z", rotate_cell=True)
    atoms.rattle(0.05, seed=1)
    sp = make_space(atoms, 5.0)
    box = np.asarray(sp.box)
    np.testing.assert_allclose(np.tril(box, -1), 0.0, atol=1e-12)  # upper triangular
    cart = sp.positions @ box.T
    # short distances under the minimum image agree with ASE's
    d_ase = atoms.get_all_distances(mic=True)[0]
    ds = sp.positions - sp.positions[0]
    ds -= np.round(ds)
    d = np.linalg.norm(ds @ box.T, axis=1)
    near = d_ase < 5.0
    assert near.sum() == 13  # self + 12 fcc neighbours
    np.testing.assert_allclose(d[near], d_ase[near], atol=1e-10)
    assert cart.shape == (len(atoms), 3)
    np.testing.assert_allclose(min_cell_width(atoms.cell), min_cell_width(box.T), rtol=1e-12)


def test_make_space_bad_input():
    atoms = argon(2)
    with pytest.raises(ValueError, match="2 x cutoff"):
        make_space(atoms, 6.0)
    bad = atoms.copy()
    bad.positions[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"atoms \[3\].*NaN"):
        make_space(bad, 5.0)
    slab = atoms.copy()
    slab.pbc = (True, True, False)
    with pytest.raises(ValueError, match="mixed periodicity"):
        make_space(slab, 5.0)


# ------------------------------------------------------------------------------- dynamics
NVT = dict(ensemble="nvt", temperature_K=100.0, dt_fs=5.0)
NPT = dict(ensemble="npt", temperature_K=100.0, pressure_bar=100.0, dt_fs=5.0)


def test_nve_energy_conservation_lj_scales_as_dt_squared(lj):
    errors = {}
    for dt in (5.0, 2.5):
        res = run_lj(
            *lj,
            ensemble="nve",
            dt_fs=dt,
            temperature_K=60.0,
            steps=int(1000 / dt),
            chunk_steps=int(50 / dt),
            seed=3,
        )
        etot = res.thermo["etot_eV"]
        errors[dt] = np.max(np.abs(etot - etot[0])) / len(lj[0])
        drift = (etot[-1] - etot[0]) / len(lj[0]) / res.thermo["time_ps"][-1]
        print(f"LJ NVE dt={dt} fs: max |dE|/atom {errors[dt]:.2e} eV, drift {drift:.2e} eV/atom/ps")
        assert res.thermo["ekin_eV"][-1] > 0
    assert errors[5.0] < 2e-4
    # velocity Verlet: the energy error is O(dt^2)
    assert 2.5 < errors[5.0] / errors[2.5] < 6.0


def test_chunks_compile_once_and_chunking_is_invisible(lj):
    a = run_lj(*lj, steps=53, chunk_steps=10, **NVT)
    assert a.traces <= 1  # 6 chunks of lengths 10,...,10,3 (and the step-0 measure): 1 trace
    assert a.step == 53
    b = run_lj(*lj, steps=53, chunk_steps=53, **NVT)
    assert b.traces == 0  # same system and settings: the compiled chunk is reused
    np.testing.assert_array_equal(a.state.position, b.state.position)
    np.testing.assert_array_equal(a.state.momentum, b.state.momentum)


def test_forced_overflow_replays_identically(lj):
    kw = dict(NVT, temperature_K=400.0, steps=300, chunk_steps=50, seed=7)
    atoms = lj[0]
    tight = run_lj(atoms, *lj_system(atoms, capacity_multiplier=1.0), **kw)  # just enough
    ample = run_lj(*lj, **kw)
    assert tight.reallocations >= 1 and ample.reallocations == 0
    assert tight.neighbor.max_occupancy != ample.neighbor.max_occupancy
    for key in ("step", "epot_eV", "ekin_eV", "temperature_K"):
        np.testing.assert_array_equal(tight.thermo[key], ample.thermo[key])
    np.testing.assert_array_equal(tight.state.position, ample.state.position)
    np.testing.assert_array_equal(tight.state.momentum, ample.state.momentum)


@pytest.mark.parametrize("settings", [NVT, NPT], ids=["nvt", "npt"])
def test_restart_is_bit_identical(tmp_path, lj, settings):
    kw = dict(settings, seed=11, chunk_steps=20, checkpoint_every=40)
    full = run_lj(*lj, steps=100, **kw)
    ckpt = tmp_path / "ckpt.npz"
    first = run_lj(*lj, steps=40, checkpoint=ckpt, **kw)
    assert first.step == 40
    arrays, meta = load_checkpoint(ckpt)
    assert meta["step"] == 40 and meta["config"]["ensemble"] == settings["ensemble"]
    rest = run_lj(*lj, steps=100, restart=ckpt, log_path=tmp_path / "r.csv", **kw)
    assert rest.step == 100
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(rest.state), strict=True):
        np.testing.assert_array_equal(a, b)
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [int(r["step"]) for r in rows] == [60, 80, 100]
    np.testing.assert_array_equal([float(r["epot_eV"]) for r in rows], full.thermo["epot_eV"][3:])
    # a restart with other settings is refused
    with pytest.raises(ValueError, match="settings differ"):
        run_lj(*lj, steps=100, restart=ckpt, **dict(kw, dt_fs=2.0))


def test_restart_across_neighbour_formats(tmp_path, lj, caplog):
    """A checkpoint written with a Sparse list (as every e3md release before the Dense default)
    restarts a run whose list is Dense: the list is rebuilt, the run continues (the same
    dynamics up to round-off, not bit-identically), with a warning."""
    kw = dict(NVT, seed=11, chunk_steps=20, checkpoint_every=40)
    full = run_lj(*lj, steps=100, **kw)
    ckpt = tmp_path / "ckpt.npz"
    run_lj(*lj, steps=40, checkpoint=ckpt, **kw)
    assert load_checkpoint(ckpt)[1]["neighbor_format"] == "sparse"
    atoms, sp = lj[0], lj[1]
    _, nfn, efn = lj_system(atoms, capacity_multiplier=3.0, format="dense")
    with caplog.at_level("WARNING"):
        rest = run_lj(atoms, sp, nfn, efn, steps=100, restart=ckpt, **kw)
    assert "rebuilding" in caplog.text
    assert rest.step == 100 and rest.neighbor.idx.shape[0] == len(atoms)
    np.testing.assert_allclose(rest.state.position, full.state.position, atol=1e-8)


def test_replicas_match_single_runs(lj):
    atoms, sp, nfn, efn = lj
    masses = atoms.get_masses()
    R = np.stack([sp.positions, np.mod(sp.positions + 0.004, 1.0)])
    P = np.stack([maxwell_boltzmann(k, masses, 80.0) for k in jax.random.split(jax.random.key(5))])
    kw = dict(ensemble="nve", dt_fs=5.0, temperature_K=60.0, steps=60, chunk_steps=10)
    both = run_md(
        nfn, efn, sp.shift_fn, R, masses, box=sp.box, fractional=True, replicas=2, momenta=P, **kw
    )
    assert both.state.position.shape == (2, len(atoms), 3)
    assert both.thermo["epot_eV"].shape == (7, 2)
    for b in range(2):
        one = run_md(
            nfn, efn, sp.shift_fn, R[b], masses, box=sp.box, fractional=True, momenta=P[b], **kw
        )
        np.testing.assert_allclose(both.state.position[b], one.state.position, atol=1e-12)
        np.testing.assert_allclose(both.thermo["etot_eV"][:, b], one.thermo["etot_eV"], rtol=1e-12)


def test_log_and_trajectories(tmp_path, lj):
    atoms = lj[0]
    res = run_lj(
        *lj,
        steps=60,
        chunk_steps=10,
        log_every=10,
        trajectory=tmp_path / "t.extxyz",
        trajectory_every=20,
        log_path=tmp_path / "thermo.csv",
        **NPT,
    )
    rows = list(csv.DictReader(open(tmp_path / "thermo.csv")))
    assert list(rows[0]) == [
        "step",
        "time_ps",
        "epot_eV",
        "ekin_eV",
        "etot_eV",
        "temperature_K",
        "pressure_bar",
        "volume_A3",
    ]
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40, 50, 60]
    np.testing.assert_allclose(float(rows[-1]["time_ps"]), 60 * 5e-3)
    for r in rows:
        np.testing.assert_allclose(
            float(r["etot_eV"]), float(r["epot_eV"]) + float(r["ekin_eV"]), rtol=1e-12
        )
    frames = ase.io.read(tmp_path / "t.extxyz", ":")
    assert len(frames) == 4  # steps 0, 20, 40, 60
    first, last = frames[0], frames[-1]
    np.testing.assert_allclose(first.positions, atoms.positions, atol=1e-7)
    # current NPT box = (V/V0)^(1/3) * reference box
    ref = np.asarray(res.state.reference_box)
    box = ref * np.exp(float(res.state.box_position))
    np.testing.assert_allclose(last.cell.array, box.T, rtol=1e-12)
    np.testing.assert_allclose(last.positions, np.asarray(res.state.position) @ box.T, atol=1e-7)
    np.testing.assert_allclose(last.get_volume(), float(rows[-1]["volume_A3"]), rtol=1e-10)
    np.testing.assert_allclose(last.get_potential_energy(), float(rows[-1]["epot_eV"]))
    np.testing.assert_allclose(last.get_momenta(), np.asarray(res.state.momentum), rtol=1e-6)
    assert not list(tmp_path.glob("*.part"))
    # ASE .traj works too
    run_lj(*lj, steps=20, chunk_steps=10, trajectory=tmp_path / "t.traj", **NVT)
    traj = ase.io.read(tmp_path / "t.traj", ":")
    assert len(traj) == 3 and np.abs(traj[1].get_momenta()).max() > 0


# ------------------------------------------------------------------------------- failures
def test_blow_up_guard_keeps_last_good_frame_and_checkpoint(tmp_path, lj):
    out, ckpt, logf = tmp_path / "t.extxyz", tmp_path / "c.npz", tmp_path / "l.csv"
    with pytest.raises(MDBlowUpError, match=r"max \|F\|.*max_force") as info:
        run_lj(
            *lj,
            steps=200,
            chunk_steps=10,
            max_force=0.05,
            trajectory=out,
            checkpoint=ckpt,
            log_path=logf,
            **NVT,
        )
    good = info.value.step
    assert good < 200
    frames = ase.io.read(out, ":")
    assert frames and np.all(np.isfinite(frames[-1].positions))
    arrays, meta = load_checkpoint(ckpt)
    assert meta["step"] == good
    np.testing.assert_array_equal(arrays["state/position"], info.value.state.position)
    assert not list(tmp_path.glob("*.part"))


def test_blow_up_guard_catches_nan(lj):
    atoms, sp, nfn, efn = lj

    def nan_later(R, neighbor, **kw):
        # finite while atom 0 stays near its start, NaN once it has moved 0.05 Å along x
        return efn(R, neighbor, **kw) + jnp.sqrt(0.05 / 10.52 - (R[0, 0] - sp.positions[0, 0]))

    P = np.zeros((len(atoms), 3))
    P[0, 0] = 1.0  # sqrt(amu eV): atom 0 moves along +x at ~0.25 Å per 10 fs
    with pytest.raises(MDBlowUpError, match="non-finite"):
        with jax.debug_nans(False):
            run_md(
                nfn,
                nan_later,
                sp.shift_fn,
                sp.positions,
                atoms.get_masses(),
                box=sp.box,
                fractional=True,
                momenta=P,
                steps=100,
                chunk_steps=10,
                ensemble="nve",
                max_force=1e30,
            )


def test_bad_input_leaves_nothing(tmp_path, lj):
    atoms, sp, nfn, efn = lj
    out, logf = tmp_path / "t.extxyz", tmp_path / "l.csv"
    run = functools.partial(run_lj, *lj, steps=20, trajectory=out, log_path=logf, **NVT)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        run(restart=tmp_path / "missing.npz")
    R = np.array(sp.positions)
    R[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        run_md(
            nfn,
            efn,
            sp.shift_fn,
            R,
            atoms.get_masses(),
            box=sp.box,
            fractional=True,
            steps=5,
            trajectory=out,
            numbers=atoms.numbers,
        )
    with pytest.raises(ValueError, match="unknown suffix"):
        run(trajectory=tmp_path / "t.pdb")
    with pytest.raises(ValueError, match="needs a periodic box"):
        run_md(nfn, efn, sp.shift_fn, sp.positions, atoms.get_masses(), steps=5, ensemble="npt")
    assert list(tmp_path.iterdir()) == []

    # an interrupted run leaves only .part files, nothing posing as complete
    def interrupt(step, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(chunk_steps=5, progress=interrupt)
    assert not out.exists() and not logf.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.csv.part", "t.extxyz.part"]


def test_tampered_checkpoint_is_refused(tmp_path, lj):
    ckpt = tmp_path / "c.npz"
    run_lj(*lj, steps=10, chunk_steps=10, checkpoint=ckpt, **NVT)
    arrays, meta = load_checkpoint(ckpt)
    arrays["state/position"] = arrays["state/position"] + 1e-9
    with np.load(ckpt) as z:
        header = z["__header__"]
    np.savez(ckpt, __header__=header, **arrays)  # stale hash
    with pytest.raises(ValueError, match="hash mismatch"):
        load_checkpoint(ckpt)
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "x.npz")


def test_run_atoms_rejects_unknown_elements():
    class FakePotential:
        cutoff = 5.0
        species = (1, 6, 8)

    with pytest.raises(ValueError, match=r"elements \[18\]"):
        run_atoms(argon(2), FakePotential(), steps=1)
