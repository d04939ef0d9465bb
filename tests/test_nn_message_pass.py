"""MessagePass (e3md.nn.message_pass) against e3x.nn.MessagePass; padding, grads, O(3).

Every layer call goes through one of the jitted helpers below (modules are hashable, hence
static), so tests sharing a configuration share one compilation.
"""

import functools

import e3x
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3md import nn
from e3md.nn.message_pass import MessagePass
from e3md.so3 import random_rotation, wigner_d

CUTOFF = 3.0  # Å
N, F, K = 6, 4, 5
RADIAL = functools.partial(nn.bessel, limit=CUTOFF)
CUT = functools.partial(nn.smooth_cutoff, cutoff=CUTOFF)
PAD = 3


# Random numbers come from NumPy: eager jax.random calls would compile one kernel per shape.


def _system(rng, dtype=jnp.float64, parity=2, in_degree=2):
    """Random atoms, a sparse edge list ending in PAD padded edges (index N), features."""
    pos = jnp.asarray(rng.uniform(0, 2.5, (N, 3)), dtype)
    i, j = np.nonzero(~np.eye(N, dtype=bool))
    keep = np.random.default_rng(0).random(i.size) < 0.6  # same edge count in every test
    dst = np.concatenate([i[keep], np.full(PAD, N)])
    src = np.concatenate([j[keep], np.full(PAD, N)])
    x = jnp.asarray(rng.normal(size=(N, parity, (in_degree + 1) ** 2, F)), dtype)
    return pos, x, jnp.asarray(dst), jnp.asarray(src)


@functools.partial(jax.jit, static_argnums=3)
def _edge_basis(pos, dst, src, basis_degree):
    padded = jnp.concatenate([pos, jnp.zeros((1, 3), pos.dtype)])  # padded edges: r = 0
    r = padded[src] - padded[dst]
    return nn.basis(r, basis_degree, K, RADIAL, CUT)


@functools.partial(jax.jit, static_argnums=0)
def _sparse(layer, params, x, b, w, dst, src):
    return layer.apply(params, x, b, w, dst_idx=dst, src_idx=src)


@functools.partial(jax.jit, static_argnums=0)
def _dense(layer, params, x, b, adj, where):
    return layer.apply(params, x, b, adj_idx=adj, where=where)


def _random_params(module, rng, *args, **kwargs):
    """Random parameters with the tree of ``module.init`` (shapes only: no eager init)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args, **kwargs)
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(0.5 * rng.normal(size=a.shape), a.dtype), shapes
    )


def _shapes(module, *args, **kwargs):
    tree = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args, **kwargs)
    return jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), tree)


@pytest.mark.parametrize(
    "dtype, parity, in_degree, basis_degree, max_degree, bias, pseudo",
    [
        (jnp.float32, 2, 2, 2, None, True, True),
        (jnp.float64, 1, 1, 3, 2, False, True),
        pytest.param(jnp.float64, 2, 2, 2, None, True, True, marks=pytest.mark.slow),
        pytest.param(jnp.float64, 2, 1, 2, 3, False, False, marks=pytest.mark.slow),
    ],
)
def test_sparse_matches_e3x(dtype, parity, in_degree, basis_degree, max_degree, bias, pseudo, rng):
    pos, x, dst, src = _system(rng, dtype, parity, in_degree)
    b = _edge_basis(pos, dst, src, basis_degree)
    kw = dict(max_degree=max_degree, use_basis_bias=bias, include_pseudotensors=pseudo)
    ref = e3x.nn.MessagePass(use_fused_tensor=True, param_dtype=dtype, **kw)
    ours = MessagePass(param_dtype=dtype, **kw)  # FusedTensor is our default
    idx = dict(dst_idx=dst, src_idx=src)
    assert _shapes(ours, x, b, **idx) == _shapes(ref, x, b, **idx)  # same parameter tree
    params = _random_params(ref, rng, x, b, **idx)
    expected = _sparse(ref, params, x, b, None, dst, src)
    got = _sparse(ours, params, x, b, None, dst, src)
    assert got.shape == expected.shape and got.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-10
    scale = float(jnp.max(jnp.abs(expected)))
    np.testing.assert_allclose(got / scale, expected / scale, rtol=tol, atol=tol)


@functools.partial(jax.jit, static_argnums=3)
def _edge_basis_factors(pos, dst, src, basis_degree):
    padded = jnp.concatenate([pos, jnp.zeros((1, 3), pos.dtype)])
    r = padded[src] - padded[dst]
    return nn.basis(r, basis_degree, K, RADIAL, CUT, factored=True)


@pytest.mark.parametrize("parity, in_degree, basis_degree", [(1, 0, 2), (1, 2, 2), (2, 1, 3)])
def test_factored_basis_matches_e3x(parity, in_degree, basis_degree, rng):
    """Filters from the radial factor per degree times Y: the same function, same parameters,
    as e3x's Dense over the full product basis."""
    pos, x, dst, src = _system(rng, jnp.float64, parity, in_degree)
    b = _edge_basis(pos, dst, src, basis_degree)
    factors = _edge_basis_factors(pos, dst, src, basis_degree)
    ref = e3x.nn.MessagePass(use_fused_tensor=True, param_dtype=jnp.float64)
    ours = MessagePass(param_dtype=jnp.float64)
    idx = dict(dst_idx=dst, src_idx=src)
    assert _shapes(ours, x, factors, **idx) == _shapes(ref, x, b, **idx)
    params = _random_params(ref, rng, x, b, **idx)
    w = jnp.asarray(rng.uniform(size=(dst.shape[0], 1, 1, 1)))
    expected = _sparse(ref, params, x, b, w, dst, src)
    got = _sparse(ours, params, x, factors, w, dst, src)
    scale = float(jnp.max(jnp.abs(expected)))
    np.testing.assert_allclose(got / scale, expected / scale, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="use_basis_bias"):
        MessagePass(use_basis_bias=True).init(jax.random.PRNGKey(0), x, factors, **idx)


def test_dense_matches_sparse_and_e3x(rng):
    pos, x, dst, src = _system(rng)
    dst_np, src_np = np.asarray(dst), np.asarray(src)
    real = dst_np < N
    m = np.bincount(dst_np[real], minlength=N).max() + 1  # one extra padding column
    adj = np.full((N, m), N)
    for i in range(N):
        js = src_np[real][dst_np[real] == i]
        adj[i, : js.size] = js
    adj = jnp.asarray(adj)
    rows = jnp.repeat(jnp.arange(N)[:, None], m, axis=1)
    b_dense = _edge_basis(pos, rows.ravel(), adj.ravel(), 2).reshape(N, m, 1, 9, K)
    b_sparse = _edge_basis(pos, dst, src, 2)
    layer = MessagePass()
    params = _random_params(layer, rng, x, b_sparse, dst_idx=dst, src_idx=src)
    sparse = _sparse(layer, params, x, b_sparse, None, dst, src)
    where = adj < N
    dense = _dense(layer, params, x, b_dense, adj, where)
    np.testing.assert_allclose(dense, sparse, rtol=1e-10, atol=1e-12)
    ref = e3x.nn.MessagePass(use_fused_tensor=True)
    np.testing.assert_allclose(
        dense, _dense(ref, params, x, b_dense, adj, where), rtol=1e-10, atol=1e-12
    )
    # where=None defaults to adj < N.
    np.testing.assert_allclose(
        jax.jit(lambda p, x, b: layer.apply(p, x, b, adj_idx=adj))(params, x, b_dense), dense
    )
    # A mask hiding one real neighbour equals turning that sparse edge into padding.
    masked = _dense(layer, params, x, b_dense, adj, where.at[0, 0].set(False))
    drop = (dst == 0) & (src == adj[0, 0])
    sub = _sparse(layer, params, x, b_sparse, None, jnp.where(drop, N, dst), src)
    np.testing.assert_allclose(masked, sub, rtol=1e-10, atol=1e-12)
    assert not np.allclose(masked, dense)


def test_padding_and_zero_weights_change_nothing(rng):
    pos, x, dst, src = _system(rng)
    b = _edge_basis(pos, dst, src, 2)
    layer = MessagePass()
    params = _random_params(layer, rng, x, b, dst_idx=dst, src_idx=src)
    base = _sparse(layer, params, x, b, None, dst, src)
    # Padded edges with arbitrary (large, nonzero) basis values and sender indices.
    garbage = jnp.asarray(1e3 * rng.normal(size=(PAD,) + b.shape[1:]))
    b2 = b.at[-PAD:].set(garbage)
    src2 = src.at[-PAD:].set(jnp.asarray([0, 1, N]))
    np.testing.assert_allclose(
        _sparse(layer, params, x, b2, None, dst, src2), base, rtol=1e-12, atol=1e-12
    )
    # Zero weights on real edges equal turning them into padding.
    w = jnp.ones((dst.shape[0], 1, 1, 1)).at[:3].set(0.0)
    weighted = _sparse(layer, params, x, b, w, dst, src)
    removed = _sparse(layer, params, x, b, None, dst.at[:3].set(N), src)
    np.testing.assert_allclose(weighted, removed, rtol=1e-12, atol=1e-12)
    assert not np.allclose(weighted, base)


def test_weights_match_e3x(rng):
    pos, x, dst, src = _system(rng)
    b = _edge_basis(pos, dst, src, 2)
    w = jnp.asarray(rng.uniform(size=(dst.shape[0], 1, 1, 1)))
    layer = MessagePass()
    params = _random_params(layer, rng, x, b, dst_idx=dst, src_idx=src)
    ref = e3x.nn.MessagePass(use_fused_tensor=True)
    np.testing.assert_allclose(
        _sparse(layer, params, x, b, w, dst, src),
        _sparse(ref, params, x, b, w, dst, src),
        rtol=1e-10,
        atol=1e-12,
    )


def test_gradient_finite_with_zero_and_cutoff_edges(rng):
    pos, x, dst, src = _system(rng)
    # Atom 1 exactly at the cutoff distance from atom 0 (edges 0->1 and 1->0 exist or not:
    # force them in by overwriting the first two edges).
    pos = pos.at[1].set(pos[0] + jnp.asarray([0.0, CUTOFF, 0.0]))
    dst = dst.at[:2].set(jnp.asarray([0, 1]))
    src = src.at[:2].set(jnp.asarray([1, 0]))
    layer = MessagePass()
    b = _edge_basis(pos, dst, src, 2)
    params = _random_params(layer, rng, x, b, dst_idx=dst, src_idx=src)

    @jax.jit
    def energy(pos, params):
        y = layer.apply(params, x, _edge_basis(pos, dst, src, 2), dst_idx=dst, src_idx=src)
        return jnp.sum(jnp.tanh(y[:, 0, 0, :]))  # invariant readout

    g_pos, g_params = jax.jit(jax.grad(energy, argnums=(0, 1)))(pos, params)
    assert np.all(np.isfinite(g_pos))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(g_params))
    # Central finite differences (float64) for two coordinates.
    h = 1e-5
    for atom, axis in [(3, 1), (1, 1)]:
        e = jnp.zeros_like(pos).at[atom, axis].set(h)
        fd = (energy(pos + e, params) - energy(pos - e, params)) / (2 * h)
        np.testing.assert_allclose(g_pos[atom, axis], fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("parity", [1, 2])
def test_o3_equivariance(parity, rng):
    pos, x, dst, src = _system(rng, parity=parity)
    layer = MessagePass(max_degree=3)
    b = _edge_basis(pos, dst, src, 2)
    params = _random_params(layer, rng, x, b, dst_idx=dst, src_idx=src)
    run = jax.jit(lambda x, pos: layer.apply(params, x, _edge_basis(pos, dst, src, 2), None,
                                             dst_idx=dst, src_idx=src))  # fmt: skip
    rot = random_rotation(jax.random.PRNGKey(int(rng.integers(2**31))))

    def act(y, inversion):
        """Rotation (Wigner-D), then optionally the inversion (parity signs)."""
        max_degree = int(np.sqrt(y.shape[-2])) - 1
        y = jnp.einsum("...af,ab->...bf", y, wigner_d(rot, max_degree))
        if inversion:
            degree = np.repeat(np.arange(max_degree + 1), 2 * np.arange(max_degree + 1) + 1)
            p = np.arange(2)[:, None] if y.shape[-3] == 2 else degree[None, :]
            y = y * ((-1.0) ** p)[..., None]
        return y

    y = run(x, pos)
    assert float(jnp.max(jnp.abs(y[..., 1:, :]))) > 1e-3  # nontrivial l > 0 output
    for inversion in (False, True):
        new_pos = (pos @ rot) * (-1.0 if inversion else 1.0)
        np.testing.assert_allclose(
            run(act(x, inversion), new_pos), act(y, inversion), rtol=1e-9, atol=1e-10
        )


def test_tensor_variant_matches_e3x(rng):
    pos, x, dst, src = _system(rng, in_degree=1)
    b = _edge_basis(pos, dst, src, 1)
    ref = e3x.nn.MessagePass(use_fused_tensor=False)
    ours = MessagePass(use_fused_tensor=False)
    params = _random_params(ref, rng, x, b, dst_idx=dst, src_idx=src)
    np.testing.assert_allclose(
        _sparse(ours, params, x, b, None, dst, src),
        _sparse(ref, params, x, b, None, dst, src),
        rtol=1e-10,
        atol=1e-12,
    )


def test_bad_arguments_raise(rng):
    pos, x, dst, src = _system(rng)
    b = _edge_basis(pos, dst, src, 2)
    init = functools.partial(_shapes, MessagePass())
    with pytest.raises(ValueError, match="dst_idx and src_idx"):
        init(x, b, dst_idx=dst)
    with pytest.raises(ValueError, match="not both"):
        init(x, b, adj_idx=jnp.zeros((N, 2), int), dst_idx=dst, src_idx=src)
    with pytest.raises(ValueError, match="weights"):
        init(x, b, jnp.ones((3, 2)), dst_idx=dst, src_idx=src)
    with pytest.raises(ValueError, match="basis"):
        init(x, b[1:], dst_idx=dst, src_idx=src)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _chunked_value_and_grads(layer, chunk, params, x, b, w, dst, src):
    """Messages and the gradient of a nonlinear readout w.r.t. params, inputs, basis, weights."""

    def f(params, x, b, w):
        y = layer.apply(params, x, b, w, dst_idx=dst, src_idx=src, edge_chunk=chunk)
        return jnp.sum(jnp.sin(y)), y

    (_, y), grads = jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True)(params, x, b, w)
    return y, grads


@pytest.mark.parametrize("factored", [False, True])
def test_edge_blocks_are_the_same_function(factored, rng):
    """``edge_chunk``: the scan over blocks of edges (3 here; 3 does not divide the edge count,
    so the last block is padded) gives the messages and all gradients of one pass."""
    pos, x, dst, src = _system(rng, jnp.float64, parity=1, in_degree=2)
    assert dst.shape[0] % 3 != 0
    b = (_edge_basis_factors if factored else _edge_basis)(pos, dst, src, 2)
    layer = MessagePass(param_dtype=jnp.float64)
    params = _random_params(layer, rng, x, b, dst_idx=dst, src_idx=src)
    w = jnp.asarray(rng.uniform(size=(dst.shape[0], 1, 1, 1)))
    y, grads = _chunked_value_and_grads(layer, None, params, x, b, w, dst, src)
    y4, grads4 = _chunked_value_and_grads(layer, 3, params, x, b, w, dst, src)
    assert float(jnp.max(jnp.abs(y))) > 1e-3
    np.testing.assert_allclose(y4, y, rtol=1e-12, atol=1e-12)
    for g4, g in zip(jax.tree.leaves(grads4), jax.tree.leaves(grads), strict=True):
        assert g4.shape == g.shape
        np.testing.assert_allclose(g4, g, rtol=1e-10, atol=1e-12)
    # no weights given: every edge counts once, padded edges (index N) still count nothing
    y_none = _sparse(layer, params, x, b, None, dst, src)
    y4_none = jax.jit(lambda: layer.apply(params, x, b, dst_idx=dst, src_idx=src, edge_chunk=3))()
    np.testing.assert_allclose(y4_none, y_none, rtol=1e-12, atol=1e-12)
    # one weight for all edges (a scalar, broadcast like numpy against [E, P, LM, F])
    y_half = _sparse(layer, params, x, b, 0.5, dst, src)
    y4_half = jax.jit(
        lambda: layer.apply(params, x, b, 0.5, dst_idx=dst, src_idx=src, edge_chunk=3)
    )()
    np.testing.assert_allclose(y4_half, y_half, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y_half, 0.5 * y_none, rtol=1e-12, atol=1e-12)


def test_edge_blocks_bound_the_memory():
    """The point of ``edge_chunk``: XLA's buffers for messages + gradient stop growing with the
    number of edges (9 x 64 float32 features per edge; 4096 vs 16384 edges)."""
    n, f = 64, 64
    x = jnp.zeros((n, 1, 9, f), jnp.float32)
    layer = MessagePass(include_pseudotensors=False)

    def temp_bytes(e, chunk):
        radial = jnp.zeros((e, K), jnp.float32)
        angular = jnp.zeros((e, 1, 9), jnp.float32)
        idx = jnp.zeros(e, jnp.int32)
        basis = (radial, angular)
        params = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x, basis,
                                dst_idx=idx, src_idx=idx)  # fmt: skip

        def loss(params, x, radial):
            y = layer.apply(params, x, (radial, angular), dst_idx=idx, src_idx=idx,
                            edge_chunk=chunk)  # fmt: skip
            return jnp.sum(y**2)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        return grad.lower(params, x, radial).compile().memory_analysis().temp_size_in_bytes

    edge_tensor = 16384 * 9 * f * 4
    assert temp_bytes(16384, None) > 3 * temp_bytes(4096, None) > 2 * edge_tensor / 4
    blocked = temp_bytes(16384, 256)
    assert blocked < 1.5 * temp_bytes(4096, 256)
    assert blocked < edge_tensor / 2


def test_edge_blocks_need_a_sparse_list(rng):
    pos, x, dst, src = _system(rng)
    b = _edge_basis(pos, dst, src, 2)
    layer = MessagePass()
    params = _random_params(layer, rng, x, b, dst_idx=dst, src_idx=src)
    adj = jnp.zeros((N, 2), jnp.int32)
    with pytest.raises(ValueError, match="edge_chunk"):
        layer.apply(params, x, b[: 2 * N].reshape(N, 2, *b.shape[1:]), adj_idx=adj, edge_chunk=4)
    with pytest.raises(ValueError, match="edge_chunk"):
        layer.apply(params, x, b, dst_idx=dst, src_idx=src, edge_chunk=0)


@pytest.mark.parametrize(
    "factored, chunk, fused", [(False, None, True), (True, None, True), (True, 3, True),
                               (True, None, False)]
)  # fmt: skip
def test_class_inputs_are_the_same_function(factored, chunk, fused, rng, monkeypatch):
    """``input_index``: inputs given as a table of node classes (the species embedding of a
    first iteration) -- basis summed per (receiver, class), then filter and product -- equal
    the messages of the gathered per-node inputs, values and gradients (table, basis, params).
    With a FusedTensor, filter, product and the sum over classes are one contraction per row
    (``_scalar_class_products``); with a Tensor product, the general path runs."""
    from e3md.nn import message_pass

    contracted = []
    real = message_pass._scalar_class_products
    monkeypatch.setattr(
        message_pass,
        "_scalar_class_products",
        lambda *a: contracted.append(real(*a)) or contracted[-1],
    )
    pos, _, dst, src = _system(rng, jnp.float64)
    classes = jnp.asarray(rng.integers(0, 3, N))
    table = jnp.asarray(rng.normal(size=(3, 1, 1, F)))
    assert len(set(np.asarray(classes).tolist())) > 1
    b = (_edge_basis_factors if factored else _edge_basis)(pos, dst, src, 2)
    layer = MessagePass(
        param_dtype=jnp.float64, max_degree=2, include_pseudotensors=False, use_fused_tensor=fused
    )
    params = _random_params(layer, rng, table[classes], b, dst_idx=dst, src_idx=src)
    w = jnp.asarray(rng.uniform(size=(dst.shape[0], 1, 1, 1)))

    @jax.jit
    def run(params, table, b):
        def f(params, table, b, by_class):
            kw = dict(input_index=classes) if by_class else {}
            x = table if by_class else table[classes]
            y = layer.apply(params, x, b, w, dst_idx=dst, src_idx=src, edge_chunk=chunk, **kw)
            return jnp.sum(jnp.sin(y)), y

        grad = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)
        return grad(params, table, b, False), grad(params, table, b, True)

    ((_, y), g), ((_, y_cls), g_cls) = run(params, table, b)
    assert contracted and all((c is None) != fused for c in contracted)
    assert y_cls.shape == y.shape == (N, 1, 9, F)
    assert float(jnp.max(jnp.abs(y[:, :, 1:]))) > 1e-3
    np.testing.assert_allclose(y_cls, y, rtol=1e-12, atol=1e-12)
    for a, e in zip(jax.tree.leaves(g_cls), jax.tree.leaves(g), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)
    # parameters created through the class path have the ordinary tree
    assert _shapes(layer, table, b, dst_idx=dst, src_idx=src, input_index=classes) == _shapes(
        layer, table[classes], b, dst_idx=dst, src_idx=src
    )
    with pytest.raises(ValueError, match="scalar weights"):
        layer.apply(params, table, b, jnp.ones((dst.shape[0], 1, 1, F)), dst_idx=dst,
                    src_idx=src, input_index=classes)  # fmt: skip


def _symmetric_rows(rng, slots=8):
    """All pairs of N atoms within 2.2 Å (a symmetric list) as sparse edges and as receiver-
    major rows [N, slots] (padding index N), with symmetric per-pair weights."""
    pos = rng.uniform(0, 2.5, (N, 3))
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    pair = (d < 2.2) & ~np.eye(N, dtype=bool)
    dst, src = np.nonzero(pair)
    w_pair = 1.0 + np.cos(0.7 * np.minimum(dst, src) + 0.3 * np.maximum(dst, src))
    adj = np.full((N, slots), N)
    w_rows = np.zeros((N, slots))
    for i in range(N):
        js = src[dst == i]
        adj[i, : js.size] = js
        w_rows[i, : js.size] = w_pair[dst == i]
    r = pos[src] - pos[dst]
    r_rows = np.where((adj < N)[..., None], pos[np.minimum(adj, N - 1)] - pos[:, None], 0.0)
    return (
        jnp.asarray(r),
        jnp.asarray(src),
        jnp.asarray(dst),
        jnp.asarray(w_pair),
        jnp.asarray(r_rows),
        jnp.asarray(adj),
        jnp.asarray(w_rows),
    )


@pytest.mark.parametrize(
    "parity, in_degree, out_degree, factored",
    [
        (1, 2, 0, True),  # coupling-tensor rule (the last message pass of e3md's model)
        (1, 1, 1, True),  # coupling-tensor rule, degree-1 messages
        (1, 2, 2, True),  # generic rule (unrolled product)
        (2, 1, 2, False),  # generic rule, pseudotensors, full basis
    ],
)
def test_symmetric_rows_are_the_same_function(parity, in_degree, out_degree, factored, rng):
    """MessagePass(symmetric=True) over rows equals the sparse path: values and reverse-mode
    derivatives with respect to the features, the basis (hence the positions) and the
    parameters, also second order (the parameter gradient of a force-like quantity)."""
    r, src, dst, w, r_rows, adj, w_rows = _symmetric_rows(rng)
    x = jnp.asarray(rng.normal(size=(N, parity, (in_degree + 1) ** 2, F)))
    layer = MessagePass(max_degree=out_degree, include_pseudotensors=parity == 2)

    def basis(r):
        return nn.basis(r, max_degree=2, num=K, radial_fn=RADIAL, cutoff_fn=CUT, factored=factored)

    sparse = dict(src_idx=src, dst_idx=dst, num_segments=N)
    rows = dict(adj_idx=adj, symmetric=True, edge_chunk=3 * adj.shape[1])  # 3 atoms per block
    params = layer.init(jax.random.PRNGKey(0), x, basis(r), w[:, None, None, None], **sparse)
    params = jax.tree.map(lambda a: a + 0.3 * jnp.asarray(rng.normal(size=a.shape)), params)
    ct = jnp.asarray(rng.normal(size=layer.apply(params, x, basis(r), None, **sparse).shape))

    def energy_sparse(p, x, r):
        return jnp.sum(ct * layer.apply(p, x, basis(r), w[:, None, None, None], **sparse))

    def energy_rows(p, x, r_rows):
        safe = jnp.where((adj < N)[..., None], r_rows, 1.0)  # padding slots: any safe vector
        return jnp.sum(ct * layer.apply(p, x, basis(safe), w_rows[..., None, None, None], **rows))

    e1, (dp1, dx1, dr1) = jax.value_and_grad(energy_sparse, argnums=(0, 1, 2))(params, x, r)
    e2, (dp2, dx2, dr2) = jax.value_and_grad(energy_rows, argnums=(0, 1, 2))(params, x, r_rows)
    np.testing.assert_allclose(e2, e1, rtol=1e-12)
    np.testing.assert_allclose(dx2, dx1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dr2, _to_rows(dr1, adj, dst, src), rtol=1e-10, atol=1e-12)
    for a, b in zip(jax.tree.leaves(dp2), jax.tree.leaves(dp1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)

    # second order: d/dparams of sum(c * d energy / d r), as force training differentiates
    c = jnp.asarray(rng.normal(size=r.shape))
    c_rows = jnp.asarray(_to_rows(c, adj, dst, src))
    h1 = jax.grad(lambda p: jnp.sum(c * jax.grad(energy_sparse, 2)(p, x, r)))(params)
    h2 = jax.grad(lambda p: jnp.sum(c_rows * jax.grad(energy_rows, 2)(p, x, r_rows)))(params)
    for a, b in zip(jax.tree.leaves(h2), jax.tree.leaves(h1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


def _to_rows(a, adj, dst, src):
    """A per-edge array of the sparse list placed into the rows' slots (zero on padding)."""
    edge = {(int(i), int(j)): e for e, (i, j) in enumerate(zip(dst, src, strict=True))}
    out = np.zeros(adj.shape + a.shape[1:])
    for i in range(adj.shape[0]):
        for m, j in enumerate(np.asarray(adj[i])):
            if j < adj.shape[0]:
                out[i, m] = a[edge[(i, int(j))]]
    return out


@pytest.mark.parametrize("out_degree", [0, 2])  # coupling and generic rules
def test_symmetric_rows_keep_float32(out_degree, rng):
    """float32 inputs (with x64 enabled, as in e3md md) give float32 values and cotangents."""
    r, src, dst, w, r_rows, adj, w_rows = _symmetric_rows(rng)
    x = jnp.asarray(rng.normal(size=(N, 1, 9, F)), jnp.float32)
    layer = MessagePass(max_degree=out_degree, include_pseudotensors=False)
    safe = jnp.where((adj < N)[..., None], r_rows, 1.0).astype(jnp.float32)
    b = nn.basis(safe, max_degree=2, num=K, radial_fn=RADIAL, cutoff_fn=CUT, factored=True)
    wr = w_rows.astype(jnp.float32)[..., None, None, None]
    params = layer.init(jax.random.PRNGKey(0), x, b, wr, adj_idx=adj)

    def energy(x, b, symmetric):
        return jnp.sum(layer.apply(params, x, b, wr, adj_idx=adj, symmetric=symmetric) ** 2)

    g = jax.grad(energy, argnums=(0, 1))(x, b, True)
    g_ref = jax.grad(energy, argnums=(0, 1))(x, b, False)
    for a, c in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)


def test_symmetric_rows_need_a_symmetric_list(rng):
    """The promise matters: one-directional weights give a different sender cotangent (the
    rule reads the reversed edge's weight), while the forward values still agree."""
    r, src, dst, w, r_rows, adj, w_rows = _symmetric_rows(rng)
    x = jnp.asarray(rng.normal(size=(N, 1, 9, F)))
    layer = MessagePass(max_degree=0, include_pseudotensors=False)
    b_rows = nn.basis(
        jnp.where((adj < N)[..., None], r_rows, 1.0),
        max_degree=2,
        num=K,
        radial_fn=RADIAL,
        cutoff_fn=CUT,
        factored=True,
    )
    w_half = jnp.where(adj > jnp.arange(N)[:, None], w_rows, 0.0)  # keep only i <- j with j > i
    params = layer.init(
        jax.random.PRNGKey(0), x, b_rows, w_half[..., None, None, None], adj_idx=adj
    )

    def energy(x, symmetric):
        m = layer.apply(
            params, x, b_rows, w_half[..., None, None, None], adj_idx=adj, symmetric=symmetric
        )
        return jnp.sum(m**2)

    np.testing.assert_allclose(energy(x, True), energy(x, False), rtol=1e-12)
    g_true, g_rule = jax.grad(energy)(x, False), jax.grad(energy)(x, True)
    assert not np.allclose(g_rule, g_true, rtol=1e-3)


def test_symmetric_rows_bad_arguments(rng):
    r, src, dst, w, r_rows, adj, w_rows = _symmetric_rows(rng)
    x = jnp.asarray(rng.normal(size=(N, 1, 4, F)))
    b = nn.basis(r, max_degree=1, num=K, radial_fn=RADIAL, cutoff_fn=CUT)
    layer = MessagePass(max_degree=0)
    params = layer.init(jax.random.PRNGKey(0), x, b, src_idx=src, dst_idx=dst)
    with pytest.raises(ValueError, match="symmetric=True needs an unbatched dense index list"):
        layer.apply(params, x, b, src_idx=src, dst_idx=dst, symmetric=True)
    b_rows = nn.basis(
        jnp.where((adj < N)[..., None], r_rows, 1.0), max_degree=1, num=K, radial_fn=RADIAL
    )
    with pytest.raises(ValueError, match="per-edge scalar weights"):
        layer.apply(
            params, x, b_rows, jnp.ones((N, adj.shape[1], 1, 1, F)), adj_idx=adj, symmetric=True
        )
