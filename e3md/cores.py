"""Optionally keep this process's idle CPUs awake, so that handing work to another core is fast.

Why: on a virtual machine whose idle CPUs halt (KVM guests without halt polling, such as this
project's 2-core machines), waking a thread that waits on another CPU takes the host tens of µs:
a futex ping-pong between two threads on two CPUs took 86 µs per round trip, on one CPU 1.8 µs
(BENCHMARKS.md, session 21). XLA's CPU runtime hands each call to a pool thread and back, and
its thunks and e3md's kernels wake the pool's other threads several times per call, so a jitted
function that adds 1 to 1024 floats took 66-78 µs on two CPUs against 13 µs on one.

:func:`keep_cores_awake` starts one thread per CPU the process may run on, at Linux's
``SCHED_IDLE`` policy, spinning on ``pause`` (``spin_kernel.cc``, built like e3md's CPU
kernels). Such a thread runs only when nothing else wants its CPU and is preempted by any
wake-up there, so it takes next to no time from e3md, XLA or other processes (the scheduler
gives it 3/1024 of a normal thread's share); but the CPU no longer halts. The same 1024-float
function then takes 10-13 µs; ASE's ``get_forces`` on ethanol with the shipped potential 1.05 ms
instead of 1.6; a 192-atom energy + forces call of e3md's small model 1.5-1.6 ms instead of
1.9-2.0 in processes that start the threads when e3md is imported (switched between rounds of
one process, 2.15 -> 1.39 ms with that cell alone, but only 3 % where 1536- and 12 288-atom
calls ran between: not understood yet; BENCHMARKS.md, session 21).

It is not the default, because of what it costs: every CPU the process may use shows 100 % busy
while the threads run (power, and CPU-time billing or quotas where the host counts them), and on
a host with simultaneous multithreading a spinning thread takes a little from its sibling. Use
it for a process that runs MD on its machine alone. Where you administer a KVM guest, Linux's
own halt polling does much the same for the whole machine, adaptively and without busy threads
(the ping-pong above: 7 µs per round trip; ``echo 200000 >
/sys/module/haltpoll/parameters/guest_halt_poll_ns`` as root, with the ``haltpoll`` cpuidle
governor; it is 0, off, on this project's machines).

Turn it on with ``E3MD_IDLE=spin`` in the environment (read when e3md is imported; ``system``,
the default, leaves the CPUs to the operating system), or call :func:`keep_cores_awake`;
:func:`let_cores_sleep` stops the threads. Linux only; elsewhere, or where no C++ compiler
works, nothing starts (a warning says why).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading
import warnings

__all__ = ["cores_awake", "idle_mode", "keep_cores_awake", "let_cores_sleep"]

log = logging.getLogger(__name__)
_lock = threading.Lock()
_threads = 0
_lib = None


def idle_mode() -> str:
    """``E3MD_IDLE`` from the environment: ``"system"`` (default) or ``"spin"``
    (:func:`keep_cores_awake` when e3md is imported)."""
    mode = os.environ.get("E3MD_IDLE", "system").strip().lower()
    if mode not in ("spin", "system"):
        raise ValueError(f"E3MD_IDLE must be 'spin' or 'system', got {mode!r}")
    return mode


def _library():
    global _lib
    if _lib is None:
        from e3md.nn import cpu_kernels  # imports JAX: only when asked for

        built = cpu_kernels.library("spin")
        _lib = None if built is None else built[0]
    return _lib


def keep_cores_awake() -> int:
    """Start a ``SCHED_IDLE`` spinning thread on each CPU this process may use (see the module
    docstring); nothing more if they run already.

    Returns:
      The number of threads running, 0 where none could start (not Linux, no working C++ compiler,
      or the system refused the ``SCHED_IDLE`` policy; a warning says which).
    """
    global _threads
    with _lock:
        if _threads:
            return _threads
        if platform.system() != "Linux":
            warnings.warn("e3md.cores: keeping cores awake needs Linux", RuntimeWarning, 2)
            return 0
        lib = _library()
        if lib is None:
            msg = "e3md.cores: no spinning threads (spin_kernel.cc could not be built; see above)"
            warnings.warn(msg, RuntimeWarning, 2)
            return 0
        cpus = sorted(os.sched_getaffinity(0))
        arr = (ctypes.c_int * len(cpus))(*cpus)
        n = lib.e3md_spin_start(arr, len(cpus))
        if n < 0:
            warnings.warn(
                "e3md.cores: the system refused SCHED_IDLE threads; none started",
                RuntimeWarning,
                2,
            )
            return 0
        _threads = n
        log.debug("e3md.cores: %d SCHED_IDLE threads keep CPUs %s awake", n, cpus)
        return n


def _forget_in_child() -> None:
    """After ``fork``: the threads stayed with the parent."""
    global _threads, _lock
    _lock = threading.Lock()
    if _threads:
        _lib.e3md_spin_forget()
        _threads = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def let_cores_sleep() -> int:
    """Stop the threads of :func:`keep_cores_awake`; returns how many ran."""
    global _threads
    with _lock:
        if not _threads:
            return 0
        stopped = _lib.e3md_spin_stop()
        _threads = 0
        return stopped


def cores_awake() -> int:
    """How many threads of :func:`keep_cores_awake` run now."""
    return _threads
