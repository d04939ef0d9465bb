r"""Message passing over a symmetric neighbour list in receiver-major rows, with a reverse-mode
rule that uses the symmetry (the evaluation path of :class:`e3md.nn.MessagePass` with
``symmetric=True``).

Layout: ``adj_idx[N, M]`` lists the senders :math:`j` of receiver :math:`i` in row :math:`i`
(padding slots carry weight 0). *Symmetric* means: the edge :math:`i \leftarrow j` is in the
list iff :math:`j \leftarrow i` is, with the same weight and the reversed vector, so its basis
rows are those of :math:`j \leftarrow i` times :math:`(-1)^\ell` (spherical harmonics:
:math:`Y_{\ell m}(-\hat r) = (-1)^\ell Y_{\ell m}(\hat r)`). Full neighbour lists (jax-md's,
vesin's with both directions) are symmetric; half lists are not.

Why: the messages :math:`m_i = \sum_j w_{ij}\, T(f(b_{ij}), x_j)` gather the senders' features
per edge, so reverse mode would scatter-add rows of :math:`P (L+1)^2 F` values back into the
senders -- on CPU a loop over rows, most of the time of energy + forces (BENCHMARKS.md,
"session 6"). With a symmetric list the cotangent of :math:`x_j` is a sum over atom
:math:`j`'s own row,

.. math::
    \bar x_j = \sum_{i \in \mathcal N(j)} w_{ji}\,
      \partial_{x} T\big(\sigma f(b_{ji}), x\big)^{\!\top} \bar m_i,
    \qquad \sigma = (-1)^\ell \text{ on the filter rows},

which gathers only the receivers' cotangents :math:`\bar m_i` and reduces over the row: no
scatter. Everything runs over blocks of atoms (``lax.scan``), recomputing per block what the
backward pass needs, so memory stays O(N + block). The rule is reverse-mode only
(``jax.custom_vjp``); ``jax.jvp``/``jax.hessian`` need the edge-list path.

Two implementations of the same rule: :func:`coupling_row_messages` for a factored basis and a
FusedTensor evaluated as its coupling tensor (the last message pass of the e3md model: every
step written out, vectorised over the nonzero couplings, minor-axis sums as products with a
ones vector; on CPU compiled kernels, :func:`e3md.nn.cpu_kernels.rows_kernel`, evaluate it and
this XLA formulation is their derivative), and
:func:`generic_row_messages` for any filter and product (built from ``jax.vjp`` of the
per-block function).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from e3md.nn import cpu_kernels
from e3md.nn.tensor import _degrees

__all__ = ["coupling_row_messages", "generic_row_messages"]


def degree_signs(num_rows: int) -> np.ndarray:
    """:math:`(-1)^\\ell` for the rows ``lm`` of a ``(L+1)**2`` axis."""
    return (-1.0) ** _degrees(round(np.sqrt(num_rows)) - 1)


def blocks(a, size: int, fill=0):
    """``[N, ...]`` -> ``[ceil(N / size), size, ...]``, the last block padded with ``fill``
    (the blocks of a ``lax.scan`` over edges or atoms)."""
    n = a.shape[0]
    count = -(-n // size)
    a = jnp.pad(a, [(0, count * size - n)] + [(0, 0)] * (a.ndim - 1), constant_values=fill)
    return a.reshape(count, size, *a.shape[1:])


def _unblock(a, n: int):
    return a.reshape(-1, *a.shape[2:])[:n]


def generic_row_messages(
    params, inputs, basis, weights, adj_idx, *, filters, product, atoms_per_block
):
    r"""``m[N, P3, LM3, F]`` for any linear-per-degree ``filters`` and bilinear ``product``.

    Args:
      params: pytree the two functions take first (its cotangent is returned).
      inputs: ``x[N, P, LM, F]``.
      basis: pytree of per-slot arrays ``[N, M, ...]``.
      weights: ``[N, M]``, zero on padding slots.
      adj_idx: ``[N, M]`` senders (any index on padding slots).
      filters: ``(params, basis_block) -> [B, M, 1, LMb, F]``, linear per degree (so that the
        reversed edge's filter is the signed one).
      product: ``(params, filters, x_j) -> [B, M, P3, LM3, F]``, bilinear.
      atoms_per_block: receivers per block.
    """
    n = adj_idx.shape[0]

    def edge_sum(p, b, w, g):
        return jnp.sum(product(p, filters(p, b), g) * w[..., None, None, None], axis=1)

    def blocked(tree, fill=0):
        return jax.tree.map(lambda a: blocks(a, atoms_per_block, fill), tree)

    def forward(p, x, b, w, adj):
        def step(_, blk):
            b, w, a = blk
            return None, edge_sum(p, b, w, jnp.take(x, a, axis=0, mode="clip"))

        _, out = jax.lax.scan(step, None, (blocked(b), blocked(w), blocked(adj)))
        return _unblock(out, n)

    @jax.custom_vjp
    def messages(p, x, b, w, adj):
        return forward(p, x, b, w, adj)

    def fwd(p, x, b, w, adj):
        return forward(p, x, b, w, adj), (p, x, b, w, adj)

    def bwd(res, gout):
        p, x, b, w, adj = res

        def step(dp, blk):
            b, w, a, g_i = blk
            g = jnp.take(x, a, axis=0, mode="clip")
            _, pull = jax.vjp(lambda p, b, w: edge_sum(p, b, w, g), p, b, w)
            dp_block, db, dw = pull(g_i)
            f = filters(p, b)
            f = f * jnp.asarray(degree_signs(f.shape[-2]), f.dtype)[:, None]
            g_j = jnp.take(gout, a, axis=0, mode="clip") * w[..., None, None, None]
            _, pull_x = jax.vjp(lambda g: product(p, f, g), jnp.zeros_like(g))
            (dg,) = pull_x(g_j)
            return jax.tree.map(jnp.add, dp, dp_block), (jnp.sum(dg, axis=1), db, dw)

        xs = (blocked(b), blocked(w), blocked(adj), blocked(gout))
        dp, (dx, db, dw) = jax.lax.scan(step, jax.tree.map(jnp.zeros_like, p), xs)
        db = jax.tree.map(lambda a: _unblock(a, n), db)
        return dp, _unblock(dx, n), db, _unblock(dw, n), None

    messages.defvjp(fwd, bwd)
    return messages(params, inputs, basis, weights, adj_idx)


def coupling_row_messages(
    wk, t, support, inputs, radial, angular, weights, adj_idx, *, atoms_per_block, precision=None
):
    r"""``m[N, P3*LM3, F]`` for a factored basis and a product given by its coupling tensor.

    The filter of edge ``e`` is ``f[e, i] = (radial[e] @ wk[l(i)]) * angular[e, i]`` and the
    message ``sum_{(i, j, k)} t[i, j, k] f[e, i] x_j[j]`` into output row ``k``.

    Args:
      wk: per-degree filter weights ``[Lb+1, K, F]``.
      t: coupling tensor ``[n1, n2, n3, F]`` (``n1 = (Lb+1)**2`` filter rows, ``n2 = P*LM``
        input rows, ``n3`` output rows); only ``support`` is read.
      support: the nonzero ``(i, j, k)`` (static).
      inputs: ``x[N, n2, F]``.
      radial: ``[N, M, K]``; angular: ``[N, M, n1]``; weights: ``[N, M]`` (0 on padding).
      adj_idx: ``[N, M]``.
      atoms_per_block: receivers per block.
      precision: of the filter contraction.
    """
    n = adj_idx.shape[0]
    n1, n2, n3 = t.shape[:3]
    degree = _degrees(wk.shape[0] - 1)
    features = t.shape[-1]

    def blocked(a, fill=0):
        return blocks(a, atoms_per_block, fill)

    # the nonzero couplings (i, j, k) as index arrays over the entries e
    i_, j_, k_ = np.asarray(support, dtype=np.int64).reshape(-1, 3).T
    sign_ = degree_signs(n1)[i_, None]

    def pick(a, index, axis=-2):
        """``a[..., index, :]`` for the static ``index``, without a gather where it is the
        identity or picks a size-1 axis (which then broadcasts): XLA keeps such gathers
        (1-2 % of the model's time)."""
        if a.shape[axis] == 1 and not index.any():
            return a
        if np.array_equal(index, np.arange(a.shape[axis])):
            return a
        return jnp.take(a, index, axis=axis)

    def filters(wk, rad, y):
        """The radial part per degree ``[B, M, Lb+1, F]`` and the filter rows of the entries
        ``[B, M, nnz, F]``."""
        r = jnp.einsum("bmk,lkf->bmlf", rad, wk, precision=precision)
        return r, pick(r, degree[i_]) * pick(y, i_, -1)[..., None]

    def onto(terms, index, size):
        """Sum ``terms[..., e, F]`` over the entries ``e`` onto rows ``index[e]`` of ``size``."""
        if size == 1:
            return jnp.sum(terms, axis=-2, keepdims=True)
        if np.array_equal(index, np.arange(size)):  # one entry per row, in order
            return terms
        if np.array_equal(np.sort(index), np.arange(size)):  # a permutation: reorder
            return jnp.take(terms, np.argsort(index), axis=-2)
        onehot = (index[:, None] == np.arange(size)[None]).astype(terms.dtype)
        return jnp.einsum("...ef,eq->...qf", terms, jnp.asarray(onehot))

    def forward(wk, te, x, rad, y, w, adj):
        def step(_, blk):
            rad, y, w, a = blk
            _, fe = filters(wk, rad, y)
            ge = pick(jnp.take(x, a, axis=0, mode="clip"), j_)
            out = onto(te * fe * ge, k_, n3)
            return None, jnp.sum(out * w[..., None, None], axis=1)

        xs = (blocked(rad), blocked(y), blocked(w), blocked(adj))
        _, out = jax.lax.scan(step, None, xs)
        return _unblock(out, n)

    def backward(res, gout):
        wk, te, x, rad, y, w, adj = res
        ones = jnp.ones((features, 1), x.dtype)

        def step(carry, blk):
            dwk, dte = carry
            rad, y, w, a, g_i = blk
            r, fe = filters(wk, rad, y)  # fe: the filter rows of the entries, [B, M, nnz, F]
            ge = pick(jnp.take(x, a, axis=0, mode="clip"), j_)
            # this block's own edges i <- j: cotangent c[k] = w * gout_i[k]
            ce = pick(g_i[:, None] * w[..., None, None], k_)
            df = onto(te * ge * ce, i_, n1)  # d filter rows, [B, M, n1, F]
            # minor-axis sums as products with ones (XLA's CPU row reduction was 2x slower)
            dy = jnp.matmul(df * r[..., degree, :], ones)[..., 0]
            dfy = df * y[..., None]
            # per degree: the radial part's cotangent [B, M, F] and its two products. Stacking
            # the degrees into one [B, M, Lb+1, F] for two einsums cost 1.2x the whole medium
            # model (a concatenate XLA's CPU backend does not vectorise, and a transpose)
            drad = 0
            dwk_l = []
            for l in range(wk.shape[0]):
                dr = jnp.sum(dfy[..., l * l : (l + 1) ** 2, :], axis=-2)
                drad = drad + jnp.matmul(dr, wk[l].T, precision=precision)
                dwk_l.append(jnp.einsum("bmk,bmf->kf", rad, dr, precision=precision))
            dwk = dwk + jnp.stack(dwk_l)
            dte = dte + jnp.sum(fe * ge * ce, axis=(0, 1))
            dw = jnp.matmul(jnp.sum(te * fe * ge * pick(g_i[:, None], k_), axis=-2), ones)
            # the block's atoms as senders: their rows' reversed edges, filters times sign
            g_j = pick(jnp.take(gout, a, axis=0, mode="clip") * w[..., None, None], k_)
            signed = te * jnp.asarray(sign_, te.dtype)
            dg = jnp.sum(signed * fe * g_j, axis=1)  # the reduction over the row
            return (dwk, dte), (onto(dg, j_, n2), drad, dy, dw[..., 0])

        xs = (blocked(rad), blocked(y), blocked(w), blocked(adj), blocked(gout))
        init = (jnp.zeros_like(wk), jnp.zeros_like(te))
        (dwk, dte), (dx, drad, dy, dw) = jax.lax.scan(step, init, xs)
        cut = functools.partial(_unblock, n=n)
        return dwk, dte, cut(dx), cut(drad), cut(dy), cut(dw), None

    kernel = cpu_kernels.rows_kernel(
        features=features,
        radial=wk.shape[1],
        filter_degree=wk.shape[0] - 1,
        n2=n2,
        n3=n3,
        support=np.stack([i_, j_, k_], axis=1),
        dtype=inputs.dtype,
    )
    if kernel is None:
        messages = cpu_kernels.with_reference_derivative(forward, backward, backward)
    else:
        # the compiled CPU kernels; the parameter cotangents are a separate call, which XLA
        # removes where they are unused (MD)
        def kernel_backward(res, gout):
            dx, drad, dy = kernel.backward(*res, gout)
            dwk, dte, dw = kernel.grad(*res, gout)
            return dwk, dte, dx, drad, dy, dw, None

        messages = cpu_kernels.with_reference_derivative(kernel.forward, kernel_backward, backward)
    te = t[i_, j_, k_]  # [nnz, F]
    return messages(wk, te, inputs, radial, angular, weights, adj_idx)
