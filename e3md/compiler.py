"""How e3md compiles: ``jax.jit`` plus the XLA options measured to suit e3md's programs.

On CPU, e3md compiles with XLA's classic element-wise fusion emitter
(``xla_cpu_use_fusion_emitters=False``) instead of the newer MLIR emitters. e3md's programs are
long chains of small element-wise fusions (the unrolled tensor products and their backward
passes), and for them the classic emitter gives the same results (forces agree to ~1e-10 eV/Å)
with less compile time (0.4-3 s less) and, for systems of a few hundred atoms and more, equal
or faster steps: energy + forces 1.15-1.42x faster with L = 1, F = 32 and 0.99-1.14x with
L = 2, F = 64; MD of a 3087-atom box 1.05x (BENCHMARKS.md, "fusion emitter"). For molecules
of a few atoms the MLIR emitters step faster (9-atom ethanol MD: the classic emitter 0.87-0.92x),
so systems with fewer than :data:`CLASSIC_EMITTER_MIN_ATOMS` atoms keep XLA's defaults where
the caller says how many atoms it compiles for (``num_atoms``: the MD driver, the ASE
calculator and the OpenMM force do).

Every jit in e3md that evaluates a model (MD drivers, ASE calculator, OpenMM force, training,
evaluation) goes through :func:`jit`; parameter initialisation keeps XLA's defaults (the classic
emitter compiles its random number generation 2.5x slower). If you jit an e3md energy function
yourself, use :func:`jit` too, or pass ``compiler_options=e3md.compiler.compiler_options()`` to
``jax.jit``.

The options are left out (XLA's defaults apply) when the default backend is not the CPU, when
``XLA_FLAGS`` already sets ``xla_cpu_use_fusion_emitters`` (your choice wins), or when the
installed XLA no longer knows the option (it is being retired upstream; checked once by
compiling a one-line function).

:func:`enable_compile_cache` turns on JAX's persistent compilation cache, so a second run of
the same system skips XLA compilation (``e3md md`` on ethanol: 10.8 s -> 5.6 s). The ``e3md``
command line does this by default; importing e3md never changes JAX's global configuration.
"""

import functools
import hashlib
import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = [
    "CLASSIC_EMITTER_MIN_ATOMS",
    "CPU_OPTIONS",
    "compiler_options",
    "compiler_options_key",
    "cpu_description",
    "default_cache_dir",
    "enable_compile_cache",
    "jit",
    "machine_key",
]

log = logging.getLogger(__name__)

CPU_OPTIONS: dict[str, Any] = {"xla_cpu_use_fusion_emitters": False}
# Below this many atoms, CPU_OPTIONS are not used (measured: 9 atoms 0.87-0.92x, 243 atoms
# within noise, 3087 atoms 1.05x MD steps with the shipped rmd17-ethanol architecture).
CLASSIC_EMITTER_MIN_ATOMS = 64


@functools.cache
def _xla_accepts(name: str, value: Any) -> bool:
    """True if this XLA compiles with the option ``name=value``."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(np.float32(0)).compile()
    except Exception:  # an unknown option is an XlaRuntimeError (INVALID_ARGUMENT)
        return False
    return True


def compiler_options(backend: str | None = None, *, num_atoms: int | None = None) -> dict[str, Any]:
    """XLA compile options for e3md programs on ``backend`` (default: JAX's default backend).

    Args:
      backend: ``"cpu"``, ``"gpu"``, ...
      num_atoms: atoms of the system the program is compiled for, if known (None: any size).

    Returns a new dict (possibly empty); see the module docstring for when it is empty.
    """
    if (backend or jax.default_backend()) != "cpu":
        return {}
    if num_atoms is not None and num_atoms < CLASSIC_EMITTER_MIN_ATOMS:
        return {}
    flags = os.environ.get("XLA_FLAGS", "")
    return {
        name: value
        for name, value in CPU_OPTIONS.items()
        if name not in flags and _xla_accepts(name, value)
    }


def compiler_options_key(num_atoms: int | None = None) -> tuple:
    """:func:`compiler_options` for ``num_atoms`` as a hashable key, for caches of compiled
    functions (the ASE calculator, the OpenMM force): one entry per set of options."""
    return tuple(sorted(compiler_options(num_atoms=num_atoms).items()))


def jit(fun: Callable | None = None, /, *, num_atoms: int | None = None, **kwargs: Any):
    """``jax.jit`` with :func:`compiler_options` (explicit ``compiler_options`` entries win).

    Usable like ``jax.jit``: ``jit(f, static_argnums=...)``, or as ``@jit`` / ``@jit(...)``.
    ``num_atoms``: the system size the function is compiled for, if known (see
    :func:`compiler_options`).
    """
    if fun is None:
        return functools.partial(jit, num_atoms=num_atoms, **kwargs)
    options = {
        **compiler_options(num_atoms=num_atoms),
        **(kwargs.pop("compiler_options", None) or {}),
    }
    return jax.jit(fun, compiler_options=options or None, **kwargs)


def cpu_description() -> str:
    """The CPU's model name and feature flags (``/proc/cpuinfo``; elsewhere the processor name):
    what code compiled for this CPU (XLA's, e3md's kernels with ``-march=native``) depends on."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        keys = ("model name", "flags", "Features", "CPU part")  # x86; Arm
        lines = [ln for ln in text.splitlines() if ln.startswith(keys)]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def machine_key() -> str:
    """A name for this kind of CPU: ``<architecture>-<12 hex digits>`` of
    :func:`cpu_description`.

    XLA compiles CPU programs for the host's instruction set, and JAX's cache key does not
    include it (only ``"cpu"``), so a cache directory shared by machines with different CPUs (a
    home directory on a cluster) could hand AVX-512 code to a CPU without it. e3md keeps the
    programs of each kind of CPU apart (:func:`enable_compile_cache`).
    """
    digest = hashlib.sha256(cpu_description().encode()).hexdigest()[:12]
    return f"{platform.machine() or 'unknown'}-{digest}"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/e3md/jax`` (``~/.cache/e3md/jax`` if ``XDG_CACHE_HOME`` is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "e3md" / "jax"


def enable_compile_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``path`` (default :func:`default_cache_dir`).

    Compiled programs are written to ``path / machine_key()`` (one directory per kind of CPU,
    see :func:`machine_key`) and reused by later processes that compile the same program with the
    same JAX/XLA versions and options (JAX keys the cache on all of them), so results are
    identical with and without the cache. Every compile is cached, also the short ones
    (``jax_persistent_cache_min_compile_time_secs = 0``: jax-md compiles dozens of small
    functions at import), unless ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` is set.

    XLA's CPU runtime logs two ERROR lines of some 3000 characters for every program it reads
    back on a CPU with AVX-512 ("Target machine feature +prefer-no-gather is not supported on the
    host machine ... could lead to execution errors such as SIGILL"; jax-ml/jax issue 38445):
    XLA adds the tuning flags ``+prefer-no-gather`` / ``+prefer-no-scatter`` on such CPUs, and
    its loader checks them as if they were instructions the host lacks. The program is loaded
    and runs all the same. As the directory holds only programs compiled for this kind of CPU,
    that message is always false here, and this function raises the minimum level of XLA's C++
    log to FATAL for the process, unless ``TF_CPP_MIN_LOG_LEVEL`` is set to something other than
    the ``1`` that ``import jax`` puts there (your choice wins).
    XLA's errors still reach Python as exceptions; its log lines are diagnostics.

    If JAX already has a cache directory (``JAX_COMPILATION_CACHE_DIR`` or
    ``jax.config.update``), that one is kept as it is, and XLA's log too. Changes JAX's global
    configuration: meant for applications (the ``e3md`` command line), not called on import.

    Returns:
      The cache directory in use, or None if it cannot be created (a warning is logged and
      compilation goes on without a cache).
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    path = (Path(path) if path is not None else default_cache_dir()) / machine_key()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("no compilation cache: cannot create %s (%s)", path, exc)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1") == "1":  # import jax sets 1 if unset
        _quiet_xla_log()
    return path


def _quiet_xla_log() -> None:
    """XLA's C++ log: FATAL only (see :func:`enable_compile_cache`)."""
    try:
        from jax._src.lib import utils

        utils.absl_set_min_log_level(3)  # absl: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL
    except (ImportError, AttributeError) as exc:  # a JAX without it: the lines stay
        log.debug("cannot set XLA's log level: %s", exc)
