r"""Edge vectors :math:`\mathbf r_{ij}` from positions and neighbour lists (jit-friendly).

Convention (CONTRIBUTING): in a jax-md ``Sparse`` neighbour list ``idx[0]`` is the receiver
:math:`i` (``dst``) and ``idx[1]`` the sender :math:`j` (``src``); padded edges hold the index
``N``. The edge vector points from receiver to sender,
:math:`\mathbf r_{ij} = \mathbf R_j - \mathbf R_i` (plus a periodic shift), i.e.
``displacement_fn(R[j], R[i])`` in jax-md's convention ``displacement_fn(Ra, Rb) = Ra - Rb``.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

__all__ = [
    "edge_vectors",
    "edge_vectors_from_shifts",
    "row_edge_vectors",
    "rows_to_edge_index",
    "take_rows",
]


def take_rows(x: Float[Array, "N C"], idx: Int[Array, " E"]) -> Float[Array, "E C"]:
    """``x[idx]`` for indices in ``[0, N)``. Inside
    :func:`e3md.nn.cpu_kernels.reverse_mode_only` on the CPU its reverse mode, the sum of the
    ``E`` cotangent rows per index, is e3md's kernel
    (:func:`e3md.nn.cpu_kernels.gather_kernel`) instead of XLA's scatter-add, which runs one
    row at a time; the same function, and its own derivative is XLA's."""
    from e3md.nn import cpu_kernels

    kernel = cpu_kernels.gather_kernel(columns=x.shape[-1], dtype=x.dtype) if x.ndim == 2 else None
    if kernel is None:
        return x[idx]

    def gather(x):
        return x[idx]

    def backward(args, g):
        return (kernel.backward(idx, g, x.shape[0]),)

    def reference_backward(args, g):
        return jax.vjp(gather, *args)[1](g)

    return cpu_kernels.with_reference_derivative(gather, backward, reference_backward)(x)


def edge_vectors(
    displacement_fn: Any,
    R: Float[Array, "N 3"],
    idx: Int[Array, "2 E"],
    **kwargs: Any,
) -> tuple[Float[Array, "E 3"], Int[Array, " E"], Int[Array, " E"], Bool[Array, " E"]]:
    r"""Edge vectors of a jax-md Sparse neighbour list.

    Args:
      displacement_fn: jax-md displacement function ``(Ra, Rb, **kwargs) -> Ra - Rb`` (Å),
        for a single pair; it is vmapped over edges here.
      R: positions ``[N, 3]`` (Å, or fractional if the space uses fractional coordinates).
      idx: neighbour indices ``[2, E]``: receivers in row 0, senders in row 1, padding ``N``.
      **kwargs: forwarded to ``displacement_fn`` (``box=``, ``perturbation=``, ...).

    Returns:
      ``(r_ij, src, dst, edge_mask)``: edge vectors ``R_src - R_dst`` in Å ``[E, 3]`` (zero for
      padded edges), sender and receiver indices (padding kept as ``N``), and the mask of real
      edges.
    """
    N = R.shape[0]
    dst, src = idx[0], idx[1]
    mask = (src < N) & (dst < N)
    sc = jnp.where(mask, src, 0)
    dc = jnp.where(mask, dst, 0)
    disp = jax.vmap(lambda a, b: displacement_fn(a, b, **kwargs))
    r = disp(R[sc], R[dc])
    r = jnp.where(mask[:, None], r, jnp.zeros((), r.dtype))
    return r, src, dst, mask


def row_edge_vectors(
    displacement_fn: Any,
    R: Float[Array, "N 3"],
    idx: Int[Array, "N M"],
    **kwargs: Any,
) -> tuple[Float[Array, "E 3"], Int[Array, " E"], Int[Array, " E"], Bool[Array, " E"]]:
    """:func:`edge_vectors` of a jax-md ``Dense`` list ``idx[N, M]`` (senders of receiver ``i``
    in row ``i``, padding ``N``; any index outside ``[0, N)`` is padding), edges receiver-major
    as :func:`rows_to_edge_index` orders them: the same results.

    Each receiver's position is broadcast along its row instead of gathered per edge, so the
    reverse pass sums it over the row instead of scattering ``E`` vectors; the senders'
    positions are gathered with :func:`take_rows`. Inside
    :func:`e3md.nn.cpu_kernels.reverse_mode_only` on the CPU, for the spaces of
    :mod:`e3md.space` called without keyword arguments (``displacement_fn`` has a
    ``minimum_image_transform``), the edge vectors and their reverse mode are each one call of
    e3md's kernel (:func:`e3md.nn.cpu_kernels.edge_kernel`) instead, whose own derivative is
    this XLA formulation's."""
    n, m = idx.shape
    src = idx.reshape(-1)
    dst = jnp.repeat(jnp.arange(n, dtype=idx.dtype), m)
    mask = (src >= 0) & (src < n)

    def reference(R):
        receivers = jnp.broadcast_to(R[:, None, :], (n, m, R.shape[-1])).reshape(n * m, -1)
        disp = jax.vmap(lambda a, b: displacement_fn(a, b, **kwargs))
        r = disp(take_rows(R, jnp.where(mask, src, 0)), receivers)
        return jnp.where(mask[:, None], r, jnp.zeros((), r.dtype))

    r = None if kwargs else _kernel_row_edge_vectors(displacement_fn, R, idx, reference)
    return (reference(R) if r is None else r), src, dst, mask


def _kernel_row_edge_vectors(displacement_fn, R, idx, reference):
    """:func:`row_edge_vectors`' edge vectors through e3md's kernel, or None where it cannot
    be used (a displacement without ``minimum_image_transform``, a traced box, not 3-D, or a
    result whose dtype is not the positions')."""
    from e3md.nn import cpu_kernels

    transform = getattr(displacement_fn, "minimum_image_transform", None)
    ab = None if transform is None or R.shape[-1] != 3 else transform(3)
    kernel = None if ab is None else cpu_kernels.edge_kernel(rows=idx.shape[1], dtype=R.dtype)
    if kernel is None or jax.eval_shape(reference, R).dtype != R.dtype:  # a float64 box promotes
        return None
    a, b = (np.asarray(x, R.dtype) for x in ab)  # constants (a jnp array may be a tracer)

    def backward(args, g):
        return (kernel.backward(idx, g),)

    def reference_backward(args, g):
        return jax.vjp(reference, *args)[1](g)

    forward = cpu_kernels.with_reference_derivative(
        lambda R: kernel.forward(R, idx, a, b), backward, reference_backward
    )
    return forward(R)


def rows_to_edge_index(idx: Int[Array, "N M"]) -> Int[Array, "2 E"]:
    """The edges of a jax-md ``Dense`` list ``idx[N, M]`` (senders of receiver ``i`` in row
    ``i``, padding ``N``) in the Sparse form ``[2, N * M]`` that :func:`edge_vectors` takes:
    receivers in row 0 (``e // M``), senders in row 1; padding slots keep the sender ``N``.
    The edges stay receiver-major (edge ``e`` is slot ``e % M`` of row ``e // M``)."""
    n, m = idx.shape
    receivers = jnp.repeat(jnp.arange(n, dtype=idx.dtype), m)
    return jnp.stack([receivers, idx.reshape(-1)])


def edge_vectors_from_shifts(
    R: Float[Array, "N 3"],
    src: Int[Array, " E"],
    dst: Int[Array, " E"],
    shifts: Float[Array, "E 3"] | None = None,
    cell: Float[Array, "3 3"] | None = None,
) -> Float[Array, "E 3"]:
    r"""Edge vectors :math:`\mathbf R_{src} - \mathbf R_{dst} + \mathbf s\,\mathbf C` (Å).

    For neighbour lists that give explicit periodic image shifts (ASE, vesin, matscipy): the
    sender's image is displaced by integer lattice shifts ``shifts`` (rows of ``cell`` are lattice
    vectors, ASE convention). Out-of-range (padding) indices are clamped; mask them downstream.
    The positions are gathered with :func:`take_rows` (inside
    :func:`e3md.nn.cpu_kernels.reverse_mode_only`, as the ASE calculator and the OpenMM force
    call it, the forces' sums per atom are e3md's kernel).

    Args:
      R: positions ``[N, 3]`` in Å.
      src: sender indices ``[E]``.
      dst: receiver indices ``[E]``.
      shifts: integer image shifts ``[E, 3]`` (or None for free space).
      cell: ASE cell ``[3, 3]``, lattice vectors as rows, Å.

    Returns:
      ``[E, 3]`` edge vectors in Å.
    """
    N = R.shape[0]
    r = take_rows(R, jnp.clip(src, 0, N - 1)) - take_rows(R, jnp.clip(dst, 0, N - 1))
    if shifts is not None:
        if cell is None:
            raise ValueError("shifts given without a cell")
        r = r + jnp.asarray(shifts, R.dtype) @ jnp.asarray(cell, R.dtype)
    return r
