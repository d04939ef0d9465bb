"""Equivariant gated activations (e3md.nn.activations) against e3x."""

import e3x
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3md import nn

NAMES = [
    "relu", "leaky_relu", "elu", "selu", "celu", "silu", "swish", "gelu", "mish", "serf",
    "shifted_softplus", "hard_tanh", "soft_sign", "relu6", "hard_silu", "hard_swish",
    "bent_identity",
]  # fmt: skip


def _features(rng, dtype, parity=2):
    x = jnp.asarray(rng.normal(size=(5, parity, 9, 7)) * 3, dtype)
    # Exact zeros and tiny values in the scalar channel exercise the Taylor branches.
    return x.at[0, 0, 0, :3].set(jnp.asarray([0.0, 1e-9, -1e-9], dtype))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_matches_e3x(name, dtype, rng):
    x = _features(rng, dtype)
    ours = getattr(nn, name)(x)
    ref = getattr(e3x.nn, name)(x)
    assert ours.shape == x.shape and ours.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("kwargs", [dict(approximate=False)])
def test_gelu_exact_matches_e3x(kwargs, rng):
    x = _features(rng, jnp.float64, parity=1)
    np.testing.assert_allclose(nn.gelu(x, **kwargs), e3x.nn.gelu(x, **kwargs), rtol=1e-10)


def test_scalar_inputs_equal_plain_activations(rng):
    s = jnp.asarray(rng.normal(size=11) * 4)
    x = s.reshape(1, 1, -1)
    np.testing.assert_allclose(nn.silu(x).ravel(), jax.nn.silu(s), rtol=1e-12)
    np.testing.assert_allclose(
        nn.shifted_softplus(x).ravel(), jax.nn.softplus(s) - np.log(2), rtol=1e-10, atol=1e-14
    )
    np.testing.assert_allclose(nn.gelu(x).ravel(), jax.nn.gelu(s, approximate=True), rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_at_zero(name):
    x = jnp.zeros((2, 2, 4, 3)).at[1].set(1e-10)
    g = jax.grad(lambda v: jnp.sum(getattr(nn, name)(v) ** 2 + getattr(nn, name)(v)))(x)
    assert np.all(np.isfinite(g))


def test_gates_commute_with_rotation(rng):
    """Gating by the invariant channel commutes with any O(3) action on the l > 0 irreps."""
    x = _features(rng, jnp.float64, parity=1)[:, :, :4]  # L = 1
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    d = np.eye(4)
    d[1:, 1:] = q  # any orthogonal map of the l = 1 block (Cartesian order)
    rot = lambda v: jnp.einsum("ij,...jf->...if", d, v)
    np.testing.assert_allclose(nn.silu(rot(x)), rot(nn.silu(x)), atol=1e-12)


def test_rejects_bad_shape():
    # ValueError; TypeError (jaxtyping.TypeCheckError) under runtime type checking.
    with pytest.raises((ValueError, TypeError), match="shape|P LM F"):
        nn.silu(jnp.ones((3, 4)))
