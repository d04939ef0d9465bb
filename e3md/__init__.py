"""e3md: E(3)-equivariant machine-learned interatomic potentials for molecular dynamics in JAX.

Layers (see README): ``e3md.so3`` (equivariant math), ``e3md.nn`` (layers),
``e3md.potentials`` (energy models and shipped potentials), ``e3md.integrators`` (MD drivers),
adapters ``e3md.ase`` and ``e3md.openmm``.
"""

from e3md._version import __version__

__all__ = ["__version__"]
