"""Host-side neighbour search of the OpenMM adapter, against ASE's neighbour list as oracle."""

import numpy as np
import pytest
from ase.neighborlist import primitive_neighbor_list

from e3md.openmm import neighbor_pairs
from e3md.validate import cell_widths


def _as_set(i, j, S):
    return {(int(a), int(b), *map(int, s)) for a, b, s in zip(i, j, S, strict=True)}


def _triclinic_cell(rng, edge=9.0):
    """An OpenMM reduced-form (lower-triangular rows) cell."""
    a = edge * (1.0 + 0.1 * rng.random())
    by = edge * (1.0 + 0.1 * rng.random())
    cz = edge * (1.0 + 0.1 * rng.random())
    bx = rng.uniform(-0.5, 0.5) * a
    cx = rng.uniform(-0.5, 0.5) * a
    cy = rng.uniform(-0.5, 0.5) * by
    return np.array([[a, 0.0, 0.0], [bx, by, 0.0], [cx, cy, cz]])


@pytest.mark.parametrize("periodic", [False, True])
def test_pairs_match_ase(rng, periodic):
    cutoff = 3.1
    tested = 0
    for _ in range(6):
        if periodic:
            cell = _triclinic_cell(rng, edge=8.0)
            # widths may fall below 2 cutoff for strongly skewed cells: only test valid ones
            if cell_widths(cell.T).min() < 2 * cutoff:
                continue
            # positions far outside the home cell: wrapping must be handled
            R = rng.uniform(-1.5, 2.5, size=(40, 3)) @ cell
        else:
            cell = None
            R = rng.uniform(0.0, 8.0, size=(40, 3))
        i, j, S = neighbor_pairs(R, cutoff, cell, chunk=7)
        ase_cell = cell if periodic else np.eye(3) * 10.0  # ignored without pbc
        ia, ja, Sa = primitive_neighbor_list(
            "ijS", [periodic] * 3, ase_cell, R, cutoff, self_interaction=False
        )
        assert _as_set(i, j, S) == _as_set(ia, ja, Sa)
        assert len(i) == len(ia)  # no duplicates
        # the returned shifts reproduce the distances
        c = np.zeros((3, 3)) if cell is None else cell
        d = np.linalg.norm(R[j] - R[i] + S @ c, axis=1)
        assert np.all(d < cutoff)
        tested += 1
    assert tested >= 3


def test_small_cell_is_a_clear_error():
    with pytest.raises(ValueError, match=r"too small.*2 x cutoff = 10.0 Å"):
        neighbor_pairs(np.zeros((2, 3)), 5.0, np.diag([12.0, 12.0, 9.0]))
    # exactly 2 x cutoff is allowed
    i, _, _ = neighbor_pairs(np.array([[0.0, 0, 0], [1.0, 0, 0]]), 5.0, np.eye(3) * 10.0)
    assert len(i) == 2


def test_bad_positions():
    with pytest.raises(ValueError, match="NaN"):
        neighbor_pairs(np.array([[0.0, 0.0, np.nan]]), 3.0)
    # a wrong shape is refused (ValueError, or TypeError under a jaxtyping runtime checker)
    with pytest.raises((ValueError, TypeError)):
        neighbor_pairs(np.zeros((4, 2)), 3.0)
