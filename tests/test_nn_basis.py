"""Edge basis (e3md.nn.basis) against e3x.nn.basis; r = 0 and r = cutoff safety."""

import functools

import e3x
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3md import nn
from e3md.so3 import random_rotation, wigner_d

CUTOFF = 4.0  # Å


def _edges(rng, dtype, n=12):
    r = jnp.asarray(rng.normal(size=(n, 3)) * 2.0, dtype)
    r = r.at[0].set(0.0)  # padded edge
    r = r.at[1].set(jnp.asarray([0.0, 0.0, CUTOFF], dtype))  # exactly at the cutoff
    r = r.at[2].set(jnp.asarray([3.0, 0.0, 4.0], dtype))  # beyond the cutoff
    return r


@pytest.mark.parametrize(
    "dtype, max_degree, cartesian_order",
    [
        (jnp.float32, 3, True),
        (jnp.float64, 3, True),
        (jnp.float64, 2, False),
        (jnp.float64, 0, True),
    ],
)
def test_basis_matches_e3x(dtype, max_degree, cartesian_order, rng):
    r = _edges(rng, dtype)
    kw = dict(
        max_degree=max_degree,
        num=6,
        radial_fn=functools.partial(e3x.nn.basic_gaussian, limit=CUTOFF),
        cutoff_fn=functools.partial(e3x.nn.smooth_cutoff, cutoff=CUTOFF),
        cartesian_order=cartesian_order,
    )
    ref = jax.jit(functools.partial(e3x.nn.basis, **kw))(r)
    ours = jax.jit(
        functools.partial(
            nn.basis,
            max_degree=max_degree,
            num=6,
            radial_fn=functools.partial(nn.gaussian, limit=CUTOFF),
            cutoff_fn=functools.partial(nn.smooth_cutoff, cutoff=CUTOFF),
            cartesian_order=cartesian_order,
        )
    )(r)
    assert ours.shape == (r.shape[0], 1, (max_degree + 1) ** 2, 6) and ours.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol)


def test_basis_extras_and_damping_match_e3x(rng):
    r = _edges(rng, jnp.float64)
    radial = functools.partial(nn.bessel, limit=CUTOFF)
    cutoff = functools.partial(nn.cosine_cutoff, cutoff=CUTOFF)
    damping = lambda d: 1 - jnp.exp(-(d**2))
    ours, cut, norm = jax.jit(
        lambda r: nn.basis(
            r, 2, 5, radial, cutoff, damping_fn=damping, return_cutoff=True, return_norm=True
        )
    )(r)
    ref, ref_cut, ref_norm = jax.jit(lambda r: e3x.nn.basis(
        r, max_degree=2, num=5, radial_fn=radial, cutoff_fn=cutoff, damping_fn=damping,
        return_cutoff=True, return_norm=True,
    ))(r)  # fmt: skip
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cut, ref_cut, atol=1e-14)
    np.testing.assert_allclose(norm, ref_norm, rtol=1e-14)


def test_factored_basis_multiplies_to_the_basis(rng):
    r = _edges(rng, jnp.float64)
    radial = functools.partial(nn.bessel, limit=CUTOFF)
    cutoff = functools.partial(nn.smooth_cutoff, cutoff=CUTOFF)
    damping = lambda d: 1 - jnp.exp(-(d**2))
    full, norm = nn.basis(r, 2, 5, radial, cutoff, damping_fn=damping, return_norm=True)
    rad, ang, norm2 = nn.basis(
        r, 2, 5, radial, cutoff, damping_fn=damping, return_norm=True, factored=True
    )
    assert rad.shape == (*r.shape[:-1], 5) and ang.shape == (*r.shape[:-1], 1, 9)
    np.testing.assert_allclose(ang[..., :, None] * rad[..., None, None, :], full, atol=1e-14)
    np.testing.assert_allclose(norm2, norm)


def test_basis_zero_vector_and_cutoff(rng):
    r = _edges(rng, jnp.float64)
    b = nn.basis(
        r, 2, 4, functools.partial(nn.bessel, limit=CUTOFF),
        functools.partial(nn.polynomial_cutoff, cutoff=CUTOFF),
    )  # fmt: skip
    np.testing.assert_allclose(b[0, 0, 1:], 0.0)  # r = 0: only l = 0 survives
    assert np.all(b[0, 0, 0] != 0)
    np.testing.assert_allclose(b[1:3], 0.0, atol=1e-14)  # at and beyond the cutoff


@pytest.mark.parametrize(
    "radial_fn",
    [
        functools.partial(nn.bessel, limit=CUTOFF),
        functools.partial(nn.gaussian, limit=CUTOFF),
        functools.partial(nn.reciprocal_bernstein, kind="cuspless"),
    ],
)
def test_basis_gradient_finite_at_zero_and_cutoff(radial_fn, rng):
    r = _edges(rng, jnp.float64)
    w = jnp.asarray(rng.normal(size=(1, 16, 5)))

    def f(r):
        b = nn.basis(r, 3, 5, radial_fn, functools.partial(nn.smooth_cutoff, cutoff=CUTOFF))
        return jnp.sum(jnp.tanh(b * w))

    g = jax.jit(jax.grad(f))(r)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g[1:3], 0.0, atol=1e-12)  # nothing at/after the cutoff


def test_basis_rotates_with_wigner_d(rng):
    r = _edges(rng, jnp.float64)[3:]
    rot = random_rotation(jax.random.PRNGKey(7))
    d = wigner_d(rot, 3)
    fn = jax.jit(
        functools.partial(
            nn.basis, max_degree=3, num=4, radial_fn=functools.partial(nn.gaussian, limit=CUTOFF)
        )
    )
    lhs = fn(r @ rot)
    rhs = jnp.einsum("...ak,ab->...bk", fn(r), d)
    np.testing.assert_allclose(lhs, rhs, atol=1e-10)


def test_basis_rejects_bad_input():
    radial = functools.partial(nn.gaussian, limit=1.0)
    # ValueError from basis; TypeError (jaxtyping.TypeCheckError) under runtime type checking.
    with pytest.raises((ValueError, TypeError), match=r"\(\.\.\., 3\)|3"):
        nn.basis(jnp.ones((4, 2)), 1, 3, radial)
    with pytest.raises(ValueError, match="cutoff_fn"):
        nn.basis(jnp.ones((4, 3)), 1, 3, radial, return_cutoff=True)
