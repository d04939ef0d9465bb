"""Radial bases and cutoffs (e3md.nn.radial, e3md.nn.cutoff) against e3x / e3nn-jax oracles."""

import math

import e3nn_jax
import e3x
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3md import nn

CUTOFF = 4.5  # Å


def _grid(dtype):
    # Includes r = 0 (padded edges), r = cutoff exactly, and points beyond the cutoff.
    r = np.concatenate([np.linspace(0.0, 1.3 * CUTOFF, 61), [CUTOFF, 1e-9, 1e-4]])
    return jnp.asarray(r, dtype)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=1e-10, atol=1e-10)


DTYPES = [jnp.float32, jnp.float64]


def _run(fn, x, *args, **kwargs):
    """Evaluates ``fn(x, *args, **kwargs)`` under jit (eager dispatch is slow here)."""
    return jax.jit(lambda v: fn(v, *args, **kwargs))(x)


# e3x builds Bernstein binomials from lgamma (betaln): its float64 values are only good to
# ~3e-7, so float64 agreement with e3x is checked at 2e-6 and exactness against math.comb.
_BERNSTEIN_TOL = {
    jnp.float32: dict(rtol=1e-5, atol=1e-5),
    jnp.float64: dict(rtol=2e-6, atol=2e-6),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["smooth_cutoff", "cosine_cutoff"])
def test_cutoffs_match_e3x(name, dtype):
    r = _grid(dtype)
    ours = _run(getattr(nn, name), r, CUTOFF)
    ref = _run(getattr(e3x.nn, name), r, cutoff=CUTOFF)
    assert ours.dtype == dtype
    np.testing.assert_allclose(ours, ref, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [3, 6])
def test_polynomial_cutoff_matches_e3nn_envelope(p, dtype):
    r = _grid(dtype)
    ours = _run(nn.polynomial_cutoff, r, CUTOFF, p=p)
    # e3nn's poly_envelope(p-1, 2) is the DimeNet u_p; it is 0 beyond x_max as well.
    ref = jax.jit(e3nn_jax.poly_envelope(p - 1, 2, x_max=CUTOFF))(np.asarray(r, np.float64))
    np.testing.assert_allclose(ours, ref, **_tol(dtype))


@pytest.mark.parametrize("name", ["smooth_cutoff", "cosine_cutoff", "polynomial_cutoff"])
def test_cutoff_value_and_gradient_vanish_at_cutoff(name):
    fn = getattr(nn, name)
    f = jax.jit(lambda r: fn(r, CUTOFF))
    df = jax.jit(jax.vmap(jax.grad(f)))
    r = jnp.asarray([0.0, CUTOFF * (1 - 1e-7), CUTOFF, CUTOFF * 1.2])
    values, grads = f(r), df(r)
    assert np.all(np.isfinite(grads))
    np.testing.assert_allclose(values[0], 1.0)
    np.testing.assert_allclose(grads[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(values[1:], 0.0, atol=1e-9)
    np.testing.assert_allclose(grads[1:], 0.0, atol=1e-5)
    # Monotone decrease in between.
    inner = f(jnp.linspace(0, CUTOFF, 50))
    assert np.all(np.diff(np.asarray(inner)) <= 1e-15)


def test_cutoff_rejects_bad_cutoff():
    for fn in (nn.smooth_cutoff, nn.cosine_cutoff, nn.polynomial_cutoff):
        with pytest.raises(ValueError, match="cutoff"):
            fn(jnp.ones(3), 0.0)
    with pytest.raises(ValueError, match="p must"):
        nn.polynomial_cutoff(jnp.ones(3), 1.0, p=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num", [2, 8])
def test_gaussian_matches_e3x(num, dtype):
    r = _grid(dtype)
    ours = _run(nn.gaussian, r, num, CUTOFF)
    ref = _run(e3x.nn.basic_gaussian, r, num=num, limit=CUTOFF)
    assert ours.shape == r.shape + (num,) and ours.dtype == dtype
    np.testing.assert_allclose(ours, ref, **_tol(dtype))


def test_gaussian_single_function_is_flat():
    # (e3x's basic_gaussian returns NaN for num=1; ours is the K=1 limit gamma=0.)
    np.testing.assert_allclose(nn.gaussian(_grid(jnp.float64), 1, CUTOFF), 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num", [1, 9])
def test_bernstein_matches_e3x_and_exact_formula(num, dtype):
    r = _grid(dtype)
    ours = _run(nn.bernstein, r, num, CUTOFF)
    ref = _run(e3x.nn.basic_bernstein, r, num=num, limit=CUTOFF)
    np.testing.assert_allclose(ours, ref, **_BERNSTEIN_TOL[dtype])
    t = np.clip(np.asarray(r, np.float64) / CUTOFF, 0, 1)
    n = num - 1
    exact = np.stack([math.comb(n, k) * t**k * (1 - t) ** (n - k) for k in range(num)], -1)
    np.testing.assert_allclose(ours, exact, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kind, weighting", [("shifted", False), ("damped", True), ("cuspless", False)]
)
def test_reciprocal_bernstein_matches_e3x(kind, weighting, dtype):
    r = _grid(dtype)
    kw = dict(kind=kind, use_reciprocal_weighting=weighting)
    ours = _run(nn.reciprocal_bernstein, r, 8, **kw)
    ref = _run(e3x.nn.reciprocal_bernstein, r, num=8, **kw)
    assert ours.dtype == dtype
    np.testing.assert_allclose(ours, ref, **_BERNSTEIN_TOL[dtype])


def test_reciprocal_mapping_rejects_unknown_kind():
    # ValueError; TypeError (jaxtyping.TypeCheckError) under runtime type checking.
    with pytest.raises((ValueError, TypeError), match="kind"):
        nn.reciprocal_mapping(jnp.ones(2), kind="nope")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bessel_matches_e3nn_and_limit_at_zero(dtype):
    r = _grid(dtype)
    ours = _run(nn.bessel, r, 7, CUTOFF)
    assert ours.shape == (r.shape[0], 7) and ours.dtype == dtype
    inside = np.asarray(r) <= CUTOFF
    ref = _run(e3nn_jax.bessel, np.asarray(r, np.float64), 7, x_max=CUTOFF)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(np.asarray(ours)[inside], ref[inside], **tol)
    np.testing.assert_allclose(np.asarray(ours)[~inside], 0.0)
    # Independent check of the r -> 0 limit sqrt(2/c) n pi / c.
    n = np.arange(1, 8)
    np.testing.assert_allclose(ours[0], np.sqrt(2 / CUTOFF) * n * np.pi / CUTOFF, rtol=1e-6)


def test_bessel_orthonormal_with_r2_weight():
    r = np.linspace(0, CUTOFF, 20001)
    g = np.asarray(nn.bessel(jnp.asarray(r), 5, CUTOFF))
    gram = np.trapezoid(r[:, None, None] ** 2 * g[:, :, None] * g[:, None, :], r, axis=0)
    np.testing.assert_allclose(gram, np.eye(5), atol=1e-6)


@pytest.mark.parametrize(
    "fn",
    [
        lambda r: nn.bessel(r, 6, CUTOFF),
        lambda r: nn.gaussian(r, 6, CUTOFF),
        lambda r: nn.bernstein(r, 6, CUTOFF),
        lambda r: nn.reciprocal_bernstein(r, 6, kind="damped", use_reciprocal_weighting=True),
        lambda r: nn.reciprocal_bernstein(r, 6, kind="cuspless"),
        lambda r: nn.bessel(r, 6, CUTOFF) * nn.polynomial_cutoff(r, CUTOFF)[..., None],
    ],
)
def test_radial_gradients_finite_at_zero_and_cutoff(fn):
    r = jnp.asarray([0.0, 1e-12, 1.0, CUTOFF, 2 * CUTOFF])
    jac = jax.jit(jax.vmap(jax.jacfwd(fn)))(r)
    assert np.all(np.isfinite(jac))
    grads = jax.jit(jax.vmap(jax.grad(lambda x: jnp.sum(fn(x) ** 2))))(r)
    assert np.all(np.isfinite(grads))


def test_bessel_gradient_at_zero_matches_finite_difference():
    f = jax.jit(lambda r: jnp.sum(nn.bessel(r, 4, CUTOFF) * jnp.arange(1.0, 5.0)))
    h = 1e-5
    fd = (f(jnp.asarray(2 * h)) - f(jnp.asarray(0.0))) / (2 * h)  # slope ~ linear near 0
    g0 = jax.grad(f)(jnp.asarray(0.0))
    np.testing.assert_allclose(g0, 0.0, atol=1e-12)  # even function of r: zero slope at 0
    assert abs(fd) < 1e-3
    x = jnp.asarray(1.7)
    fd = (f(x + h) - f(x - h)) / (2 * h)
    np.testing.assert_allclose(jax.grad(f)(x), fd, rtol=1e-7)
