"""Neighbour lists for e3md: jax-md lists on the device (cell-size checks, overflow
handling), and one host-side search (:func:`host_neighbors`, vesin) with the padding buckets
(:func:`bucket_size`) that the ASE calculator, the OpenMM force and training share.

Neighbour lists come from ``jax_md.partition.neighbor_list`` in ``Dense`` format by default
(rows ``idx[N, M]``: the neighbours of atom ``i`` in row ``i``, padding index ``N``; e3md's
potentials evaluate these with a faster reverse-mode rule, see
:func:`e3md.potentials.model.atomic_energies`) or ``Sparse`` format (``idx[2, E]``); both hold
both directions of every pair. jax-md flags a full buffer inside
``jit`` (``nbrs.did_buffer_overflow``) instead of raising; edges beyond the capacity are then
*missing*. The helpers here read that flag on the host and reallocate -- edges are never silently
dropped. ``allocate`` is host-only (its output shape depends on the data) and cannot be jitted.

jax-md 0.2.29 errors when the same neighbour-list system is built twice in one process;
``jax.clear_caches()`` between builds avoids it.
"""

import logging
import math
import warnings
from typing import Any

import numpy as np
from jaxtyping import Array, Float

from e3md import validate
from e3md.graph import edge_vectors, rows_to_edge_index

log = logging.getLogger(__name__)

# jax-md 0.2.29's Sparse-list pruning scatters int64 indices into an int32 array when x64 is
# enabled (as e3md md does), which jax 0.9 reports as a FutureWarning at every trace. The
# indices are small and the cast is exact; the filter names the message and jax's module only.
warnings.filterwarnings(
    "ignore",
    message="scatter inputs have incompatible types",
    category=FutureWarning,
    module=r"jax\._src\.ops\.scatter",
)

__all__ = [
    "allocate",
    "bucket_size",
    "check_overflow",
    "check_neighbors",
    "edge_index",
    "host_neighbors",
    "host_rows",
    "neighbor_list",
    "SORT_ATOMS_FROM",
    "spatial_order",
    "update",
]


def host_neighbors(
    positions: Float[np.ndarray, "N 3"],
    cutoff: float,
    cell: Float[np.ndarray, "3 3"] | None = None,
    pbc: bool | np.ndarray = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""All directed pairs closer than ``cutoff``, periodic images as integer cell shifts (host).

    Returns every :math:`(i, j, \mathbf n)` with :math:`i \ne j` or :math:`\mathbf n \ne 0` and

    .. math::
        |\mathbf r_{ij}| < r_c,\qquad
        \mathbf r_{ij} = \mathbf R_j - \mathbf R_i + \mathbf n^\top C,

    both directions of every pair, with ``vesin`` (cell lists, :math:`O(N)`; positions need not
    be wrapped into the cell; any mix of periodic directions). Receiver :math:`i` is e3md's
    ``dst``, sender :math:`j` its ``src``. Host only: the edge count depends on the data.

    Args:
      positions: ``[N, 3]`` Å.
      cutoff: :math:`r_c`, Å.
      cell: ``[3, 3]`` lattice vectors as rows, Å (ignored in directions that are not
        periodic; ``None`` for a free system).
      pbc: periodic directions, one bool or three.

    Returns:
      ``(receivers [E] int32, senders [E] int32, shifts [E, 3] int64)``.
    """
    import vesin

    R = np.ascontiguousarray(positions, dtype=np.float64)
    periodic = np.broadcast_to(np.asarray(pbc, bool), (3,)).copy()
    box = np.zeros((3, 3)) if cell is None else np.asarray(cell, np.float64)
    if periodic.any() and cell is None:
        raise ValueError("periodic neighbour search needs a cell")
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, S = nl.compute(points=R, box=box, periodic=periodic, quantities="ijS", copy=True)
    return np.asarray(i, np.int32), np.asarray(j, np.int32), np.asarray(S, np.int64)


#: systems of at least this many atoms are evaluated in :func:`spatial_order` by the ASE
#: calculator and the OpenMM force (their ``sort_atoms=`` default): between 1536 atoms, where a
#: random order cost 5 %, and 12 288, where it cost 32-34 % (BENCHMARKS.md, session 22)
SORT_ATOMS_FROM = 4096


def spatial_order(
    positions: Float[np.ndarray, "N 3"],
    cell: Float[np.ndarray, "3 3"] | None = None,
    atoms_per_cell: float = 8.0,
) -> np.ndarray:
    """Host: an order of the atoms in which atoms near each other in space are near each other
    in the arrays, for faster steps of large systems.

    e3md gathers every neighbour's features per step; when the atoms are listed in no spatial
    order (a box built by placing molecules at random, as packmol does), those gathers miss the
    caches: a 12 288-atom water box took 12 % longer per MD step with its molecules shuffled,
    32-34 % with its atoms shuffled, and its original time again in this order (BENCHMARKS.md,
    session 22). Energies and forces do not depend on the order (up to the rounding of sums);
    the outputs of a simulation then list the atoms in the new order. Sort once before setting
    up, e.g. ``atoms = atoms[spatial_order(atoms.positions, atoms.cell if atoms.pbc.all() else
    None)]`` (``e3md md --sort-atoms``); the ASE calculator and the OpenMM force apply it to
    large systems themselves (``E3MDCalculator(sort_atoms=)``, ``E3mdCompute(sort_atoms=)``).

    The atoms are binned into a grid of cells of about ``atoms_per_cell`` atoms each (of the
    periodic cell in fractional coordinates, wrapped into it; of the atoms' bounding box for a
    free system) and listed cell by cell along a Morton (Z-order) curve, each cell's atoms in
    their previous order.

    Args:
      positions: ``[N, 3]`` Å.
      cell: ``[3, 3]`` lattice vectors as rows, Å (ASE's ``atoms.cell``), or ``None`` (or all
        zeros) for a free system.
      atoms_per_cell: atoms per grid cell on average.

    Returns:
      ``order [N]`` (int64): a permutation; ``positions[order]`` is the sorted system.

    Raises:
      ValueError: positions not ``[N, 3]`` or not finite, a degenerate cell, or
        ``atoms_per_cell`` not positive.
    """
    R = np.asarray(positions, np.float64)
    if R.ndim != 2 or R.shape[1] != 3:
        raise ValueError(f"positions must be [N, 3], got shape {R.shape}")
    if not np.isfinite(R).all():
        raise ValueError("positions contain NaN or inf")
    if not atoms_per_cell > 0 or not np.isfinite(atoms_per_cell):
        raise ValueError(f"atoms_per_cell must be positive, got {atoms_per_cell}")
    n = len(R)
    if n == 0:
        return np.zeros(0, np.int64)
    box = None if cell is None else np.asarray(cell, np.float64)
    if box is not None and not box.any():
        box = None
    if box is None:
        lo = R.min(0)
        widths = np.maximum(R.max(0) - lo, 1.0)  # Å; a flat direction gets one cell
        frac = (R - lo) / widths
        volume = np.prod(widths)
    else:
        volume = abs(np.linalg.det(box))
        if not volume > 0:
            raise ValueError("the cell is degenerate (zero volume)")
        frac = np.mod(R @ np.linalg.inv(box), 1.0)
        # the distance between opposite faces, across each lattice direction
        widths = volume / np.linalg.norm(np.cross(box[[1, 2, 0]], box[[2, 0, 1]]), axis=1)
    # cells of about atoms_per_cell atoms each, as cubic as the cell's shape allows
    side = (volume * atoms_per_cell / n) ** (1 / 3)
    bins = np.clip(np.round(widths / side), 1, 2**21).astype(np.int64)
    c = np.minimum((frac * bins).astype(np.int64), bins - 1)
    key = np.zeros(n, np.int64)
    for bit in range(21):  # interleave the bits of the three cell indices
        for d in range(3):
            key |= ((c[:, d] >> bit) & 1) << (3 * bit + d)
    return np.argsort(key, kind="stable")


def host_rows(
    recv: np.ndarray, send: np.ndarray, shifts: np.ndarray, num_rows: int, slots: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Host: a full neighbour list as receiver-major rows of ``slots`` slots per atom.

    The layout ``atomic_energies(..., symmetric_rows=slots)`` takes: edge ``e`` is slot
    ``e % slots`` of receiver ``e // slots``. Lists from :func:`host_neighbors` hold both
    directions of every pair (``(j, i, -n)`` with ``(i, j, n)``), as the rows' reverse-mode rule
    needs.

    Args:
      recv, send: receiver and sender indices ``[E]`` (< ``num_rows``).
      shifts: integer cell shifts ``[E, 3]``.
      num_rows: atoms including padding atoms (rows).
      slots: slots per row, at least the largest neighbour count.

    Returns:
      ``(recv, send, shifts, edge_mask)`` of length ``num_rows * slots``; empty slots have the
      sender ``num_rows``, zero shift and mask False.
    """
    recv, send = np.asarray(recv), np.asarray(send)
    counts = np.bincount(recv, minlength=num_rows)
    if counts.size and counts.max() > slots:
        raise ValueError(f"{counts.max()} neighbours do not fit into {slots} slots per atom")
    order = np.argsort(recv, kind="stable")
    start = np.cumsum(counts) - counts
    slot = recv[order] * slots + np.arange(order.size) - start[recv[order]]
    out_send = np.full(num_rows * slots, num_rows, np.int32)
    out_shifts = np.zeros((num_rows * slots, 3), np.asarray(shifts).dtype)
    mask = np.zeros(num_rows * slots, bool)
    out_send[slot], out_shifts[slot], mask[slot] = send[order], np.asarray(shifts)[order], True
    out_recv = np.repeat(np.arange(num_rows, dtype=np.int32), slots)
    return out_recv, out_send, out_shifts, mask


def bucket_size(n: int, minimum: int = 8, fraction: float = 0.25) -> int:
    r"""Padded size :math:`\ge \max(n, \mathrm{minimum})` on the grid
    :math:`2^k\,(1 + \mathrm{fraction}\cdot\mathbb N)`: with the default at most 25 %
    padding and four sizes per factor of two, so jitted functions compile once per bucket
    rather than once per atom or edge count.
    """
    n = max(int(n), int(minimum))
    step = max(1, int(2 ** math.floor(math.log2(n)) * fraction))
    return int(math.ceil(n / step) * step)


def neighbor_list(
    displacement_fn: Any,
    box: Any,
    cutoff: float,
    *,
    dr_threshold: float = 0.5,
    capacity_multiplier: float | None = None,
    fractional_coordinates: bool = False,
    disable_cell_list: bool = False,
    periodic: bool | None = None,
    min_distance: float = validate.MIN_DISTANCE,
    format: str = "dense",
    **static_kwargs: Any,
):
    """A checked jax-md neighbour-list builder for a model with ``cutoff``.

    The list includes pairs closer than ``cutoff + dr_threshold`` (Å), so it stays valid until
    some atom moved ``dr_threshold / 2``; ``neighbor_fn.update`` rebuilds as needed inside jit.

    Args:
      displacement_fn: jax-md displacement function (``space.free``, ``space.periodic``,
        ``space.periodic_general``).
      box: jax-md box (Å; lattice vectors as columns), or ``None`` for free space (then the
        cell list is disabled and all pairs are tested, O(N^2): fine for molecules).
      cutoff: model cutoff in Å.
      dr_threshold: skin in Å.
      capacity_multiplier: spare neighbour capacity factor; default 1.1 for ``"dense"`` (every
        slot of a row costs time, and overflows are caught and reallocated), 1.25 (jax-md's
        default) for ``"sparse"``.
      fractional_coordinates: positions are fractional (``periodic_general`` default).
      disable_cell_list: test all pairs instead of using a cell list.
      periodic: whether ``displacement_fn`` is periodic; default ``box is not None``. Periodic
        boxes are checked with :func:`e3md.validate.check_box` at build time and at every
        ``allocate`` (pass ``periodic=False`` to use a cell list in free space).
      min_distance: floor (Å) checked on every ``allocate``.
      format: ``"dense"`` (jax-md ``Dense``: rows ``[N, M]``, the fast path of e3md's
        potentials) or ``"sparse"`` (jax-md ``Sparse``: ``[2, E]``, which supports forward-mode
        differentiation of the energy as well).
      **static_kwargs: forwarded to ``jax_md.partition.neighbor_list``.

    Returns:
      ``jax_md.partition.NeighborListFns`` whose ``allocate`` validates positions (finite),
      the box, and the closest distance, and whose ``update`` is jax-md's (jittable).

    Raises:
      ValueError: cell thinner than ``2 * cutoff`` or degenerate.
    """
    from jax_md import partition

    formats = {"dense": partition.Dense, "sparse": partition.Sparse}
    if format not in formats:
        raise ValueError(f"format must be 'dense' or 'sparse', received {format!r}")
    if periodic is None:
        periodic = box is not None
    if periodic:
        if box is None:
            raise ValueError("periodic=True needs a box")
        validate.check_box(box, cutoff)
    if box is None:
        box = 1.0
        disable_cell_list = True
    fns = partition.neighbor_list(
        displacement_fn,
        box,
        cutoff,  # jax-md adds dr_threshold itself
        dr_threshold=dr_threshold,
        capacity_multiplier=_default_capacity(format)
        if capacity_multiplier is None
        else capacity_multiplier,
        disable_cell_list=disable_cell_list,
        fractional_coordinates=fractional_coordinates,
        format=formats[format],
        **static_kwargs,
    )

    def checked_allocate(position, extra_capacity: int = 0, **kwargs):
        validate.check_positions(position)
        if periodic and "box" in kwargs:
            validate.check_box(kwargs["box"], cutoff)
        nbrs = fns.allocate(position, extra_capacity=extra_capacity, **kwargs)
        check_overflow(nbrs)
        check_neighbors(displacement_fn, position, nbrs, cutoff, min_distance, **kwargs)
        return nbrs

    return partition.NeighborListFns(checked_allocate, fns.update)


def _default_capacity(format: str) -> float:
    """Spare capacity factor of a list format when none is given (see :func:`neighbor_list`)."""
    return 1.1 if format == "dense" else 1.25


def check_overflow(nbrs) -> None:
    """Raise ``RuntimeError`` if the neighbour list overflowed (edges would be missing)."""
    if bool(nbrs.did_buffer_overflow):
        raise RuntimeError(
            f"neighbour list overflowed (capacity {nbrs.idx.shape[-1]}); reallocate it "
            "with neighbor_fn.allocate (see e3md.neighbors.update)"
        )


def check_neighbors(
    displacement_fn: Any,
    R: Float[Array, "N 3"],
    nbrs,
    cutoff: float,
    min_distance: float = validate.MIN_DISTANCE,
    **kwargs: Any,
) -> None:
    """Host check: no two atoms in the list closer than ``min_distance`` (Å).

    Raises:
      ValueError: naming the closest pair.
    """
    del cutoff
    r, src, dst, mask = edge_vectors(displacement_fn, R, edge_index(nbrs), **_disp_kwargs(kwargs))
    mask = np.asarray(mask)
    d = np.linalg.norm(np.asarray(r), axis=-1)[mask]
    pairs = np.stack([np.asarray(dst)[mask], np.asarray(src)[mask]])
    validate.check_min_distance(d, pairs, min_distance)


def edge_index(nbrs) -> Array:
    """The neighbour list's edges as ``[2, E]`` (receivers, senders) for either jax-md format
    (a Dense list's rows flattened receiver-major, :func:`e3md.graph.rows_to_edge_index`)."""
    from jax_md import partition

    return nbrs.idx if partition.is_sparse(nbrs.format) else rows_to_edge_index(nbrs.idx)


def _disp_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k in ("box", "perturbation")}


def allocate(neighbor_fn, R: Float[Array, "N 3"], extra_capacity: int = 0, **kwargs):
    """Allocate a neighbour list (host only, not jittable) and verify it did not overflow."""
    nbrs = neighbor_fn.allocate(R, extra_capacity=extra_capacity, **kwargs)
    check_overflow(nbrs)
    return nbrs


def update(neighbor_fn, R: Float[Array, "N 3"], nbrs, max_retries: int = 4, **kwargs):
    """Update ``nbrs`` for positions ``R``; on overflow reallocate with more room (host).

    Use between jitted chunks: ``nbrs = update(neighbor_fn, R, nbrs)``.

    Returns:
      A neighbour list for ``R`` that did not overflow.

    Raises:
      RuntimeError: still overflowing after ``max_retries`` reallocations.
    """
    new = neighbor_fn.update(R, nbrs, **kwargs)
    tries = 0
    while bool(new.did_buffer_overflow):
        if tries >= max_retries:
            raise RuntimeError(f"neighbour list still overflows after {tries} reallocations")
        extra = int(0.25 * nbrs.idx.shape[-1]) * (tries + 1)
        log.info("neighbour list overflowed (capacity %d); reallocating", nbrs.idx.shape[-1])
        new = neighbor_fn.allocate(R, extra_capacity=extra, **kwargs)
        tries += 1
    return new
