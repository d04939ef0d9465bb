r"""OpenMM adapter: an e3md potential as an ``openmm.PythonForce``, registered with openmm-ml.

Two ways in:

* openmm-ml (the entry point ``e3md`` in the group ``openmmml.potentials``)::

      from openmmml import MLPotential
      potential = MLPotential("e3md", model="rmd17-ethanol")        # shipped name or *.e3md path
      system = potential.createSystem(topology)                      # whole system by e3md
      mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)   # ML/MM

* directly: :func:`create_force` returns the ``PythonForce`` for a topology.

Units are converted at this boundary only (factors from :mod:`e3md.units`): OpenMM positions in
nm become Å, the e3md energy in eV becomes kJ/mol and the forces
:math:`F = -\partial E/\partial R` in eV/Å become kJ/mol/nm.

The neighbour search runs on the host once per force evaluation (positions arrive on the host
anyway; :func:`e3md.neighbors.host_neighbors`, vesin cell lists, :math:`O(N)`): every pair
:math:`(i, j)` and lattice translation :math:`\mathbf{n}` with
:math:`|\mathbf{R}_j - \mathbf{R}_i + \mathbf{n}^\top C| < r_c` becomes an edge, so periodic
images are honoured through cell shifts. The edges are placed in receiver-major rows of a number
of slots per atom that only grows (:func:`e3md.neighbors.host_rows`; evaluated with
``atomic_energies(..., symmetric_rows=slots)``), so the jitted energy-and-force function
recompiles rarely.

``openmm`` / ``openmmml`` are imported lazily inside functions: importing this module needs
neither, and the e3md core never imports this module. openmm-ml imports it through the entry
point whenever ``openmmml`` is imported, so it must stay cheap: no jax at import time either
(``e3md.validate`` and ``e3md.potentials`` import jax, so they are imported inside functions).
"""

import collections
import hashlib
import logging
import os
import tempfile

import numpy as np
from jaxtyping import Float, Int

from e3md import units

log = logging.getLogger(__name__)

__all__ = [
    "E3mdCompute",
    "E3mdImpl",
    "E3mdImplFactory",
    "create_force",
    "species_indices",
]

# Jitted energy-and-force functions keyed by (sha256 of the model file, precision). Each
# PythonForce owns its own callable, and openmm-ml deep-copies forces, XmlSerializer round trips
# unpickle new ones: without this memo every copy would recompile the same pure function
# (tens of seconds for a real model). Bounded, holds no mutable state beyond compiled code.
_COMPILED: "collections.OrderedDict[tuple[str, str], object]" = collections.OrderedDict()
_COMPILED_MAX = 8


# --------------------------------------------------------------------------------------------
# Model file bytes <-> Potential
# --------------------------------------------------------------------------------------------


def _model_bytes(model) -> bytes:
    """Bytes of an e3md model file for a shipped name, a path, or a ``Potential`` object."""
    from e3md import potentials

    if isinstance(model, bytes | bytearray):
        return bytes(model)
    if isinstance(model, str | os.PathLike):
        if os.path.isfile(model):
            with open(model, "rb") as fh:
                return fh.read()
        pot = potentials.load(model)  # a shipped name; raises a clear error when unknown
    elif isinstance(model, potentials.Potential):
        pot = model
    else:
        raise TypeError(
            "model must be a shipped potential name, a path to an *.e3md file, model-file bytes "
            f"or an e3md.potentials.Potential, got {type(model).__name__}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.e3md")
        pot.save(path)
        with open(path, "rb") as fh:
            return fh.read()


def _potential_from_bytes(blob: bytes):
    """Load a ``Potential`` from model-file bytes (the file format validates its checksum)."""
    from e3md import potentials

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.e3md")
        with open(path, "wb") as fh:
            fh.write(blob)
        return potentials.load(path)


def _capacity(neighbours: int, current: int) -> int:
    """Slots per atom that only grow: 10 % headroom, rounded up to a multiple of 4."""
    if neighbours <= current:
        return current
    return max(8, int(np.ceil(1.1 * neighbours / 4.0)) * 4)


# --------------------------------------------------------------------------------------------
# The computation that PythonForce calls
# --------------------------------------------------------------------------------------------


#: ``E3mdCompute``'s ``sort_atoms`` default: :data:`e3md.neighbors.SORT_ATOMS_FROM`, written
#: out because this module imports no jax (a test checks that the two agree)
_SORT_ATOMS_DEFAULT = 4096


class E3mdCompute:
    r"""Picklable callable for ``openmm.PythonForce``: OpenMM ``State`` -> (kJ/mol, kJ/mol/nm).

    It holds the e3md model file as bytes plus the per-atom species, so pickling (XmlSerializer,
    ``copy.deepcopy`` in openmm-ml's interpolation set-up, copied Contexts) stores plain data;
    the jitted function is rebuilt on unpickling.

    .. math::
        E_\text{OpenMM} = E_\text{e3md}\,[\text{eV}] \cdot \text{EV\_TO\_KJ\_PER\_MOL},\qquad
        F_\text{OpenMM} = -\frac{\partial E_\text{e3md}}{\partial R}\,[\text{eV/Å}] \cdot
        \text{EV\_PER\_A\_TO\_KJ\_PER\_MOL\_PER\_NM}

    Args:
      model_bytes: contents of an ``*.e3md`` file.
      atomic_numbers: ``[N]`` atomic numbers of the atoms the force sees (after
        ``PythonForce.setParticles``), in that order.
      periodic: read box vectors from the State and use periodic images.
      precision: ``"double"`` (float64, default) or ``"single"`` (float32): the model's
        ``config.dtype`` and parameters are cast to it for evaluation inside OpenMM, whatever
        dtype the file was trained in (double keeps NVE energy drift low).
      atom_labels: optional per-atom descriptions used only in error messages (not stored).
      sort_atoms: evaluate systems of at least this many atoms in
        :func:`e3md.neighbors.spatial_order` (faster for large systems listed in no spatial
        order; forces returned in OpenMM's order); ``None``: never.
    Raises:
      ValueError: unknown precision, or an atomic number the potential does not know.
    """

    def __init__(
        self,
        model_bytes: bytes,
        atomic_numbers,
        periodic: bool = False,
        precision: str = "double",
        atom_labels=None,
        sort_atoms: int | None = _SORT_ATOMS_DEFAULT,
    ):
        if precision not in ("single", "double"):
            raise ValueError(f"precision must be 'single' or 'double', got {precision!r}")
        self.model_bytes = bytes(model_bytes)
        self.atomic_numbers = tuple(int(z) for z in atomic_numbers)
        self.periodic = bool(periodic)
        self.precision = precision
        self.sort_atoms = None if sort_atoms is None else int(sort_atoms)
        self._build(atom_labels)

    # -- pickling: plain data only ------------------------------------------------------------
    def __getstate__(self):
        return {
            "model_bytes": self.model_bytes,
            "atomic_numbers": self.atomic_numbers,
            "periodic": self.periodic,
            "precision": self.precision,
            "sort_atoms": self.sort_atoms,
        }

    def __setstate__(self, state):
        self.model_bytes = state["model_bytes"]
        self.atomic_numbers = tuple(state["atomic_numbers"])
        self.periodic = bool(state["periodic"])
        self.precision = state["precision"]
        self.sort_atoms = state.get("sort_atoms", _SORT_ATOMS_DEFAULT)
        self._build()

    # -- set-up -------------------------------------------------------------------------------
    def _build(self, atom_labels=None) -> None:
        import jax

        # load with x64 on so a float64 model file restores as stored, whatever the caller's
        # global setting; the evaluation dtype is chosen later by ``precision``
        with jax.enable_x64(True):
            self._potential = _potential_from_bytes(self.model_bytes)
        self.cutoff = float(self._potential.cutoff)
        self.species_index = species_indices(
            self.atomic_numbers, self._potential.species, atom_labels
        )
        self._capacity = 0
        self._last_overlap = None  # message of the last evaluation refused for an overlap
        self._fn = None  # jitted lazily on the first call (shared, see ``_COMPILED``)

    def _shared_energy_forces_fn(self):
        from e3md.compiler import compiler_options_key

        key = (
            hashlib.sha256(self.model_bytes).hexdigest(),
            self.precision,
            compiler_options_key(len(self.atomic_numbers)),  # XLA options depend on the size
        )
        fn = _COMPILED.get(key)
        if fn is None:
            fn = self._energy_forces_fn()
            _COMPILED[key] = fn
            while len(_COMPILED) > _COMPILED_MAX:
                _COMPILED.popitem(last=False)
        else:
            _COMPILED.move_to_end(key)
        return fn

    def _energy_forces_fn(self):
        import jax
        import jax.numpy as jnp

        from e3md import potentials
        from e3md.compiler import jit
        from e3md.graph import edge_vectors_from_shifts
        from e3md.nn.cpu_kernels import reverse_mode_only

        pot = self._potential
        dtype = jnp.float64 if self.precision == "double" else jnp.float32
        config = pot.config.replace(dtype=jnp.dtype(dtype).name)
        with jax.enable_x64(self.precision == "double"):
            params = jax.tree_util.tree_map(
                lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                pot.params,
            )
        far = jnp.asarray([2.0 * self.cutoff, 0.0, 0.0])

        def energy(R, cell, species_index, recv, send, shift, edge_mask, atom_mask):
            # r_ij = R_j - R_i + n C, receiver i, sender j; padded edges get a safe vector
            # beyond the cutoff so neither the value nor its gradient sees 0/0.
            with reverse_mode_only():  # rows of a full list promise it (atomic_energies')
                r_ij = edge_vectors_from_shifts(R, send, recv, shift.astype(R.dtype), cell)
            r_ij = jnp.where(edge_mask[:, None], r_ij, far.astype(R.dtype))
            e_i = potentials.atomic_energies(
                config,
                params,
                r_ij,
                species_index,
                send,
                recv,
                edge_mask,
                atom_mask,
                symmetric_rows=send.shape[0] // R.shape[0],  # rows of a full list (host_rows)
            )
            return jnp.sum(jnp.where(atom_mask, e_i, 0.0))

        @jit(num_atoms=len(self.atomic_numbers))
        def energy_forces(R, cell, species_index, recv, send, shift, edge_mask, atom_mask):
            e, g = jax.value_and_grad(energy)(
                R, cell, species_index, recv, send, shift, edge_mask, atom_mask
            )
            return e, -g

        return energy_forces

    # -- evaluation ---------------------------------------------------------------------------
    def energy_forces(
        self,
        positions: Float[np.ndarray, "N 3"],
        cell: Float[np.ndarray, "3 3"] | None = None,
        *,
        on_overlap: str = "raise",
    ) -> tuple[float, Float[np.ndarray, "N 3"]]:
        """Energy and forces of the e3md potential, in e3md units.

        Args:
          positions: ``[N, 3]`` Å.
          cell: ``[3, 3]`` lattice vectors as rows, Å (required for a periodic force).
          on_overlap: what to do when two atoms are closer than
            :data:`e3md.validate.MIN_DISTANCE`, where an ML potential returns garbage:
            ``"raise"`` (``ValueError``) or ``"inf"`` (return ``E = +inf`` and NaN forces; see
            :meth:`__call__`).
        Returns:
          ``(E, F)``: energy in eV, forces ``-dE/dR`` of shape ``[N, 3]`` in eV/Å.
        Raises:
          ValueError: wrong shape, NaN/inf, atoms closer than
            :data:`e3md.validate.MIN_DISTANCE` (with ``on_overlap="raise"``), or a cell thinner
            than 2 x cutoff.
        """
        import jax

        from e3md import validate
        from e3md.neighbors import host_neighbors, host_rows, spatial_order

        if self.periodic and cell is None:
            raise ValueError("this e3md force is periodic but no cell was given")
        R = np.asarray(positions, dtype=np.float64)
        n = len(self.atomic_numbers)
        if R.shape != (n, 3):
            raise ValueError(f"expected positions of shape ({n}, 3), got {R.shape}")
        validate.check_positions(R)
        if self.periodic:
            validate.check_box(np.asarray(cell, np.float64).T, self.cutoff)  # columns: jax-md
        recv, send, shift = host_neighbors(R, self.cutoff, cell, self.periodic)
        num_edges = recv.shape[0]
        cell_arr = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
        distances = np.linalg.norm(R[send] - R[recv] + shift @ cell_arr, axis=1)
        try:
            validate.check_min_distance(distances, np.stack([recv, send]))
        except ValueError as err:
            if on_overlap != "inf":
                raise
            self._last_overlap = str(err)
            log.warning("e3md OpenMM force: %s; returning E = +inf", err)
            return np.inf, np.full((n, 3), np.nan)
        self._last_overlap = None
        most = int(np.bincount(recv, minlength=n).max()) if num_edges else 0
        capacity = _capacity(most, self._capacity)
        if capacity != self._capacity:
            log.debug("e3md OpenMM force: slots per atom %d -> %d", self._capacity, capacity)
            self._capacity = capacity
        species = np.asarray(self.species_index, np.int32)
        rank = None  # the atoms' places in spatial order, if sorted
        if self.sort_atoms is not None and n >= self.sort_atoms:
            order = spatial_order(R, cell_arr if self.periodic else None)
            rank = np.argsort(order)
            R, species, recv, send = R[order], species[order], rank[recv], rank[send]
        recv, send, shift, edge_mask = host_rows(recv, send, shift, n, capacity)
        atom_mask = np.ones(n, dtype=bool)
        dtype = np.float64 if self.precision == "double" else np.float32
        with jax.enable_x64(self.precision == "double"):
            if self._fn is None:
                self._fn = self._shared_energy_forces_fn()
            e, f = self._fn(
                R.astype(dtype),
                cell_arr.astype(dtype),
                species,
                recv,
                send,
                shift.astype(np.int32),
                edge_mask,
                atom_mask,
            )
            e = float(e)
            f = np.asarray(f, dtype=np.float64)
        return e, (f if rank is None else f[rank])

    def __call__(self, state):
        """OpenMM ``State`` -> (energy in kJ/mol, forces ``[N, 3]`` in kJ/mol/nm).

        Atoms closer than :data:`e3md.validate.MIN_DISTANCE` give ``E = +inf`` and NaN forces
        instead of an exception, with a logged warning. That is what OpenMM's
        ``LocalEnergyMinimizer`` needs: its L-BFGS line search tries long steps (the first one
        moves all coordinates by 1 nm in total), sees the infinite energy and backtracks, as it
        would on a steep force-field wall. An integrator instead gets NaN positions, and the
        next evaluation raises a ``ValueError`` that names the overlap.
        """
        from openmm import unit

        R = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer) * units.NM
        R = np.asarray(R, dtype=np.float64)
        if self._last_overlap is not None and not np.all(np.isfinite(R)):
            raise ValueError(
                f"positions became NaN/inf after an evaluation with {self._last_overlap}"
            )
        cell = None
        if self.periodic:
            box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
            cell = np.asarray(box, dtype=np.float64) * units.NM  # rows = a, b, c
        e, f = self.energy_forces(R, cell, on_overlap="inf")
        return e * units.EV_TO_KJ_PER_MOL, f * units.EV_PER_A_TO_KJ_PER_MOL_PER_NM


def species_indices(atomic_numbers, species, atom_labels=None) -> Int[np.ndarray, " N"]:
    """Map atomic numbers to indices into the potential's sorted ``species`` tuple.

    Args:
      atomic_numbers: ``[N]`` atomic numbers.
      species: the potential's atomic numbers (``Potential.species``).
      atom_labels: optional ``[N]`` descriptions of the atoms for the error message
        (default ``"atom <k>"``).
    Returns:
      ``[N]`` int32 indices into ``species``.
    Raises:
      ValueError: an atomic number the potential does not know, naming the atoms.
    """
    lookup = {int(z): k for k, z in enumerate(species)}
    unknown = [(a, int(z)) for a, z in enumerate(atomic_numbers) if int(z) not in lookup]
    if unknown:
        from ase.data import chemical_symbols

        def label(a):
            return f"atom {a}" if atom_labels is None else atom_labels[a]

        def symbol(z):
            return chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z)

        shown = ", ".join(f"{symbol(z)} at {label(a)}" for a, z in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        known = ", ".join(chemical_symbols[int(z)] for z in species)
        raise ValueError(
            f"the e3md potential does not know these elements: {shown}{more}; it was trained "
            f"for {known} only"
        )
    return np.array([lookup[int(z)] for z in atomic_numbers], dtype=np.int32)


# --------------------------------------------------------------------------------------------
# Building the force
# --------------------------------------------------------------------------------------------


def _topology_atoms(topology, atoms) -> tuple[list[int], list[str]]:
    """Atomic numbers and error-message labels of the chosen topology atoms."""
    all_atoms = list(topology.atoms())
    chosen = all_atoms if atoms is None else [all_atoms[i] for i in atoms]
    numbers, labels = [], []
    for atom in chosen:
        if atom.element is None:
            raise ValueError(
                f"atom {atom.index} ({atom.name!r} in residue {atom.residue.name!r}) has no "
                "element (virtual site or extra particle); it cannot be given to the e3md "
                "potential: leave it out of the ML atoms"
            )
        numbers.append(int(atom.element.atomic_number))
        labels.append(
            f"atom {atom.index} {atom.name} (residue {atom.residue.name} {atom.residue.id})"
        )
    return numbers, labels


def create_force(
    model,
    topology,
    atoms=None,
    *,
    periodic: bool | None = None,
    box_vectors=None,
    force_group: int = 0,
    precision: str = "double",
):
    """Build an ``openmm.PythonForce`` computing the e3md energy of (a subset of) a topology.

    Args:
      model: shipped potential name, path to an ``*.e3md`` file, model-file bytes, or an
        ``e3md.potentials.Potential``.
      topology: ``openmm.app.Topology``; elements come from its atoms.
      atoms: indices of the particles the potential acts on (``None``: all). The force is
        restricted to them with ``PythonForce.setParticles``.
      periodic: use periodic box vectors; ``None`` means "if the topology has box vectors".
      box_vectors: box (``openmm`` Quantity, 3 vectors) checked against 2 x cutoff up front;
        default: the topology's. Every evaluation checks the current box again.
      force_group: OpenMM force group (0-31).
      precision: ``"double"`` or ``"single"`` arithmetic inside JAX.
    Returns:
      The ``openmm.PythonForce`` (not yet added to any System).
    Raises:
      ValueError: unknown element, atom without element, or (periodic) a box thinner than
        2 x cutoff.
    """
    import openmm

    from e3md import validate

    atoms = None if atoms is None else [int(a) for a in atoms]
    numbers, labels = _topology_atoms(topology, atoms)
    if periodic is None:
        periodic = topology.getPeriodicBoxVectors() is not None
    compute = E3mdCompute(
        _model_bytes(model), numbers, periodic=periodic, precision=precision, atom_labels=labels
    )
    if box_vectors is None:
        box_vectors = topology.getPeriodicBoxVectors()
    if periodic and box_vectors is not None:
        cell = [[float(x) for x in v.value_in_unit(openmm.unit.nanometer)] for v in box_vectors]
        validate.check_box(np.asarray(cell).T * units.NM, compute.cutoff)
    force = openmm.PythonForce(compute)
    force.setName("e3md")
    force.setForceGroup(int(force_group))
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    if atoms is not None:
        force.setParticles(atoms)
    return force


# --------------------------------------------------------------------------------------------
# openmm-ml registration (entry point: e3md = "e3md.openmm:E3mdImplFactory")
# --------------------------------------------------------------------------------------------


class E3mdImplFactory:
    """openmm-ml factory: ``MLPotential('e3md', model=...)`` calls :meth:`createImpl`.

    Duck-typed against ``openmmml.mlpotential.MLPotentialImplFactory`` so that this module
    imports without openmm-ml.
    """

    def createImpl(self, name: str, model=None, **args) -> "E3mdImpl":
        """Create the impl; ``model`` is a shipped name, ``*.e3md`` path, bytes or Potential.

        Raises:
          ValueError: no ``model`` given.
        """
        if model is None:
            raise ValueError(
                "MLPotential('e3md', model=...) needs model=<shipped potential name | path to "
                "an *.e3md file | e3md.potentials.Potential>"
            )
        if args:
            log.debug("e3md: ignoring MLPotential arguments %s", sorted(args))
        return E3mdImpl(name, model)


class E3mdImpl:
    """openmm-ml impl: adds one e3md ``PythonForce`` to a System (duck-typed ``MLPotentialImpl``).

    The model file is read once here, so a bad name or path fails when ``MLPotential`` is
    constructed.
    """

    def __init__(self, name: str, model):
        self.name = name
        self.model_bytes = _model_bytes(model)

    def addForces(
        self,
        topology,
        system,
        atoms,
        forceGroup,
        precision: str = "double",
        **args,
    ) -> None:
        """Add the e3md force for ``atoms`` (``None``: all) to ``system``.

        Periodic when the topology has box vectors or the System already uses periodic
        boundary conditions. Other keyword arguments (embedding options) are ignored.
        """
        periodic = (
            topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
        )
        box = topology.getPeriodicBoxVectors()
        if periodic and box is None:
            box = system.getDefaultPeriodicBoxVectors()
        force = create_force(
            self.model_bytes,
            topology,
            atoms,
            periodic=periodic,
            box_vectors=box,
            force_group=forceGroup,
            precision=precision,
        )
        system.addForce(force)

    def getSupportedEmbeddings(self) -> list[str]:
        """No e3md-specific embeddings; openmm-ml's generic ones (mechanical) apply."""
        return []

    def getMLLongRange(self) -> bool:
        """e3md potentials are local (finite cutoff), never long-ranged."""
        return False

    def createMixedSystem(self, *args, **kwargs):
        raise NotImplementedError("e3md has no potential-specific embedding")
