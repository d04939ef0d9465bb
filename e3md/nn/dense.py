r"""Equivariant linear layer (``Dense``) and species embedding (``Embed``), e3x-compatible.

Parameter trees are those of ``e3x.nn.Dense`` / ``e3x.nn.Embed``, so e3x parameters apply
unchanged:

* ``Dense`` with ``P = 1``: one sub-tree per degree, named ``'0+'``, ``'1-'``, ``'2+'``, ...
  (parity of degree :math:`\ell` is :math:`(-1)^\ell`), each ``{'kernel': [F_in, F_out]}``, plus
  ``'bias': [F_out]`` in ``'0+'``. With ``P = 2``: ``'0+' ... 'L+'`` (even channel) and
  ``'0-' ... 'L-'`` (odd channel); only ``'0+'`` has a bias.
* ``Embed``: ``{'embedding': [num_embeddings, 1, 1, features]}``.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jaxtyping import Array, Float, Integer

from e3md.nn._flax import param

__all__ = ["Dense", "Embed", "max_degree_of"]

Dtype = Any
Initializer = Any


def degree_names(max_degree: int) -> list[str]:
    """The parameter sub-tree names of a ``P = 1`` Dense, one per degree: ``'0+', '1-', ...``."""
    return [f"{l}{'+-'[l % 2]}" for l in range(max_degree + 1)]


def max_degree_of(shape: tuple[int, ...]) -> int:
    """Maximum degree L of features of shape ``(..., P, (L+1)**2, F)``.

    Raises:
      ValueError: if the shape is not a valid feature shape.
    """
    if len(shape) < 3:
        raise ValueError(f"features need shape (..., P, (L+1)**2, F), received shape {shape}")
    if shape[-3] not in (1, 2):
        raise ValueError(f"parity axis (-3) must have size 1 or 2, received shape {shape}")
    max_degree = math.isqrt(shape[-2]) - 1
    if max_degree < 0 or (max_degree + 1) ** 2 != shape[-2]:
        raise ValueError(f"axis -2 must have size (L+1)**2, received shape {shape}")
    return max_degree


class _Linear(nn.Module):
    """One weight matrix (and optional bias): the sub-tree of one degree/parity."""

    features: int
    use_bias: bool
    dtype: Dtype | None
    param_dtype: Dtype
    precision: Any
    kernel_init: Initializer
    bias_init: Initializer

    @nn.compact
    def __call__(self, x: Float[Array, "... F_in"]) -> Float[Array, "... F_out"]:
        kernel = param(
            self, "kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            param(self, "bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.matmul(x, kernel, precision=self.precision)
        return y if bias is None else y + bias


class Dense(nn.Module):
    r"""Equivariant linear map over the feature axis, one weight matrix per degree and parity.

    .. math::
        \mathbf y^{(\ell_p)} = \mathbf x^{(\ell_p)} \mathbf W_{(\ell_p)}
        \;\bigl[+\ \mathbf b \ \text{ if } \ell_p = 0_+\bigr]

    for inputs ``x[..., P, (L+1)**2, F_in]`` and outputs ``y[..., P, (L+1)**2, features]``.
    All :math:`2\ell+1` orders of a degree share :math:`\mathbf W_{(\ell_p)}`, which makes the
    map commute with rotations; the bias only touches the invariant channel.

    Attributes:
      features: :math:`F_\mathrm{out}`.
      use_bias: add a bias to the scalar (:math:`0_+`) channel.
      dtype: computation dtype (default: promote inputs and parameters).
      param_dtype: parameter dtype.
      precision: matmul precision (``jax.lax.Precision``).
      kernel_init: weight initialiser (LeCun normal, as e3x).
      bias_init: bias initialiser (zeros).
    """

    features: int
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    def _linear(self, name: str, use_bias: bool) -> _Linear:
        return _Linear(
            features=self.features,
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            name=name,
        )

    @nn.compact
    def __call__(
        self, inputs: Float[Array, "... P LM F_in"], *, per_degree: bool = False
    ) -> Float[Array, "... P LM F_out"]:
        r"""Applies the map.

        Args:
          inputs: features ``[..., P, (L+1)**2, F_in]``, ``P`` in {1, 2}; with ``per_degree``
            one row per degree instead, ``[..., P, L+1, F_in]``: the values shared by all
            :math:`2\ell+1` orders of degree :math:`\ell` (e.g. a radial function), which the
            map treats as if they were repeated over the orders -- same parameters, a
            ``(L+1)**2 / (L+1)`` times smaller matmul.
          per_degree: see ``inputs``.

        Returns:
          Features ``[..., P, (L+1)**2, features]`` (``[..., P, L+1, features]`` with
          ``per_degree``).

        Raises:
          ValueError: if ``inputs`` is not a valid feature array.
        """
        if per_degree:
            if inputs.ndim < 3 or inputs.shape[-3] not in (1, 2):
                raise ValueError(
                    f"per-degree inputs need shape (..., P, L+1, F), received {inputs.shape}"
                )
            max_degree = inputs.shape[-2] - 1
        else:
            max_degree = max_degree_of(inputs.shape)
        degrees = range(max_degree + 1)
        if inputs.shape[-3] == 1:
            names = degree_names(max_degree)
            channels = [(0, names)]
        else:
            channels = [(0, [f"{l}+" for l in degrees]), (1, [f"{l}-" for l in degrees])]
        out = []
        for p, names in channels:
            rows = (
                (lambda l: slice(l, l + 1))
                if per_degree
                else (lambda l: slice(l * l, (l + 1) ** 2))
            )
            blocks = [
                self._linear(names[l], self.use_bias and p == 0 and l == 0)(
                    inputs[..., p, rows(l), :]
                )
                for l in degrees
            ]
            out.append(jnp.concatenate(blocks, axis=-2) if len(blocks) > 1 else blocks[0])
        return jnp.stack(out, axis=-3)


class Embed(nn.Module):
    r"""Learned scalar features for integer labels (e.g. species indices).

    .. math::
        \mathbf y = \mathbf E[z] \in \mathbb R^{1\times 1\times F}

    Indices outside ``[0, num_embeddings)`` (such as a padding species index equal to
    ``num_embeddings``) return zero features.

    Attributes:
      num_embeddings: number :math:`n` of labels.
      features: :math:`F`.
      dtype: output dtype (default: parameter dtype).
      param_dtype: parameter dtype.
      embedding_init: initialiser of the table (variance scaling 1, fan-in, normal, as e3x).
    """

    num_embeddings: int
    features: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    embedding_init: Initializer = jax.nn.initializers.variance_scaling(
        1.0, "fan_in", "normal", out_axis=0
    )

    @nn.compact
    def __call__(self, inputs: Integer[Array, "..."]) -> Float[Array, "... 1 1 F"]:
        """Looks up the embeddings.

        Args:
          inputs: integer labels, any shape.

        Returns:
          ``inputs.shape + (1, 1, features)``.

        Raises:
          ValueError: if ``inputs`` is not an integer array.
        """
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"Embed needs integer inputs, received dtype {inputs.dtype}")
        table = param(
            self,
            "embedding",
            self.embedding_init,
            (self.num_embeddings, 1, 1, self.features),
            self.param_dtype,
        )
        (table,) = promote_dtype(table, dtype=self.dtype, inexact=False)
        return jnp.take(table, inputs, axis=0, mode="fill", fill_value=0)
