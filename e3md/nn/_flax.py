"""Flax helpers shared by the e3md layers."""

from typing import Any

import flax.linen as nn


def param(module: nn.Module, name: str, init: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """``module.param(name, init, shape, dtype)`` without re-tracing ``init`` when it exists.

    On every apply, flax's ``param`` traces the initialiser with ``jax.eval_shape`` to check
    the stored parameter's shape (~5 ms per parameter, ~0.25 s per trace of an e3md model,
    BENCHMARKS.md "session 8"). The shape is known here, so it is compared directly, with
    the same kind of error.
    """
    if module.has_variable("params", name):
        value = module.get_variable("params", name)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"parameter {name!r} of {module.__class__.__name__} {module.scope.path_text!r} "
                f"has shape {tuple(value.shape)}, but the module's attributes and inputs need "
                f"{tuple(shape)} (parameters from a different configuration?)"
            )
        return value
    return module.param(name, init, shape, dtype)
