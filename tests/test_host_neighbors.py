"""Host-side neighbour search (ASE calculator, OpenMM force, training) against ASE's neighbour
list as oracle; padding buckets."""

import numpy as np
import pytest
from ase.neighborlist import primitive_neighbor_list

from e3md.neighbors import bucket_size, host_neighbors, host_rows
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


@pytest.mark.parametrize("periodic", [False, True, (True, False, True)])
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
        i, j, S = host_neighbors(R, cutoff, cell, periodic)
        ase_cell = cell if periodic else np.eye(3) * 10.0  # ignored without pbc
        pbc = np.broadcast_to(np.asarray(periodic, bool), (3,))
        ia, ja, Sa = primitive_neighbor_list(
            "ijS", pbc, ase_cell, R, cutoff, self_interaction=False
        )
        assert _as_set(i, j, S) == _as_set(ia, ja, Sa)
        assert len(i) == len(ia)  # no duplicates
        # the returned shifts reproduce the distances
        c = np.zeros((3, 3)) if cell is None else cell
        d = np.linalg.norm(R[j] - R[i] + S @ c, axis=1)
        assert np.all(d < cutoff)
        tested += 1
    assert tested >= 3


def test_periodic_search_needs_a_cell():
    with pytest.raises(ValueError, match="needs a cell"):
        host_neighbors(np.zeros((2, 3)), 3.0, None, True)


def test_bucket_size():
    sizes = [bucket_size(n, 8) for n in range(0, 5000)]
    assert all(s >= max(n, 8) for n, s in enumerate(sizes))
    assert all(s <= 1.25 * n for n, s in enumerate(sizes) if n > 8)
    assert np.all(np.diff(sizes) >= 0)
    assert len(set(sizes)) < 45  # few distinct shapes, i.e. few compiles
    # a coarser grid pads more and compiles less
    assert all(bucket_size(n, 8, fraction=0.5) <= 1.5 * n for n in range(9, 3000))


def test_host_rows_hold_exactly_the_edges_in_receiver_major_rows(rng):
    """Rows of a full list: every edge once, in its receiver's row; empty slots masked, with the
    padding sender; the list is symmetric (what ``symmetric_rows`` promises)."""
    cell = 8.0 * np.eye(3)
    R = rng.uniform(0, 8.0, size=(20, 3))
    i, j, S = host_neighbors(R, 3.0, cell, True)
    assert _as_set(i, j, S) == _as_set(j, i, -S)  # full list: both directions
    slots = int(np.bincount(i).max()) + 2
    recv, send, shifts, mask = host_rows(i, j, S, 23, slots)  # 3 padding atoms
    assert recv.shape == send.shape == mask.shape == (23 * slots,)
    np.testing.assert_array_equal(recv, np.repeat(np.arange(23), slots))
    assert _as_set(recv[mask], send[mask], shifts[mask]) == _as_set(i, j, S)
    assert mask.sum() == len(i)
    assert np.all(send[~mask] == 23) and not shifts[~mask].any()
    with pytest.raises(ValueError, match="do not fit"):
        host_rows(i, j, S, 23, slots - 3)
