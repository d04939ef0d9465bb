"""Host-side input checks, run before anything enters ``jit``; each raises ``ValueError``.

These are the boundary checks of every public entry point (jax-md builder, ASE calculator,
OpenMM force, CLI): positions must be finite, atoms must not overlap, periodic cells must be at
least twice the cutoff wide (jax-md's ``periodic_general`` minimum image cannot count several
images of one neighbour), and elements must be known to the model.

``MIN_DISTANCE`` = 0.5 Å is the floor on interatomic distances. The shortest bond in nature is
H2 at 0.74 Å; two atoms closer than 0.5 Å are an input error (duplicated atom, wrong units,
corrupt file), far outside any training set, where an ML potential returns garbage silently.
"""

import numpy as np
from jaxtyping import ArrayLike

__all__ = [
    "MIN_DISTANCE",
    "cell_widths",
    "check_box",
    "check_min_distance",
    "check_positions",
    "box_matrix",
]

#: floor on interatomic distances in Å (see module docstring)
MIN_DISTANCE = 0.5


def check_positions(positions: ArrayLike, name: str = "positions") -> np.ndarray:
    """Check that positions are a finite ``[N, 3]`` array (Å).

    Returns:
      The positions as a numpy array.

    Raises:
      ValueError: wrong shape, or NaN/inf entries (the message lists the first bad atoms).
    """
    R = np.asarray(positions)
    if R.ndim != 2 or R.shape[1] != 3:
        raise ValueError(f"{name} must have shape [N, 3], got {R.shape}")
    bad = ~np.all(np.isfinite(R), axis=1)
    if np.any(bad):
        atoms = np.flatnonzero(bad)
        raise ValueError(
            f"{name} contain NaN or inf for {atoms.size} atom(s), "
            f"first indices {atoms[:10].tolist()}"
        )
    return R


def check_min_distance(
    distances: ArrayLike,
    pairs: ArrayLike | None = None,
    floor: float = MIN_DISTANCE,
) -> None:
    """Raise if any listed interatomic distance is below ``floor`` (Å).

    Args:
      distances: distances in Å of the (real, unpadded) pairs to check, shape ``[E]``.
      pairs: optional ``[2, E]`` atom indices, used to name the offending pair.
      floor: minimum allowed distance in Å.

    Raises:
      ValueError: naming the closest pair and its distance.
    """
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    if d.size == 0:
        return
    k = int(np.argmin(d))
    if d[k] < floor:
        who = ""
        if pairs is not None:
            p = np.asarray(pairs)
            who = f" between atoms {int(p[0, k])} and {int(p[1, k])}"
        raise ValueError(
            f"atoms closer than {floor} Å{who}: distance {d[k]:.4g} Å "
            "(duplicate atom or wrong length units?)"
        )


def box_matrix(box: ArrayLike, dim: int = 3) -> np.ndarray:
    """jax-md ``box`` (scalar, ``[3]`` side lengths, or ``[3, 3]`` with lattice vectors as
    columns) as a ``[3, 3]`` matrix with lattice vectors as columns (Å)."""
    b = np.asarray(box, dtype=np.float64)
    if b.ndim == 0:
        return np.eye(dim) * b
    if b.ndim == 1:
        if b.shape[0] != dim:
            raise ValueError(f"box side lengths must have shape [{dim}], got {b.shape}")
        return np.diag(b)
    if b.shape != (dim, dim):
        raise ValueError(f"box must be a scalar, [{dim}] or [{dim}, {dim}], got {b.shape}")
    return b


def cell_widths(box: ArrayLike) -> np.ndarray:
    r"""Perpendicular widths of a cell, :math:`w_k = V / |\mathbf a_i \times \mathbf a_j|` (Å).

    Args:
      box: jax-md box (lattice vectors as columns), see :func:`box_matrix`.

    Returns:
      ``[3]`` distances between opposite faces of the cell.
    """
    m = box_matrix(box)
    a = m.T  # rows = lattice vectors
    vol = abs(np.linalg.det(m))
    areas = np.array([np.linalg.norm(np.cross(a[(k + 1) % 3], a[(k + 2) % 3])) for k in range(3)])
    return vol / np.where(areas > 0, areas, np.inf)


def check_box(box: ArrayLike, cutoff: float) -> np.ndarray:
    """Refuse periodic cells thinner than twice the cutoff, and degenerate or non-finite cells.

    With minimum-image displacements (jax-md ``periodic_general``/``periodic``) a neighbour is
    seen at most once; if a cell is thinner than :math:`2 r_c` several images of the same atom can
    lie within the cutoff, and all but one would be silently dropped. Such cells must be
    replicated into a supercell first.

    Args:
      box: jax-md box (lattice vectors as columns), Å.
      cutoff: model cutoff in Å.

    Returns:
      The box as a ``[3, 3]`` matrix (columns = lattice vectors).

    Raises:
      ValueError: non-finite or singular box, or a width below ``2 * cutoff`` (the message gives
        the widths, the cutoff and a supercell size that would work).
    """
    m = box_matrix(box)
    if not np.all(np.isfinite(m)):
        raise ValueError(f"box contains NaN or inf: {m.tolist()}")
    if abs(np.linalg.det(m)) < 1e-12:
        raise ValueError(f"box is singular (zero volume): {m.tolist()}")
    widths = cell_widths(m)
    if np.any(widths < 2.0 * cutoff):
        reps = np.ceil(2.0 * cutoff / widths).astype(int).tolist()
        raise ValueError(
            f"periodic cell too small for cutoff {cutoff} Å: perpendicular widths "
            f"{np.round(widths, 4).tolist()} Å must all be >= 2 x cutoff = {2.0 * cutoff} Å "
            "(minimum-image neighbour lists cannot count several images of one atom); "
            f"replicate the cell, e.g. a {reps[0]}x{reps[1]}x{reps[2]} supercell"
        )
    return m
