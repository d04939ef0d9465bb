"""Real Clebsch-Gordan coefficients, computed exactly in float64 (Racah's formula)."""

import functools
import math
from fractions import Fraction

import numpy as np

from e3md.so3._common import cartesian_permutation, cartesian_permutation_for_degree, check_degree


@functools.cache
def _complex_cg_block(j1: int, j2: int, j3: int) -> np.ndarray:
    r"""Complex (Condon–Shortley) coefficients :math:`\langle j_1 m_1 j_2 m_2 | j_3 m_3\rangle`.

    Racah's closed formula, evaluated with exact integers/fractions and rounded once:

    .. math::
        \langle j_1 m_1 j_2 m_2|J M\rangle = \delta_{M,m_1+m_2}
        \sqrt{\frac{(2J+1)(J+j_1-j_2)!(J-j_1+j_2)!(j_1+j_2-J)!}{(j_1+j_2+J+1)!}}
        \sqrt{(J+M)!(J-M)!(j_1-m_1)!(j_1+m_1)!(j_2-m_2)!(j_2+m_2)!}
        \sum_k \frac{(-1)^k}{k!(j_1+j_2-J-k)!(j_1-m_1-k)!(j_2+m_2-k)!(J-j_2+m_1+k)!(J-j_1-m_2+k)!}

    Returns:
      Array of shape ``(2j1+1, 2j2+1, 2j3+1)`` (order :math:`m=-j..j`), float64.
    """
    f = math.factorial
    out = np.zeros((2 * j1 + 1, 2 * j2 + 1, 2 * j3 + 1))
    if not abs(j1 - j2) <= j3 <= j1 + j2:
        return out
    pre = Fraction(
        (2 * j3 + 1) * f(j3 + j1 - j2) * f(j3 - j1 + j2) * f(j1 + j2 - j3), f(j1 + j2 + j3 + 1)
    )
    for m1 in range(-j1, j1 + 1):
        for m2 in range(-j2, j2 + 1):
            m3 = m1 + m2
            if abs(m3) > j3:
                continue
            num = f(j3 + m3) * f(j3 - m3) * f(j1 - m1) * f(j1 + m1) * f(j2 - m2) * f(j2 + m2)
            kmin = max(0, j2 - j3 - m1, j1 - j3 + m2)
            kmax = min(j1 + j2 - j3, j1 - m1, j2 + m2)
            s = Fraction(0)
            for k in range(kmin, kmax + 1):
                den = (
                    f(k)
                    * f(j1 + j2 - j3 - k)
                    * f(j1 - m1 - k)
                    * f(j2 + m2 - k)
                    * f(j3 - j2 + m1 + k)
                    * f(j3 - j1 - m2 + k)
                )
                s += Fraction((-1) ** k, den)
            # sqrt of an exact rational, then one rounding of the exact sum.
            sq = pre * num
            out[m1 + j1, m2 + j2, m3 + j3] = math.sqrt(sq.numerator / sq.denominator) * float(s)
    return out


@functools.cache
def _complex_to_real(l: int) -> np.ndarray:
    r"""Unitary :math:`U` with real harmonics :math:`Y_{\ell m} = \sum_\mu U_{m\mu} Y_\ell^\mu`.

    e3x's phase convention (real harmonics without Condon–Shortley phase): for :math:`m>0`,
    :math:`U_{m,m} = (-1)^m/\sqrt2`, :math:`U_{m,-m} = 1/\sqrt2`; for :math:`m<0`,
    :math:`U_{m,m} = i/\sqrt2`, :math:`U_{m,-m} = -(-1)^{m} i/\sqrt2`; :math:`U_{00} = 1`.
    """
    u = np.zeros((2 * l + 1, 2 * l + 1), dtype=np.complex128)
    s = 1 / math.sqrt(2)
    for m in range(-l, l + 1):
        if m > 0:
            u[m + l, m + l] = (-1) ** m * s
            u[m + l, -m + l] = s
        elif m < 0:
            u[m + l, m + l] = 1j * s
            u[m + l, -m + l] = -((-1) ** m) * 1j * s
        else:
            u[l, l] = 1.0
    return u


@functools.cache
def _real_cg_block(l1: int, l2: int, l3: int) -> np.ndarray:
    """Real coefficients for one (l1, l2, l3) block, order m=-l..l, float64, read-only."""
    c = _complex_cg_block(l1, l2, l3)
    u1, u2, u3 = _complex_to_real(l1), _complex_to_real(l2), _complex_to_real(l3)
    real = np.einsum("ai,bj,ck,ijk->abc", u1, u2, u3.conj(), c)
    real = real * (1j) ** (l1 + l2 - l3)
    if np.max(np.abs(real.imag), initial=0.0) > 1e-12:  # pragma: no cover - a convention bug
        raise AssertionError(f"real CG block ({l1},{l2},{l3}) is not real")
    out = np.ascontiguousarray(real.real)
    out[np.abs(out) < 1e-15] = 0.0
    out.setflags(write=False)
    return out


def clebsch_gordan_for_degrees(
    degree1: int, degree2: int, degree3: int, cartesian_order: bool = True
) -> np.ndarray:
    r"""Real Clebsch–Gordan block :math:`C^{\ell_3 m_3}_{\ell_1 m_1 \ell_2 m_2}` of one triple.

    Returns:
      float64 array of shape ``(2*degree1+1, 2*degree2+1, 2*degree3+1)`` (read-only).
    """
    for name, d in (("degree1", degree1), ("degree2", degree2), ("degree3", degree3)):
        check_degree(d, name)
    block = _real_cg_block(int(degree1), int(degree2), int(degree3))
    if cartesian_order:
        p1, p2, p3 = (cartesian_permutation_for_degree(int(d)) for d in (degree1, degree2, degree3))
        block = block[p1][:, p2][:, :, p3]
    return block


@functools.cache
def _clebsch_gordan(l1max: int, l2max: int, l3max: int, cartesian_order: bool) -> np.ndarray:
    n1, n2, n3 = (l1max + 1) ** 2, (l2max + 1) ** 2, (l3max + 1) ** 2
    cg = np.zeros((n1, n2, n3))
    for l1 in range(l1max + 1):
        for l2 in range(l2max + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, l3max) + 1):
                cg[l1 * l1 : (l1 + 1) ** 2, l2 * l2 : (l2 + 1) ** 2, l3 * l3 : (l3 + 1) ** 2] = (
                    _real_cg_block(l1, l2, l3)
                )
    if cartesian_order:
        p1, p2, p3 = (cartesian_permutation(d) for d in (l1max, l2max, l3max))
        cg = cg[p1][:, p2][:, :, p3]
    cg = np.ascontiguousarray(cg)
    cg.setflags(write=False)
    return cg


def clebsch_gordan(
    max_degree1: int, max_degree2: int, max_degree3: int, cartesian_order: bool = True
) -> np.ndarray:
    r"""Real Clebsch–Gordan coefficients coupling all degrees up to the given maxima.

    The real coefficients are obtained from the complex (Condon–Shortley) ones by the change of
    basis :math:`U_\ell` from complex to real harmonics (see :func:`_complex_to_real`),

    .. math::
        C^{\ell_3 m_3}_{\ell_1 m_1 \ell_2 m_2} = i^{\ell_1+\ell_2-\ell_3}
        \sum_{\mu_1\mu_2\mu_3} U^{\ell_1}_{m_1\mu_1} U^{\ell_2}_{m_2\mu_2}
        \overline{U^{\ell_3}_{m_3\mu_3}}\,\langle\ell_1\mu_1\ell_2\mu_2|\ell_3\mu_3\rangle,

    which reproduces e3x's numbers (same phases, same Cartesian order). The coupling
    :math:`z_{\ell_3 m_3} = \sum C x_{\ell_1 m_1} y_{\ell_2 m_2}` is equivariant under
    :func:`e3md.so3.wigner_d`. Computed once per process in float64 (``lru_cache``); the
    returned array is read-only: wrap it with ``jnp.asarray`` under
    ``jax.ensure_compile_time_eval()`` so it enters ``jit`` as a literal.

    Args:
      max_degree1: largest degree :math:`L_1` of the first factor (>= 0).
      max_degree2: largest degree :math:`L_2` of the second factor (>= 0).
      max_degree3: largest degree :math:`L_3` of the product (>= 0).
      cartesian_order: use e3x's Cartesian order within each degree.

    Returns:
      float64 array of shape ``((L1+1)**2, (L2+1)**2, (L3+1)**2)``.

    Raises:
      ValueError: if a degree is negative or not an integer.
    """
    for name, d in (
        ("max_degree1", max_degree1),
        ("max_degree2", max_degree2),
        ("max_degree3", max_degree3),
    ):
        check_degree(d, name)
    return _clebsch_gordan(
        int(max_degree1), int(max_degree2), int(max_degree3), bool(cartesian_order)
    )
