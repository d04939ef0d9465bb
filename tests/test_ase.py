"""Tests of the ASE calculator ``e3md.ase.E3MDCalculator`` (float64 unless stated).

One module, so the small random potential (its initialisation is the slowest step) and the
compiled energy function are built once.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, fcc111, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces
from ase.calculators.mixing import SumCalculator
from ase.calculators.morse import MorsePotential
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.optimize import BFGS
from e3md.potentials import ModelConfig, Potential

from e3md.ase import E3MDCalculator

#: a small random model (E3MDCalculator caches compiled code by config and dtype, so every
#: calculator below shares it)
SMALL = dict(
    species=(1, 6, 8, 14, 29),
    cutoff=4.0,  # Å: larger than the Si primitive cell's edges (3.87 Å)
    max_degree=1,
    num_features=8,
    num_iterations=2,
    num_basis=4,
    readout_features=8,
    avg_num_neighbors=1.0,
    scale=5.0,
    dtype="float64",
)


@pytest.fixture(scope="module")
def pot():
    """A small randomly initialised potential (H, C, O, Si, Cu); fixed seed."""
    config = ModelConfig(**SMALL)
    return Potential.init(config, jax.random.PRNGKey(0))


def calc64(pot, dtype="float64"):
    """One (atoms, edges) bucket for every system in this file: one compilation per dtype."""
    return E3MDCalculator(pot, dtype=dtype, min_atoms=64, min_edges=1024)


def rattled(atoms, seed=0, stdev=0.05):
    atoms = atoms.copy()
    atoms.rattle(stdev, seed=seed)
    return atoms


def triclinic_si():
    """An 8-atom Si cell, sheared so the cell is general (not upper-triangular)."""
    atoms = bulk("Si", cubic=True)
    cell = atoms.cell[:] @ np.array([[1.0, 0.05, -0.03], [0.02, 1.0, 0.04], [0.06, -0.01, 1.02]])
    atoms.set_cell(cell, scale_atoms=True)
    return rattled(atoms, seed=1)


def numerical(fn, atoms, **kwargs):
    with warnings.catch_warnings():  # ASE suggests FiniteDifferenceCalculator; same formula
        warnings.simplefilter("ignore", FutureWarning)
        return fn(atoms, **kwargs)


# --- the jax-md path of the same potential --------------------------------------------------


def jax_md_results(pot, atoms):
    """Energy, per-atom energies, forces and stress (ASE sign) from ``pot.neighbor_list``."""
    from e3md.potentials import energy_forces_stress
    from jax_md import space

    jax.clear_caches()  # jax-md cannot build the same neighbour-list system twice otherwise
    if atoms.pbc.any():
        box = jax.numpy.asarray(atoms.cell[:].T)  # columns = lattice vectors, upper triangular
        displacement_fn, _ = space.periodic_general(box, fractional_coordinates=True)
        R = jax.numpy.asarray(atoms.get_scaled_positions(wrap=False))
        options = dict(fractional_coordinates=True)
    else:
        box, (displacement_fn, _) = None, space.free()
        R, options = jax.numpy.asarray(atoms.positions), {}
    neighbor_fn, energy_fn = pot.neighbor_list(
        displacement_fn, box, atoms.numbers, per_atom=True, **options
    )
    nbrs = neighbor_fn.allocate(R)
    out = jax.jit(lambda R, nbrs: energy_forces_stress(energy_fn, R, nbrs, box=box))(R, nbrs)
    stress = None if out.stress is None else np.asarray(out.stress)
    return float(out.energy), np.asarray(out.energies), np.asarray(out.forces), stress


@pytest.mark.parametrize("system", [pytest.param("molecule", marks=pytest.mark.slow), "crystal"])
def test_equals_jax_md_path(pot, system):
    if system == "molecule":
        atoms = rattled(molecule("CH3CH2OH"), seed=7)
    else:  # triclinic, lower-triangular rows (jax-md wants an upper-triangular box), > 2 r_c
        cell = 5.43 * np.array([[2.0, 0.0, 0.0], [0.1, 2.0, 0.0], [-0.08, 0.12, 2.04]])
        atoms = bulk("Si", cubic=True) * (2, 2, 2)
        atoms.set_cell(cell, scale_atoms=True)
        atoms = rattled(atoms, seed=8)
    energy, energies, forces, stress = jax_md_results(pot, atoms)  # first: it clears jit caches
    atoms.calc = calc64(pot)
    np.testing.assert_allclose(atoms.get_potential_energy(), energy, rtol=1e-6)
    np.testing.assert_allclose(atoms.get_potential_energies(), energies, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(atoms.get_forces(), forces, rtol=1e-6, atol=1e-8)
    assert np.abs(forces).max() > 1e-3
    if system == "crystal":
        np.testing.assert_allclose(atoms.get_stress(voigt=False), stress, rtol=1e-6, atol=1e-9)
        assert np.abs(stress).max() > 1e-4


# --- derivatives against ASE's own finite differences ------------------------------------------


@pytest.mark.parametrize("system", ["molecule", "crystal", "slab"])
def test_forces_equal_ase_numerical_forces(pot, system):
    atoms = {
        "molecule": lambda: rattled(molecule("CH3CH2OH"), seed=2),
        "crystal": triclinic_si,
        "slab": lambda: rattled(fcc111("Cu", (2, 2, 2), vacuum=4.0, periodic=False), seed=3),
    }[system]()
    calc = calc64(pot)
    atoms.calc = calc
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-3  # a non-trivial check
    reference = numerical(calc.calculate_numerical_forces, atoms, d=1e-4)
    np.testing.assert_allclose(forces, reference, atol=1e-7)
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), atoms.get_potential_energy())
    assert atoms.get_potential_energy() == atoms.get_potential_energy(force_consistent=True)


def test_stress_equals_ase_numerical_stress(pot):
    atoms = triclinic_si()
    calc = calc64(pot)
    atoms.calc = calc
    stress = atoms.get_stress()
    assert stress.shape == (6,) and np.abs(stress).max() > 1e-4
    reference = numerical(calc.calculate_numerical_stress, atoms, d=1e-5)
    np.testing.assert_allclose(stress, reference, atol=1e-8)
    full = atoms.get_stress(voigt=False)
    np.testing.assert_allclose(full, full.T)


# --- periodic images -------------------------------------------------------------------------


def test_small_cell_equals_supercell(pot):
    """A 2-atom cell with edges shorter than the cutoff (many images of each atom) gives the
    per-atom energies, forces and stress of the equivalent 3x3x3 supercell."""
    small = rattled(bulk("Si", a=5.3), seed=4)
    assert np.linalg.norm(small.cell[:], axis=1).max() < pot.cutoff
    large = small * (3, 3, 3)
    small.calc, large.calc = calc64(pot), calc64(pot)
    e_small, e_large = small.get_potential_energies(), large.get_potential_energies()
    np.testing.assert_allclose(e_large, np.tile(e_small, 27), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(large.get_forces(), np.tile(small.get_forces(), (27, 1)), atol=1e-10)
    np.testing.assert_allclose(large.get_stress(), small.get_stress(), atol=1e-10)


def test_slab_mixed_pbc_equals_supercell_and_vacuum(pot):
    """A slab with pbc=(T, T, F) equals its in-plane supercell per atom and a fully periodic
    copy with vacuum wider than the cutoff; a shift along the open direction changes nothing."""
    slab = rattled(fcc111("Cu", (1, 1, 3), vacuum=None), seed=5)
    slab.pbc = [True, True, False]
    assert slab.cell[2, 2] == 0.0  # no cell vector along the open direction
    big = slab * (4, 4, 1)
    vac = slab.copy()
    vac.cell[2] = [0.0, 0.0, 20.0]
    vac.pbc = True
    moved = slab.copy()
    moved.positions += [0.3, -0.2, 50.0]
    e = {}
    for name, atoms in (("slab", slab), ("big", big), ("vac", vac), ("moved", moved)):
        atoms.calc = calc64(pot)
        e[name] = atoms.get_potential_energies()
    np.testing.assert_allclose(e["big"], np.tile(e["slab"], 16), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(e["vac"], e["slab"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(e["moved"], e["slab"], rtol=1e-10, atol=1e-12)
    # and the slab is not just a bulk crystal: closing the vacuum changes the energies
    bulk_like = slab.copy()
    bulk_like.cell[2] = [0.0, 0.0, 3 * fcc111("Cu", (1, 1, 2)).positions[1, 2]]  # ABC stacking
    bulk_like.pbc = True
    bulk_like.calc = calc64(pot)
    assert np.abs(bulk_like.get_potential_energies() - e["slab"]).max() > 1e-4


def test_crystal_invariances(pot, rng):
    """Wrapping atoms by lattice vectors, rotating everything, and permuting atoms."""
    atoms = triclinic_si()
    atoms.calc = calc64(pot)
    e, f, s = atoms.get_potential_energies(), atoms.get_forces(), atoms.get_stress(voigt=False)
    shifted = atoms.copy()
    shifted.positions += rng.integers(-3, 4, size=(len(atoms), 3)) @ atoms.cell[:]
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # random O(3)
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell[:] @ q.T, scale_atoms=False)
    rotated.positions = atoms.positions @ q.T
    perm = rng.permutation(len(atoms))
    permuted = atoms[perm]
    for other in (shifted, rotated, permuted):
        other.calc = calc64(pot)
    np.testing.assert_allclose(shifted.get_potential_energies(), e, atol=1e-10)
    np.testing.assert_allclose(shifted.get_forces(), f, atol=1e-10)
    np.testing.assert_allclose(rotated.get_potential_energies(), e, atol=1e-10)
    np.testing.assert_allclose(rotated.get_forces(), f @ q.T, atol=1e-10)
    np.testing.assert_allclose(rotated.get_stress(voigt=False), q @ s @ q.T, atol=1e-10)
    np.testing.assert_allclose(permuted.get_potential_energies(), e[perm], atol=1e-10)
    np.testing.assert_allclose(permuted.get_forces(), f[perm], atol=1e-10)


def test_free_molecule_ignores_cell(pot):
    mol = rattled(molecule("CH3OH"), seed=6)
    mol.calc = calc64(pot)
    e = mol.get_potential_energies()
    boxed = mol.copy()
    boxed.cell = [1.0, 2.0, 3.0]  # a cell but pbc=False: no images
    boxed.calc = calc64(pot)
    np.testing.assert_allclose(boxed.get_potential_energies(), e, atol=1e-12)
    with pytest.raises(PropertyNotImplementedError, match="stress"):
        mol.get_stress()


def test_isolated_atoms_and_single_atom(pot):
    """Atoms farther apart than the cutoff have zero forces; their energies do not depend on
    each other (one atom alone, no edges, is handled)."""
    one = Atoms("O", positions=[[0.0, 0.0, 0.0]])
    one.calc = calc64(pot)
    far = Atoms("OH", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, pot.cutoff + 0.1]])
    far.calc = calc64(pot)
    np.testing.assert_allclose(far.get_potential_energies()[0], one.get_potential_energy())
    np.testing.assert_array_equal(far.get_forces(), 0.0)


# --- dtype and errors ------------------------------------------------------------------------


def test_float32_close_to_float64(pot):
    # same size bucket as the Langevin test below, so the float32 compilation is shared
    atoms = rattled(bulk("Cu", cubic=True) * (2, 2, 2), seed=9)
    atoms.calc = E3MDCalculator(pot, dtype="float32")
    e32, f32, s32 = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    atoms.calc = calc64(pot)
    e64, f64, s64 = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    assert f32.dtype == np.float64  # ASE results are float64 arrays whatever the compute dtype
    assert np.abs(f64).max() > 1e-2
    np.testing.assert_allclose(e32, e64, rtol=1e-5)
    np.testing.assert_allclose(f32, f64, atol=1e-4 * np.abs(f64).max())
    np.testing.assert_allclose(s32, s64, atol=1e-4 * np.abs(s64).max())


def test_errors(pot):
    calc = calc64(pot)
    with pytest.raises(ValueError, match=r"\['Fe'\]"):
        calc.get_potential_energy(Atoms("FeH", positions=[[0, 0, 0], [1, 0, 0]]))
    nan = molecule("H2O")
    nan.positions[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite positions for atoms \[1\]"):
        calc.get_potential_energy(nan)
    with pytest.raises(ValueError, match="pbc"):
        calc.get_potential_energy(Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], pbc=True))
    slab = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], cell=[3.0, 0.0, 0.0], pbc=[1, 1, 0])
    with pytest.raises(ValueError, match="pbc"):  # y periodic but no y cell vector
        calc.get_potential_energy(slab)
    with pytest.raises(ValueError, match="dtype"):
        E3MDCalculator(pot, dtype="float16")


# --- inside ASE's drivers: BFGS, FrechetCellFilter, Langevin; compile counts -----------------
#
# A randomly initialised network has no guaranteed minimum (it may favour dissociation or
# collapse), so the relaxations add a Morse pair term through ASE's ``SumCalculator``: the sum has
# a minimum, the network's energy, forces and stress move it, and the test checks both that the
# optimisers converge and that the network's own forces at the converged point are not negligible.


def traced_during(calc, run):
    """The (atoms, edges) buckets compiled while ``run()`` ran (the trace log is shared by all
    calculators of one config, and other tests may have compiled some buckets already)."""
    before = len(calc.traces)
    result = run()
    return result, calc.traces[before:]


def max_force(forces):
    return np.linalg.norm(forces, axis=1).max()


def test_bfgs_relaxes_a_molecule(pot):
    mol = molecule("CH3CH2OH")
    mol.rattle(0.1, seed=0)
    calc = E3MDCalculator(pot, dtype="float64", min_atoms=64, min_edges=1024)
    mol.calc = SumCalculator([calc, MorsePotential(epsilon=1.0, rho0=4.0, r0=1.3)])
    e_start = mol.get_potential_energy()
    opt = BFGS(mol, logfile=None)
    converged, traced = traced_during(calc, lambda: opt.run(fmax=1e-3, steps=1000))
    assert converged
    assert mol.get_potential_energy() < e_start
    # a stationary point of the energy itself, not only of the reported forces
    assert max_force(calculate_numerical_forces(mol, eps=1e-4)) < 2e-3
    assert max_force(calc.get_forces(mol)) > 0.05  # the network took part
    # one compile per (atom, edge) bucket, however many BFGS steps
    assert opt.nsteps > 5 and len(traced) <= 1


def test_frechet_cell_filter_relaxes_a_crystal(pot):
    atoms = bulk("Cu", cubic=True)  # 4 atoms, cell edge 3.6 Å < cutoff: periodic images
    atoms.rattle(0.03, seed=1)
    strain = np.eye(3) + [[0.02, 0.01, 0], [0, -0.01, 0], [0, 0, 0.01]]
    atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
    calc = E3MDCalculator(pot, dtype="float64", min_atoms=64, min_edges=1024)
    atoms.calc = SumCalculator(
        [calc, MorsePotential(epsilon=0.4, rho0=4.0, r0=2.55, rcut1=1.5, rcut2=2.0)]
    )
    e_start = atoms.get_potential_energy()
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    converged, traced = traced_during(calc, lambda: opt.run(fmax=3e-3, steps=1000))
    assert converged
    assert atoms.get_potential_energy() < e_start
    assert max_force(atoms.get_forces()) < 3e-3
    # FrechetCellFilter scales the virial by 1/len(atoms) before comparing with fmax
    assert np.abs(atoms.get_stress()).max() * atoms.get_volume() < len(atoms) * 3e-3
    assert np.abs(calc.get_stress(atoms)).max() * atoms.get_volume() > 0.05  # the network took part
    assert opt.nsteps > 5 and len(traced) <= 1


def test_langevin_compiles_once_per_bucket(pot):
    atoms = bulk("Cu", cubic=True) * (2, 2, 2)
    calc = E3MDCalculator(pot, dtype="float32")
    atoms.calc = calc
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = Langevin(
        atoms,
        1.0 * units.fs,
        temperature_K=300,
        friction=0.01 / units.fs,
        rng=np.random.default_rng(1),
        logfile=None,
        fixcm=False,
    )
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=10)
    _, traced = traced_during(calc, lambda: dyn.run(200))
    assert np.all(np.isfinite(energies)) and len(energies) == 21
    assert np.isfinite(atoms.get_forces()).all()
    # every (atom, edge) bucket compiled exactly once; the edge count moves little at 300 K
    assert len(traced) == len(set(traced)) <= 2


def test_parameters_travel_as_one_array(pot):
    """The calculator hands its jitted function the parameters as one flat array (one argument
    instead of one per parameter array); unpacking gives back every array, shape and dtype."""
    from e3md.ase import _pack, _unraveler

    calc = E3MDCalculator(pot)
    assert calc._flat_params.shape == (sum(np.size(p) for p in jax.tree.leaves(calc.params)),)
    tree = {"a": {"w": jnp.arange(6.0).reshape(2, 3)}, "b": jnp.asarray([3, 4], jnp.int32)}
    flat, layout = _pack(tree)
    out = _unraveler(layout)(flat)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(tree), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_sorted_evaluation_returns_the_callers_order(pot, rng):
    """``sort_atoms``: the calculator evaluates large systems in spatial order; results come
    back in the caller's order, equal to the unsorted evaluation."""
    atoms = rattled(bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2)), seed=3)
    atoms = atoms[rng.permutation(len(atoms))]  # 64 atoms in no spatial order
    atoms.numbers[::5] = 6
    results = []
    for sort_atoms in (None, 1):
        atoms.calc = E3MDCalculator(pot, dtype="float64", min_atoms=64, min_edges=1024,
                                    sort_atoms=sort_atoms)  # fmt: skip
        results.append((atoms.get_potential_energies(), atoms.get_forces(), atoms.get_stress()))
    graph, order = atoms.calc._graph(atoms)
    assert order is not None and not np.array_equal(order, np.arange(len(atoms)))
    for unsorted, sorted_ in zip(*results, strict=True):
        np.testing.assert_allclose(sorted_, unsorted, atol=1e-10)
    assert np.abs(results[0][1]).max() > 1e-3  # the forces are not trivially zero
