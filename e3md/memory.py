"""Keep the memory XLA frees, instead of returning it to the system after every call.

Why: XLA's CPU runtime allocates each call's temporary buffers as one block and frees it at
the end of the call. Past a few tens of MB (e3md's small model from about 4000 atoms on), glibc's
``malloc`` serves such a block with a fresh ``mmap`` and gives it back with ``munmap``, so every
energy + forces call faults in, and the kernel zeroes, every page of its temporaries again:
for 12288 water atoms and the small model 153 MB, 37,700 page faults and 75 ms of system time
in a 121 ms call (BENCHMARKS.md, session 15). XLA's worker threads each allocate from their
own malloc arena, which cannot hold a block larger than 64 MB, so glibc's ``mmap`` threshold
alone cannot change this.

:func:`keep_freed_memory` therefore sets, through ``mallopt``: one arena for all threads
(``M_ARENA_MAX = 1``), no ``mmap`` for allocations (``M_MMAP_MAX = 0``: large blocks come from
the heap) and no trimming of the heap's top (``M_TRIM_THRESHOLD``), so a freed block is reused
by the next call. The same 12288-atom call then takes 80-84 ms with no page faults, and the time
per atom no longer grows with the system size. The cost: the process keeps its peak heap size
(memory freed is reused, not returned), which suits a simulation process.

``import e3md`` calls it (once per process) on Linux with glibc, unless the environment sets
``E3MD_MALLOC=system``. It only takes effect for threads that have not allocated yet, so it
must run before the first JAX computation of the process: import e3md before running anything
in JAX (the ``e3md`` command line does). On other C libraries it does nothing.
"""

import ctypes
import logging
import os
import platform

__all__ = ["keep_freed_memory", "malloc_mode"]

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: never trim below this free top

_applied = False


def malloc_mode() -> str:
    """``E3MD_MALLOC`` as read by :func:`keep_freed_memory`: ``"keep"`` (default) or
    ``"system"``."""
    mode = os.environ.get("E3MD_MALLOC", "keep").strip().lower()
    if mode not in ("keep", "system"):
        raise ValueError(f"E3MD_MALLOC must be 'keep' or 'system', got {mode!r}")
    return mode


def keep_freed_memory() -> bool:
    """Ask glibc's ``malloc`` to keep freed memory for reuse (see the module docstring).

    Returns:
      True if the settings are in effect for this process (applied now or before), False where
      ``E3MD_MALLOC=system`` or the C library is not glibc.
    """
    global _applied
    if _applied:
        return True
    if malloc_mode() == "system" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        )
    )
    _applied = ok
    log.debug("glibc malloc set to keep freed memory: %s", ok)
    return ok
