"""The ASE calculator inside ASE's drivers: BFGS, FrechetCellFilter, Langevin; compile counts.

A randomly initialised network has no guaranteed minimum (it may favour dissociation or
collapse), so the relaxations add a Morse pair term through ASE's ``SumCalculator``: the sum has
a minimum, the network's energy, forces and stress move it, and the test checks both that the
optimisers converge and that the network's own forces at the converged point are not negligible.
"""

import jax
import numpy as np
import pytest
from ase import units
from ase.build import bulk, molecule
from ase.calculators.fd import calculate_numerical_forces
from ase.calculators.mixing import SumCalculator
from ase.calculators.morse import MorsePotential
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.optimize import BFGS
from e3md.potentials import ModelConfig, Potential

from e3md.ase import E3MDCalculator

#: a small random model; tests/test_ase*.py use the same config, so within one pytest process
#: its compiled energy function is shared (E3MDCalculator caches by config and dtype)
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
    config = ModelConfig(**SMALL)
    return Potential.init(config, jax.random.PRNGKey(0))


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
    atoms.rattle(0.05, seed=1)
    strain = np.eye(3) + [[0.03, 0.01, 0], [0, -0.02, 0], [0, 0, 0.01]]
    atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
    calc = E3MDCalculator(pot, dtype="float64", min_atoms=64, min_edges=1024)
    atoms.calc = SumCalculator([calc, MorsePotential(epsilon=0.4, rho0=4.0, r0=2.55)])
    e_start = atoms.get_potential_energy()
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    converged, traced = traced_during(calc, lambda: opt.run(fmax=1e-3, steps=1000))
    assert converged
    assert atoms.get_potential_energy() < e_start
    assert max_force(atoms.get_forces()) < 1e-3
    # FrechetCellFilter scales the virial by 1/len(atoms) before comparing with fmax
    assert np.abs(atoms.get_stress()).max() * atoms.get_volume() < len(atoms) * 1e-3
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
    _, traced = traced_during(calc, lambda: dyn.run(300))
    assert np.all(np.isfinite(energies)) and len(energies) == 31
    assert np.isfinite(atoms.get_forces()).all()
    # every (atom, edge) bucket compiled exactly once; the edge count moves little at 300 K
    assert len(traced) == len(set(traced)) <= 2
