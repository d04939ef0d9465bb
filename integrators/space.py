r"""Spaces for MD from an ``ase.Atoms``: free space for molecules, fractional periodic boxes.

* non-periodic (``pbc`` all False): ``jax_md.space.free()``, Cartesian positions in Å;
  neighbour lists without cell list (small molecules).
* fully periodic: ``e3md.space.periodic_general(box, fractional_coordinates=True)`` (jax-md's
  ``periodic_general`` with a vectorised minimum image, see :mod:`e3md.space`) with
  ``box = cell.T`` (lattice vectors as columns, upper triangular: a general cell is first
  rotated into ASE's standard form), positions as fractional coordinates. This is the space
  jax-md's NPT integrator expects, and NVE/NVT use it too.

Mixed periodicity (slabs) is not supported.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Space:
    """A jax-md space plus the matching initial coordinates.

    Attributes:
      displacement_fn, shift_fn: jax-md space functions.
      positions: initial coordinates [N, 3] (fractional if ``fractional``, else Å).
      box: [3, 3] box in Å, lattice vectors as columns, or None (free space).
      fractional: whether positions are fractional.
      neighbor_kwargs: options for ``jax_md.partition.neighbor_list`` matching the space
        (``fractional_coordinates``, ``disable_cell_list``).
      rotation: [3, 3] rotation applied to the input (``R_internal = R @ rotation``), identity
        unless a general cell had to be brought to standard form.
    """

    displacement_fn: Callable
    shift_fn: Callable
    positions: np.ndarray
    box: np.ndarray | None
    fractional: bool
    neighbor_kwargs: dict[str, Any]
    rotation: np.ndarray


def min_cell_width(cell: np.ndarray) -> float:
    r"""Smallest perpendicular width of a cell (rows = lattice vectors), in Å:
    :math:`\min_i V / |a_j \times a_k|`."""
    cell = np.asarray(cell, dtype=float)
    vol = abs(np.linalg.det(cell))
    return min(
        vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)
    )


def make_space(atoms, cutoff: float, dtype=np.float64) -> Space:
    """Build the jax-md space for ``atoms``, validating it for a potential with ``cutoff``.

    Args:
      atoms: ``ase.Atoms``.
      cutoff: interaction cutoff in Å.
      dtype: floating dtype of the coordinates.

    Returns:
      A :class:`Space`.

    Raises:
      ValueError: NaN/inf positions, mixed periodicity, a degenerate cell, or a cell whose
        smallest perpendicular width is below ``2 * cutoff`` (jax-md's minimum-image
        displacement would miss neighbours).
    """
    from jax_md import space

    from e3md.space import periodic_general

    R = np.asarray(atoms.get_positions(), dtype=float)
    if not np.all(np.isfinite(R)):
        bad = np.argwhere(~np.isfinite(R).all(axis=1)).ravel()
        raise ValueError(f"positions of atoms {bad.tolist()} are NaN or inf")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return Space(
            *space.free(),
            positions=R.astype(dtype),
            box=None,
            fractional=False,
            neighbor_kwargs={"disable_cell_list": True},
            rotation=np.eye(3),
        )
    if not pbc.all():
        raise ValueError(f"mixed periodicity pbc={pbc.tolist()} is not supported")
    cell = np.asarray(atoms.cell.array, dtype=float)
    if abs(np.linalg.det(cell)) < 1e-6:
        raise ValueError(f"the cell is degenerate (volume {np.linalg.det(cell):.3g} Å^3)")
    width = min_cell_width(cell)
    if width < 2.0 * cutoff:
        raise ValueError(
            f"the cell is too small for the cutoff: smallest perpendicular width {width:.3f} Å "
            f"< 2 x cutoff = {2 * cutoff:.3f} Å; use a supercell (atoms.repeat)"
        )
    rcell, Q = atoms.cell.standard_form()  # rcell = cell @ Q.T, lower triangular rows
    rcell = np.asarray(rcell)
    rot = np.asarray(Q).T
    box = rcell.T.astype(dtype)  # columns = lattice vectors, upper triangular
    frac = np.linalg.solve(rcell.T, (R @ rot).T).T
    frac = np.mod(frac, 1.0)
    displacement_fn, shift_fn = periodic_general(box, fractional_coordinates=True)
    return Space(
        displacement_fn,
        shift_fn,
        positions=frac.astype(dtype),
        box=box,
        fractional=True,
        neighbor_kwargs={"fractional_coordinates": True},
        rotation=rot,
    )
