r"""Equivariant activations as gated linear units (the definitions of e3x).

A nonlinearity may only act on invariant (scalar, :math:`\ell = 0`, even) channels. Each
activation :math:`\sigma(x) = x\,\mathrm{gate}(x)` is therefore applied to features
``x[..., P, (L+1)**2, F]`` as

.. math::
    \sigma(\mathbf x) = \mathrm{gate}\left(\mathbf x^{(0_+)}\right) \circ \mathbf x,

the gate of the scalar channel ``x[..., 0:1, 0:1, :]`` multiplying every irrep of the same
feature. For purely scalar inputs (``P = 1``, ``L = 0``) this equals the ordinary activation.
Gates with a removable singularity at 0 use a Taylor series there, so values and gradients are
finite everywhere.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = [
    "bent_identity",
    "celu",
    "elu",
    "gated_linear",
    "gelu",
    "hard_silu",
    "hard_swish",
    "hard_tanh",
    "leaky_relu",
    "mish",
    "relu",
    "relu6",
    "selu",
    "serf",
    "shifted_softplus",
    "silu",
    "soft_sign",
    "swish",
]

Features = Float[Array, "... P LM F"]


def gated_linear(gate: Callable[[Array], Array], x: Features) -> Features:
    r"""Applies :math:`\mathrm{gate}(\mathbf x^{(0_+)}) \circ \mathbf x`.

    Args:
      gate: elementwise function of the scalar channel.
      x: features ``[..., P, (L+1)**2, F]``.

    Returns:
      Gated features, same shape as ``x``.

    Raises:
      ValueError: if ``x`` has fewer than three axes.
    """
    if x.ndim < 3:
        raise ValueError(f"features need shape (..., P, (L+1)**2, F), received shape {x.shape}")
    return gate(x[..., 0:1, 0:1, :]) * x


def _safe_ratio(x: Array, numerator: Callable[[Array], Array], series: Callable[[Array], Array]):
    """numerator(x)/x, with a series near x = 0 (both branches finite, also in the gradient)."""
    not_tiny = jnp.abs(x) > jnp.finfo(x.dtype).eps
    x_safe = jnp.where(not_tiny, x, 1)
    return jnp.where(not_tiny, numerator(x_safe) / x_safe, series(x))


def relu(x: Features) -> Features:
    r"""ReLU: :math:`\mathrm{gate}(x) = \max(\mathrm{sgn}\,x, 0)`."""
    return gated_linear(lambda s: jnp.maximum(jnp.sign(s), 0), x)


def leaky_relu(x: Features, negative_slope: float = 1e-2) -> Features:
    r"""Leaky ReLU: :math:`\mathrm{gate}(x) = 1` for :math:`x \ge 0`, else :math:`\alpha`."""
    return gated_linear(lambda s: jnp.where(s >= 0, 1, negative_slope), x)


def _elu_gate(s: Array, alpha: float, scale: float) -> Array:
    neg = _safe_ratio(
        jnp.minimum(s, 0),
        lambda t: alpha * jnp.expm1(t / scale),
        lambda t: alpha / scale * (1 + t / (2 * scale) + t * t / (6 * scale * scale)),
    )
    return jnp.where(s > 0, 1, neg)


def elu(x: Features, alpha: float = 1.0) -> Features:
    r"""ELU: :math:`\mathrm{gate}(x) = 1` for :math:`x > 0`, else :math:`\alpha(e^x-1)/x`."""
    return gated_linear(lambda s: _elu_gate(s, alpha, 1.0), x)


def selu(x: Features) -> Features:
    r"""SELU: :math:`\lambda\,\mathrm{elu}(x; \alpha)` with the constants of Klambauer et al."""
    alpha = 1.6732632423543772848170429916717
    scale = 1.0507009873554804934193349852946
    return scale * elu(x, alpha)


def celu(x: Features, alpha: float = 1.0) -> Features:
    r"""CELU: :math:`\mathrm{gate}(x) = 1` for :math:`x > 0`, else
    :math:`\alpha(e^{x/\alpha}-1)/x`."""
    return gated_linear(lambda s: _elu_gate(s, alpha, alpha), x)


def silu(x: Features) -> Features:
    r"""SiLU / swish: :math:`\mathrm{gate}(x) = \mathrm{sigmoid}(x) = 1/(1+e^{-x})`."""
    return gated_linear(jax.nn.sigmoid, x)


swish = silu


def gelu(x: Features, approximate: bool = True) -> Features:
    r"""GELU: :math:`\mathrm{gate}(x) = \tfrac12\left(1+\mathrm{erf}(x/\sqrt2)\right)`, or with
    ``approximate`` :math:`\tfrac12\left(1+\tanh\left(\sqrt{2/\pi}(x+0.044715x^3)\right)\right)`.
    """

    def gate(s):
        if approximate:
            return 0.5 * (1.0 + jnp.tanh(math.sqrt(2 / math.pi) * (s + 0.044715 * s**3)))
        return (0.5 * (1 + jax.lax.erf(s / math.sqrt(2)))).astype(s.dtype)

    return gated_linear(gate, x)


def mish(x: Features, fast: bool = True) -> Features:
    r"""Mish: :math:`\mathrm{gate}(x) = \tanh(\mathrm{softplus}(x))`.

    ``fast`` evaluates it as :math:`(2e^{-x}+1)/(2e^{-x}+1+2e^{-2x})` (e3x's form).
    """

    def gate(s):
        if fast:
            y = jnp.exp(-s)
            z = 2 * y + 1
            return z / (z + 2 * y * y)
        return jnp.tanh(jax.nn.softplus(s))

    return gated_linear(gate, x)


def serf(x: Features) -> Features:
    r"""Serf: :math:`\mathrm{gate}(x) = \mathrm{erf}(\mathrm{softplus}(x))`."""
    return gated_linear(lambda s: jax.lax.erf(jax.nn.softplus(s)), x)


def shifted_softplus(x: Features) -> Features:
    r"""Shifted softplus (SchNet): :math:`\mathrm{gate}(x) = \log\left(\tfrac12(1+e^x)\right)/x`,
    so that scalar outputs are :math:`\log\left(\tfrac12(1+e^x)\right)`."""
    gate = lambda s: _safe_ratio(
        s, lambda t: jnp.logaddexp(t, 0) - math.log(2), lambda t: 0.5 + t / 8
    )
    return gated_linear(gate, x)


def hard_tanh(x: Features) -> Features:
    r"""Hard tanh: :math:`\mathrm{gate}(x) = 1` for :math:`|x| \le 1`, else :math:`1/|x|`."""

    def gate(s):
        s_safe = jnp.where(jnp.abs(s) > 1, jnp.abs(s), 1)
        return 1 / s_safe

    return gated_linear(gate, x)


def soft_sign(x: Features) -> Features:
    r"""Soft sign: :math:`\mathrm{gate}(x) = 1/(|x|+1)`."""
    return gated_linear(lambda s: 1 / (jnp.abs(s) + 1), x)


def relu6(x: Features) -> Features:
    r"""ReLU6: :math:`\mathrm{gate}(x) = \min(\max(\mathrm{sgn}\,x, 0), 6/x)`."""

    def gate(s):
        s_safe = jnp.where(s > 1, s, 1)
        return jnp.minimum(jnp.maximum(jnp.sign(s), 0), 6.0 / s_safe)

    return gated_linear(gate, x)


def hard_silu(x: Features) -> Features:
    r"""Hard SiLU: :math:`\mathrm{gate}(x) = \mathrm{relu6}(x+3)/6`."""
    return gated_linear(jax.nn.hard_sigmoid, x)


hard_swish = hard_silu


def bent_identity(x: Features) -> Features:
    r"""Bent identity: :math:`\mathrm{gate}(x) = (\sqrt{x^2+1}-1)/(2x) + 1`."""
    gate = lambda s: _safe_ratio(s, lambda t: (jnp.sqrt(t * t + 1) - 1) / 2, lambda t: t / 4) + 1
    return gated_linear(gate, x)
