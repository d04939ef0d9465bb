"""e3md.space against jax-md's spaces (the oracle): displacements, their derivatives with respect
to positions, box and perturbation, the call-time keywords, and no remainder in the compiled
wrap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import space

from e3md import space as e3space

BOX = np.array([[9.0, 2.5, -1.5], [0.0, 8.0, 2.0], [0.0, 0.0, 10.0]])  # columns: lattice


def _pairs(rng, n, scale, spread=1.0):
    """Pairs of points in [-(spread-1)/2, (spread+1)/2) * scale: in the box, or beyond it."""
    lo = -(spread - 1) / 2
    return tuple(jnp.asarray(rng.uniform(lo, lo + spread, size=(n, 3)) * scale) for _ in range(2))


def _close(a, b, dtype):
    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("spread", [1.0, 5.0])  # in the box; up to two boxes outside it
def test_periodic_matches_jax_md(rng, dtype, spread):
    side = jnp.asarray([7.0, 8.5, 9.0], dtype)
    Ra, Rb = (x.astype(dtype) for x in _pairs(rng, 400, np.asarray(side), spread))
    eps = jnp.asarray(np.eye(3) + 0.01 * rng.normal(size=(3, 3)), dtype)
    ours, _ = e3space.periodic(side)
    ref, _ = space.periodic(side)
    for kw in ({}, {"perturbation": eps}):
        d = jax.vmap(lambda a, b, kw=kw: ours(a, b, **kw))(Ra, Rb)
        assert d.dtype == dtype
        _close(d, jax.vmap(lambda a, b, kw=kw: ref(a, b, **kw))(Ra, Rb), dtype)

    def energy(disp, R, eps):  # a smooth function of every displacement
        return jnp.sum(jnp.cos(jax.vmap(lambda a, b: disp(a, b, perturbation=eps))(R, Rb)))

    for argnum in (1, 2):  # positions, perturbation
        _close(
            jax.grad(energy, argnum)(ours, Ra, eps), jax.grad(energy, argnum)(ref, Ra, eps), dtype
        )
    d = np.asarray(jax.vmap(ours)(Ra, Rb))
    assert np.all(np.abs(d) <= np.asarray(side) / 2 * (1 + 1e-6))
    with pytest.raises(space.UnexpectedBoxException):
        ours(Ra[0], Rb[0], box=side)


@pytest.mark.parametrize("fractional", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_periodic_general_matches_jax_md(rng, fractional, dtype):
    box = jnp.asarray(BOX, dtype)
    new_box = jnp.asarray(BOX @ (np.eye(3) + 0.02 * np.triu(rng.normal(size=(3, 3)))), dtype)
    Fa, Fb = _pairs(rng, 300, 1.0)
    Ra, Rb = ((F if fractional else F @ BOX.T).astype(dtype) for F in (Fa, Fb))
    ours, _ = e3space.periodic_general(box, fractional_coordinates=fractional)
    ref, _ = space.periodic_general(box, fractional_coordinates=fractional)
    eps = jnp.asarray(np.eye(3) + 0.01 * rng.normal(size=(3, 3)), dtype)
    for kw in ({}, {"box": new_box}, {"new_box": new_box}, {"perturbation": eps}):
        _close(
            jax.vmap(lambda a, b, kw=kw: ours(a, b, **kw))(Ra, Rb),
            jax.vmap(lambda a, b, kw=kw: ref(a, b, **kw))(Ra, Rb),
            dtype,
        )

    def energy(disp, R, cell, eps):  # gradients in positions (Cartesian), cell and strain
        d = jax.vmap(lambda a, b: disp(a, b, box=cell, perturbation=eps))(R, Rb)
        return jnp.sum(jnp.cos(d)) + jnp.sum(d**2)

    for argnum in (1, 2, 3):
        _close(
            jax.grad(energy, argnum)(ours, Ra, box, eps),
            jax.grad(energy, argnum)(ref, Ra, box, eps),
            dtype,
        )


def test_minimum_image_is_the_nearest_image_and_has_no_remainder(rng):
    """Brute force over the 27 neighbouring images; jax-md's wrap compiles to a remainder (the
    scalar fmod this module avoids), ours must not."""
    side = np.array([6.0, 7.0, 8.0])
    dR = rng.uniform(-2.5, 2.5, size=(200, 3)) * side
    wrapped = np.asarray(e3space.minimum_image(jnp.asarray(side), jnp.asarray(dR)))
    shifts = np.stack(np.meshgrid(*[np.arange(-4, 5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    images = dR[:, None] + shifts[None] * side
    nearest = images[np.arange(len(dR)), np.argmin(np.linalg.norm(images, axis=-1), axis=1)]
    np.testing.assert_allclose(wrapped, nearest, atol=1e-12)

    R = jnp.asarray(rng.uniform(0, 1, size=(50, 3)) * side)
    for make, remainder in ((e3space.periodic, False), (space.periodic, True)):
        disp, _ = make(jnp.asarray(side))
        hlo = jax.jit(jax.vmap(disp)).lower(R, R[::-1]).as_text()
        assert ("remainder" in hlo) == remainder, make
