"""Neighbour-list helpers and host-side validation: cell checks, overflow, bad input."""

import re

import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import space

from e3md import neighbors, validate


def test_cell_widths_known_values():
    np.testing.assert_allclose(validate.cell_widths(5.0), [5.0, 5.0, 5.0])
    np.testing.assert_allclose(validate.cell_widths([4.0, 5.0, 6.0]), [4.0, 5.0, 6.0])
    # sheared cell a = (6,0,0), b = (3,5,0), c = (0,0,7) (columns): w_k = V / |other two|
    # w_a = 210 / |b x c| = 30 / hypot(3, 5), w_b = 210 / |c x a| = 5, w_c = 7
    box = np.array([[6.0, 3.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 7.0]])
    np.testing.assert_allclose(validate.cell_widths(box), [30 / np.hypot(3, 5), 5.0, 7.0])


def test_check_box_refuses_thin_cells_with_numbers():
    box = np.array([[6.0, 3.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 7.0]])
    with pytest.raises(ValueError, match=r"cutoff 2.6 Å.*5\.145, 5\.0, 7\.0.*5\.2 Å.*2x2x1"):
        validate.check_box(box, 2.6)
    validate.check_box(box, 2.4)  # fine
    with pytest.raises(ValueError, match="singular"):
        validate.check_box(np.zeros((3, 3)), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        validate.check_box([5.0, np.nan, 5.0], 1.0)


def test_check_positions_and_min_distance():
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        validate.check_positions(np.zeros((4, 2)))
    R = np.zeros((5, 3))
    R[3, 2] = np.inf
    with pytest.raises(ValueError, match=r"first indices \[3\]"):
        validate.check_positions(R)
    with pytest.raises(ValueError, match=r"atoms 2 and 7: distance 0.3 Å"):
        validate.check_min_distance([1.0, 0.3, 2.0], np.array([[0, 2, 1], [1, 7, 3]]))
    validate.check_min_distance([1.0, 0.6])


def _brute_pairs(R, cutoff):
    d = np.linalg.norm(R[:, None] - R[None], axis=-1)
    i, j = np.nonzero((d < cutoff) & ~np.eye(len(R), dtype=bool))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def _pairs(nbrs, N):
    idx = np.asarray(neighbors.edge_index(nbrs))
    keep = (idx[0] < N) & (idx[1] < N)
    return set(zip(idx[0][keep].tolist(), idx[1][keep].tolist(), strict=True))


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
def test_overflow_is_detected_and_reallocated(rng, fmt):
    """Compressing a gas overflows the list: update() reallocates; no edge is ever lost."""
    N, cutoff = 24, 2.0
    R0 = rng.uniform(0, 12.0, size=(N, 3))
    while np.min(np.linalg.norm(R0[:, None] - R0[None], axis=-1) + 9 * np.eye(N)) < 1.2:
        R0 = rng.uniform(0, 12.0, size=(N, 3))
    disp, _ = space.free()
    nf = neighbors.neighbor_list(
        disp, None, cutoff, dr_threshold=0.2, capacity_multiplier=1.0, format=fmt
    )
    nbrs = nf.allocate(jnp.asarray(R0))
    # exactly the pairs within cutoff + skin (jax-md adds the skin to the cutoff it is given)
    assert _pairs(nbrs, N) == _brute_pairs(R0, cutoff + 0.2)
    R1 = 0.5 * R0  # much denser: more pairs than the capacity
    raw = nf.update(jnp.asarray(R1), nbrs)
    assert bool(raw.did_buffer_overflow)
    with pytest.raises(RuntimeError, match="overflowed"):
        neighbors.check_overflow(raw)
    fixed = neighbors.update(nf, jnp.asarray(R1), nbrs)
    assert not bool(fixed.did_buffer_overflow)
    assert fixed.idx.shape[1] > nbrs.idx.shape[1]
    assert _pairs(fixed, N) >= _brute_pairs(R1, cutoff)


def test_periodic_builder_checks_box_at_build_and_allocate():
    box = np.diag([7.0, 7.0, 7.0])
    disp, _ = space.periodic_general(box, fractional_coordinates=False)
    with pytest.raises(ValueError, match="too small"):
        neighbors.neighbor_list(disp, box, 3.6, fractional_coordinates=False)
    nf = neighbors.neighbor_list(disp, box, 3.0, fractional_coordinates=False)
    R = jnp.asarray([[1.0, 1.0, 1.0], [2.5, 1.0, 1.0]])
    nf.allocate(R)
    with pytest.raises(ValueError, match="too small"):
        nf.allocate(R, box=jnp.asarray(np.diag([7.0, 5.0, 7.0])))


def _shuffled_grid(rng, n=10, spacing=3.0):
    """A jittered simple-cubic grid of n^3 points in its periodic cube, in random order."""
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    R = (grid + rng.normal(scale=0.1, size=grid.shape)) * spacing
    return R[rng.permutation(len(R))], np.eye(3) * n * spacing


def _median_index_gap(R, cell, order):
    """Median |index difference| of neighbouring atoms once listed in ``order``."""
    i, j, _ = neighbors.host_neighbors(R, 4.0, cell, cell is not None)
    rank = np.empty(len(R), np.int64)
    rank[order] = np.arange(len(R))
    return np.median(np.abs(rank[i] - rank[j]))


def test_spatial_order_brings_neighbours_together(rng):
    R, cell = _shuffled_grid(rng)
    n = len(R)
    order = neighbors.spatial_order(R, cell)
    assert order.dtype == np.int64 and np.array_equal(np.sort(order), np.arange(n))
    before = _median_index_gap(R, cell, np.arange(n))
    after = _median_index_gap(R, cell, order)
    assert before > 0.2 * n and after < 0.05 * n, (before, after)
    # free system: the bounding box instead of the cell (an all-zero cell means the same)
    free = neighbors.spatial_order(R)
    assert np.array_equal(free, neighbors.spatial_order(R, np.zeros((3, 3))))
    assert _median_index_gap(R, None, free) < 0.05 * n
    # a flat system (every z equal) gets one cell across its thickness
    flat = R.copy()
    flat[:, 2] = 1.0
    assert np.array_equal(np.sort(neighbors.spatial_order(flat)), np.arange(n))
    assert neighbors.spatial_order(np.zeros((0, 3))).shape == (0,)


def test_spatial_order_wraps_into_the_cell(rng):
    R, cell = _shuffled_grid(rng, n=6)
    images = R + rng.integers(-2, 3, size=(len(R), 1)) * cell[rng.integers(0, 3, len(R))]
    np.testing.assert_array_equal(
        neighbors.spatial_order(images, cell), neighbors.spatial_order(R, cell)
    )
    # a triclinic cell: fractional coordinates decide the cells, so rotating the system and its
    # cell together changes nothing (lattice vectors as rows: R @ Q with cell @ Q)
    tilted = cell + np.array([[0, 0, 0], [4.0, 0, 0], [2.0, 3.0, 0]])
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    order = neighbors.spatial_order(R, tilted)
    assert np.array_equal(np.sort(order), np.arange(len(R)))
    np.testing.assert_array_equal(neighbors.spatial_order(R @ q, tilted @ q), order)


@pytest.mark.parametrize(
    "R, cell, message",
    [
        (np.array([[0.0, 0, 0], [np.nan, 0, 0]]), None, "NaN"),
        (np.zeros((2, 3)), np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]]), "degenerate"),
        (np.zeros((2, 2)), None, "[N, 3]"),
    ],
)
def test_spatial_order_bad_input(R, cell, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        neighbors.spatial_order(R, cell)
    with pytest.raises(ValueError, match="atoms_per_cell"):
        neighbors.spatial_order(np.zeros((2, 3)), atoms_per_cell=0)
