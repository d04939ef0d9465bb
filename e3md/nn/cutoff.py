r"""Smooth cutoff functions :math:`u(r)`: 1 at :math:`r = 0`, 0 for :math:`r \ge r_c`.

All take distances ``x`` in Å and the cutoff radius ``cutoff`` (:math:`r_c`) in Å, return
dimensionless values of the same shape, and have finite values and gradients everywhere,
including exactly at :math:`r = 0` (padded edges) and at :math:`r = r_c`.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from e3md.nn.ops import cos

__all__ = ["cosine_cutoff", "polynomial_cutoff", "smooth_cutoff"]


def _check_cutoff(cutoff: float | Array) -> None:
    # Only concrete values can be validated; a traced cutoff is the caller's responsibility.
    try:
        value = float(cutoff)
    except jax.errors.ConcretizationTypeError:
        return
    if not value > 0.0:
        raise ValueError(f"cutoff must be > 0 Å, received {cutoff}")


def smooth_cutoff(x: Float[Array, "..."], cutoff: float = 1.0) -> Float[Array, "..."]:
    r"""Infinitely differentiable bump cutoff (e3x's ``smooth_cutoff``).

    .. math::
        u(r) = \begin{cases}
          \exp\!\left(1 - \dfrac{1}{1 - (r/r_c)^2}\right), & r < r_c \\
          0, & r \ge r_c
        \end{cases}

    All derivatives vanish at :math:`r_c`.

    Args:
      x: distances :math:`r` in Å.
      cutoff: :math:`r_c` in Å (> 0).

    Returns:
      Cutoff values (dimensionless), shape of ``x``.

    Raises:
      ValueError: if ``cutoff <= 0``.
    """
    _check_cutoff(cutoff)
    d = x / cutoff
    inside = d < 1
    d_safe = jnp.where(inside, d, 0)  # keeps 1/(1-d^2) and its gradient finite outside
    return jnp.where(inside, jnp.exp(1 - 1 / (1 - d_safe * d_safe)), 0)


def cosine_cutoff(x: Float[Array, "..."], cutoff: float = 1.0) -> Float[Array, "..."]:
    r"""Cosine cutoff (Behler), continuous with a continuous first derivative.

    .. math::
        u(r) = \begin{cases}
          \tfrac12\cos(\pi r/r_c) + \tfrac12, & r < r_c \\
          0, & r \ge r_c
        \end{cases}

    Args:
      x: distances :math:`r` in Å.
      cutoff: :math:`r_c` in Å (> 0).

    Returns:
      Cutoff values (dimensionless), shape of ``x``.

    Raises:
      ValueError: if ``cutoff <= 0``.
    """
    _check_cutoff(cutoff)
    d = x / cutoff
    return jnp.where(d < 1, 0.5 * cos(jnp.pi * d) + 0.5, 0)


def polynomial_cutoff(
    x: Float[Array, "..."], cutoff: float = 1.0, p: int = 6
) -> Float[Array, "..."]:
    r"""Polynomial envelope of DimeNet / NequIP (Klicpera et al., ICLR 2020, eq. 8).

    With :math:`d = r/r_c`,

    .. math::
        u_p(d) = \begin{cases}
          1 - \frac{(p+1)(p+2)}{2} d^p + p(p+2) d^{p+1} - \frac{p(p+1)}{2} d^{p+2}, & d < 1\\
          0, & d \ge 1
        \end{cases}

    :math:`u_p`, :math:`u_p'` and :math:`u_p''` vanish at :math:`d = 1`; the first
    :math:`p-1` derivatives vanish at :math:`d = 0`. NequIP's default is :math:`p = 6`.

    Args:
      x: distances :math:`r` in Å.
      cutoff: :math:`r_c` in Å (> 0).
      p: polynomial order (integer >= 1).

    Returns:
      Cutoff values (dimensionless), shape of ``x``.

    Raises:
      ValueError: if ``cutoff <= 0`` or ``p < 1``.
    """
    _check_cutoff(cutoff)
    if int(p) != p or p < 1:
        raise ValueError(f"p must be an integer >= 1, received {p}")
    p = int(p)
    d = x / cutoff
    inside = d < 1
    d = jnp.where(inside, d, 0)
    c0 = (p + 1) * (p + 2) / 2
    c1 = p * (p + 2)
    c2 = p * (p + 1) / 2
    dp = d**p
    return jnp.where(inside, 1 - dp * (c0 - d * (c1 - c2 * d)), 0)
