"""Optionally keep the memory XLA frees, instead of returning it to the system after every call.

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
by the next call. The same 12288-atom call then takes 80-84 ms with no page faults.

It is not the default, because of what it costs: freed memory stays with the process, and
blocks that later small allocations split are not always reused, so a process that runs
several large programs in turn can hold close to the sum of their temporaries (a benchmark
interleaving e3md with e3x and NequIP models of 12288 atoms grew to 24 GB and was killed);
LLVM's threads also share one arena, so compiling takes ~0.2 s longer. For one large system
evaluated call after call (ASE or OpenMM dynamics), it is 1.3-1.5x faster per call.
e3md's own MD driver hardly needs it: its steps run inside one XLA call per chunk, which
allocates its temporaries once.

Turn it on with ``E3MD_MALLOC=keep`` in the environment (read when e3md is imported), or call
:func:`keep_freed_memory` yourself. It only reaches threads that have not allocated yet, so it
must happen before the first JAX computation of the process. It does nothing on C libraries
other than glibc. A setting that needs no such care, at a smaller gain (98 ms for the call
above: the pages still get zeroed, but 2 MB at a time), is glibc's own
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` set before Python starts.
"""

import ctypes
import logging
import os
import platform

__all__ = ["keep_freed_memory", "kept", "malloc_mode"]

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: never trim below this free top

_applied = False


def malloc_mode() -> str:
    """``E3MD_MALLOC`` from the environment: ``"system"`` (default, the C library's own
    settings) or ``"keep"`` (:func:`keep_freed_memory` when e3md is imported)."""
    mode = os.environ.get("E3MD_MALLOC", "system").strip().lower()
    if mode not in ("keep", "system"):
        raise ValueError(f"E3MD_MALLOC must be 'keep' or 'system', got {mode!r}")
    return mode


def keep_freed_memory() -> bool:
    """Ask glibc's ``malloc`` to keep freed memory for reuse (see the module docstring).

    Returns:
      True if the settings are in effect for this process (applied now or before), False where
      the C library is not glibc.
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux":
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


def kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return _applied
