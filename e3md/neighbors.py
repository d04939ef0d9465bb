"""jax-md neighbour lists for e3md: Sparse format, cell-size checks, overflow handling.

Neighbour lists come from ``jax_md.partition.neighbor_list`` in ``Sparse`` format (both
directions of every pair, ``idx[2, E]``, padding index ``N``). jax-md flags a full buffer inside
``jit`` (``nbrs.did_buffer_overflow``) instead of raising; edges beyond the capacity are then
*missing*. The helpers here read that flag on the host and reallocate -- edges are never silently
dropped. ``allocate`` is host-only (its output shape depends on the data) and cannot be jitted.

jax-md 0.2.29 errors when the same neighbour-list system is built twice in one process;
``jax.clear_caches()`` between builds avoids it.
"""

import logging
from typing import Any

import numpy as np
from jaxtyping import Array, Float

from e3md import validate
from e3md.graph import edge_vectors

log = logging.getLogger(__name__)

__all__ = ["allocate", "check_overflow", "check_neighbors", "neighbor_list", "update"]


def neighbor_list(
    displacement_fn: Any,
    box: Any,
    cutoff: float,
    *,
    dr_threshold: float = 0.5,
    capacity_multiplier: float = 1.25,
    fractional_coordinates: bool = False,
    disable_cell_list: bool = False,
    periodic: bool | None = None,
    min_distance: float = validate.MIN_DISTANCE,
    **static_kwargs: Any,
):
    """A checked jax-md Sparse neighbour-list builder for a model with ``cutoff``.

    The list includes pairs closer than ``cutoff + dr_threshold`` (Å), so it stays valid until
    some atom moved ``dr_threshold / 2``; ``neighbor_fn.update`` rebuilds as needed inside jit.

    Args:
      displacement_fn: jax-md displacement function (``space.free``, ``space.periodic``,
        ``space.periodic_general``).
      box: jax-md box (Å; lattice vectors as columns), or ``None`` for free space (then the
        cell list is disabled and all pairs are tested, O(N^2): fine for molecules).
      cutoff: model cutoff in Å.
      dr_threshold: skin in Å.
      capacity_multiplier: spare neighbour capacity factor.
      fractional_coordinates: positions are fractional (``periodic_general`` default).
      disable_cell_list: test all pairs instead of using a cell list.
      periodic: whether ``displacement_fn`` is periodic; default ``box is not None``. Periodic
        boxes are checked with :func:`e3md.validate.check_box` at build time and at every
        ``allocate`` (pass ``periodic=False`` to use a cell list in free space).
      min_distance: floor (Å) checked on every ``allocate``.
      **static_kwargs: forwarded to ``jax_md.partition.neighbor_list``.

    Returns:
      ``jax_md.partition.NeighborListFns`` whose ``allocate`` validates positions (finite),
      the box, and the closest distance, and whose ``update`` is jax-md's (jittable).

    Raises:
      ValueError: cell thinner than ``2 * cutoff`` or degenerate.
    """
    from jax_md import partition

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
        capacity_multiplier=capacity_multiplier,
        disable_cell_list=disable_cell_list,
        fractional_coordinates=fractional_coordinates,
        format=partition.Sparse,
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


def check_overflow(nbrs) -> None:
    """Raise ``RuntimeError`` if the neighbour list overflowed (edges would be missing)."""
    if bool(nbrs.did_buffer_overflow):
        raise RuntimeError(
            f"neighbour list overflowed (capacity {nbrs.idx.shape[-1]} edges); reallocate it "
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
    r, src, dst, mask = edge_vectors(displacement_fn, R, nbrs.idx, **_disp_kwargs(kwargs))
    mask = np.asarray(mask)
    d = np.linalg.norm(np.asarray(r), axis=-1)[mask]
    pairs = np.stack([np.asarray(dst)[mask], np.asarray(src)[mask]])
    validate.check_min_distance(d, pairs, min_distance)


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
