"""How e3md compiles: ``jax.jit`` plus the XLA options measured to suit e3md's programs.

On CPU, e3md compiles with XLA's classic element-wise fusion emitter
(``xla_cpu_use_fusion_emitters=False``) instead of the newer MLIR emitters. e3md's programs are
long chains of small element-wise fusions (the unrolled tensor products and their backward
passes), and for them the classic emitter gives the same results (forces agree to ~1e-10 eV/Å)
in less time: energy + forces 1.03-1.42x faster and 0.4-0.8 s less compile time on the water
boxes of ``benchmarks/bench_performance.py`` (BENCHMARKS.md, "fusion emitter").

Every jit in e3md (MD drivers, ASE calculator, OpenMM force, training, evaluation) goes through
:func:`jit`. If you jit an e3md energy function yourself, use :func:`jit` too, or pass
``compiler_options=e3md.compiler.compiler_options()`` to ``jax.jit``.

The options are left out (XLA's defaults apply) when the default backend is not the CPU, when
``XLA_FLAGS`` already sets ``xla_cpu_use_fusion_emitters`` (your choice wins), or when the
installed XLA no longer knows the option (it is being retired upstream; checked once by
compiling a one-line function).
"""

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["CPU_OPTIONS", "compiler_options", "jit"]

CPU_OPTIONS: dict[str, Any] = {"xla_cpu_use_fusion_emitters": False}


@functools.cache
def _xla_accepts(name: str, value: Any) -> bool:
    """True if this XLA compiles with the option ``name=value``."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(np.float32(0)).compile()
    except Exception:  # an unknown option is an XlaRuntimeError (INVALID_ARGUMENT)
        return False
    return True


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """XLA compile options for e3md programs on ``backend`` (default: JAX's default backend).

    Returns a new dict (possibly empty); see the module docstring for when it is empty.
    """
    if (backend or jax.default_backend()) != "cpu":
        return {}
    flags = os.environ.get("XLA_FLAGS", "")
    return {
        name: value
        for name, value in CPU_OPTIONS.items()
        if name not in flags and _xla_accepts(name, value)
    }


def jit(fun: Callable | None = None, /, **kwargs: Any):
    """``jax.jit`` with :func:`compiler_options` (explicit ``compiler_options`` entries win).

    Usable like ``jax.jit``: ``jit(f, static_argnums=...)``, or as ``@jit`` / ``@jit(...)``.
    """
    if fun is None:
        return functools.partial(jit, **kwargs)
    options = {**compiler_options(), **(kwargs.pop("compiler_options", None) or {})}
    return jax.jit(fun, compiler_options=options or None, **kwargs)
