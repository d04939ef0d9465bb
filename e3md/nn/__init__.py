"""Equivariant neural-network layers (flax.linen), e3x-compatible.

Feature layout ``x[..., P, (L+1)**2, F]`` (``P`` = 1, or 2 with pseudotensors), parameter trees
as in e3x so that e3x parameters apply unchanged.
"""

from e3md.nn.activations import (
    bent_identity,
    celu,
    elu,
    gated_linear,
    gelu,
    hard_silu,
    hard_swish,
    hard_tanh,
    leaky_relu,
    mish,
    relu,
    relu6,
    selu,
    serf,
    shifted_softplus,
    silu,
    soft_sign,
    swish,
)
from e3md.nn.basis import basis
from e3md.nn.cutoff import cosine_cutoff, polynomial_cutoff, smooth_cutoff
from e3md.nn.dense import Dense, Embed
from e3md.nn.message_pass import MessagePass
from e3md.nn.ops import gather_src, indexed_sum, normalize_and_norm, safe_norm
from e3md.nn.radial import (
    bernstein,
    bessel,
    gaussian,
    reciprocal_bernstein,
    reciprocal_mapping,
)
from e3md.nn.tensor import FusedTensor, Tensor, fused_tensor_apply, tensor_apply

__all__ = [
    "FusedTensor",
    "Tensor",
    "fused_tensor_apply",
    "tensor_apply",
    "Dense",
    "Embed",
    "MessagePass",
    "basis",
    "bent_identity",
    "bernstein",
    "bessel",
    "celu",
    "cosine_cutoff",
    "elu",
    "gated_linear",
    "gather_src",
    "gaussian",
    "gelu",
    "hard_silu",
    "hard_swish",
    "hard_tanh",
    "indexed_sum",
    "leaky_relu",
    "mish",
    "normalize_and_norm",
    "polynomial_cutoff",
    "reciprocal_bernstein",
    "reciprocal_mapping",
    "relu",
    "relu6",
    "safe_norm",
    "selu",
    "serf",
    "shifted_softplus",
    "silu",
    "smooth_cutoff",
    "soft_sign",
    "swish",
]
