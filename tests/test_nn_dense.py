"""Dense and Embed (e3md.nn.dense) against e3x with identical parameters."""

import e3x
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3md import nn


@pytest.mark.parametrize("parity", [1, 2])
@pytest.mark.parametrize("max_degree", [0, 2])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dense_matches_e3x(parity, max_degree, use_bias, dtype, keys):
    x = jax.random.normal(next(keys), (4, parity, (max_degree + 1) ** 2, 5), dtype)
    ref_layer = e3x.nn.Dense(7, use_bias=use_bias, param_dtype=dtype)
    params = ref_layer.init(next(keys), x)
    # Random, nonzero biases so the bias placement is actually tested.
    params = jax.tree_util.tree_map(
        lambda p: p + jax.random.normal(next(keys), p.shape, p.dtype), params
    )
    ours_layer = nn.Dense(7, use_bias=use_bias, param_dtype=dtype)
    ours_params = ours_layer.init(next(keys), x)
    assert jax.tree_util.tree_structure(ours_params) == jax.tree_util.tree_structure(params)
    assert jax.tree_util.tree_map(jnp.shape, ours_params) == jax.tree_util.tree_map(
        jnp.shape, params
    )
    ours = ours_layer.apply(params, x)
    ref = ref_layer.apply(params, x)
    assert ours.shape == (4, parity, (max_degree + 1) ** 2, 7) and ours.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol)


def test_dense_bias_only_on_even_scalars(keys):
    x = jnp.zeros((3, 2, 4, 2))
    layer = nn.Dense(3)
    params = layer.init(next(keys), x)
    params = jax.tree_util.tree_map(jnp.ones_like, params)
    y = layer.apply(params, x)
    np.testing.assert_allclose(y[:, 0, 0], 1.0)
    np.testing.assert_allclose(y[:, 0, 1:], 0.0)
    np.testing.assert_allclose(y[:, 1], 0.0)


def test_dense_is_equivariant(keys):
    x = jax.random.normal(next(keys), (3, 1, 4, 5))
    layer = nn.Dense(6)
    params = layer.init(next(keys), x)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    d = np.eye(4)
    d[1:, 1:] = q
    rot = lambda v: jnp.einsum("ij,...jf->...if", d, v)
    np.testing.assert_allclose(layer.apply(params, rot(x)), rot(layer.apply(params, x)), atol=1e-12)


def test_dense_rejects_bad_shapes(keys):
    with pytest.raises(ValueError, match="axis -2"):
        nn.Dense(2).init(next(keys), jnp.ones((2, 1, 5, 3)))
    with pytest.raises(ValueError, match="parity"):
        nn.Dense(2).init(next(keys), jnp.ones((2, 3, 4, 3)))


def test_dense_grad_finite(keys):
    x = jax.random.normal(next(keys), (3, 2, 9, 4))
    layer = nn.Dense(4)
    params = layer.init(next(keys), x)
    g = jax.grad(lambda p, v: jnp.sum(layer.apply(p, v) ** 2), argnums=(0, 1))(params, x)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(g))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_embed_matches_e3x(dtype, keys):
    z = jnp.asarray([[0, 3, 2], [1, 1, 4]])
    ref_layer = e3x.nn.Embed(num_embeddings=5, features=6, param_dtype=dtype)
    params = ref_layer.init(next(keys), z)
    ours_layer = nn.Embed(num_embeddings=5, features=6, param_dtype=dtype)
    ours_params = ours_layer.init(next(keys), z)
    assert jax.tree_util.tree_map(jnp.shape, ours_params) == jax.tree_util.tree_map(
        jnp.shape, params
    )
    ours = ours_layer.apply(params, z)
    assert ours.shape == (2, 3, 1, 1, 6) and ours.dtype == dtype
    np.testing.assert_array_equal(ours, ref_layer.apply(params, z))


def test_embed_padding_index_gives_zeros_and_rejects_floats(keys):
    layer = nn.Embed(num_embeddings=3, features=4)
    params = layer.init(next(keys), jnp.zeros(1, int))
    out = layer.apply(params, jnp.asarray([0, 3]))
    assert np.all(out[1] == 0) and np.any(out[0] != 0)
    with pytest.raises(ValueError, match="integer"):
        layer.apply(params, jnp.asarray([0.0]))
