"""Safe norm, indexed gather/sum and sin/cos (e3md.nn.ops) against NumPy and e3x.ops."""

import re

import e3x
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3md import nn


def test_safe_norm_value_gradient_and_range(rng):
    x = rng.normal(size=(7, 3))
    x[0] = 0.0
    norm = jax.jit(lambda v: nn.safe_norm(v, axis=-1))
    np.testing.assert_allclose(norm(jnp.asarray(x)), np.linalg.norm(x, axis=-1), rtol=1e-14)
    g = jax.jit(jax.grad(lambda v: jnp.sum(nn.safe_norm(v, axis=-1))))(jnp.asarray(x))
    np.testing.assert_allclose(g[0], 0.0)  # subgradient 0 at the origin, no NaN
    np.testing.assert_allclose(g[1:], x[1:] / np.linalg.norm(x[1:], axis=-1, keepdims=True))
    big = jnp.asarray([3e200, 4e200])  # x**2 would overflow float64
    np.testing.assert_allclose(norm(big), 5e200, rtol=1e-14)
    keep = nn.safe_norm(jnp.asarray(x), axis=-1, keepdims=True)
    assert keep.shape == (7, 1)


def test_normalize_and_norm_zero_vector():
    r = jnp.asarray([[0.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
    unit, n = jax.jit(nn.normalize_and_norm)(r)
    np.testing.assert_allclose(unit, [[0, 0, 0], [0, 0.6, 0.8]])
    np.testing.assert_allclose(n, [0.0, 5.0])
    jac = jax.jit(jax.jacfwd(lambda v: nn.normalize_and_norm(v)[0]))(r)
    assert np.all(np.isfinite(jac))


def test_indexed_ops_match_e3x_with_batch_axes(rng):
    b, n, e = 2, 5, 9
    x = jnp.asarray(rng.normal(size=(b, n, 3)))
    src = jnp.asarray(rng.integers(0, n + 1, size=(b, e)))  # includes padding index n
    dst = jnp.asarray(rng.integers(0, n + 1, size=(b, e)))
    ours = jax.jit(lambda x: nn.indexed_sum(
        nn.gather_src(x, src_idx=src), dst_idx=dst, num_segments=n))(x)  # fmt: skip
    gathered = e3x.ops.gather_src(x, src_idx=src)
    valid = (dst < n)[..., None]  # e3x's clamped gather of padding is irrelevant once dropped
    ref = e3x.ops.indexed_sum(jnp.where(valid, gathered, 0), dst_idx=dst, num_segments=n)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    # Dense form: adj_idx [b, n, m], padding n.
    adj = jnp.asarray(rng.integers(0, n + 1, size=(b, n, 4)))
    where = adj < n
    ours = jax.jit(lambda x: nn.indexed_sum(
        nn.gather_src(x, adj_idx=adj), adj_idx=adj, where=where))(x)  # fmt: skip
    ref = e3x.ops.indexed_sum(e3x.ops.gather_src(x, adj_idx=adj), adj_idx=adj, where=where)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_indexed_ops_reject_bad_arguments():
    x = jnp.ones((4, 2))
    idx = jnp.zeros(3, int)
    with pytest.raises(ValueError, match="either"):
        nn.gather_src(x)
    with pytest.raises(ValueError, match="either"):
        nn.indexed_sum(x, adj_idx=idx.reshape(1, 3), dst_idx=idx)
    with pytest.raises(ValueError, match="num_segments"):
        nn.indexed_sum(jnp.ones((3, 2)), dst_idx=idx)
    with pytest.raises(ValueError, match="where"):
        nn.indexed_sum(jnp.ones((1, 3, 2)), adj_idx=idx.reshape(1, 3))
    with pytest.raises(ValueError, match="same shape"):
        nn.ops._check_index_form(None, idx, idx[:2])


def test_sin_cos_float32_accuracy_and_float64_passthrough():
    # float32: polynomials after reduction by pi; compared with float64 NumPy at the same
    # (float32) points, including multiples of pi/2 where the reduction switches branch
    x = np.concatenate(
        [np.linspace(-200.0, 200.0, 400_001), np.pi / 2 * np.arange(-100, 101), [2.0**13 * np.pi]]
    ).astype(np.float32)
    exact = x.astype(np.float64)
    for fn, ref in ((nn.ops.sin, np.sin), (nn.ops.cos, np.cos)):
        got = np.asarray(jax.jit(fn)(jnp.asarray(x)), np.float64)
        assert np.abs(got - ref(exact)).max() < 2.5e-7, fn.__name__
        # other dtypes are jnp's functions, bit for bit
        x64 = jnp.asarray(exact[::97])
        np.testing.assert_array_equal(fn(x64), getattr(jnp, fn.__name__)(x64))


def test_sin_cos_derivatives_are_each_other():
    x = jnp.linspace(-30.0, 30.0, 1001, dtype=jnp.float32)
    sin, cos = nn.ops.sin, nn.ops.cos
    np.testing.assert_array_equal(jax.vmap(jax.grad(sin))(x), cos(x))
    np.testing.assert_array_equal(jax.vmap(jax.grad(cos))(x), -sin(x))
    np.testing.assert_array_equal(jax.vmap(jax.grad(jax.grad(sin)))(x), -sin(x))
    _, tangent = jax.jvp(sin, (x,), (jnp.full_like(x, 2.0),))
    np.testing.assert_array_equal(tangent, 2.0 * cos(x))


def test_bessel_basis_float32_has_no_scalar_sine_call():
    # XLA's CPU backend runs its sine element by element through a library call; the Bessel
    # basis and its gradient must use the vectorisable polynomial instead
    r = jnp.linspace(0.0, 5.0, 64, dtype=jnp.float32)

    def total(r):
        return nn.bessel(r, num=8, limit=5.0).sum() + nn.cosine_cutoff(r, cutoff=5.0).sum()

    hlo = jax.jit(jax.value_and_grad(total)).lower(r).as_text()
    assert not re.search(r"stablehlo\.(sine|cosine)", hlo)
