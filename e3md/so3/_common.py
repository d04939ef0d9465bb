"""Index bookkeeping shared by the so3 tables: degree checks and the Cartesian order permutation."""

import functools

import numpy as np


def check_degree(degree: int, name: str = "degree") -> None:
    """Raises ``ValueError`` unless ``degree`` is a non-negative Python int."""
    if isinstance(degree, bool) or not isinstance(degree, int | np.integer) or degree < 0:
        raise ValueError(f"{name} must be a non-negative integer, received {degree!r}")


@functools.cache
def cartesian_permutation_for_degree(degree: int) -> np.ndarray:
    r"""Permutation from the order :math:`m=-\ell..\ell` to e3x's Cartesian order.

    The Cartesian order of degree :math:`\ell` is
    :math:`[m=\ell, -\ell, \ell-1, -(\ell-1), \dots, 1, -1, 0]`, so degree 1 reads
    :math:`(x, y, z)`. Entry ``k`` of the result is the index (in the order :math:`m=-\ell..\ell`)
    of the component stored at position ``k`` in Cartesian order.
    """
    check_degree(degree)
    perm = []
    for m in range(degree, 0, -1):
        perm += [degree + m, degree - m]
    perm.append(degree)
    out = np.asarray(perm, dtype=np.int64)
    out.setflags(write=False)
    return out


@functools.cache
def cartesian_permutation(max_degree: int) -> np.ndarray:
    """Cartesian-order permutation for all degrees ``0..max_degree`` (length ``(L+1)**2``)."""
    check_degree(max_degree, "max_degree")
    out = np.concatenate(
        [cartesian_permutation_for_degree(l) + l * l for l in range(max_degree + 1)]
    )
    out.setflags(write=False)
    return out


@functools.cache
def degree_of_index(max_degree: int) -> np.ndarray:
    """Degree :math:`\\ell` of every entry of a ``(L+1)**2`` irreps axis."""
    out = np.repeat(np.arange(max_degree + 1), 2 * np.arange(max_degree + 1) + 1)
    out.setflags(write=False)
    return out
