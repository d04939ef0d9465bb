"""Rotations: uniform random rotations and Wigner-D matrices of O(3) elements."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from e3md.so3._common import check_degree
from e3md.so3.harmonics import spherical_harmonics, spherical_harmonics_numpy


def random_rotation(key: PRNGKeyArray, num: int | None = None) -> Float[Array, "... 3 3"]:
    r"""Rotation matrices drawn uniformly (Haar measure) from :math:`\mathrm{SO}(3)`.

    A unit quaternion drawn as a normalised 4-d Gaussian is uniform on :math:`S^3`, and its
    rotation matrix is Haar-distributed on :math:`\mathrm{SO}(3)`.

    Args:
      key: PRNG key.
      num: number of matrices; ``None`` returns a single ``(3, 3)`` matrix.

    Returns:
      Array of shape ``(3, 3)`` or ``(num, 3, 3)`` with :math:`R^\top R = 1`, :math:`\det R = 1`.

    Raises:
      ValueError: if ``num`` is not a positive integer.
    """
    if num is not None and (not isinstance(num, int) or num < 1):
        raise ValueError(f"num must be a positive integer or None, received {num!r}")
    q = jax.random.normal(key, (1 if num is None else num, 4), dtype=jnp.result_type(float))
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    rot = jnp.stack(
        [
            jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            jnp.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            jnp.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )
    return rot[0] if num is None else rot


@functools.cache
def _wigner_d_fit(max_degree: int, cartesian_order: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """Fixed sample directions and, per degree, the pseudo-inverse of Y_l at those directions."""
    num = 2 * (2 * max_degree + 1) + 8
    pts = np.random.default_rng(20240611).normal(size=(num, 3))
    pts /= np.linalg.norm(pts, axis=-1, keepdims=True)
    y = spherical_harmonics_numpy(
        pts, max_degree, r_is_normalized=True, cartesian_order=cartesian_order
    )
    pinvs = [np.linalg.pinv(y[:, l * l : (l + 1) ** 2]) for l in range(max_degree + 1)]
    return pts, pinvs


def wigner_d(
    rot: Float[Array, "... 3 3"], max_degree: int, cartesian_order: bool = True
) -> Float[Array, "... LM LM"]:
    r"""Wigner-D matrices :math:`D(Q)` of orthogonal :math:`3\times3` matrices (e3x convention).

    :math:`D` is block diagonal over degrees and satisfies
    :math:`Y(\vec r\,Q) = Y(\vec r)\,D(Q)` for row vectors :math:`\vec r` (so features
    transform as ``x @ D``). For an improper :math:`Q` (det -1) the degree-:math:`\ell` block
    carries the factor :math:`(-1)^\ell`, i.e. it is the representation on spherical harmonics.
    Each block is obtained exactly (up to rounding) by a least-squares fit of
    :math:`Y_\ell(P Q) = Y_\ell(P) D_\ell` at fixed sample directions :math:`P`; the
    pseudo-inverses are float64 constants computed once.

    Args:
      rot: orthogonal matrices of shape ``(..., 3, 3)``.
      max_degree: largest degree :math:`L` (>= 0).
      cartesian_order: use e3x's Cartesian order within each degree.

    Returns:
      Array of shape ``(..., (L+1)**2, (L+1)**2)``.

    Raises:
      ValueError: if ``rot`` does not have shape ``(..., 3, 3)`` or ``max_degree`` < 0.
    """
    check_degree(max_degree, "max_degree")
    if rot.ndim < 2 or rot.shape[-2:] != (3, 3):
        raise ValueError(f"rot must have shape (..., 3, 3), received shape {rot.shape}")
    with jax.ensure_compile_time_eval():
        pts, pinvs = _wigner_d_fit(int(max_degree), bool(cartesian_order))
    dtype = rot.dtype
    y_rot = spherical_harmonics(
        jnp.asarray(pts, dtype) @ rot,
        max_degree,
        r_is_normalized=True,
        cartesian_order=cartesian_order,
    )  # (..., P, LM)
    n = (max_degree + 1) ** 2
    d = jnp.zeros((*rot.shape[:-2], n, n), dtype)
    for l in range(max_degree + 1):
        s = slice(l * l, (l + 1) ** 2)
        d = d.at[..., s, s].set(jnp.asarray(pinvs[l], dtype) @ y_rot[..., s])
    return d
