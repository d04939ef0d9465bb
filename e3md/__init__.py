"""e3md: E(3)-equivariant machine-learned interatomic potentials for molecular dynamics in JAX.

Layers (see README): ``e3md.so3`` (equivariant math), ``e3md.nn`` (layers),
``e3md.potentials`` (energy models and shipped potentials), ``e3md.integrators`` (MD drivers),
adapters ``e3md.ase`` and ``e3md.openmm``.
"""

from e3md import cores as _cores
from e3md import memory as _memory
from e3md._version import __version__

# E3MD_MALLOC=keep: XLA's per-call temporaries are reused instead of faulted in anew
# (e3md.memory; it must happen before the first JAX computation, so on import)
if _memory.malloc_mode() == "keep":
    _memory.keep_freed_memory()
# E3MD_IDLE=spin: idle CPUs kept awake by SCHED_IDLE threads, so waking a pool thread is fast
# (e3md.cores)
if _cores.idle_mode() == "spin":
    _cores.keep_cores_awake()

__all__ = ["__version__"]
