r"""Irreps <-> matrices change of basis used by the fused tensor product.

A direct sum of irreps with degrees :math:`0..L` (length :math:`(L+1)^2`) maps to
:math:`(2\tilde\ell+1)\times(2\tilde\ell+1)` matrices, :math:`\tilde\ell=\lceil L/2\rceil`,
through the Clebsch–Gordan coefficients :math:`C^{\ell m}_{\tilde\ell\tilde m\tilde\ell\tilde m'}`
(:math:`\tilde\ell\otimes\tilde\ell = 0\oplus1\oplus\dots\oplus2\tilde\ell`). Even degrees are
symmetric matrices and odd degrees antisymmetric ones.
"""

import functools
import math

import numpy as np

from e3md.so3._common import check_degree
from e3md.so3.clebsch_gordan import clebsch_gordan


def matrix_degree(max_degree: int) -> int:
    r""":math:`\tilde\ell = \lceil L/2 \rceil`: the degree whose tensor square holds 0..L."""
    check_degree(max_degree, "max_degree")
    return math.ceil(max_degree / 2)


@functools.cache
def matrix_basis(max_degree: int, cartesian_order: bool = True) -> np.ndarray:
    r"""Change-of-basis tensor :math:`B_{\tilde m \tilde m' n} = C^{\ell m}_{\tilde\ell\tilde m
    \tilde\ell\tilde m'}`, :math:`n = (\ell, m)`, :math:`\ell \le L`.

    Vectors to matrices: :math:`X_{\tilde m\tilde m'} = \sum_n B_{\tilde m\tilde m' n} x_n`;
    matrices to vectors: :math:`x_n = \sum_{\tilde m\tilde m'} B_{\tilde m\tilde m' n}
    X_{\tilde m\tilde m'}` (the two are inverse to each other on degrees :math:`\le 2\tilde\ell`,
    because the real CG change of basis is orthogonal).

    Args:
      max_degree: largest degree :math:`L` (>= 0).
      cartesian_order: use e3x's Cartesian order within each degree.

    Returns:
      float64 read-only array of shape ``(2l~+1, 2l~+1, (L+1)**2)``.
    """
    lt = matrix_degree(max_degree)
    cg = clebsch_gordan(lt, lt, max_degree, cartesian_order=cartesian_order)
    out = np.ascontiguousarray(cg[lt * lt : (lt + 1) ** 2, lt * lt : (lt + 1) ** 2, :])
    out.setflags(write=False)
    return out
