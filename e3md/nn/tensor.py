r"""Tensor products of equivariant features: full Clebsch–Gordan (``Tensor``) and fused
(``FusedTensor``), e3x-compatible (constructor arguments, call signature, parameter trees).

Feature layout ``x[..., P, (L+1)**2, F]``: ``P = 1`` stores degree :math:`\ell` with parity
:math:`(-1)^\ell`; ``P = 2`` stores even parity in channel 0 and odd parity in channel 1.
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype
from jaxtyping import Array, Float

from e3md import so3
from e3md.nn import _flax

Dtype = Any
InitializerFn = Callable[..., Array]

# Standard deviation of a standard normal truncated to (-2, 2).
_TRUNCATED_NORMAL_STDDEV = 0.87962566103423978


# ----------------------------------------------------------------------------------------------
# Initialisers (same distributions, masks and variances as e3x, so the same key gives the same
# parameters).
# ----------------------------------------------------------------------------------------------


def _truncated_normal(key, shape, variance, dtype):
    dtype = jax.dtypes.canonicalize_dtype(dtype)
    stddev = jnp.sqrt(jnp.asarray(variance, dtype)) / jnp.array(_TRUNCATED_NORMAL_STDDEV, dtype)
    return stddev * jax.random.truncated_normal(key, -2, 2, shape, dtype)


def fused_tensor_normal(scale: Any = 1.0, mask: Any = True, dtype: Dtype = jnp.float32):
    """Initialiser factory for FusedTensor kernels: truncated normal with variance ``scale``,
    zero where ``mask`` is False."""

    def init(key, shape, dtype=dtype):
        return jnp.where(mask, _truncated_normal(key, shape, scale, dtype), 0).astype(dtype)

    return init


def _tensor_fans_and_mask(shape):
    """Fan-in per output (p3, l3), and the mask of parity/triangle-allowed coupling paths."""
    s1, n1, s2, n2, s3, n3, _ = shape

    def pld(num_parity, num_degree):
        if num_parity == 2:
            return [(p, l, p) for p in (0, 1) for l in range(num_degree)]
        return [(0, l, l % 2) for l in range(num_degree)]

    fan_in = np.zeros((1, 1, 1, 1, s3, n3, 1))
    mask = np.ones(shape[:-1] + (1,), dtype=bool)
    for p1, l1, d1 in pld(s1, n1):
        for p2, l2, d2 in pld(s2, n2):
            for p3, l3, d3 in pld(s3, n3):
                if (d1 + d2) % 2 != d3 or not abs(l1 - l2) <= l3 <= l1 + l2:
                    mask[p1, l1, p2, l2, p3, l3] = False
                else:
                    fan_in[0, 0, 0, 0, p3, l3] += 1
    return fan_in, mask


def tensor_lecun_normal(dtype: Dtype = jnp.float32) -> InitializerFn:
    """LeCun-normal initialiser for Tensor kernels (fan-in = number of allowed input paths)."""

    def init(key, shape, dtype=dtype):
        dtype = jax.dtypes.canonicalize_dtype(dtype)
        fan_in, mask = _tensor_fans_and_mask(tuple(shape))
        variance = jnp.asarray(1.0 / np.where(fan_in > 0, fan_in, 1.0), dtype)
        return jnp.where(mask, _truncated_normal(key, shape, variance, dtype), 0)

    return init


# ----------------------------------------------------------------------------------------------
# Shape checks and constant tables.
# ----------------------------------------------------------------------------------------------


def _max_degree_of(shape: tuple[int, ...], name: str) -> int:
    if len(shape) < 3:
        raise ValueError(f"{name} must have shape (..., P, (L+1)**2, F), received shape {shape}")
    if shape[-3] not in (1, 2):
        raise ValueError(f"axis -3 of {name} (parity) must be 1 or 2, received shape {shape}")
    degree = round(math.sqrt(shape[-2])) - 1
    if (degree + 1) ** 2 != shape[-2]:
        raise ValueError(
            f"axis -2 of {name} must have size (L+1)**2, received {shape[-2]} (shape {shape})"
        )
    return degree


def _degrees(max_degree: int) -> np.ndarray:
    return np.repeat(np.arange(max_degree + 1), 2 * np.arange(max_degree + 1) + 1)


@functools.cache
def _parity_indices(max_degree: int, parity: int) -> np.ndarray:
    """Indices of the entries of a ``(L+1)**2`` axis whose degree has the given parity (0/1)."""
    return np.nonzero(_degrees(max_degree) % 2 == parity)[0]


def _resolve_degrees(inputs1, inputs2, max_degree):
    l1 = _max_degree_of(inputs1.shape, "inputs1")
    l2 = _max_degree_of(inputs2.shape, "inputs2")
    l3 = max(l1, l2) if max_degree is None else max_degree
    if l3 < 0:
        raise ValueError(f"max_degree must be >= 0, received {l3}")
    if l3 > l1 + l2:
        raise ValueError(
            f"max_degree for the tensor product of inputs with max_degree {l1} and {l2} can be"
            f" at most {l1 + l2}, received max_degree={l3}"
        )
    if inputs1.shape[-1] != inputs2.shape[-1]:
        raise ValueError(
            "axis -1 (features) of inputs1 and inputs2 must have the same size, received shapes"
            f" {inputs1.shape} and {inputs2.shape}"
        )
    return l1, l2, l3


def _effective_pseudotensors(p1, p2, l1, l2, l3, include_pseudotensors):
    """As e3x: with P=1 inputs and any degree 0 no pseudotensor can arise, so P3 = 1."""
    if p1 == p2 == 1 and 0 in (l1, l2, l3):
        return False
    return include_pseudotensors


# ----------------------------------------------------------------------------------------------
# FusedTensor.
# ----------------------------------------------------------------------------------------------


def _split(x, w_even, w_odd, num_parity, max_degree):
    """Parity components of one input as ``(values, weights, basis column indices)`` or None.

    ``P = 2``: channel 0 (all degrees, weights ``w_even``) and channel 1 (``w_odd``).
    ``P = 1``: even degrees (``w_even`` rows) and odd degrees (``w_odd`` rows); only those
    columns of the change of basis are used, so no work is spent on masked zeros.
    """
    n = (max_degree + 1) ** 2
    if num_parity == 2:
        idx = np.arange(n)
        deg = _degrees(max_degree)
        return (x[..., 0, :, :], w_even[deg], idx), (x[..., 1, :, :], w_odd[deg], idx)
    x = x[..., 0, :, :]
    out = []
    for parity, w in ((0, w_even), (1, w_odd)):
        idx = _parity_indices(max_degree, parity)
        if idx.size == 0:
            out.append(None)
            continue
        sl = x if idx.size == n else _take_rows(x, idx, axis=-2)
        out.append((sl, w[_degrees(max_degree)[idx]], idx))
    return tuple(out)


def _take_rows(x, idx: np.ndarray, axis: int):
    """``jnp.take(x, idx, axis)`` for static, distinct ``idx``, as one ``lax.split`` of ``x``
    into contiguous pieces and one ``concatenate`` of the selected ones.

    The two are each other's transpose, so reverse mode stays a split and a concatenate; the
    transpose of a gather is a scatter-add, which XLA's CPU backend runs as a loop over rows
    (the backward of the degree-2 self-product spent most of its time in such loops).
    """
    axis = axis % x.ndim
    idx = np.asarray(idx)
    if np.unique(idx).size != idx.size:
        raise ValueError(f"_take_rows needs distinct indices, received {idx.tolist()}")
    # runs of consecutive indices; cut x at every run's start and end
    breaks = np.nonzero(np.diff(idx) != 1)[0] + 1
    runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(idx, breaks)]
    cuts = sorted({0, x.shape[axis], *(c for run in runs for c in run)})
    pieces = jax.lax.split(x, np.diff(cuts).tolist(), axis=axis)
    at = {c: k for k, c in enumerate(cuts)}
    return jnp.concatenate([p for a, b in runs for p in pieces[at[a] : at[b]]], axis=axis)


def _sparse_linear_map(vals, matrix: np.ndarray, axis_in: int):
    """``out[..., j, ...] = sum_k matrix[k, j] vals[..., k, ...]`` over the axis ``axis_in``,
    unrolled over the nonzero entries of the constant ``matrix`` (float64 NumPy).

    The change-of-basis tables are tiny and sparse (a few nonzeros per column), so instead of a
    ``dot_general`` (which on CPU moves the feature axis to the back and back again) the map is
    written as sums of constant-scaled slices, which XLA fuses with the neighbouring element-wise
    work (weights, products) into one loop. The input is cut with one ``lax.split`` and the
    output joined with one ``concatenate``: these two are each other's transpose, so the
    backward pass has the same fused form (slicing with ``lax.slice`` would transpose into a pad
    per slice, measured ~2x slower fwd+bwd), and forward mode works as well.
    """
    axis_in = axis_in % vals.ndim
    pieces = jax.lax.split(vals, [1] * vals.shape[axis_in], axis=axis_in)
    cols = []
    for j in range(matrix.shape[1]):
        acc = None
        for k in np.nonzero(matrix[:, j])[0]:
            c = float(matrix[k, j])
            term = pieces[k] if c == 1.0 else pieces[k] * jnp.asarray(c, vals.dtype)
            acc = term if acc is None else acc + term
        cols.append(jnp.zeros_like(pieces[0]) if acc is None else acc)
    return jnp.concatenate(cols, axis=axis_in)


def _linear_map(vals, matrix: np.ndarray, axis_in: int):
    return _sparse_linear_map(vals, matrix, axis_in)


# Contraction strategy, chosen by measurement (benchmarks/bench_tensor.py, 2-core CPU, f32,
# L=2, F=32, fwd+bwd vs e3x): "unrolled" (whole product as sparse scalar-by-slice arithmetic;
# 2.8-3.5x with P=1 inputs, but ~1.0x with P=2, where XLA's cost analysis counts 3.6x the FLOPs
# of "sparse"), "sparse" (unrolled change of basis, broadcast matrix product; 1.6-2.1x with P=2)
# or "dense" (einsum everywhere; 1.6-2.6x), or "coupling" (the exact coupling tensor over its
# nonzero entries; for degenerate products such as the per-edge ones of message passing it
# made the aspirin training step 1.45x faster than "unrolled"; fwd+bwd per edge with P=1,
# E=20000: 2.1-2.9x "unrolled" at L=1 (10 couplings), 0.9-1.2x at L=2 (83; and 2x the compile
# time with kernel gradients), 0.6x at L=3 (353)). None means: coupling for products with at
# most 3 x max(n1, n2, n3) couplings, else unrolled for P=1 inputs and sparse otherwise
# (_default_strategy).
_CONTRACTION: str | None = None


# Kernel rows of each factor of the FusedTensor's coupling tensor, in this order.
_KERNELS_1 = ("kernel_e1", "kernel_o1")
_KERNELS_2 = ("kernel_e2", "kernel_o2")
_KERNELS_3 = ("kernel_eee", "kernel_ooe", "kernel_eoo", "kernel_oeo")


@functools.cache
def _coupling_constants(p1, p2, l1, l2, l3, pseudo, cartesian_order):
    r"""The FusedTensor's coupling tensor as constants times kernel entries.

    Every entry ``i`` of input 1 is scaled by one row ``a(i)`` of ``kernel_e1``/``kernel_o1``
    (stacked: ``u1``), every entry ``j`` of input 2 by one row ``b(j)`` of ``kernel_e2``/
    ``kernel_o2`` (``u2``), and each coupling of ``(i, j)`` into output ``k`` runs through one
    path, weighted by one row ``c(i, j, k)`` of the output kernels (``u3``), so
    :math:`T_{ijkf} = C_{ijk}\, u1_{a(i) f}\, u2_{b(j) f}\, u3_{c(ijk) f}`. ``C`` and the
    maps are read off one float64 evaluation of the product (strategy "unrolled"/"sparse") on
    one-hot inputs, with one feature column of all-one kernels (``C``) and one per kernel row
    set to one and the other groups' kernels all one (the maps); the test suite checks ``T``
    against the product itself for random kernels.

    Returns:
      ``(C [n1, n2, n3] float64, a [n1], b [n2], c [n1, n2, n3])``.
    """
    rows = (2 * (l1 + 1), 2 * (l2 + 1), 4 * (l3 + 1))
    columns = 1 + sum(rows)
    kernels = {}
    start = 1
    for g, (names, degrees) in enumerate(((_KERNELS_1, l1), (_KERNELS_2, l2), (_KERNELS_3, l3))):
        u = np.ones((rows[g], columns))
        u[:, start : start + rows[g]] = np.eye(rows[g])
        start += rows[g]
        for k, name in enumerate(names):
            kernels[name] = u[k * (degrees + 1) : (k + 1) * (degrees + 1)]
    product = functools.partial(
        _one_hot_product,
        p1=p1,
        p2=p2,
        l1=l1,
        l2=l2,
        l3=l3,
        pseudo=pseudo,
        cartesian_order=cartesian_order,
        precision=jax.lax.Precision.HIGHEST,
    )
    # one compiled call in float64, evaluated now even when called while tracing
    with jax.ensure_compile_time_eval(), jax.enable_x64(True):
        t = np.asarray(jax.jit(product)(kernels), np.float64)
    n1, n2 = p1 * (l1 + 1) ** 2, p2 * (l2 + 1) ** 2
    t = t.reshape(n1, n2, -1, columns)
    constants = t[..., 0]
    support = np.abs(constants) > 1e-12
    t1, t2, t3 = np.split(np.abs(t[..., 1:]), np.cumsum(rows)[:2], axis=-1)
    a = t1.max(axis=(1, 2)).argmax(axis=-1)
    b = t2.max(axis=(0, 2)).argmax(axis=-1)
    c = t3.argmax(axis=-1)
    # each coupling must run through exactly the rows picked (true by the product's structure)
    for tg, picked in ((t1, a[:, None, None]), (t2, b[None, :, None]), (t3, c)):
        other = np.where(np.arange(tg.shape[-1]) == picked[..., None], 0.0, tg)
        if np.any(other[support] > 1e-12):
            raise RuntimeError("FusedTensor coupling does not factor over kernel rows")
    return np.where(support, constants, 0.0), a, b, c


def _coupling_support(p1, p2, l1, l2, l3, pseudo, cartesian_order) -> np.ndarray:
    """Nonzero pattern ``[n1, n2, n3]`` of the FusedTensor's bilinear coupling tensor."""
    return _coupling_constants(p1, p2, l1, l2, l3, pseudo, cartesian_order)[0] != 0


def _coupling_tensor(kernels, p1, p2, l1, l2, l3, pseudo, cartesian_order):
    """The coupling tensor ``T[n1, n2, n3, F]`` for these kernels (:func:`_coupling_constants`):
    constants times gathered kernel rows, a few element-wise operations."""
    c, a, b, k = _coupling_constants(p1, p2, l1, l2, l3, pseudo, cartesian_order)
    dtype = kernels["kernel_e1"].dtype

    def rows(names, idx):
        return jnp.take(jnp.concatenate([kernels[n] for n in names], axis=0), idx, axis=0)

    return (
        jnp.asarray(c, dtype)[..., None]
        * rows(_KERNELS_1, a)[:, None, None, :]
        * rows(_KERNELS_2, b)[None, :, None, :]
        * rows(_KERNELS_3, k.ravel()).reshape(*k.shape, -1)
    )


def _one_hot_product(kernels, p1, p2, l1, l2, l3, pseudo, cartesian_order, precision):
    """The product applied to every pair of one-hot inputs: ``T[i, j, P3, LM3, F]``."""
    n1, n2 = p1 * (l1 + 1) ** 2, p2 * (l2 + 1) ** 2
    dtype = kernels["kernel_e1"].dtype
    features = kernels["kernel_e1"].shape[-1]
    x = jnp.eye(n1, dtype=dtype).reshape(n1, 1, p1, (l1 + 1) ** 2, 1)
    y = jnp.eye(n2, dtype=dtype).reshape(1, n2, p2, (l2 + 1) ** 2, 1)
    ones = jnp.ones((1, 1, 1, 1, features), dtype)
    strategy = "unrolled" if p1 == p2 == 1 else "sparse"
    return fused_tensor_apply(
        x * ones, y * ones, kernels, l3, pseudo, cartesian_order, precision, _strategy=strategy
    )


def _default_strategy(p1, p2, l1, l2, l3, pseudo, cartesian_order) -> str:
    """ "coupling" when the product has few nonzero couplings (a degree-0 factor or output,
    or degree 1 throughout), else "unrolled" (P=1 inputs) / "sparse"."""
    n1, n2 = p1 * (l1 + 1) ** 2, p2 * (l2 + 1) ** 2
    n3 = (2 if pseudo else 1) * (l3 + 1) ** 2
    terms = int(_coupling_support(p1, p2, l1, l2, l3, pseudo, cartesian_order).sum())
    if terms <= 3 * max(n1, n2, n3):
        return "coupling"
    return "unrolled" if p1 == p2 == 1 else "sparse"


def coupling_form(kernels, p1, p2, l1, l2, max_degree, include_pseudotensors, cartesian_order):
    """The FusedTensor as its coupling tensor when its strategy is "coupling", else None.

    Returns:
      ``(t [n1, n2, n3, F], support [nnz, 3] of (i, j, k), (P3, (L3+1)**2))``: the product is
      ``z[k] = sum_{(i, j, k) in support} t[i, j, k] x1[i] x2[j]`` over flattened
      ``(P, LM)`` rows; or None.
    """
    l3 = max(l1, l2) if max_degree is None else max_degree
    pseudo = _effective_pseudotensors(p1, p2, l1, l2, l3, include_pseudotensors)
    strategy = _CONTRACTION or _default_strategy(p1, p2, l1, l2, l3, pseudo, cartesian_order)
    if strategy != "coupling":
        return None
    t = _coupling_tensor(kernels, p1, p2, l1, l2, l3, pseudo, cartesian_order)
    support = np.argwhere(_coupling_support(p1, p2, l1, l2, l3, pseudo, cartesian_order))
    return t, support, (2 if pseudo else 1, (l3 + 1) ** 2)


def _fused_coupling(inputs1, inputs2, kernels, l3, pseudo, cartesian_order):
    r"""FusedTensor as its bilinear coupling tensor over the nonzero couplings only.

    The product is bilinear with feature-wise weights:
    :math:`z_{kf} = \sum_{ij} T_{ijkf}\, x_{if}\, y_{jf}`. ``T`` is formed once per call (not
    per edge) from constants and kernel rows by a few element-wise products
    (:func:`_coupling_tensor`), and the work per edge or atom is one multiply-add pair per
    *nonzero* coupling -- e.g. 9 per feature for a degree-2 filter times a scalar, where the
    matrix form spends several times that on structurally zero blocks. Inputs are cut with one
    ``lax.split`` and the output joined with one ``concatenate`` (each other's transpose), so
    forward and backward passes fuse into element-wise loops.
    """
    p1, p2 = inputs1.shape[-3], inputs2.shape[-3]
    l1 = _max_degree_of(inputs1.shape, "inputs1")
    l2 = _max_degree_of(inputs2.shape, "inputs2")
    support = _coupling_support(p1, p2, l1, l2, l3, pseudo, cartesian_order)
    n1, n2, n3 = support.shape
    t = _coupling_tensor(kernels, p1, p2, l1, l2, l3, pseudo, cartesian_order)
    x = inputs1.reshape(*inputs1.shape[:-3], n1, inputs1.shape[-1])
    y = inputs2.reshape(*inputs2.shape[:-3], n2, inputs2.shape[-1])
    xs = jax.lax.split(x, [1] * n1, axis=x.ndim - 2)
    ys = jax.lax.split(y, [1] * n2, axis=y.ndim - 2)
    batch = jnp.broadcast_shapes(inputs1.shape[:-3], inputs2.shape[:-3])
    dtype = jnp.result_type(inputs1, inputs2, t)
    outs = []
    for k in range(n3):
        acc = None
        # group by the first factor: x_i * (sum_j T_ijk y_j)
        for i in range(n1):
            js = np.nonzero(support[i, :, k])[0]
            if js.size == 0:
                continue
            inner = None
            for j in js:
                term = ys[j] * t[i, j, k]
                inner = term if inner is None else inner + term
            term = xs[i] * inner
            acc = term if acc is None else acc + term
        if acc is None:
            acc = jnp.zeros((*batch, 1, x.shape[-1]), dtype)
        outs.append(jnp.broadcast_to(acc, (*batch, 1, x.shape[-1])))
    out = jnp.concatenate(outs, axis=-2)
    return out.reshape(*batch, 2 if pseudo else 1, (l3 + 1) ** 2, x.shape[-1])


def _fused_unrolled(inputs1, inputs2, kernels, l3, include_pseudotensors, basis):
    """FusedTensor as one element-wise graph over ``(..., 1, F)`` slices.

    Every stage (weights, change of basis, the four matrix products, change of basis back,
    output weights) is a sum of products of ``(..., 1, F)`` pieces with constant coefficients,
    visiting only the nonzero entries of the (sparse) basis tensor. Inputs are cut once with
    ``lax.split`` and the output joined once with ``concatenate`` (each other's transpose), so
    XLA fuses forward and backward passes into a few loops with no intermediate transposes.
    """
    p1, p2 = inputs1.shape[-3], inputs2.shape[-3]
    l1 = _max_degree_of(inputs1.shape, "inputs1")
    l2 = _max_degree_of(inputs2.shape, "inputs2")
    nm = basis.shape[0]
    dtype = jnp.result_type(inputs1, inputs2)

    def scaled(piece, c):
        return piece if c == 1.0 else piece * jnp.asarray(c, dtype)

    def lin(terms):
        acc = None
        for piece, c in terms:
            if piece is None:  # a structurally zero entry
                continue
            t = scaled(piece, c)
            acc = t if acc is None else acc + t
        return acc

    def to_matrix(comp):
        if comp is None:
            return None
        vals, w, idx = comp
        pieces = jax.lax.split(vals * w, [1] * vals.shape[-2], axis=vals.ndim - 2)
        mat = [[None] * nm for _ in range(nm)]
        for a in range(nm):
            for b in range(nm):
                col = basis[a, b, idx]
                mat[a][b] = lin([(pieces[k], float(col[k])) for k in np.nonzero(col)[0]])
        return mat

    def couple(x, y):
        if x is None or y is None:
            return None
        z = [[None] * nm for _ in range(nm)]
        for a in range(nm):
            for b in range(nm):
                terms = [
                    (x[a][c] * y[c][b], 1.0)
                    for c in range(nm)
                    if x[a][c] is not None and y[c][b] is not None
                ]
                z[a][b] = lin(terms)
        return z

    e1, o1 = _split(inputs1, kernels["kernel_e1"], kernels["kernel_o1"], p1, l1)
    e2, o2 = _split(inputs2, kernels["kernel_e2"], kernels["kernel_o2"], p2, l2)
    x_e, x_o, y_e, y_o = (to_matrix(c) for c in (e1, o1, e2, o2))
    deg3 = _degrees(l3)

    def project(paths, n):
        """Output entry n: sum over paths of w_path[l(n)] * <B[:, :, n], Z_path>."""
        acc = None
        for z, w in paths:
            if z is None:
                continue
            col = basis[:, :, n]
            v = lin([(z[a][b], float(col[a, b])) for a, b in zip(*np.nonzero(col), strict=True)])
            if v is None:
                continue
            v = v * w[deg3[n]]
            acc = v if acc is None else acc + v
        return acc

    zs = [couple(x_e, y_e), couple(x_o, y_o), couple(x_e, y_o), couple(x_o, y_e)]
    even_paths = [(zs[0], kernels["kernel_eee"]), (zs[1], kernels["kernel_ooe"])]
    odd_paths = [(zs[2], kernels["kernel_eoo"]), (zs[3], kernels["kernel_oeo"])]
    batch = jnp.broadcast_shapes(inputs1.shape[:-3], inputs2.shape[:-3])
    zero = jnp.zeros((*batch, 1, inputs1.shape[-1]), dtype)

    def channel(paths, keep):
        outs = []
        for n in range(deg3.size):
            v = project(paths, n) if keep(n) else None
            outs.append(zero if v is None else v)
        return jnp.concatenate(outs, axis=-2)

    if include_pseudotensors:
        even = channel(even_paths, lambda n: True)
        odd = channel(odd_paths, lambda n: True)
        return jnp.stack([even, odd], axis=-3)
    outs = []
    for n in range(deg3.size):
        v = project(even_paths if deg3[n] % 2 == 0 else odd_paths, n)
        outs.append(zero if v is None else v)
    return jnp.concatenate(outs, axis=-2)[..., None, :, :]


def fused_tensor_apply(
    inputs1: Float[Array, "... P1 LM1 F"],
    inputs2: Float[Array, "... P2 LM2 F"],
    kernels: dict[str, Float[Array, "Ldeg F"]],
    max_degree: int,
    include_pseudotensors: bool,
    cartesian_order: bool = True,
    precision: Any = None,
    _strategy: str | None = None,
) -> Float[Array, "... P3 LM3 F"]:
    r"""Pure function behind :class:`FusedTensor` (see there for the math).

    Args:
      inputs1: first factor, ``(..., P1, (L1+1)**2, F)``.
      inputs2: second factor, ``(..., P2, (L2+1)**2, F)``.
      kernels: e3x's eight kernels ``kernel_e1, kernel_o1`` (``(L1+1, F)``), ``kernel_e2,
        kernel_o2`` (``(L2+1, F)``), ``kernel_eee, kernel_ooe, kernel_eoo, kernel_oeo``
        (``(L3+1, F)``).
      max_degree: output degree :math:`L_3` (already resolved).
      include_pseudotensors: effective flag (already resolved, see e3x's rule).
      cartesian_order: Cartesian order of the irreps.
      precision: ``jax.lax.Precision`` of the contractions.

    Returns:
      ``(..., P3, (L3+1)**2, F)`` with ``P3 = 2`` if ``include_pseudotensors`` else 1.

    The product itself is jitted on its own, with the contraction strategy resolved here
    (outside, so that changing ``_CONTRACTION`` takes effect): the unrolled product is hundreds
    of operations, and a function traced several times (an MD step, its initial forces, its
    energy report) then traces each product once per shape instead of once per trace (~0.3-0.5 s
    less per trace of a model; XLA inlines the call, the compiled program is the same).
    """
    p1, p2 = inputs1.shape[-3], inputs2.shape[-3]
    l1 = _max_degree_of(inputs1.shape, "inputs1")
    l2 = _max_degree_of(inputs2.shape, "inputs2")
    strategy = (
        _strategy
        or _CONTRACTION
        or _default_strategy(p1, p2, l1, l2, max_degree, include_pseudotensors, cartesian_order)
    )
    return _fused_tensor_jit(
        inputs1,
        inputs2,
        kernels,
        max_degree,
        include_pseudotensors,
        cartesian_order,
        precision,
        strategy,
    )


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _fused_tensor_jit(
    inputs1, inputs2, kernels, l3, include_pseudotensors, cartesian_order, precision, strategy
):
    """:func:`fused_tensor_apply` with the output degree and strategy resolved (static)."""
    p1, p2 = inputs1.shape[-3], inputs2.shape[-3]
    l1 = _max_degree_of(inputs1.shape, "inputs1")
    l2 = _max_degree_of(inputs2.shape, "inputs2")
    lmax = max(l1, l2, l3)
    dtype = inputs1.dtype
    with jax.ensure_compile_time_eval():
        basis = np.asarray(so3.matrix_basis(lmax, cartesian_order=cartesian_order))

    def const(idx):
        return jnp.asarray(basis[:, :, idx], dtype)

    nm = basis.shape[0]
    if strategy == "coupling":
        return _fused_coupling(
            inputs1, inputs2, kernels, l3, include_pseudotensors, cartesian_order
        )
    if strategy == "unrolled":
        return _fused_unrolled(inputs1, inputs2, kernels, l3, include_pseudotensors, basis)

    def to_matrix(comp):
        if comp is None:
            return None
        vals, w, idx = comp
        # Weight application fused into the change of basis: one contraction per component.
        if strategy == "sparse":
            flat = _linear_map(vals * w, basis[:, :, idx].reshape(nm * nm, -1).T, -2)
            return flat.reshape(*flat.shape[:-2], nm, nm, flat.shape[-1])
        return jnp.einsum("...kf,abk->...abf", vals * w, const(idx), precision=precision)

    def couple(a, b):
        if a is None or b is None:
            return None
        # (2l~+1)^3 multiply-adds per feature: broadcast-multiply + reduce fuses in XLA and
        # keeps the feature axis contiguous (measured faster than a batched dot_general).
        return jnp.sum(a[..., :, :, None, :] * b[..., None, :, :, :], axis=-3)

    e1, o1 = _split(inputs1, kernels["kernel_e1"], kernels["kernel_o1"], p1, l1)
    e2, o2 = _split(inputs2, kernels["kernel_e2"], kernels["kernel_o2"], p2, l2)
    x_e, x_o, y_e, y_o = (to_matrix(c) for c in (e1, o1, e2, o2))

    deg3 = _degrees(l3)
    n3 = (l3 + 1) ** 2
    if include_pseudotensors:
        even_idx = odd_idx = np.arange(n3)
    else:  # Only even degrees of the even output and odd degrees of the odd output are kept.
        even_idx, odd_idx = _parity_indices(l3, 0), _parity_indices(l3, 1)

    def to_vector(paths, idx):
        """sum_p w_p * B^T Z_p restricted to output entries idx; None if nothing contributes."""
        paths = [(z, w) for z, w in paths if z is not None]
        if not paths or idx.size == 0:
            return None
        if strategy == "sparse":
            m = basis[:, :, idx].reshape(nm * nm, -1)
            out = None
            for z, w in paths:
                zf = z.reshape(*z.shape[:-3], nm * nm, z.shape[-1])
                v = _linear_map(zf, m, -2) * w[deg3[idx]]
                out = v if out is None else out + v
            return out
        b = const(idx)
        if len(paths) == 1:
            z, w = paths[0]
            return jnp.einsum("...abf,abk->...kf", z, b, precision=precision) * w[deg3[idx]]
        zs = jnp.stack([z for z, _ in paths], axis=-4)
        ws = jnp.stack([w[deg3[idx]] for _, w in paths], axis=0)
        v = jnp.einsum("...pabf,abk->...pkf", zs, b, precision=precision)
        return jnp.sum(v * ws, axis=-3)

    even = to_vector(
        [(couple(x_e, y_e), kernels["kernel_eee"]), (couple(x_o, y_o), kernels["kernel_ooe"])],
        even_idx,
    )
    odd = to_vector(
        [(couple(x_e, y_o), kernels["kernel_eoo"]), (couple(x_o, y_e), kernels["kernel_oeo"])],
        odd_idx,
    )
    batch = jnp.broadcast_shapes(inputs1.shape[:-3], inputs2.shape[:-3])
    features = inputs1.shape[-1]

    def full(v, idx):
        return jnp.zeros((*batch, idx.size, features), dtype) if v is None else v

    even, odd = full(even, even_idx), full(odd, odd_idx)
    if include_pseudotensors:
        return jnp.stack([even, odd], axis=-3)
    # Interleave even and odd degrees back into the (L+1)**2 order.
    order = np.argsort(np.concatenate([even_idx, odd_idx]), kind="stable")
    merged = jnp.concatenate([even, odd], axis=-2)
    if not np.array_equal(order, np.arange(n3)):
        merged = _take_rows(merged, order, axis=-2)
    return merged[..., None, :, :]


class FusedTensor(nn.Module):
    r"""Fused tensor product of two equivariant features (e3x's ``FusedTensor``).

    Inputs :math:`\mathbf x \in \mathbb R^{P_1\times(L_1+1)^2\times F}`,
    :math:`\mathbf y \in \mathbb R^{P_2\times(L_2+1)^2\times F}`; output
    :math:`\mathbf z \in \mathbb R^{P_3\times(L_3+1)^2\times F}`. With
    :math:`\tilde\ell = \lceil\max(L_1,L_2,L_3)/2\rceil` and the change of basis
    :math:`B_{\tilde m\tilde m'}^{\ell m} = C^{\ell m}_{\tilde\ell\tilde m\tilde\ell\tilde m'}`
    (:func:`e3md.so3.matrix_basis`):

    .. math::
        X^{(\pm)} = \sum_{\ell m} w^{x\pm}_{\ell} \, x^{(\pm)}_{\ell m} B^{\ell m},\qquad
        Y^{(\pm)} = \sum_{\ell m} w^{y\pm}_{\ell} \, y^{(\pm)}_{\ell m} B^{\ell m},

        z^{(+)}_{\ell m} = w^{++}_\ell\langle B^{\ell m}, X^{(+)}Y^{(+)}\rangle
                          + w^{--}_\ell\langle B^{\ell m}, X^{(-)}Y^{(-)}\rangle,\quad
        z^{(-)}_{\ell m} = w^{+-}_\ell\langle B^{\ell m}, X^{(+)}Y^{(-)}\rangle
                          + w^{-+}_\ell\langle B^{\ell m}, X^{(-)}Y^{(+)}\rangle,

    with feature-wise weights (``kernel_e1, kernel_o1, kernel_e2, kernel_o2, kernel_eee,
    kernel_ooe, kernel_eoo, kernel_oeo``, shapes ``(L+1, F)``) and matrix products per feature.
    With ``P = 1`` inputs the parity components are the even/odd degrees. Work that is
    provably zero or discarded is skipped rather than masked: only the occupied columns of
    :math:`B` are contracted, products with an absent component are not formed, and without
    pseudotensors only the even (odd) degrees of the even (odd) products are projected out.

    Attributes:
      max_degree: output degree :math:`L_3`; default :math:`\max(L_1, L_2)`.
      include_pseudotensors: if False the output has ``P3 = 1`` (even degrees from the even
        products, odd degrees from the odd products). Also ``P3 = 1`` when both inputs have
        ``P = 1`` and any degree is 0 (no pseudotensor can arise), as in e3x.
      cartesian_order: Cartesian order of the irreps (e3x default).
      dtype: computation dtype (default: promoted from inputs and parameters).
      param_dtype: parameter dtype.
      precision: ``jax.lax.Precision`` of the contractions.
      kernel_init: factory ``(scale, mask) -> initializer`` (e3x's ``FusedTensorInitializerFn``).
    """

    max_degree: int | None = None
    include_pseudotensors: bool = True
    cartesian_order: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: Callable[..., InitializerFn] = fused_tensor_normal

    @nn.compact
    def __call__(
        self,
        inputs1: Float[Array, "... P1 LM1 F"],
        inputs2: Float[Array, "... P2 LM2 F"],
    ) -> Float[Array, "... P3 LM3 F"]:
        """Fused tensor product of ``inputs1`` and ``inputs2``.

        Raises:
          ValueError: on malformed shapes, unequal feature counts, or
            ``max_degree > L1 + L2``.
        """
        l1, l2, l3 = _resolve_degrees(inputs1, inputs2, self.max_degree)
        p1, p2 = inputs1.shape[-3], inputs2.shape[-3]
        features = inputs1.shape[-1]
        pseudo = _effective_pseudotensors(p1, p2, l1, l2, l3, self.include_pseudotensors)

        # Initialisation scales and masks exactly as e3x (parameters that can never act are 0).
        lm = math.ceil(max(l1, l2, l3) / 2)
        even = ((np.arange(max(l1, l2, l3) + 1) + 1) % 2).astype(bool)[:, None]
        mask_e1 = True if p1 == 2 else even[: l1 + 1]
        mask_o1 = True if p1 == 2 else ~even[: l1 + 1]
        mask_e2 = True if p2 == 2 else even[: l2 + 1]
        mask_o2 = True if p2 == 2 else ~even[: l2 + 1]
        mask_o3 = np.arange(l3 + 1)[:, None] > 0 if p1 == p2 == 1 else True
        num_mat = 2 * lm + 1
        var_in = 1.0 / math.sqrt(num_mat)  # same float operations as e3x: same init values
        var_in *= num_mat / min(l1 + 1, l2 + 1)
        if p1 == p2 == 2:
            var_out: Any = 0.5
        elif p1 == p2 == 1 and l1 > 0 and l2 > 0:
            var_out = np.where(np.arange(l3 + 1)[:, None] == 0, 1.0, 2.0)
        else:
            var_out = 1.0

        def param(name, scale, mask, rows):
            init = self.kernel_init(scale, mask)
            return _flax.param(self, name, init, (rows, features), self.param_dtype)

        kernels = {
            "kernel_e1": param("kernel_e1", var_in, mask_e1, l1 + 1),
            "kernel_o1": param("kernel_o1", var_in, mask_o1, l1 + 1),
            "kernel_e2": param("kernel_e2", var_in, mask_e2, l2 + 1),
            "kernel_o2": param("kernel_o2", var_in, mask_o2, l2 + 1),
            "kernel_eee": param("kernel_eee", var_out, True, l3 + 1),
            "kernel_ooe": param("kernel_ooe", var_out, True, l3 + 1),
            "kernel_eoo": param("kernel_eoo", var_out, mask_o3, l3 + 1),
            "kernel_oeo": param("kernel_oeo", var_out, mask_o3, l3 + 1),
        }
        names = list(kernels)
        inputs1, inputs2, *vals = promote_dtype(
            inputs1, inputs2, *kernels.values(), dtype=self.dtype
        )
        kernels = dict(zip(names, vals, strict=True))
        return fused_tensor_apply(
            inputs1,
            inputs2,
            kernels,
            max_degree=l3,
            include_pseudotensors=pseudo,
            cartesian_order=self.cartesian_order,
            precision=self.precision,
        )


# ----------------------------------------------------------------------------------------------
# Tensor (full Clebsch-Gordan product).
# ----------------------------------------------------------------------------------------------


def _parity_blocks(num_parity: int, max_degree: int) -> list[tuple[int, int, int]]:
    """``(channel, degree, parity)`` of every irrep block of a feature array."""
    if num_parity == 2:
        return [(p, l, p) for p in (0, 1) for l in range(max_degree + 1)]
    return [(0, l, l % 2) for l in range(max_degree + 1)]


def tensor_apply(
    inputs1: Float[Array, "... P1 LM1 F"],
    inputs2: Float[Array, "... P2 LM2 F"],
    kernel: Float[Array, "P1 D1 P2 D2 P3 D3 F"],
    max_degree: int,
    include_pseudotensors: bool,
    cartesian_order: bool = True,
    precision: Any = None,
) -> Float[Array, "... P3 LM3 F"]:
    r"""Pure function behind :class:`Tensor`: one CG contraction per allowed input-block pair.

    Only parity- and triangle-allowed coupling paths are evaluated (e3x masks the others
    instead): for each pair of input blocks :math:`(a_\alpha, b_\beta)` the output parity
    :math:`\gamma = \alpha\beta` is fixed, so the pair is contracted once with the CG columns of
    the allowed output degrees, then weighted per path and feature.
    """
    p1, p2 = inputs1.shape[-3], inputs2.shape[-3]
    l1 = _max_degree_of(inputs1.shape, "inputs1")
    l2 = _max_degree_of(inputs2.shape, "inputs2")
    l3 = max_degree
    p3 = 2 if include_pseudotensors else 1
    dtype = jnp.result_type(inputs1, inputs2, kernel)
    with jax.ensure_compile_time_eval():
        cg = np.asarray(so3.clebsch_gordan(l1, l2, l3, cartesian_order=cartesian_order))
    terms: dict[tuple[int, int], list] = {}
    for c1, a, d1 in _parity_blocks(p1, l1):
        xa = inputs1[..., c1, a * a : (a + 1) ** 2, :]
        for c2, b, d2 in _parity_blocks(p2, l2):
            d3 = (d1 + d2) % 2
            out_degrees = [
                c
                for c in range(abs(a - b), min(a + b, l3) + 1)
                if p3 == 2 or c % 2 == d3  # P3 = 1 holds parity (-1)^c at degree c
            ]
            if not out_degrees:
                continue
            c3 = d3 if p3 == 2 else 0
            cols = np.concatenate([np.arange(c * c, (c + 1) ** 2) for c in out_degrees])
            coeff = jnp.asarray(cg[a * a : (a + 1) ** 2, b * b : (b + 1) ** 2][:, :, cols], dtype)
            yb = inputs2[..., c2, b * b : (b + 1) ** 2, :]
            u = jnp.einsum("...if,...jf,ijk->...kf", xa, yb, coeff, precision=precision)
            start = 0
            for c in out_degrees:
                width = 2 * c + 1
                w = kernel[c1, a, c2, b, c3, c, :]
                terms.setdefault((c3, c), []).append(u[..., start : start + width, :] * w)
                start += width
    batch = jnp.broadcast_shapes(inputs1.shape[:-3], inputs2.shape[:-3])
    features = inputs1.shape[-1]
    channels = []
    for c3 in range(p3):
        blocks = []
        for c in range(l3 + 1):
            ts = terms.get((c3, c))
            if ts:
                blocks.append(functools.reduce(jnp.add, ts))
            else:
                blocks.append(jnp.zeros((*batch, 2 * c + 1, features), dtype))
        channels.append(jnp.concatenate(blocks, axis=-2))
    return jnp.stack(channels, axis=-3)


class Tensor(nn.Module):
    r"""Tensor product with one learnable weight per coupling path and feature (e3x's
    ``Tensor``).

    .. math::
        \mathbf z^{(c_\gamma)} = \sum_{(a_\alpha, b_\beta)} \mathbf w_{(a_\alpha,b_\beta,c_\gamma)}
        \circ \left(\mathbf x^{(a_\alpha)} \otimes^{(c_\gamma)} \mathbf y^{(b_\beta)}\right),
        \qquad (x\otimes^{(c)}y)_{m_3} = \sum_{m_1 m_2} C^{c m_3}_{a m_1 b m_2} x_{m_1} y_{m_2}

    over all paths with :math:`|a-b| \le c \le a+b` and :math:`\gamma = \alpha\beta`. The
    kernel has shape ``(P1, L1+1, P2, L2+1, P3, L3+1, F)`` (entries of forbidden paths are
    initialised to zero and never read).

    Attributes:
      max_degree: output degree :math:`L_3`; default :math:`\max(L_1, L_2)`.
      include_pseudotensors: if False, paths producing pseudotensors are omitted (``P3 = 1``).
        Also ``P3 = 1`` when both inputs have ``P = 1`` and any degree is 0, as in e3x.
      cartesian_order: Cartesian order of the irreps (e3x default).
      dtype: computation dtype.
      param_dtype: parameter dtype.
      precision: ``jax.lax.Precision`` of the contractions.
      kernel_init: initialiser of the kernel (default: LeCun normal over allowed paths).
    """

    max_degree: int | None = None
    include_pseudotensors: bool = True
    cartesian_order: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: InitializerFn = tensor_lecun_normal()

    @nn.compact
    def __call__(
        self,
        inputs1: Float[Array, "... P1 LM1 F"],
        inputs2: Float[Array, "... P2 LM2 F"],
    ) -> Float[Array, "... P3 LM3 F"]:
        """Tensor product of ``inputs1`` and ``inputs2``.

        Raises:
          ValueError: on malformed shapes, unequal feature counts, or
            ``max_degree > L1 + L2``.
        """
        l1, l2, l3 = _resolve_degrees(inputs1, inputs2, self.max_degree)
        p1, p2 = inputs1.shape[-3], inputs2.shape[-3]
        pseudo = _effective_pseudotensors(p1, p2, l1, l2, l3, self.include_pseudotensors)
        shape = (p1, l1 + 1, p2, l2 + 1, 2 if pseudo else 1, l3 + 1, inputs1.shape[-1])
        kernel = _flax.param(self, "kernel", self.kernel_init, shape, self.param_dtype)
        (kernel,) = promote_dtype(kernel, dtype=self.dtype)
        return tensor_apply(
            inputs1,
            inputs2,
            kernel,
            max_degree=l3,
            include_pseudotensors=pseudo,
            cartesian_order=self.cartesian_order,
            precision=self.precision,
        )
