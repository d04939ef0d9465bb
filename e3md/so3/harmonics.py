"""Real spherical harmonics of any degree, evaluated by a stable recursion."""

import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from e3md.so3._common import cartesian_permutation, check_degree

Normalization = Literal["racah", "orthonormal"]
_NORMALIZATIONS = ("racah", "orthonormal")


@functools.cache
def _normalization_factors(max_degree: int, normalization: str) -> np.ndarray:
    r"""Per-entry factors :math:`\mathcal{N}_\ell\,k_{\ell m}` turning the recursion into
    :math:`Y_\ell^m` (order :math:`m=-\ell..\ell`), float64.

    :math:`k_{\ell m} = \sqrt{(2-\delta_{m0})(\ell-|m|)!/(\ell+|m|)!}` (Racah / Schmidt
    semi-normalisation) and :math:`\mathcal{N}_\ell = 1` (Racah) or
    :math:`\sqrt{(2\ell+1)/4\pi}` (orthonormal).
    """
    out = []
    for l in range(max_degree + 1):
        n_l = 1.0 if normalization == "racah" else math.sqrt((2 * l + 1) / (4 * math.pi))
        for m in range(-l, l + 1):
            a = abs(m)
            k = math.sqrt((2.0 if a else 1.0) * math.factorial(l - a) / math.factorial(l + a))
            out.append(n_l * k)
    arr = np.asarray(out, dtype=np.float64)
    arr.setflags(write=False)
    return arr


def _unnormalized_solid_harmonics(x: Any, y: Any, z: Any, max_degree: int, xp: Any) -> list:
    r"""Unnormalised real solid harmonics :math:`\bar P_\ell^{|m|}(z, r^2)\,\{C_m, S_m\}(x, y)`.

    Works with ``xp`` = numpy or jax.numpy. Recursions (no Condon-Shortley phase):

    .. math::
        C_{m+1} = x C_m - y S_m,\quad S_{m+1} = x S_m + y C_m,\quad C_0 = 1,\ S_0 = 0,

        \bar P_m^m = (2m-1)!!,\quad \bar P_{m+1}^m = (2m+1) z \bar P_m^m,\quad
        \bar P_\ell^m = \frac{(2\ell-1) z \bar P_{\ell-1}^m - (\ell+m-1) r^2 \bar P_{\ell-2}^m}
        {\ell-m}.

    Every term is a homogeneous polynomial of degree :math:`\ell` in (x, y, z), so at
    :math:`\vec r = 0` all degrees above 0 vanish and every derivative is finite.

    Returns:
      A list of ``(L+1)**2`` arrays (order :math:`m=-\ell..\ell` within each degree).
    """
    r2 = x * x + y * y + z * z
    one = xp.ones_like(x)
    cs = [(one, xp.zeros_like(x))]
    for _ in range(max_degree):
        c, s = cs[-1]
        cs.append((x * c - y * s, x * s + y * c))
    # pbar[m][l] for l >= m.
    pbar: list[dict[int, Any]] = []
    for m in range(max_degree + 1):
        col = {m: math.prod(range(1, 2 * m, 2)) * one}
        if m + 1 <= max_degree:
            col[m + 1] = (2 * m + 1) * z * col[m]
        for l in range(m + 2, max_degree + 1):
            col[l] = ((2 * l - 1) * z * col[l - 1] - (l + m - 1) * r2 * col[l - 2]) / (l - m)
        pbar.append(col)
    out = []
    for l in range(max_degree + 1):
        for m in range(-l, l + 1):
            a = abs(m)
            trig = cs[a][1] if m < 0 else cs[a][0]
            out.append(pbar[a][l] * trig if a else pbar[0][l])
    return out


def _check_normalization(normalization: str) -> None:
    if normalization not in _NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {_NORMALIZATIONS}, received {normalization!r}"
        )


def spherical_harmonics_numpy(
    r: np.ndarray,
    max_degree: int,
    r_is_normalized: bool = False,
    normalization: Normalization = "racah",
    cartesian_order: bool = True,
) -> np.ndarray:
    """NumPy (float64) twin of :func:`spherical_harmonics`, for building constant tables."""
    check_degree(max_degree, "max_degree")
    _check_normalization(normalization)
    r = np.asarray(r, dtype=np.float64)
    if not r_is_normalized:
        n = np.linalg.norm(r, axis=-1, keepdims=True)
        r = r / np.where(n > 0, n, 1.0)
    terms = _unnormalized_solid_harmonics(r[..., 0], r[..., 1], r[..., 2], max_degree, np)
    y = np.stack(terms, axis=-1) * _normalization_factors(max_degree, normalization)
    if cartesian_order:
        y = y[..., cartesian_permutation(max_degree)]
    return y


def spherical_harmonics(
    r: Float[Array, "... 3"],
    max_degree: int,
    r_is_normalized: bool = False,
    normalization: Normalization = "racah",
    cartesian_order: bool = True,
) -> Float[Array, "... LM"]:
    r"""Real spherical harmonics :math:`Y_\ell^m(\hat r)` for :math:`\ell = 0..L`.

    Same functions, order and signs as ``e3x.so3.spherical_harmonics``:

    .. math::
        Y_\ell^m(\hat r) = \mathcal N_\ell \sqrt{(2-\delta_{m0})\tfrac{(\ell-|m|)!}{(\ell+|m|)!}}
        \,\bar P_\ell^{|m|}(z)\begin{cases}
        \operatorname{Im}(x+iy)^{|m|} & m<0\\ 1 & m=0\\ \operatorname{Re}(x+iy)^{m} & m>0
        \end{cases}

    with :math:`\bar P_\ell^m` the associated Legendre functions without the Condon–Shortley
    phase and without the :math:`(1-z^2)^{m/2}` factor (evaluated by recursion, so any degree
    works). Racah normalisation (:math:`\mathcal N_\ell = 1`) gives
    :math:`\int Y_\ell^m Y_{\ell'}^{m'} d\Omega=\frac{4\pi}{2\ell+1}\delta_{\ell\ell'}\delta_{mm'}`
    and :math:`Y_1 = (x, y, z)` in Cartesian order; ``"orthonormal"`` uses
    :math:`\mathcal N_\ell = \sqrt{(2\ell+1)/4\pi}`.

    At :math:`\vec r = 0` the result is :math:`(1, 0, \dots, 0)` (Racah) and gradients are
    finite: vectors with :math:`|\vec r|^2` below the dtype's ``tiny`` are left unnormalised.

    Args:
      r: vectors of shape ``(..., 3)`` (any length unit; only the direction matters).
      max_degree: largest degree :math:`L` (static, >= 0).
      r_is_normalized: skip the normalisation of ``r``.
      normalization: ``"racah"`` or ``"orthonormal"``.
      cartesian_order: order each degree as :math:`m = \ell, -\ell, \dots, 1, -1, 0` (e3x's
        default; degree 1 is (x, y, z)); otherwise :math:`m=-\ell..\ell`.

    Returns:
      Array of shape ``(..., (max_degree+1)**2)`` (dimensionless), dtype of ``r``.

    Raises:
      ValueError: if ``r.shape[-1] != 3``, ``max_degree`` is negative or ``normalization`` is
        unknown.
    """
    check_degree(max_degree, "max_degree")
    _check_normalization(normalization)
    if r.ndim == 0 or r.shape[-1] != 3:
        raise ValueError(f"r must have shape (..., 3), received shape {r.shape}")
    r = jnp.asarray(r)
    if not jnp.issubdtype(r.dtype, jnp.floating):
        r = r.astype(jnp.result_type(float))
    if not r_is_normalized:
        r2 = jnp.sum(r * r, axis=-1, keepdims=True)
        # sqrt of a safe value: no 0/0 in the value or in the gradient at r = 0.
        safe = jnp.where(r2 > jnp.finfo(r.dtype).tiny, r2, 1.0)
        r = r / jnp.sqrt(safe)
    terms = _unnormalized_solid_harmonics(r[..., 0], r[..., 1], r[..., 2], max_degree, jnp)
    with jax.ensure_compile_time_eval():
        factors = _normalization_factors(max_degree, normalization)
        perm = cartesian_permutation(max_degree) if cartesian_order else None
    if perm is not None:
        terms = [terms[i] for i in perm]
        factors = factors[perm]
    y = jnp.stack(terms, axis=-1)
    return y * jnp.asarray(factors, dtype=y.dtype)
