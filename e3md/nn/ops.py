"""Gradient-safe array operations: vector norms, indexed (segment) gathers and sums, and a
sine and cosine that XLA's CPU backend vectorises.

The indexed operations understand the two neighbour-list layouts used throughout e3md (and e3x):

* **dense**: ``adj_idx[..., N, M]`` lists, for every receiver ``i``, the ``M`` senders ``j``;
  entries equal to ``N`` (or any index ``>= N``) are padding and are excluded with ``where``.
* **sparse**: ``dst_idx[..., E]`` (receiver ``i``) and ``src_idx[..., E]`` (sender ``j``) per
  edge; padded edges hold the index ``N`` = ``num_segments`` and are dropped by the sum.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Integer, Num, Shaped

__all__ = [
    "cos",
    "gather_src",
    "indexed_sum",
    "normalize_and_norm",
    "safe_norm",
    "sin",
]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def safe_norm(
    x: Float[Array, "..."], axis: int | tuple[int, ...] | None = -1, keepdims: bool = False
) -> Float[Array, "..."]:
    r"""Euclidean norm :math:`\lVert x\rVert_2` whose derivative stays finite at :math:`x = 0`.

    .. math::
        \lVert x\rVert = a\sqrt{\textstyle\sum_i (x_i/a)^2},\qquad a = \max_i |x_i|,
        \qquad \frac{\partial\lVert x\rVert}{\partial x} = \frac{x}{\lVert x\rVert}
        \ \ (\text{defined as } 0 \text{ at } x = 0).

    The rescaling by :math:`a` avoids overflow/underflow of :math:`x^2`; the custom JVP replaces
    the :math:`0/0` of the plain derivative at the origin by 0 (a valid subgradient). Padded
    edges with zero edge vectors therefore give zero, not NaN, gradients.

    Args:
      x: input array (e.g. edge vectors in Å, shape ``[E, 3]``).
      axis: axis or axes to reduce (default: last).
      keepdims: keep the reduced axes with size 1.

    Returns:
      The norm, in the units of ``x``.
    """
    scale = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=axis, keepdims=True))
    scale = jnp.maximum(scale, jnp.finfo(x.dtype).tiny)
    n = scale * jnp.sqrt(jnp.sum((x / scale) ** 2, axis=axis, keepdims=True))
    return n if keepdims else jnp.squeeze(n, axis=axis)


@safe_norm.defjvp
def _safe_norm_jvp(axis: Any, keepdims: bool, primals: Any, tangents: Any) -> tuple[Any, Any]:
    (x,), (x_dot,) = primals, tangents
    n = safe_norm(x, axis, True)
    denominator = jnp.where(n > 0, n, 1)  # 0/0 -> 0 at the origin
    t = jnp.sum(x * x_dot / denominator, axis=axis, keepdims=True)
    if not keepdims:
        n, t = jnp.squeeze(n, axis=axis), jnp.squeeze(t, axis=axis)
    return n, t


def normalize_and_norm(
    r: Float[Array, "... 3"],
) -> tuple[Float[Array, "... 3"], Float[Array, "..."]]:
    r"""Unit vectors :math:`\hat r = r/\lVert r\rVert` and norms, safe at :math:`r = 0`.

    Zero vectors are returned unchanged (as zero "unit" vectors) with norm 0; values and
    gradients stay finite.

    Args:
      r: vectors (Å), shape ``[..., 3]``.

    Returns:
      ``(r_hat [..., 3], norm [...])``, norm in Å.
    """
    n = safe_norm(r, axis=-1, keepdims=True)
    tiny = jnp.finfo(r.dtype).tiny
    r_hat = r / jnp.where(n * n > tiny, n, 1)
    return r_hat, jnp.squeeze(n, axis=-1)


def _check_index_form(adj_idx: Array | None, dst_idx: Array | None, src_idx: Array | None) -> str:
    dense = adj_idx is not None
    sparse = dst_idx is not None or src_idx is not None
    if dense == sparse:
        raise ValueError(
            "give either a dense index list (adj_idx) or a sparse one (dst_idx/src_idx), "
            f"received adj_idx={'set' if dense else 'None'}, "
            f"dst_idx/src_idx={'set' if sparse else 'None'}"
        )
    if dst_idx is not None and src_idx is not None and dst_idx.shape != src_idx.shape:
        raise ValueError(
            f"dst_idx and src_idx must have the same shape, got {dst_idx.shape} and {src_idx.shape}"
        )
    return "dense" if dense else "sparse"


def _batched(fn, idx_batch_ndim: int):
    """vmap ``fn(x, idx)`` over ``idx_batch_ndim`` leading axes shared by ``x`` and ``idx``."""
    for _ in range(idx_batch_ndim):
        fn = jax.vmap(fn)
    return fn


def gather_src(
    inputs: Shaped[Array, "..."],
    *,
    adj_idx: Integer[Array, "... N M"] | None = None,
    src_idx: Integer[Array, "... E"] | None = None,
) -> Shaped[Array, "..."]:
    """Gathers the sender features ``inputs[j]`` for every edge.

    Padding indices (``>= N``) are clipped to ``N - 1``; the gathered values of padded edges
    are meaningless and must be excluded by the reduction (``indexed_sum`` does).

    Args:
      inputs: per-node values, node axis right after the batch axes of the index list.
      adj_idx: dense index list ``[..., N, M]`` (exclusive with ``src_idx``).
      src_idx: sparse sender indices ``[..., E]``.

    Returns:
      ``[..., N, M, *rest]`` (dense) or ``[..., E, *rest]`` (sparse).

    Raises:
      ValueError: if neither or both index forms are given, or shapes do not fit.
    """
    form = _check_index_form(adj_idx, None, src_idx)
    idx = adj_idx if form == "dense" else src_idx
    batch = idx.ndim - (2 if form == "dense" else 1)
    if inputs.ndim <= batch or inputs.shape[:batch] != idx.shape[:batch]:
        raise ValueError(
            f"index list of shape {idx.shape} cannot gather from inputs of shape {inputs.shape}"
        )
    take = lambda x, i: jnp.take(x, i, axis=0, mode="clip")
    return _batched(take, batch)(inputs, idx)


def indexed_sum(
    inputs: Num[Array, "..."],
    *,
    adj_idx: Integer[Array, "... N M"] | None = None,
    where: Bool[Array, "... N M"] | None = None,
    dst_idx: Integer[Array, "... E"] | None = None,
    num_segments: int | None = None,
    indices_are_sorted: bool = False,
) -> Num[Array, "..."]:
    r"""Sums edge values into their receivers: :math:`y_i = \sum_{j\in\mathcal N(i)} x_{ij}`.

    Dense form: ``inputs[..., N, M, *rest]`` summed over ``M`` where ``where`` is true.
    Sparse form: ``inputs[..., E, *rest]`` summed into ``num_segments`` segments by
    ``dst_idx``; indices outside ``[0, num_segments)`` (padding, index ``N``) are dropped.

    Args:
      inputs: edge values.
      adj_idx: dense index list ``[..., N, M]`` (only its shape and form are used).
      where: dense mask ``[..., N, M]``; required with ``adj_idx``.
      dst_idx: sparse receiver indices ``[..., E]``.
      num_segments: number of receivers ``N``; required with ``dst_idx``.
      indices_are_sorted: promise that ``dst_idx`` is sorted (sparse only, faster).

    Returns:
      ``[..., N, *rest]``.

    Raises:
      ValueError: for a missing/ambiguous index list, missing ``where``/``num_segments``, or
        inconsistent shapes.
    """
    form = _check_index_form(adj_idx, dst_idx, None)
    if form == "dense":
        if where is None:
            raise ValueError("indexed_sum with adj_idx needs the mask 'where'")
        if inputs.shape[: adj_idx.ndim] != adj_idx.shape or where.shape != adj_idx.shape:
            raise ValueError(
                f"inputs {inputs.shape}, adj_idx {adj_idx.shape} and where {where.shape} "
                "do not fit together"
            )
        mask = jnp.reshape(where, where.shape + (1,) * (inputs.ndim - where.ndim))
        # jnp.where (not multiplication) so that non-finite padded values cannot leak.
        return jnp.sum(jnp.where(mask, inputs, 0), axis=adj_idx.ndim - 1)
    if num_segments is None:
        raise ValueError("indexed_sum with dst_idx needs num_segments")
    if inputs.shape[: dst_idx.ndim] != dst_idx.shape:
        raise ValueError(f"inputs {inputs.shape} and dst_idx {dst_idx.shape} do not fit together")
    seg = functools.partial(
        jax.ops.segment_sum, num_segments=num_segments, indices_are_sorted=indices_are_sorted
    )
    return _batched(seg, dst_idx.ndim - 1)(inputs, dst_idx)


# float32 sine and cosine as polynomials: for jnp.sin / jnp.cos XLA's CPU backend calls a scalar
# library function per element (~6 ns each, most of the Bessel basis' time in energy + forces;
# BENCHMARKS.md, "session 8"), while these are a few multiply-adds it vectorises and fuses.
# Reduction x = n pi + y, |y| <= pi/2, with pi split in three parts (Cody & Waite; the first two
# have few enough bits that n * part is exact for |n| < 2**13); then near-minimax polynomials in
# u = y^2 fitted in float64 on [0, (pi/2)^2] (relative error 4e-9 for sin(y)/y, absolute 2e-10
# for cos(y)), evaluated by Horner's rule in float32.
_PI_PARTS = (3.140625, 9.67502593994140625e-4, 1.509957990978376432e-7)
_SIN_COEFFS = (
    9.9999999573280496e-01,
    -1.6666657991913172e-01,
    8.3330510634328017e-03,
    -1.9809075290602718e-04,
    2.6052249147423545e-06,
)
_COS_COEFFS = (
    9.9999999978065690e-01,
    -4.9999999358472058e-01,
    4.1666636258073202e-02,
    -1.3888361400294091e-03,
    2.4760161353470922e-05,
    -2.6051495233270217e-07,
)


def _reduced(x):
    """``(y, (-1)^n)`` with ``x = n pi + y``, ``|y| <= pi/2`` (float32)."""
    n = jnp.round(x * np.float32(1 / np.pi))
    y = x
    for part in _PI_PARTS:
        y = y - n * np.float32(part)
    return y, 1 - 2 * (n.astype(jnp.int32) & 1).astype(x.dtype)


def _horner(u, coeffs):
    acc = jnp.asarray(coeffs[-1], u.dtype)
    for c in coeffs[-2::-1]:
        acc = acc * u + jnp.asarray(c, u.dtype)
    return acc


@jax.custom_jvp
def sin(x: Float[Array, "..."]) -> Float[Array, "..."]:
    r""":math:`\sin x`; in float32 a vectorisable polynomial, other dtypes ``jnp.sin``.

    Float32: absolute error at most 1.5e-7 measured on :math:`[-10^5, 10^5]` (``jnp.sin``:
    3.3e-8; the reduction is exact up to :math:`|x| = 2^{13}\pi`). Derivative: :func:`cos`.
    """
    x = jnp.asarray(x)
    if x.dtype != jnp.float32:
        return jnp.sin(x)
    y, sign = _reduced(x)
    return sign * y * _horner(y * y, _SIN_COEFFS)


@jax.custom_jvp
def cos(x: Float[Array, "..."]) -> Float[Array, "..."]:
    r""":math:`\cos x`; in float32 a vectorisable polynomial (as :func:`sin`), other dtypes
    ``jnp.cos``. Derivative: ``-sin``."""
    x = jnp.asarray(x)
    if x.dtype != jnp.float32:
        return jnp.cos(x)
    y, sign = _reduced(x)
    return sign * _horner(y * y, _COS_COEFFS)


sin.defjvp(lambda primals, tangents: (sin(primals[0]), cos(primals[0]) * tangents[0]))
cos.defjvp(lambda primals, tangents: (cos(primals[0]), -sin(primals[0]) * tangents[0]))
