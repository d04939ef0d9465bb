"""Molecular-dynamics drivers on JAX-MD integrators.

:func:`run_md` runs NVE / NVT (Langevin, Nosé-Hoover chain) / NPT (Nosé-Hoover) dynamics in
jitted chunks with overflow-safe neighbour lists, thermodynamic logs, trajectories, blow-up
guard, replicas and bit-identical restarts; :func:`run_atoms` does it for an ``ase.Atoms``
and an e3md potential. :func:`make_space` builds the jax-md space for an
``ase.Atoms``. Public units: eV, Å, fs, K, amu, bar (see :mod:`e3md.integrators.ensembles`).
"""

from e3md.integrators.atoms import run_atoms
from e3md.integrators.checkpoint import load_checkpoint, save_checkpoint
from e3md.integrators.ensembles import ENSEMBLES, EnsembleConfig, make_integrator, maxwell_boltzmann
from e3md.integrators.md import MDBlowUpError, MDResult, run_md
from e3md.integrators.space import Space, make_space, min_cell_width

__all__ = [
    "ENSEMBLES",
    "EnsembleConfig",
    "MDBlowUpError",
    "MDResult",
    "Space",
    "load_checkpoint",
    "make_integrator",
    "make_space",
    "maxwell_boltzmann",
    "min_cell_width",
    "run_atoms",
    "run_md",
    "save_checkpoint",
]
