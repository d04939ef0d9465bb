"""e3md.so3 against e3x and e3nn-jax (test oracles), and against its own algebraic properties."""

import e3nn_jax
import e3x
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3md import so3


def _random_o3(key, improper):
    rot = so3.random_rotation(key)
    return -rot if improper else rot


@pytest.mark.parametrize("normalization", ["racah", "orthonormal"])
@pytest.mark.parametrize("cartesian_order", [True, False])
def test_spherical_harmonics_match_e3x(rng, normalization, cartesian_order):
    r = jnp.asarray(rng.normal(size=(64, 3)) * 2.5)
    ours = so3.spherical_harmonics(
        r, 8, normalization=normalization, cartesian_order=cartesian_order
    )
    ref = e3x.so3.spherical_harmonics(
        r, 8, normalization=normalization, cartesian_order=cartesian_order
    )
    np.testing.assert_allclose(ours, ref, atol=1e-10, rtol=0)
    ours32 = so3.spherical_harmonics(
        r.astype(jnp.float32), 6, normalization=normalization, cartesian_order=cartesian_order
    )
    assert ours32.dtype == jnp.float32
    np.testing.assert_allclose(ours32, ref[:, :49], atol=1e-5, rtol=0)


def test_spherical_harmonics_match_e3nn_jax(rng):
    """Second oracle. e3nn-jax's real basis for degree l, ordered m=-l..l, uses the axes (y, z, x)
    of e3x's (x, y, z): Y_e3nn(x, y, z) = Y_e3x(z, x, y) up to normalisation, so both are compared
    after that relabelling, in e3nn's 'integral' (orthonormal) normalisation."""
    r = rng.normal(size=(32, 3))
    lmax = 6
    irreps = "+".join(f"{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))
    ref = e3nn_jax.spherical_harmonics(
        irreps, jnp.asarray(r), normalize=True, normalization="integral"
    ).array
    ours = so3.spherical_harmonics(
        jnp.asarray(r[:, [2, 0, 1]]), lmax, normalization="orthonormal", cartesian_order=False
    )
    np.testing.assert_allclose(ours, ref, atol=1e-10, rtol=0)


def test_spherical_harmonics_orthonormal_by_quadrature():
    """Gauss-Legendre x uniform-phi quadrature of Y Y^T over the sphere equals identity."""
    lmax = 9
    z, wz = np.polynomial.legendre.leggauss(lmax + 2)
    phi = 2 * np.pi * np.arange(2 * lmax + 2) / (2 * lmax + 2)
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    s = np.sqrt(1 - zz**2)
    pts = np.stack([s * np.cos(pp), s * np.sin(pp), zz], -1).reshape(-1, 3)
    w = (wz[:, None] * np.full(phi.shape, 2 * np.pi / phi.size)).reshape(-1)
    y = np.asarray(so3.spherical_harmonics(jnp.asarray(pts), lmax, normalization="orthonormal"))
    np.testing.assert_allclose((y * w[:, None]).T @ y, np.eye((lmax + 1) ** 2), atol=1e-12)


def test_spherical_harmonics_at_origin_finite_value_and_grad():
    f = lambda r: so3.spherical_harmonics(r, 8)
    y = f(jnp.zeros(3))
    np.testing.assert_array_equal(y, np.eye(81)[0])
    jac = jax.jacrev(f)(jnp.zeros(3))
    assert np.all(np.isfinite(jac))
    g = jax.grad(lambda r: jnp.sum(so3.spherical_harmonics(r, 4) ** 2))(jnp.zeros((4, 3)))
    assert np.all(np.isfinite(g))


def test_spherical_harmonics_bad_input():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        so3.spherical_harmonics(jnp.zeros((4, 2)), 2)
    with pytest.raises(ValueError, match="max_degree"):
        so3.spherical_harmonics(jnp.zeros(3), -1)
    with pytest.raises(ValueError, match="normalization"):
        so3.spherical_harmonics(jnp.zeros(3), 2, normalization="4pi-ish")


@pytest.mark.parametrize("cartesian_order", [True, False])
@pytest.mark.parametrize("degrees", [(1, 1, 2), (2, 3, 4), (4, 4, 4), (3, 2, 5), (0, 4, 4)])
def test_clebsch_gordan_matches_e3x(degrees, cartesian_order):
    ours = so3.clebsch_gordan(*degrees, cartesian_order=cartesian_order)
    assert ours.dtype == np.float64 and ours.shape == tuple((d + 1) ** 2 for d in degrees)
    ref = np.asarray(e3x.so3.clebsch_gordan(*degrees, cartesian_order=cartesian_order))
    np.testing.assert_allclose(ours, ref, atol=1e-12, rtol=0)


def test_clebsch_gordan_is_cached_and_read_only():
    a = so3.clebsch_gordan(3, 3, 3)
    assert a is so3.clebsch_gordan(3, 3, 3)
    with pytest.raises(ValueError):
        a[0, 0, 0] = 2.0


@pytest.mark.parametrize("improper", [False, True])
def test_clebsch_gordan_equivariant_high_degree(keys, improper):
    """C couples Y_l1(r) Y_l2(r) into something that transforms like degree l3, up to l = 6."""
    q = _random_o3(next(keys), improper)
    d = so3.wigner_d(q, 6)
    for l1, l2, l3 in [(6, 6, 6), (5, 6, 3), (3, 4, 6), (6, 1, 5)]:
        c = so3.clebsch_gordan_for_degrees(l1, l2, l3)
        d1, d2, d3 = (d[l * l : (l + 1) ** 2, l * l : (l + 1) ** 2] for l in (l1, l2, l3))
        lhs = np.einsum("ai,bj,ijk->abk", d1, d2, c)
        # Improper: D_l carries (-1)^l, and paths with l1+l2+l3 odd produce pseudotensors.
        parity = (-1.0) ** (l1 + l2 + l3) if improper else 1.0
        rhs = parity * np.einsum("abc,ck->abk", c, d3)
        np.testing.assert_allclose(lhs, rhs, atol=1e-11)


@pytest.mark.parametrize("improper", [False, True])
def test_wigner_d_represents_o3_on_harmonics(keys, rng, improper):
    q1, q2 = _random_o3(next(keys), improper), _random_o3(next(keys), False)
    r = jnp.asarray(rng.normal(size=(10, 3)))
    lmax = 6
    d1 = so3.wigner_d(q1, lmax)
    np.testing.assert_allclose(
        so3.spherical_harmonics(r @ q1, lmax), so3.spherical_harmonics(r, lmax) @ d1, atol=1e-11
    )
    np.testing.assert_allclose(so3.wigner_d(q1 @ q2, lmax), d1 @ so3.wigner_d(q2, lmax), atol=1e-11)
    np.testing.assert_allclose(d1 @ d1.T, np.eye((lmax + 1) ** 2), atol=1e-11)
    if not improper:
        np.testing.assert_allclose(d1, e3x.so3.wigner_d(q1, lmax), atol=1e-11)


def test_random_rotation_is_uniform_rotation(keys):
    rots = so3.random_rotation(next(keys), num=4000)
    assert rots.shape == (4000, 3, 3) and so3.random_rotation(next(keys)).shape == (3, 3)
    np.testing.assert_allclose(
        jnp.einsum("nij,nkj->nik", rots, rots), np.broadcast_to(np.eye(3), rots.shape), atol=1e-12
    )
    np.testing.assert_allclose(jnp.linalg.det(rots), 1.0, atol=1e-12)
    # Haar measure: E[R] = 0 and E[tr R] = 0 (3 sigma of the sample mean is ~0.03 / 0.05).
    assert np.abs(np.mean(rots, axis=0)).max() < 0.05
    assert abs(float(np.mean(np.trace(rots, axis1=1, axis2=2)))) < 0.08


def test_matrix_basis_inverts_and_has_symmetry():
    for lmax in (1, 2, 3, 4):
        b = so3.matrix_basis(lmax)
        lt = so3.matrix_degree(lmax)
        assert b.shape == (2 * lt + 1, 2 * lt + 1, (lmax + 1) ** 2)
        np.testing.assert_allclose(
            np.einsum("abn,abk->nk", b, b), np.eye((lmax + 1) ** 2), atol=1e-12
        )
        ls = np.repeat(np.arange(lmax + 1), 2 * np.arange(lmax + 1) + 1)
        sign = (-1.0) ** ls
        np.testing.assert_allclose(np.swapaxes(b, 0, 1), b * sign, atol=1e-14)
