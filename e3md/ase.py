r"""ASE calculator: any e3md potential as a drop-in ``ase.calculators.calculator.Calculator``.

The adapter only converts layouts and units. Neighbours come from vesin
(:func:`e3md.neighbors.host_neighbors`: full list with integer cell shifts :math:`S`, so free
molecules, slabs with mixed periodicity and cells smaller than twice the cutoff are all handled
by periodic images); the edge vector from receiver :math:`i`
to sender :math:`j` is

.. math::
  r_{ij} = (R_j - R_i + S_{ij} C)\,(I + \varepsilon)^T \quad\text{(Å)},

with :math:`C` the ASE cell (lattice vectors as rows) and :math:`\varepsilon` a symmetric strain
that is zero in value and only exists to be differentiated. One jitted function returns

.. math::
  E = \sum_i e_i,\qquad F_i = -\frac{\partial E}{\partial R_i},\qquad
  \sigma = \frac{1}{V}\frac{\partial E}{\partial \varepsilon}\Big|_{\varepsilon=0}

(eV, eV/Å, eV/Å³; ASE's sign: positive stress is tensile). Atoms are padded to a size bucket
(:func:`e3md.neighbors.bucket_size`) and the neighbours placed in receiver-major rows of a
bucketed number of slots per atom (:func:`e3md.neighbors.host_rows`, evaluated with
``atomic_energies(..., symmetric_rows=slots)``), so a relaxation or an ASE MD run compiles once
per bucket. Systems of at least ``sort_atoms`` atoms are evaluated in
:func:`e3md.neighbors.spatial_order` (the results are returned in the caller's order), so the
neighbours' gathers stay in the caches whatever order the atoms are listed in.
"""

import functools
import logging
import os

import ase.units
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress
from jax.flatten_util import ravel_pytree

from e3md.compiler import compiler_options_key, jit
from e3md.neighbors import (
    SORT_ATOMS_FROM,
    bucket_size,
    host_neighbors,
    host_rows,
    spatial_order,
)

log = logging.getLogger(__name__)

__all__ = ["E3MDCalculator", "UNIT_TABLE"]

#: (ASE result key, e3md output key, factor e3md unit -> ASE unit). e3md works in eV and Å, as
#: ASE does, so every factor is 1; this table is still the one place where units would change.
UNIT_TABLE = (
    ("energy", "energy", ase.units.eV),
    ("free_energy", "energy", ase.units.eV),
    ("energies", "energies", ase.units.eV),
    ("forces", "forces", ase.units.eV / ase.units.Ang),
    ("stress", "stress", ase.units.eV / ase.units.Ang**3),
)


def _resolve(potential):
    """A ``Potential`` from a shipped name, a model file or a ``Potential``."""
    from e3md import potentials

    if isinstance(potential, str | os.PathLike):
        return potentials.load(potential)
    return potential


def _pack(params):
    """``params`` as one flat array (``jax.flatten_util.ravel_pytree``) and its hashable
    layout (tree structure, shapes, dtypes) for :func:`_make_evaluate`: the jitted function
    then takes one argument instead of one per parameter array (the model's ~55 arrays cost
    JAX and XLA ~2 µs each per call; rmd17-ethanol on ethanol: ~1.0 -> 0.89 ms per
    ``get_forces``)."""
    leaves, treedef = jax.tree.flatten(params)
    layout = (treedef, tuple((leaf.shape, jnp.dtype(leaf.dtype).name) for leaf in leaves))
    return ravel_pytree(params)[0], layout


def _unraveler(layout):
    """The inverse of :func:`_pack` for parameters of this layout."""
    treedef, shapes = layout
    zeros = jax.tree.unflatten(treedef, [np.zeros(shape, dtype) for shape, dtype in shapes])
    return ravel_pytree(zeros)[1]


@functools.lru_cache(maxsize=16)
def _make_evaluate(config, layout):
    """The jitted ``(flat params, R, cell, shifts, species_index, src, dst, edge_mask,
    atom_mask) -> (E, e_i, F, dE/dε)`` for a (hashable) model config and parameter layout
    (:func:`_pack`), and its trace log: every trace appends the atom and edge bucket. Cached,
    so calculators of one config share compiled code."""
    from e3md import potentials
    from e3md.graph import edge_vectors_from_shifts
    from e3md.nn.cpu_kernels import reverse_mode_only

    atomic_energies = functools.partial(potentials.atomic_energies, config)
    far = 2.0 * float(config.cutoff) + 1.0
    trace_log = []

    def total_energy(
        R, strain, params, cell, shifts, species_index, src, dst, edge_mask, atom_mask
    ):
        deform = jnp.eye(3, dtype=R.dtype) + 0.5 * (strain + strain.T)
        with reverse_mode_only():  # rows of a full list promise it (atomic_energies' kernels)
            r_ij = edge_vectors_from_shifts(R, src, dst, shifts, cell) @ deform.T
        # padded edges point at index N (clamped by the gather): give them a finite length beyond
        # the cutoff, so no 0/0 can arise in a norm or its gradient; they are masked anyway.
        r_ij = jnp.where(edge_mask[:, None], r_ij, jnp.asarray([far, 0.0, 0.0], R.dtype))
        rows = src.shape[0] // R.shape[0]  # receiver-major rows of a full list (host_rows)
        e_i = atomic_energies(
            params, r_ij, species_index, src, dst, edge_mask, atom_mask, symmetric_rows=rows
        )
        e_i = jnp.where(atom_mask, e_i, 0.0)
        return jnp.sum(e_i), e_i

    grad_fn = jax.value_and_grad(total_energy, argnums=(0, 1), has_aux=True)
    unravel = _unraveler(layout)

    def evaluate_graph(flat, R, cell, shifts, species_index, src, dst, edge_mask, atom_mask):
        trace_log.append((R.shape[0], src.shape[0]))  # runs once per trace, i.e. per compile
        params = unravel(flat)
        strain = jnp.zeros((3, 3), R.dtype)
        (energy, e_i), (dE_dR, dE_deps) = grad_fn(
            R, strain, params, cell, shifts, species_index, src, dst, edge_mask, atom_mask
        )
        return energy, e_i, -dE_dR, dE_deps

    # XLA options depend on the system size (e3md.compiler): one jit per set of options
    jitted = {}

    def evaluate(flat, R, **graph):
        key = compiler_options_key(R.shape[0])
        if key not in jitted:
            jitted[key] = jit(evaluate_graph, num_atoms=R.shape[0])
        return jitted[key](flat, R, **graph)

    return evaluate, trace_log


class E3MDCalculator(Calculator):
    r"""ASE calculator for an e3md potential.

    Args:
      potential: a shipped potential's name, a ``*.e3md`` model file, or an
        ``e3md.potentials.Potential``.
      dtype: ``"float32"`` or ``"float64"`` computation (float64 needs ``jax_enable_x64``, which
        the caller sets; the library never changes jax config).
      min_atoms: smallest atom bucket (padding, see :func:`e3md.neighbors.bucket_size`).
      min_edges: smallest number of edge slots (atom bucket x slots per atom).
      sort_atoms: evaluate systems of at least this many atoms in spatial order (per call, on
        the host: ~2 ms for 12 288 atoms; results in the caller's order); ``None``: never.
      **kwargs: forwarded to ``ase.calculators.calculator.Calculator``.

    Attributes:
      traces: one ``(atom bucket, edge slots)`` entry per compilation of the energy function.
        Compiled code (and this list) is shared by all calculators of the same model config and
        dtype, so e.g. NEB images or a new calculator per structure do not recompile.

    Results: ``energy`` and ``free_energy`` (eV), ``energies`` (eV per atom), ``forces`` (eV/Å),
    ``stress`` (Voigt xx yy zz yz xz xy, eV/Å³, :math:`\sigma = V^{-1}\partial E/\partial
    \varepsilon`; only with a 3D cell).

    Raises:
      ValueError: on ``calculate``, for elements the potential does not know, non-finite
        positions or cell, or a periodic direction without a cell vector; at construction, for a
        bad ``dtype`` or float64 without x64.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        potential,
        dtype: str = "float32",
        *,
        min_atoms: int = 8,
        min_edges: int = 64,
        sort_atoms: int | None = SORT_ATOMS_FROM,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        if dtype == "float64" and jnp.zeros((), jnp.float64).dtype != jnp.float64:
            raise ValueError("dtype='float64' needs jax.config.update('jax_enable_x64', True)")
        self.dtype = np.dtype(dtype)
        potential = _resolve(potential)
        self.config = potential.config.replace(dtype=dtype)
        self.cutoff, species = float(self.config.cutoff), self.config.species
        self.params = jax.tree.map(
            lambda p: jnp.asarray(p, self.dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
            potential.params,
        )
        self.species = tuple(int(z) for z in species)
        self._index_of = np.full(119, -1, np.int32)
        self._index_of[list(self.species)] = np.arange(len(self.species), dtype=np.int32)
        self.min_atoms, self.min_edges = int(min_atoms), int(min_edges)
        self.sort_atoms = None if sort_atoms is None else int(sort_atoms)
        self._flat_params, layout = _pack(self.params)
        self._evaluate, self.traces = _make_evaluate(self.config, layout)

    def _graph(self, atoms):
        """Host side: validate ``atoms``, build the neighbour list, pad to buckets. Returns
        ``(graph, order)``: the atoms in ``graph`` are ``atoms[order]`` (``order`` None: as
        given)."""
        numbers, R = atoms.numbers, np.asarray(atoms.positions, np.float64)
        cell, pbc = np.asarray(atoms.cell[:], np.float64), np.asarray(atoms.pbc, bool)
        index = self._index_of[np.clip(numbers, 0, 118)]
        if np.any(index < 0) or np.any(numbers > 118):
            unknown = sorted({int(z) for z, k in zip(numbers, index, strict=True) if k < 0})
            symbols = [chemical_symbols[z] if 0 < z < 119 else str(z) for z in unknown]
            raise ValueError(
                f"elements {symbols} are unknown to the potential (knows Z={self.species})"
            )
        if not np.all(np.isfinite(R)):
            bad = np.flatnonzero(~np.all(np.isfinite(R), axis=1))
            raise ValueError(f"non-finite positions for atoms {bad[:10].tolist()}")
        if not np.all(np.isfinite(cell)):
            raise ValueError(f"non-finite cell {cell.tolist()}")
        if pbc.any():
            periodic = cell[pbc]
            if np.linalg.matrix_rank(periodic, tol=1e-8) < len(periodic):
                raise ValueError(
                    f"pbc={pbc.tolist()} needs independent cell vectors for the "
                    f"periodic directions, got cell {cell.tolist()}"
                )
        order = None
        if self.sort_atoms is not None and len(R) >= self.sort_atoms:
            order = spatial_order(R, cell if pbc.all() else None)
            R, index = R[order], index[order]
        i, j, S = host_neighbors(R, self.cutoff, cell, pbc)
        n = len(R)
        n_pad = bucket_size(n, self.min_atoms)
        most = int(np.bincount(i, minlength=n).max()) if len(i) else 0
        slots = bucket_size(max(most, -(-self.min_edges // n_pad)), minimum=4)
        dst, src, shifts, edge_mask = host_rows(i, j, S, n_pad, slots)
        pad = lambda x, size, fill, dtype: np.concatenate(
            [np.asarray(x, dtype), np.full((size - len(x),) + np.shape(x)[1:], fill, dtype)]
        )
        graph = dict(
            R=pad(R, n_pad, 0.0, self.dtype),
            cell=cell.astype(self.dtype),
            shifts=shifts.astype(self.dtype),
            species_index=pad(index, n_pad, 0, np.int32),
            src=src,  # sender j
            dst=dst,  # receiver i
            edge_mask=edge_mask,
            atom_mask=pad(np.ones(n, bool), n_pad, False, bool),
        )
        return graph, order

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Compute every implemented property in one jitted call (see class docstring)."""
        super().calculate(atoms, properties, system_changes)
        atoms, n = self.atoms, len(self.atoms)
        volume = abs(float(np.linalg.det(atoms.cell[:]))) if atoms.cell.rank == 3 else 0.0
        if "stress" in properties and volume == 0.0:
            raise PropertyNotImplementedError("stress needs a cell spanning three dimensions")
        graph, order = self._graph(atoms)
        energy, e_i, forces, dE_deps = self._evaluate(self._flat_params, **graph)
        e_i, forces = np.asarray(e_i, np.float64)[:n], np.asarray(forces, np.float64)[:n]
        if order is not None:  # back to the caller's order
            back = np.argsort(order)
            e_i, forces = e_i[back], forces[back]
        out = {"energy": float(energy), "energies": e_i, "forces": forces}
        if volume > 0.0:
            out["stress"] = full_3x3_to_voigt_6_stress(np.asarray(dE_deps, np.float64) / volume)
        for ase_key, key, factor in UNIT_TABLE:
            if key in out:
                self.results[ase_key] = out[key] * factor
