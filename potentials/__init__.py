"""Energy models built on e3md layers, and the trained potentials shipped with e3md.

Public API::

    from e3md.potentials import ModelConfig, Potential, load, atomic_energies
    pot = load("rmd17-ethanol")                      # or a path to an .e3md file
    neighbor_fn, energy_fn = pot.neighbor_list(displacement_fn, box, species)
    nbrs = neighbor_fn.allocate(R)
    E = energy_fn(R, nbrs)                           # eV
    out = energy_forces_stress(energy_fn, R, nbrs, box=box)   # forces eV/Å, ASE stress eV/Å³

See ``model`` (architecture), ``energy`` (jax-md path and sign conventions), ``potential``
(files and names) and ``config``.
"""

from e3md.potentials.config import ModelConfig
from e3md.potentials.energy import EnergyForcesStress, energy_forces_stress, neighbor_list
from e3md.potentials.model import (
    EnergyModel,
    atomic_energies,
    init_params,
    species_index,
    species_table,
)
from e3md.potentials.potential import KIND, Potential, available, load

__all__ = [
    "KIND",
    "EnergyForcesStress",
    "EnergyModel",
    "ModelConfig",
    "Potential",
    "atomic_energies",
    "available",
    "energy_forces_stress",
    "init_params",
    "load",
    "neighbor_list",
    "species_index",
    "species_table",
]
