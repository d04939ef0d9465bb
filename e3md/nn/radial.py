r"""Radial basis functions :math:`g_k(r)`, :math:`k = 0 \dots K-1`, of a distance :math:`r`.

Signatures follow e3x (``fn(x, num, limit)``): ``x`` holds distances in Å, ``num`` is the
number :math:`K` of functions (static), ``limit`` the range in Å; the output has the shape of
``x`` with an axis of size ``num`` appended. Values and gradients are finite for every
:math:`r \ge 0`, including :math:`r = 0` (padded edges) and :math:`r = ` ``limit``. Combine
with a cutoff from :mod:`e3md.nn.cutoff` to make them vanish smoothly at the cutoff.
"""

import math
from typing import Literal

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from e3md.nn.ops import sin

__all__ = [
    "bernstein",
    "bessel",
    "gaussian",
    "reciprocal_bernstein",
    "reciprocal_mapping",
]

ReciprocalMapping = Literal["shifted", "damped", "cuspless"]


def _check_num(num: int) -> int:
    if int(num) != num or num < 1:
        raise ValueError(f"num must be an integer >= 1, received {num}")
    return int(num)


def _sin_over_x(a: Float[Array, "..."]) -> Float[Array, "..."]:
    """sin(a)/a with the removable singularity at 0 filled in (value and gradient)."""
    small = jnp.abs(a) < 1e-2
    a_safe = jnp.where(small, 1.0, a)
    a2 = a * a
    series = 1 - a2 / 6 * (1 - a2 / 20)  # error ~ a^6/5040 < 2e-16 for |a| < 1e-2
    return jnp.where(small, series, sin(a_safe) / a_safe)


def bessel(x: Float[Array, "..."], num: int, limit: float = 1.0) -> Float[Array, "... K"]:
    r"""Spherical Bessel (sine) radial basis of DimeNet (Klicpera et al., ICLR 2020, eq. 7).

    .. math::
        g_k(r) = \begin{cases}
          \sqrt{\dfrac{2}{r_c}}\ \dfrac{\sin\left((k+1)\pi r/r_c\right)}{r}, & r \le r_c \\
          0, & r > r_c
        \end{cases}
        \qquad k = 0\dots K-1,

    normalised so that :math:`\int_0^{r_c} r^2 g_k g_{k'}\,dr = \delta_{kk'}`. At
    :math:`r = 0` the limit :math:`\sqrt{2/r_c}\,(k+1)\pi/r_c` is used (smooth, finite
    gradient).

    Args:
      x: distances :math:`r` in Å.
      num: :math:`K`.
      limit: :math:`r_c` in Å.

    Returns:
      Basis values in Å^-3/2, shape ``x.shape + (num,)``.

    Raises:
      ValueError: if ``num < 1``.
    """
    num = _check_num(num)
    x = jnp.expand_dims(x, -1)
    # (k+1) pi / r_c in 1/Å, a constant in x's dtype (float32 stays float32 under x64)
    freq = (np.pi * np.arange(1, num + 1) / limit).astype(x.dtype)
    inside = x <= limit
    x_in = jnp.where(inside, x, 0)
    values = math.sqrt(2.0 / limit) * freq * _sin_over_x(freq * x_in)
    return jnp.where(inside, values, 0).astype(x.dtype)


def gaussian(x: Float[Array, "..."], num: int, limit: float = 1.0) -> Float[Array, "... K"]:
    r"""Evenly spaced Gaussians on :math:`[0, l]` (e3x's ``basic_gaussian``).

    .. math::
        g_k(r) = \exp\!\left(-\gamma\left(\frac{r}{l} - \mu_k\right)^2\right),\qquad
        \mu_k = \frac{k}{K-1},\quad \gamma = \sqrt{2K}\,(K-1)

    (for :math:`K = 1`, :math:`\mu_0 = 0` and :math:`\gamma = 0`).

    Args:
      x: distances :math:`r` in Å.
      num: :math:`K`.
      limit: :math:`l` in Å.

    Returns:
      Dimensionless basis values, shape ``x.shape + (num,)``.

    Raises:
      ValueError: if ``num < 1``.
    """
    num = _check_num(num)
    mu = np.linspace(0.0, 1.0, num)
    gamma = math.sqrt(2 * num) * (num - 1)
    d = jnp.expand_dims(x / limit, -1) - mu.astype(x.dtype)
    return jnp.exp(-gamma * d * d)


def _bernstein_unit(t: Float[Array, "..."], num: int) -> Float[Array, "... K"]:
    """Bernstein polynomials of degree num-1 on t, clipped to [0, 1]."""
    n = num - 1
    t = jnp.expand_dims(jnp.clip(t, 0, 1), -1)
    k = np.arange(num)
    binom = np.array([math.comb(n, int(i)) for i in k], dtype=np.float64)
    # Integer powers: exact at t = 0 and t = 1, and their derivatives stay finite there.
    up = jnp.concatenate([t**i for i in range(num)], axis=-1)
    down = jnp.concatenate([(1 - t) ** (n - i) for i in range(num)], axis=-1)
    return binom.astype(t.dtype) * up * down


def bernstein(x: Float[Array, "..."], num: int, limit: float = 1.0) -> Float[Array, "... K"]:
    r"""Bernstein polynomials on :math:`[0, l]` (e3x's ``basic_bernstein``).

    .. math::
        g_k(r) = \binom{K-1}{k}\, t^k (1-t)^{K-1-k},\qquad t = \mathrm{clip}(r/l, 0, 1).

    Args:
      x: distances :math:`r` in Å.
      num: :math:`K`.
      limit: :math:`l` in Å.

    Returns:
      Dimensionless basis values, shape ``x.shape + (num,)``.

    Raises:
      ValueError: if ``num < 1``.
    """
    return _bernstein_unit(x / limit, _check_num(num))


def reciprocal_mapping(
    x: Float[Array, "..."], kind: ReciprocalMapping = "shifted"
) -> Float[Array, "..."]:
    r"""Maps :math:`[0, \infty)` onto :math:`(0, 1]`, like :math:`1/r` but finite at 0.

    .. math::
        \text{shifted: } \frac{1}{r+1},\qquad
        \text{damped: } \frac{1-e^{-r}}{r},\qquad
        \text{cuspless: } \frac{1}{r+e^{-r}}

    with :math:`r` in Å (taken as a number, i.e. the length scale is 1 Å).

    Args:
      x: distances :math:`r` in Å.
      kind: which mapping.

    Returns:
      Dimensionless values in :math:`(0, 1]`, shape of ``x``.

    Raises:
      ValueError: for an unknown ``kind``.
    """
    if kind == "shifted":
        return 1 / (x + 1)
    if kind == "damped":
        small = jnp.abs(x) < 1e-3
        x_safe = jnp.where(small, 1.0, x)
        return jnp.where(small, 1 - x / 2 * (1 - x / 3), -jnp.expm1(-x_safe) / x_safe)
    if kind == "cuspless":
        return 1 / (x + jnp.exp(-x))
    raise ValueError(f"kind must be one of 'shifted', 'damped', 'cuspless', received {kind!r}")


def reciprocal_bernstein(
    x: Float[Array, "..."],
    num: int,
    kind: ReciprocalMapping = "shifted",
    use_reciprocal_weighting: bool = False,
) -> Float[Array, "... K"]:
    r"""Bernstein polynomials of a reciprocal distance (e3x's ``reciprocal_bernstein``).

    .. math::
        g_k(r) = b_k\bigl(1 - \rho(r)\bigr)\ \bigl[\times\ \rho(r)\bigr],

    where :math:`\rho` is :func:`reciprocal_mapping` and :math:`b_k` are the Bernstein
    polynomials of :func:`bernstein` on :math:`[0, 1]`; the factor :math:`\rho(r)` is applied
    if ``use_reciprocal_weighting``. Dense near :math:`r = 0`, sparse at long range.

    Args:
      x: distances :math:`r` in Å (length scale of the mapping: 1 Å).
      num: :math:`K`.
      kind: reciprocal mapping kind.
      use_reciprocal_weighting: multiply by :math:`\rho(r)`.

    Returns:
      Dimensionless basis values, shape ``x.shape + (num,)``.

    Raises:
      ValueError: if ``num < 1`` or ``kind`` is unknown.
    """
    num = _check_num(num)
    rho = reciprocal_mapping(x, kind)
    values = _bernstein_unit(1 - rho, num)
    if use_reciprocal_weighting:
        values = values * jnp.expand_dims(rho, -1)
    return values
