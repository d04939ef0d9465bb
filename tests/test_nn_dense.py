"""Dense and Embed (e3md.nn.dense) against e3x with identical parameters."""

import e3x
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3md import nn


def _random_params(module, rng, *args):
    """Random parameters with the tree of ``module.init`` (shapes only: no eager init)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), shapes)


def _shapes(module, *args):
    tree = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)
    return jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), tree)


@pytest.mark.parametrize("parity", [1, 2])
@pytest.mark.parametrize("max_degree", [0, 2])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dense_matches_e3x(parity, max_degree, use_bias, dtype, rng):
    x = jnp.asarray(rng.normal(size=(4, parity, (max_degree + 1) ** 2, 5)), dtype)
    ref_layer = e3x.nn.Dense(7, use_bias=use_bias, param_dtype=dtype)
    # Random, nonzero biases so the bias placement is actually tested.
    params = _random_params(ref_layer, rng, x)
    ours_layer = nn.Dense(7, use_bias=use_bias, param_dtype=dtype)
    assert _shapes(ours_layer, x) == _shapes(ref_layer, x)
    ours = ours_layer.apply(params, x)
    ref = ref_layer.apply(params, x)
    assert ours.shape == (4, parity, (max_degree + 1) ** 2, 7) and ours.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol)


def test_dense_bias_only_on_even_scalars(rng):
    x = jnp.zeros((3, 2, 4, 2))
    layer = nn.Dense(3)
    params = _random_params(layer, rng, x)
    params = jax.tree_util.tree_map(jnp.ones_like, params)
    y = layer.apply(params, x)
    np.testing.assert_allclose(y[:, 0, 0], 1.0)
    np.testing.assert_allclose(y[:, 0, 1:], 0.0)
    np.testing.assert_allclose(y[:, 1], 0.0)


def test_dense_is_equivariant(rng):
    x = jnp.asarray(rng.normal(size=(3, 1, 4, 5)))
    layer = nn.Dense(6)
    params = _random_params(layer, rng, x)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    d = np.eye(4)
    d[1:, 1:] = q
    rot = lambda v: jnp.einsum("ij,...jf->...if", d, v)
    np.testing.assert_allclose(layer.apply(params, rot(x)), rot(layer.apply(params, x)), atol=1e-12)


def test_dense_per_degree_rows_equal_repeated_orders(rng):
    """One row per degree gives what the full layout gives with the row repeated over m."""
    rows = jnp.asarray(rng.normal(size=(7, 2, 3, 5)))  # P=2, L=2
    degrees = np.repeat(np.arange(3), 2 * np.arange(3) + 1)
    layer = nn.Dense(4)
    params = layer.init(jax.random.PRNGKey(1), rows[:, :, degrees])
    full = layer.apply(params, rows[:, :, degrees])
    per = layer.apply(params, rows, per_degree=True)
    np.testing.assert_allclose(per[:, :, degrees], full, atol=1e-12)


def test_dense_rejects_bad_shapes(rng):
    with pytest.raises(ValueError, match="axis -2"):
        _shapes(nn.Dense(2), jnp.ones((2, 1, 5, 3)))
    with pytest.raises(ValueError, match="parity"):
        _shapes(nn.Dense(2), jnp.ones((2, 3, 4, 3)))


def test_dense_grad_finite(rng):
    x = jnp.asarray(rng.normal(size=(3, 2, 9, 4)))
    layer = nn.Dense(4)
    params = _random_params(layer, rng, x)
    g = jax.grad(lambda p, v: jnp.sum(layer.apply(p, v) ** 2), argnums=(0, 1))(params, x)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(g))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_embed_matches_e3x(dtype, rng):
    z = jnp.asarray([[0, 3, 2], [1, 1, 4]])
    ref_layer = e3x.nn.Embed(num_embeddings=5, features=6, param_dtype=dtype)
    params = _random_params(ref_layer, rng, z)
    ours_layer = nn.Embed(num_embeddings=5, features=6, param_dtype=dtype)
    assert _shapes(ours_layer, z) == _shapes(ref_layer, z)
    ours = ours_layer.apply(params, z)
    assert ours.shape == (2, 3, 1, 1, 6) and ours.dtype == dtype
    np.testing.assert_array_equal(ours, ref_layer.apply(params, z))


def test_embed_padding_index_gives_zeros_and_rejects_floats(rng):
    layer = nn.Embed(num_embeddings=3, features=4)
    params = _random_params(layer, rng, jnp.zeros(1, int))
    out = layer.apply(params, jnp.asarray([0, 3]))
    assert np.all(out[1] == 0) and np.any(out[0] != 0)
    # ValueError from Embed; TypeError (jaxtyping.TypeCheckError) under runtime type checking.
    with pytest.raises((ValueError, TypeError), match="integer|Integer"):
        layer.apply(params, jnp.asarray([0.0]))


def test_parameters_of_another_shape_are_rejected(rng):
    # e3md's layers check stored parameter shapes themselves (without flax's re-trace of the
    # initialiser on every apply): the same protection against a mismatched configuration
    x = jnp.asarray(rng.normal(size=(4, 1, 4, 8)))
    params = nn.Dense(16).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="parameter 'kernel'.*shape \\(8, 16\\).*\\(8, 32\\)"):
        nn.Dense(32).apply(params, x)
    tensor = nn.FusedTensor(max_degree=1)
    params = tensor.init(jax.random.PRNGKey(0), x, x)
    with pytest.raises(ValueError, match="parameter 'kernel_e1'"):
        tensor.apply(params, x[..., :4], x[..., :4])
    table = nn.Embed(num_embeddings=3, features=8).init(jax.random.PRNGKey(0), jnp.arange(2))
    with pytest.raises(ValueError, match="parameter 'embedding'"):
        nn.Embed(num_embeddings=4, features=8).apply(table, jnp.arange(2))
