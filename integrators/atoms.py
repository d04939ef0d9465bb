"""MD of an ``ase.Atoms`` with an e3md potential (or any jax-md builder): :func:`run_atoms`."""

from collections.abc import Callable
from typing import Any

import numpy as np
from e3md.integrators.md import MDResult, run_md
from e3md.integrators.space import make_space


def run_atoms(
    atoms,
    potential: Any = None,
    *,
    builder: Callable | None = None,
    cutoff: float | None = None,
    dtype=np.float64,
    neighbor_options: dict | None = None,
    **run_kwargs: Any,
) -> MDResult:
    """Run :func:`~e3md.integrators.run_md` on ``atoms``.

    Args:
      atoms: ``ase.Atoms`` (non-periodic, or periodic in all three directions); positions Å,
        masses amu (``atoms.get_masses()``).
      potential: an ``e3md.potentials.Potential`` (or anything with ``.cutoff`` and
        ``.neighbor_list(displacement_fn, box, species, **options)``).
      builder: alternatively ``builder(displacement_fn, box, **neighbor_kwargs) ->
        (neighbor_fn, energy_fn)`` (e.g. a jax-md pair potential), with ``cutoff`` in Å.
      cutoff: interaction cutoff in Å for ``builder`` (validation of the cell width).
      dtype: coordinate dtype.
      neighbor_options: extra neighbour-list options (``dr_threshold``,
        ``capacity_multiplier``, ...).
      **run_kwargs: passed to :func:`~e3md.integrators.run_md` (``steps``, ``ensemble``,
        ``dt_fs``, ``temperature_K``, ...).

    Returns:
      The :class:`~e3md.integrators.MDResult`.

    Raises:
      ValueError: unknown elements, NaN positions, a cell thinner than twice the cutoff, ...
    """
    if (potential is None) == (builder is None):
        raise ValueError("give exactly one of potential= or builder=")
    if potential is not None:
        cutoff = float(potential.cutoff)
        unknown = sorted(
            set(int(z) for z in atoms.numbers) - set(int(z) for z in potential.species)
        )
        if unknown:
            raise ValueError(
                f"the structure contains elements {unknown} that the potential does not know "
                f"(it knows {list(potential.species)})"
            )
    elif cutoff is None:
        raise ValueError("builder= needs cutoff= (Å)")
    space = make_space(atoms, cutoff, dtype=dtype)
    options = dict(space.neighbor_kwargs, **(neighbor_options or {}))
    if potential is not None:
        neighbor_fn, energy_fn = potential.neighbor_list(
            space.displacement_fn, space.box, atoms.numbers, **options
        )
    else:
        neighbor_fn, energy_fn = builder(space.displacement_fn, space.box, **options)
    return run_md(
        neighbor_fn,
        energy_fn,
        space.shift_fn,
        space.positions,
        np.asarray(atoms.get_masses(), dtype=dtype),
        box=space.box,
        fractional=space.fractional,
        numbers=np.asarray(atoms.numbers),
        **run_kwargs,
    )
