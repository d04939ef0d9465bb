r"""Radial-angular edge basis :math:`B_{k\ell m}(\vec r) = g_k(r)\,u(r)\,Y_\ell^m(\hat r)`."""

import functools
from collections.abc import Callable

import jax.numpy as jnp
from jaxtyping import Array, Float

from e3md.nn.ops import normalize_and_norm
from e3md.so3 import spherical_harmonics

__all__ = ["basis"]

RadialFn = Callable[[Array, int], Array]  # (r [...] Å, K) -> [..., K]
ScalarFn = Callable[[Array], Array]  # (r [...] Å) -> [...]

_default_angular_fn = functools.partial(
    spherical_harmonics, r_is_normalized=True, normalization="racah"
)


def basis(
    r: Float[Array, "... 3"],
    max_degree: int,
    num: int,
    radial_fn: RadialFn,
    cutoff_fn: ScalarFn | None = None,
    *,
    angular_fn: Callable[..., Array] = _default_angular_fn,
    damping_fn: ScalarFn | None = None,
    return_cutoff: bool = False,
    return_norm: bool = False,
    cartesian_order: bool = True,
    factored: bool = False,
) -> Float[Array, "... 1 LM K"] | tuple[Array, ...]:
    r"""Radial-angular basis functions of edge vectors (e3x's ``e3x.nn.basis``).

    .. math::
        B_{k\ell m}(\vec r) = g_k(r)\; u(r)\; [d(r)]_{\ell>0}\; Y_\ell^m(\hat r),
        \qquad r = \lVert\vec r\rVert,\ \hat r = \vec r / r,

    with radial functions :math:`g_k` (``radial_fn``), an optional cutoff :math:`u`
    (``cutoff_fn``), an optional damping :math:`d` applied to degrees :math:`\ell > 0`
    (``damping_fn``) and, by default, Racah-normalised real spherical harmonics
    :math:`Y_\ell^m` (:func:`e3md.so3.spherical_harmonics`) in e3x's layout.

    Zero vectors (padded edges) are safe: :math:`\hat r` is taken as 0, so all
    :math:`\ell > 0` components vanish, and values and gradients stay finite.

    Args:
      r: edge vectors in Å, shape ``[..., 3]``.
      max_degree: maximum degree :math:`L` of the spherical harmonics.
      num: number :math:`K` of radial functions.
      radial_fn: ``radial_fn(r, num) -> [..., K]`` with ``r`` in Å, e.g.
        ``functools.partial(e3md.nn.bessel, limit=5.0)``.
      cutoff_fn: optional ``cutoff_fn(r) -> [...]``, e.g.
        ``functools.partial(e3md.nn.smooth_cutoff, cutoff=5.0)``.
      angular_fn: ``angular_fn(r=unit_vectors, max_degree=, cartesian_order=) -> [..., LM]``.
      damping_fn: optional ``damping_fn(r) -> [...]`` multiplying degrees > 0.
      return_cutoff: also return the cutoff values ``[...]`` (needs ``cutoff_fn``).
      return_norm: also return the norms ``[...]`` in Å.
      cartesian_order: e3x's Cartesian ordering of the degree-1 (and higher) components.
      factored: return the two factors of the (rank-one per edge) basis instead of their
        product: ``(radial [..., K], angular [..., 1, (L+1)**2])`` with
        ``basis = angular[..., :, None] * radial[..., None, None, :]``; the radial factor holds
        :math:`g_k u`, the angular one :math:`Y_\ell^m` (times :math:`d` for
        :math:`\ell > 0`). :class:`e3md.nn.MessagePass` takes this pair and contracts the
        radial part with its filter weights *before* multiplying by :math:`Y`, which saves
        the :math:`(L+1)^2/(L+1)` redundant filter work.

    Returns:
      The basis ``[..., 1, (L+1)**2, K]`` (a parity axis of size 1 is inserted for the feature
      layout) or, with ``factored``, the pair ``(radial, angular)``; followed by the cutoff
      values and/or norms if requested.

    Raises:
      ValueError: if ``r`` is not ``[..., 3]``, ``max_degree < 0``, or ``return_cutoff``
        is set without a ``cutoff_fn``.
    """
    if r.ndim < 1 or r.shape[-1] != 3:
        raise ValueError(f"r must have shape (..., 3), received shape {r.shape}")
    if int(max_degree) != max_degree or max_degree < 0:
        raise ValueError(f"max_degree must be an integer >= 0, received {max_degree}")
    if return_cutoff and cutoff_fn is None:
        raise ValueError("return_cutoff=True needs a cutoff_fn")
    unit, norm = normalize_and_norm(r)
    radial = radial_fn(norm, num)  # [..., K]
    if radial.shape != norm.shape + (num,):
        raise ValueError(f"radial_fn returned shape {radial.shape}, expected {norm.shape + (num,)}")
    cut = None
    if cutoff_fn is not None:
        cut = cutoff_fn(norm)
        radial = radial * cut[..., None]
    ylm = angular_fn(r=unit, max_degree=max_degree, cartesian_order=cartesian_order)
    if damping_fn is not None and max_degree > 0:
        damp = damping_fn(norm)[..., None]
        ylm = jnp.concatenate([ylm[..., :1], ylm[..., 1:] * damp], axis=-1)
    if factored:
        out = (radial, ylm[..., None, :])
    else:
        out = ((ylm[..., :, None] * radial[..., None, :])[..., None, :, :],)  # [..., 1, LM, K]
    if return_cutoff:
        out += (cut,)
    if return_norm:
        out += (norm,)
    return out if len(out) > 1 else out[0]
