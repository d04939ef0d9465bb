r"""Fitting e3md potentials to reference energies, forces and stresses.

Pipeline (all choices recorded in a :class:`TrainConfig`, read from TOML):

1. load the data (:mod:`e3md.data`, declared units) and split it with a seed;
2. normalise: per-species :math:`E_0` by least squares, ``scale`` = RMS of the training force
   components, ``avg_num_neighbors`` = mean number of edges per atom within the cutoff;
3. build graphs on the host once per structure (:func:`e3md.neighbors.host_neighbors`:
   vesin, with integer cell shifts for periodic cells), and batch different-sized structures
   by padding to *buckets* so each jitted step compiles once per bucket, not per batch;
4. minimise the weighted loss

   .. math::
      \mathcal L = w_E\,\Big\langle\Big(\frac{\hat E_s-E_s}{N_s}\Big)^2\Big\rangle_s
        + w_F\,\big\langle(\hat F_{i\alpha}-F_{i\alpha})^2\big\rangle_{i\alpha}
        + w_\sigma\,\big\langle(\hat\sigma_{s,v}-\sigma_{s,v})^2\big\rangle_{s,v}

   with optax (adam / amsgrad, learning-rate schedule, gradient clipping), keeping an
   exponential moving average (EMA) of the parameters, validating the EMA parameters every
   epoch, and stopping early on the validation loss or at ``max_time``;
5. checkpoint (model file + optimiser state as flax msgpack, never pickle) every few minutes;
   :meth:`Trainer.resume` continues the same run bit for bit.

Forces are :math:`-\partial E/\partial \mathbf R` and the stress is
:math:`\sigma = \frac1V\,\partial E/\partial\varepsilon` from a symmetric strain
:math:`\varepsilon` applied to positions and periodic shifts (ASE sign: positive = tensile).

Energies inside the training step are *relative to* :math:`\sum_i E_0[Z_i]`: the model is run
with ``e0 = 0`` and the baseline is subtracted from the targets in float64 on the host. The
two are the same function (``e0`` is an additive constant per atom), but float32 would lose
~0.3 meV on a -4000 eV molecule. The saved potential carries the fitted ``e0``.
"""

import dataclasses
import functools
import json
import logging
import math
import os
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from e3md.compiler import jit
from e3md.data import Dataset, Structure
from e3md.neighbors import bucket_size, host_neighbors

log = logging.getLogger(__name__)

__all__ = [
    "DataConfig",
    "Graph",
    "GraphBatch",
    "LossConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "Trainer",
    "batches",
    "build_graph",
    "collate",
    "load_config",
    "make_optimizer",
    "loss_fn",
    "predict",
    "train",
]


# ----------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the reference data come from and how they are split.

    Attributes:
      train: data file(s) the training and validation structures are drawn from. Relative
        paths are resolved against the working directory, then against the config's folder.
      format: ``"extxyz"`` / ``"rmd17"`` (default: from the suffix).
      energy_unit: declared energy unit of the files (forces: per ``length_unit``).
      length_unit: declared length unit.
      stress_unit: declared stress unit (default ``energy_unit/length_unit^3``).
      n_train: number of training structures (``-1``: all that are not validation).
      n_valid: number of validation structures.
      split_seed: seed of the random train/validation split.
      test: optional held-out file(s) evaluated once at the end (never used for fitting or
        early stopping).
      isolated_atoms: optional extended XYZ file of isolated-atom energies (one single-atom
        frame per element) used as the prior of the E0 fit: where the training compositions
        do not determine each element's E0 (one molecule), E0 stays as close to the
        isolated-atom energies as the data allow (see :func:`e3md.data.fit_e0`).
      isolated_atoms_unit: declared energy unit of ``isolated_atoms``.
      level_of_theory: reference method, copied into the model card.
      description: free text for the model card.
    """

    train: tuple[str, ...]
    format: str | None = None
    energy_unit: str | None = None
    length_unit: str = "Å"
    stress_unit: str | None = None
    n_train: int = -1
    n_valid: int = 50
    split_seed: int = 0
    test: tuple[str, ...] = ()
    isolated_atoms: str = ""
    isolated_atoms_unit: str = "eV"
    level_of_theory: str = "unknown"
    description: str = ""


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Loss weights (dimensionless multipliers of the per-atom-energy, force-component and
    stress-component mean squared errors, in eV², (eV/Å)² and (eV/Å³)²)."""

    energy_weight: float = 1.0
    forces_weight: float = 100.0
    stress_weight: float = 0.0


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    r"""Optimiser and learning-rate schedule.

    Attributes:
      name: ``"adam"``, ``"amsgrad"`` or ``"adamw"``.
      learning_rate: peak learning rate.
      schedule: ``"constant"``, ``"cosine"`` (linear warm-up, cosine decay to
        ``final_lr_fraction`` over ``max_epochs``) or ``"exponential"`` (decay by
        ``final_lr_fraction`` over ``max_epochs``).
      warmup_steps: linear warm-up steps.
      final_lr_fraction: final / peak learning rate.
      clip_norm: global gradient-norm clipping threshold (0: off).
      weight_decay: decoupled weight decay (``adamw`` only).
    """

    name: str = "adam"
    learning_rate: float = 5e-3
    schedule: str = "cosine"
    warmup_steps: int = 100
    final_lr_fraction: float = 0.02
    clip_norm: float = 10.0
    weight_decay: float = 0.0


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How long and how to run.

    Attributes:
      batch_size: structures per step.
      max_epochs: epochs (full passes over the training set).
      max_time: wall-clock limit in seconds (0: none); training stops cleanly and ships the
        best parameters so far.
      patience: stop after this many epochs without a better validation loss (0: never).
      ema_decay: EMA decay per step (0: no EMA); warmed up as min(d, (1+t)/(10+t)).
      valid_every: validate every this many epochs.
      checkpoint_every_minutes: checkpoint interval (wall clock; also at the end).
      seed: seed of parameter initialisation and batch order.
      checkpoint_dir: checkpoint folder (default ``runs/<name>``).
      output_dir: where the potential, card and plots go (default ``potentials/<name>``).
      bucket_fraction: padding granularity: sizes are rounded up to the next multiple of
        ``2**floor(log2(n)) * bucket_fraction``, i.e. at most that fraction of padding.
      select: which parameters are shipped: ``"best"`` (EMA parameters of the epoch with the
        lowest validation loss) or ``"last"`` (final EMA parameters; then the validation set
        takes part in no decision at all and its errors are unbiased).
    """

    batch_size: int = 5
    max_epochs: int = 100
    max_time: float = 0.0
    patience: int = 0
    ema_decay: float = 0.99
    valid_every: int = 1
    checkpoint_every_minutes: float = 5.0
    seed: int = 0
    checkpoint_dir: str = ""
    output_dir: str = ""
    bucket_fraction: float = 0.25
    select: str = "best"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every choice of a training run; ``[data]``, ``[model]``, ``[loss]``, ``[optimizer]``,
    ``[training]`` tables of a TOML file plus the top-level ``name``.

    ``model`` holds :class:`e3md.potentials.ModelConfig` fields except those training fits
    (``species``, ``e0``, ``scale``, ``shift``, ``avg_num_neighbors``); ``species`` may be given
    to fix the element list (default: the elements in the training data).
    """

    name: str
    data: DataConfig
    model: dict = dataclasses.field(default_factory=dict)
    loss: LossConfig = LossConfig()
    optimizer: OptimConfig = OptimConfig()
    training: RunConfig = RunConfig()
    config_dir: str = "."

    def to_dict(self) -> dict:
        """Plain dict in the TOML layout (``config_dir`` left out)."""
        d = {
            "name": self.name,
            "data": dataclasses.asdict(self.data),
            "model": dict(self.model),
            "loss": dataclasses.asdict(self.loss),
            "optimizer": dataclasses.asdict(self.optimizer),
            "training": dataclasses.asdict(self.training),
        }
        return _strip_none(_lists(d))

    def to_toml(self) -> str:
        """TOML text that :func:`load_config` reads back to an equal config."""
        return dumps_toml(self.to_dict())

    @property
    def checkpoint_dir(self) -> str:
        return self.training.checkpoint_dir or os.path.join("runs", self.name)

    @property
    def output_dir(self) -> str:
        return self.training.output_dir or os.path.join("potentials", self.name)


_SECTIONS = {
    "data": DataConfig,
    "loss": LossConfig,
    "optimizer": OptimConfig,
    "training": RunConfig,
}
_RESERVED_MODEL_KEYS = ("e0", "scale", "shift", "avg_num_neighbors")


def _lists(x):
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return [_lists(v) for v in x]
    return x


def _strip_none(d):
    if isinstance(d, dict):
        return {k: _strip_none(v) for k, v in d.items() if v is not None}
    return d


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"cannot write non-finite number {v} to TOML")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(d: dict) -> str:
    """Minimal TOML writer for one level of tables of scalars and lists."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def config_from_dict(d: dict, config_dir: str = ".") -> TrainConfig:
    """Build a :class:`TrainConfig` from the TOML layout.

    Raises:
      ValueError: unknown tables or keys, missing ``name`` / ``data.train``, bad values.
    """
    d = dict(d)
    unknown = sorted(set(d) - {"name", "model", *_SECTIONS})
    if unknown:
        raise ValueError(f"unknown config keys/tables {unknown}")
    if "name" not in d or not isinstance(d["name"], str) or not d["name"]:
        raise ValueError("config needs a non-empty top-level `name`")
    kwargs: dict[str, Any] = {"name": d["name"], "config_dir": config_dir}
    for section, cls in _SECTIONS.items():
        table = dict(d.get(section, {}))
        fields = {f.name: f for f in dataclasses.fields(cls)}
        bad = sorted(set(table) - set(fields))
        if bad:
            raise ValueError(f"[{section}]: unknown keys {bad}; known: {sorted(fields)}")
        for k, v in table.items():
            if isinstance(v, list):
                table[k] = tuple(v)
            elif k in ("train", "test") and isinstance(v, str):
                table[k] = (v,)
        try:
            kwargs[section] = cls(**table)
        except TypeError as err:
            raise ValueError(f"[{section}]: {err}") from None
    model = dict(d.get("model", {}))
    bad = [k for k in _RESERVED_MODEL_KEYS if k in model]
    if bad:
        raise ValueError(f"[model]: {bad} are fitted by training and cannot be set")
    from e3md.potentials.config import ModelConfig

    known = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(model) - known)
    if bad:
        raise ValueError(f"[model]: unknown keys {bad}; known: {sorted(known)}")
    kwargs["model"] = model
    cfg = TrainConfig(**kwargs)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    t, o = cfg.training, cfg.optimizer
    if not cfg.data.train:
        raise ValueError("[data].train must name at least one file")
    if t.batch_size < 1 or t.max_epochs < 1:
        raise ValueError(
            f"batch_size and max_epochs must be >= 1, got {t.batch_size}, {t.max_epochs}"
        )
    if not 0.0 <= t.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {t.ema_decay}")
    if t.select not in ("best", "last"):
        raise ValueError(f"[training].select must be 'best' or 'last', got {t.select!r}")
    if o.name not in ("adam", "amsgrad", "adamw"):
        raise ValueError(f"optimizer name must be adam, amsgrad or adamw, got {o.name!r}")
    if o.schedule not in ("constant", "cosine", "exponential"):
        raise ValueError(f"schedule must be constant, cosine or exponential, got {o.schedule!r}")
    if o.learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {o.learning_rate}")
    for name in ("energy_weight", "forces_weight", "stress_weight"):
        if getattr(cfg.loss, name) < 0:
            raise ValueError(f"[loss].{name} must be >= 0")


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> TrainConfig:
    """Read a TOML training config and apply ``overrides``.

    Args:
      path: TOML file.
      overrides: ``{"section.key": value}`` (or ``{"name": value}``), e.g. from CLI flags.

    Raises:
      ValueError: malformed TOML or invalid config.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            d = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: invalid TOML: {err}") from None
    for key, value in (overrides or {}).items():
        section, _, field = key.rpartition(".")
        if section:
            d.setdefault(section, {})[field] = value
        else:
            d[field] = value
    return config_from_dict(d, os.path.dirname(os.path.abspath(path)))


def resolve_path(path: str, config_dir: str) -> str:
    """``path`` if it exists relative to the working directory, else relative to
    ``config_dir`` (absolute paths are returned unchanged)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    alt = os.path.join(config_dir, path)
    return alt if os.path.exists(alt) else path


# ----------------------------------------------------------------------------------------
# graphs and batches (host side)
# ----------------------------------------------------------------------------------------


class Graph(NamedTuple):
    """Edges of one structure within a cutoff (host numpy).

    Attributes:
      src: sender atom j per edge, shape (E,).
      dst: receiver atom i per edge, shape (E,).
      shifts: Cartesian periodic shift in Å per edge, shape (E, 3), such that
        :math:`\\mathbf r_{ij} = \\mathbf R_{src} - \\mathbf R_{dst} + \\text{shift}`.
    """

    src: np.ndarray
    dst: np.ndarray
    shifts: np.ndarray


def build_graph(structure: Structure, cutoff: float) -> Graph:
    """All ordered pairs (i, j ≠ i, or j's periodic image) with :math:`r_{ij} < r_c`
    (:func:`e3md.neighbors.host_neighbors`; shift = S @ cell). Host only, not jittable: the
    edge count depends on the data.

    Raises:
      ValueError: partially periodic structures (not supported).
    """
    if structure.periodic and not all(structure.pbc):
        raise ValueError(f"partially periodic structures (pbc={structure.pbc}) are not supported")
    i, j, S = host_neighbors(
        structure.positions,
        cutoff,
        structure.cell if structure.periodic else None,
        structure.periodic,
    )
    shifts = S.astype(np.float64) @ structure.cell if structure.periodic else np.zeros((i.size, 3))
    return Graph(j, i, shifts)


class GraphBatch(NamedTuple):
    """A padded batch of structures (a pytree of arrays; shapes fix the compiled step).

    ``N`` padded atoms (at least one padding atom), ``E`` padded edges, ``B`` graph slots.
    Padded atoms have ``atom_mask = False`` and belong to graph ``B - 1``; padded edges connect
    the last (padding) atom to itself with ``edge_mask = False``; empty graph slots have
    ``graph_mask = False``.

    Attributes:
      positions: Å, (N, 3).
      species_index: index into the model's species, (N,).
      atom_mask: real atoms, (N,).
      graph_index: graph slot of each atom, (N,).
      src, dst: sender / receiver atom per edge, (E,).
      shifts: periodic shift vectors in Å, (E, 3).
      edge_mask: real edges, (E,).
      cell: lattice vectors as rows in Å, (B, 3, 3) (zeros when not periodic).
      volume: cell volume in Å³, (B,) (1 for non-periodic, to keep divisions safe).
      graph_mask: real graphs, (B,).
      num_atoms: atoms per graph, (B,) (1 for empty slots).
      energy: reference energy in eV minus the E0 baseline, (B,).
      forces: reference forces in eV/Å, (N, 3).
      stress: reference stress in eV/Å³ (Voigt, ASE sign), (B, 6).
      stress_mask: graphs with a stress label (and a cell), (B,).
    """

    positions: Float[Array, "N 3"]
    species_index: Int[Array, " N"]
    atom_mask: Bool[Array, " N"]
    graph_index: Int[Array, " N"]
    src: Int[Array, " E"]
    dst: Int[Array, " E"]
    shifts: Float[Array, "E 3"]
    edge_mask: Bool[Array, " E"]
    cell: Float[Array, "B 3 3"]
    volume: Float[Array, " B"]
    graph_mask: Bool[Array, " B"]
    num_atoms: Float[Array, " B"]
    energy: Float[Array, " B"]
    forces: Float[Array, "N 3"]
    stress: Float[Array, "B 6"]
    stress_mask: Bool[Array, " B"]


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedData:
    """Structures with their graphs, species indices and E0 baselines, ready to batch."""

    data: Dataset
    graphs: tuple[Graph, ...]
    species_index: tuple[np.ndarray, ...]
    baseline: np.ndarray  # (S,) sum of E0 over each structure's atoms, eV

    def __len__(self) -> int:
        return len(self.data)


def prepare(data: Dataset, cutoff: float, species: Sequence[int], e0: np.ndarray) -> PreparedData:
    """Graphs, species indices and :math:`\\sum_i E_0[Z_i]` for every structure (host)."""
    from e3md.data import check_species

    check_species(data, species)
    table = np.full(119, -1, dtype=np.int32)
    table[np.asarray(species)] = np.arange(len(species), dtype=np.int32)
    graphs = tuple(build_graph(s, cutoff) for s in data)
    sidx = tuple(table[s.numbers] for s in data)
    baseline = np.array([float(np.sum(np.asarray(e0)[i])) for i in sidx])
    return PreparedData(data, graphs, sidx, baseline)


def collate(
    prep: PreparedData,
    indices: Sequence[int],
    batch_size: int,
    num_atoms: int | None = None,
    num_edges: int | None = None,
    fraction: float = 0.25,
) -> GraphBatch:
    """Pad the structures ``indices`` (at most ``batch_size``) into one :class:`GraphBatch`.

    Args:
      prep: prepared data.
      indices: structures in this batch.
      batch_size: graph slots ``B`` (fixed, so the last partial batch has the same shape).
      num_atoms: padded atom count (default: :func:`bucket_size` of real atoms + 1).
      num_edges: padded edge count (default: :func:`bucket_size` of real edges).
      fraction: bucket granularity.

    Returns:
      A numpy-backed :class:`GraphBatch`.
    """
    indices = list(indices)
    if not 0 < len(indices) <= batch_size:
        raise ValueError(f"a batch holds 1..{batch_size} structures, got {len(indices)}")
    structs = [prep.data[i] for i in indices]
    n_real = sum(s.num_atoms for s in structs)
    e_real = sum(prep.graphs[i].src.size for i in indices)
    N = num_atoms or bucket_size(n_real + 1, fraction=fraction)
    E = num_edges or bucket_size(e_real, fraction=fraction)
    if N < n_real + 1 or E < e_real:
        raise ValueError(f"padding too small: {N} atoms / {E} edges for {n_real} / {e_real}")
    B = batch_size
    pos = np.zeros((N, 3))
    sidx = np.zeros(N, np.int32)
    amask = np.zeros(N, bool)
    gidx = np.full(N, B - 1, np.int32)
    src = np.full(E, N - 1, np.int32)
    dst = np.full(E, N - 1, np.int32)
    shifts = np.zeros((E, 3))
    emask = np.zeros(E, bool)
    cell = np.zeros((B, 3, 3))
    volume = np.ones(B)
    gmask = np.zeros(B, bool)
    natoms = np.ones(B)
    energy = np.zeros(B)
    forces = np.zeros((N, 3))
    stress = np.zeros((B, 6))
    smask = np.zeros(B, bool)
    a = e = 0
    for g, (k, s) in enumerate(zip(indices, structs, strict=True)):
        n, graph = s.num_atoms, prep.graphs[k]
        m = graph.src.size
        pos[a : a + n] = s.positions
        sidx[a : a + n] = prep.species_index[k]
        amask[a : a + n] = True
        gidx[a : a + n] = g
        src[e : e + m] = graph.src + a
        dst[e : e + m] = graph.dst + a
        shifts[e : e + m] = graph.shifts
        emask[e : e + m] = True
        gmask[g] = True
        natoms[g] = n
        energy[g] = s.energy - prep.baseline[k]
        if s.forces is not None:
            forces[a : a + n] = s.forces
        if s.periodic:
            cell[g] = s.cell
            volume[g] = s.volume
            if s.stress is not None:
                stress[g] = s.stress
                smask[g] = True
        a += n
        e += m
    return GraphBatch(
        pos,
        sidx,
        amask,
        gidx,
        src,
        dst,
        shifts,
        emask,
        cell,
        volume,
        gmask,
        natoms,
        energy,
        forces,
        stress,
        smask,
    )


def batches(
    prep: PreparedData,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    fraction: float = 0.25,
    fixed_shape: bool = True,
) -> Iterator[tuple[np.ndarray, GraphBatch]]:
    """Yield ``(indices, batch)`` over ``prep`` (shuffled by ``shuffle_seed`` if given).

    With ``fixed_shape`` every batch is padded to bucket sizes of the *largest* batch a data
    set can produce (batch_size × the largest structures), so a uniform dataset such as one
    rMD17 molecule compiles exactly once; otherwise each batch is bucketed on its own.
    """
    n = len(prep)
    order = (
        np.random.default_rng(shuffle_seed).permutation(n)
        if shuffle_seed is not None
        else np.arange(n)
    )
    N = E = None
    if fixed_shape:
        atoms = np.sort([s.num_atoms for s in prep.data])[::-1]
        edges = np.sort([g.src.size for g in prep.graphs])[::-1]
        N = bucket_size(int(atoms[:batch_size].sum()) + 1, fraction=fraction)
        E = bucket_size(max(int(edges[:batch_size].sum()), 1), fraction=fraction)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield idx, collate(prep, idx, batch_size, N, E, fraction)


# ----------------------------------------------------------------------------------------
# model evaluation and loss (jit-friendly)
# ----------------------------------------------------------------------------------------

# Signature: (params, r_ij [E,3], species_index [N], src [E], dst [E], edge_mask [E],
#             atom_mask [N]) -> e_i [N] eV
AtomicEnergyFn = Callable[..., Float[Array, " N"]]


def model_atomic_energy_fn(model_config) -> AtomicEnergyFn:
    """The e3md model's :func:`e3md.potentials.model.atomic_energies` with its config bound.

    All edges at once (``edge_chunk=None``): training batches are small graphs, where the edge
    blocks that speed up large-system MD made the aspirin training step (1792 edges, double
    backward) slower, 57 vs 53 ms. (The per-species first iteration, which training does use,
    took that step from 53 to 38 ms.)
    """
    from e3md.potentials.model import atomic_energies

    return functools.partial(atomic_energies, model_config, edge_chunk=None)


def predict(
    energy_fn: AtomicEnergyFn, params, batch: GraphBatch, compute_stress: bool = False
) -> tuple[Float[Array, " B"], Float[Array, "N 3"], Float[Array, "B 6"]]:
    r"""Energies, forces and stresses of every graph in a padded batch.

    .. math::
       E_s = \sum_{i\in s} e_i,\qquad F_i = -\frac{\partial E}{\partial \mathbf R_i},\qquad
       \sigma_s = \frac{1}{V_s}\frac{\partial E_s}{\partial \varepsilon_s}\Big|_{\varepsilon=0}

    where a symmetric strain :math:`\varepsilon_s` maps positions and periodic shifts of
    graph s as :math:`\mathbf x \mapsto \mathbf x\,(1+\varepsilon_s)`.

    Args:
      energy_fn: atomic energy function (see :data:`AtomicEnergyFn`).
      params: its parameters.
      batch: the padded batch.
      compute_stress: also differentiate in the strain (costs a little more).

    Returns:
      ``(energy [B] eV, forces [N,3] eV/Å, stress [B,6] eV/Å³ Voigt)``; stress is zero when not
      computed or for non-periodic graphs; padded entries are zero.
    """
    B = batch.graph_mask.shape[0]
    dtype = batch.positions.dtype

    def energies(positions, strain):
        eps = 0.5 * (strain + jnp.swapaxes(strain, -1, -2))
        R = positions + jnp.einsum("na,nab->nb", positions, eps[batch.graph_index])
        edge_graph = batch.graph_index[batch.dst]
        shifts = batch.shifts + jnp.einsum("ea,eab->eb", batch.shifts, eps[edge_graph])
        r_ij = R[batch.src] - R[batch.dst] + shifts
        e_i = energy_fn(
            params,
            r_ij,
            batch.species_index,
            batch.src,
            batch.dst,
            batch.edge_mask,
            batch.atom_mask,
        )
        e_i = jnp.where(batch.atom_mask, e_i, 0.0)
        E = jax.ops.segment_sum(e_i, batch.graph_index, num_segments=B)
        return E.sum(), E

    strain0 = jnp.zeros((B, 3, 3), dtype)
    argnums = (0, 1) if compute_stress else 0
    (_, E), grads = jax.value_and_grad(energies, argnums=argnums, has_aux=True)(
        batch.positions, strain0
    )
    if compute_stress:
        g_R, g_eps = grads
        sigma = g_eps / batch.volume[:, None, None]
        voigt = sigma[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        periodic = jnp.any(batch.cell != 0, axis=(1, 2))
        voigt = jnp.where(periodic[:, None], voigt, 0.0)
    else:
        g_R, voigt = grads, jnp.zeros((B, 6), dtype)
    F = jnp.where(batch.atom_mask[:, None], -g_R, 0.0)
    E = jnp.where(batch.graph_mask, E, 0.0)
    return E, F, voigt


def loss_fn(
    energy_fn: AtomicEnergyFn, params, batch: GraphBatch, weights: LossConfig
) -> tuple[Float[Array, ""], dict]:
    """Weighted MSE loss of a batch (see the module docstring) and its parts.

    Returns:
      ``(loss, {"energy": mse per-atom energy, "forces": mse force component,
      "stress": mse stress component})`` — all scalars; parts are eV², (eV/Å)², (eV/Å³)².
    """
    stress = weights.stress_weight > 0
    E, F, S = predict(energy_fn, params, batch, compute_stress=stress)
    gm = batch.graph_mask.astype(E.dtype)
    am = batch.atom_mask.astype(E.dtype)
    sm = batch.stress_mask.astype(E.dtype)
    e_err = (E - batch.energy) / batch.num_atoms
    mse_e = jnp.sum(gm * e_err**2) / jnp.maximum(gm.sum(), 1.0)
    mse_f = jnp.sum(am[:, None] * (F - batch.forces) ** 2) / jnp.maximum(3.0 * am.sum(), 1.0)
    mse_s = jnp.sum(sm[:, None] * (S - batch.stress) ** 2) / jnp.maximum(6.0 * sm.sum(), 1.0)
    loss = (
        weights.energy_weight * mse_e
        + weights.forces_weight * mse_f
        + weights.stress_weight * mse_s
    )
    return loss, {"energy": mse_e, "forces": mse_f, "stress": mse_s}


def make_optimizer(cfg: OptimConfig, steps_per_epoch: int, max_epochs: int):
    """The optax optimiser (gradient clipping, then adam / amsgrad / adamw on a schedule)."""
    import optax

    total = max(1, steps_per_epoch * max_epochs)
    lr, warm = cfg.learning_rate, min(cfg.warmup_steps, total - 1)
    if cfg.schedule == "constant":
        sched = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        sched = optax.warmup_cosine_decay_schedule(
            init_value=lr * 1e-2 if warm else lr,
            peak_value=lr,
            warmup_steps=warm,
            decay_steps=total,
            end_value=lr * cfg.final_lr_fraction,
        )
    else:
        sched = optax.exponential_decay(
            lr, transition_steps=total, decay_rate=cfg.final_lr_fraction
        )
    if cfg.name == "adam":
        opt = optax.adam(sched)
    elif cfg.name == "amsgrad":
        opt = optax.amsgrad(sched)
    else:
        opt = optax.adamw(sched, weight_decay=cfg.weight_decay)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    return optax.chain(*parts, opt), sched


def ema_update(ema, params, step, decay: float):
    """:math:`\\bar\\theta \\leftarrow d_t\\bar\\theta + (1-d_t)\\theta`,
    :math:`d_t = \\min(d, (1+t)/(10+t))`."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(p.dtype), ema, params)


# ----------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------


def _to_device(batch: GraphBatch, dtype) -> GraphBatch:
    floats = {"positions", "shifts", "cell", "volume", "num_atoms", "energy", "forces", "stress"}
    return GraphBatch(
        *(
            jnp.asarray(v, dtype) if name in floats else jnp.asarray(v)
            for name, v in zip(GraphBatch._fields, batch, strict=True)
        )
    )


@dataclasses.dataclass
class TrainState:
    """Everything that changes during a run (checkpointed as flax msgpack)."""

    params: Any
    opt_state: Any
    ema: Any
    best_params: Any
    step: int = 0
    epoch: int = 0
    best_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    elapsed: float = 0.0
    history: list = dataclasses.field(default_factory=list)
    stopped: str = ""


class Trainer:
    """A training run: data, normalisation, model, optimiser, state; see :func:`train`.

    Args:
      config: the run's :class:`TrainConfig`.
      data: the full dataset to split (default: loaded from ``config.data``).
      test_data: optional held-out data, evaluated at the end only.
      energy_fn_factory: ``ModelConfig -> AtomicEnergyFn`` (default: the e3md model) — a seam
        for testing the trainer with other models.
      init_fn: ``(ModelConfig, key) -> params`` (default: e3md's ``init_params``).
    """

    def __init__(
        self,
        config: TrainConfig,
        data: Dataset | None = None,
        test_data: Dataset | None = None,
        energy_fn_factory: Callable | None = None,
        init_fn: Callable | None = None,
    ):
        from e3md.data import (
            concatenate,
            fit_e0,
            force_rms,
            load_dataset,
            load_isolated_atoms,
            split_indices,
        )
        from e3md.potentials.config import ModelConfig

        self.config = cfg = config
        dc = cfg.data
        self.data_files = [resolve_path(p, cfg.config_dir) for p in dc.train]
        if data is None:
            data = concatenate(
                [
                    load_dataset(
                        p,
                        format=dc.format,
                        energy_unit=dc.energy_unit,
                        length_unit=dc.length_unit,
                        stress_unit=dc.stress_unit,
                    )
                    for p in self.data_files
                ]
            )
        if test_data is None and dc.test:
            test_data = concatenate(
                [
                    load_dataset(
                        resolve_path(p, cfg.config_dir),
                        format=dc.format,
                        energy_unit=dc.energy_unit,
                        length_unit=dc.length_unit,
                        stress_unit=dc.stress_unit,
                    )
                    for p in dc.test
                ]
            )
        self.test_data = test_data
        self.train_idx, self.valid_idx = split_indices(
            len(data), dc.n_train, dc.n_valid, dc.split_seed
        )
        self.train_data = data.subset(self.train_idx)
        self.valid_data = data.subset(self.valid_idx)
        species = tuple(cfg.model.get("species", data.species))
        model_kw = {k: v for k, v in cfg.model.items() if k != "species"}
        base = ModelConfig(species=species, **model_kw)
        prior = None
        if dc.isolated_atoms:
            self.isolated_atoms_file = resolve_path(dc.isolated_atoms, cfg.config_dir)
            prior = load_isolated_atoms(
                self.isolated_atoms_file, species, energy_unit=dc.isolated_atoms_unit
            )
        e0 = fit_e0(self.train_data, species, prior)
        scale = force_rms(self.train_data)
        self.e0 = e0
        # graphs once per structure: they give the mean neighbour count and the batches
        self.train_prep = prepare(self.train_data, base.cutoff, species, e0)
        self.valid_prep = prepare(self.valid_data, base.cutoff, species, e0)
        avg_nb = sum(g.src.size for g in self.train_prep.graphs) / self.train_data.num_atoms
        #: the config of the potential that is shipped (with E0)
        self.model_config = base.replace(
            e0=tuple(float(x) for x in e0), scale=scale, avg_num_neighbors=max(avg_nb, 1.0)
        )
        #: the config used inside the training step (E0 removed; see module docstring)
        self.train_model_config = self.model_config.replace(e0=())
        factory = energy_fn_factory or model_atomic_energy_fn
        self.energy_fn = factory(self.train_model_config)
        if init_fn is None:
            from e3md.potentials.model import init_params as init_fn
        self.dtype = jnp.dtype(self.model_config.dtype)
        self.use_stress = cfg.loss.stress_weight > 0 or self.train_data.has_stress
        t = cfg.training
        self.steps_per_epoch = math.ceil(len(self.train_data) / t.batch_size)
        self.optimizer, self.schedule = make_optimizer(
            cfg.optimizer, self.steps_per_epoch, t.max_epochs
        )
        key = jax.random.PRNGKey(t.seed)
        params = init_fn(self.train_model_config, key)
        self.state = TrainState(
            params=params, opt_state=self.optimizer.init(params), ema=params, best_params=params
        )
        self._build_steps()
        log.info(
            "model %s; %d train / %d valid structures; E0 %s eV; scale %.4g eV",
            self.model_config,
            len(self.train_data),
            len(self.valid_data),
            e0,
            scale,
        )

    # -- jitted functions ------------------------------------------------------------------
    def _build_steps(self):
        energy_fn, weights, opt = self.energy_fn, self.config.loss, self.optimizer
        decay = self.config.training.ema_decay

        @jit
        def train_step(params, opt_state, ema, step, batch):
            (loss, parts), grads = jax.value_and_grad(
                lambda p: loss_fn(energy_fn, p, batch, weights), has_aux=True
            )(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            import optax

            params = optax.apply_updates(params, updates)
            ema = ema_update(ema, params, step, decay) if decay > 0 else params
            return params, opt_state, ema, loss, parts

        stress = self.use_stress

        @jit
        def eval_step(params, batch):
            loss, parts = loss_fn(energy_fn, params, batch, weights)
            E, F, S = predict(energy_fn, params, batch, compute_stress=stress)
            return loss, E, F, S

        self._train_step = train_step
        self._eval_step = eval_step

    # -- evaluation --------------------------------------------------------------------------
    def evaluate_prepared(self, params, prep: PreparedData) -> dict:
        """Loss and E/F/stress metrics of ``params`` on prepared data (host floats, eV units)."""
        from e3md.evaluate import Predictions, metrics

        t = self.config.training
        losses, E_pred, F_pred, S_pred = [], [], [], []
        for idx, batch in batches(prep, t.batch_size, fraction=t.bucket_fraction):
            loss, E, F, S = self._eval_step(params, _to_device(batch, self.dtype))
            E, F, S = np.asarray(E, np.float64), np.asarray(F, np.float64), np.asarray(S)
            losses.append(float(loss) * len(idx))
            a = 0
            for g, k in enumerate(idx):
                n = prep.data[k].num_atoms
                E_pred.append(E[g] + prep.baseline[k])
                F_pred.append(F[a : a + n])
                S_pred.append(S[g])
                a += n
        pred = Predictions.from_lists(
            prep.data, E_pred, F_pred, S_pred if self.use_stress else None
        )
        out = metrics(pred)
        out["loss"] = sum(losses) / len(prep)
        out["_predictions"] = pred
        return out

    # -- the loop ----------------------------------------------------------------------------
    def run(
        self, num_epochs: int | None = None, progress: Callable[[dict], None] | None = None
    ) -> TrainState:
        """Train until ``max_epochs``, early stopping, ``max_time`` or ``num_epochs`` more
        epochs (whichever first); checkpoints every ``checkpoint_every_minutes``.

        Args:
          num_epochs: stop after this many more epochs (the run can be resumed).
          progress: called with a dict after every step (``kind="step"``) and validation
            (``kind="epoch"``) — the CLI draws a progress bar from it.

        Returns:
          The final :class:`TrainState`.
        """
        t = self.config.training
        st = self.state
        st.stopped = ""  # a resumed run goes on
        start = time.monotonic()
        base_elapsed = st.elapsed
        last_ckpt = time.monotonic()
        target = t.max_epochs if num_epochs is None else min(t.max_epochs, st.epoch + num_epochs)

        def elapsed():
            return base_elapsed + time.monotonic() - start

        while st.epoch < target and not st.stopped:
            losses = []
            for _, batch in batches(
                self.train_prep,
                t.batch_size,
                shuffle_seed=t.seed * 100003 + st.epoch,
                fraction=t.bucket_fraction,
            ):
                st.params, st.opt_state, st.ema, loss, _ = self._train_step(
                    st.params, st.opt_state, st.ema, st.step, _to_device(batch, self.dtype)
                )
                st.step += 1
                losses.append(float(loss))
                if not math.isfinite(losses[-1]):
                    raise FloatingPointError(
                        f"training loss became {losses[-1]} at step "
                        f"{st.step}; lower the learning rate"
                    )
                if progress:
                    progress(
                        {"kind": "step", "epoch": st.epoch, "step": st.step, "loss": losses[-1]}
                    )
                if t.max_time and elapsed() > t.max_time:
                    break
            else:
                st.epoch += 1
            partial = st.epoch < target and t.max_time and elapsed() > t.max_time
            if st.epoch % t.valid_every == 0 or partial or st.epoch >= target:
                self._validate(np.mean(losses), elapsed())
                if progress:
                    progress({"kind": "epoch", **st.history[-1]})
            if t.max_time and elapsed() > t.max_time:
                st.stopped = f"max_time {t.max_time:.0f} s reached"
            elif t.patience and st.bad_epochs >= t.patience:
                st.stopped = f"no validation improvement for {t.patience} epochs"
            st.elapsed = elapsed()
            if time.monotonic() - last_ckpt > 60 * t.checkpoint_every_minutes:
                self.save_checkpoint()
                last_ckpt = time.monotonic()
        if st.epoch >= t.max_epochs and not st.stopped:
            st.stopped = f"max_epochs {t.max_epochs} reached"
        st.elapsed = elapsed()
        self.save_checkpoint()
        return st

    def _validate(self, train_loss: float, elapsed: float) -> None:
        st = self.state
        params = st.ema
        m = self.evaluate_prepared(params, self.valid_prep) if len(self.valid_prep) else {}
        val_loss = m.get("loss", train_loss)
        rec = {
            "epoch": st.epoch,
            "step": st.step,
            "time": elapsed,
            "lr": float(self.schedule(st.step)),
            "train_loss": float(train_loss),
            "valid_loss": float(val_loss),
            "valid_energy_mae": m.get("energy_mae_per_atom", float("nan")),
            "valid_energy_mae_total": m.get("energy_mae", float("nan")),
            "valid_forces_mae": m.get("forces_mae", float("nan")),
        }
        st.history.append(rec)
        if val_loss < st.best_loss:
            st.best_loss, st.best_epoch, st.bad_epochs = float(val_loss), st.epoch, 0
            st.best_params = jax.tree.map(lambda x: x, params)
        else:
            st.bad_epochs += 1
        log.info(
            "epoch %d step %d: train %.4g valid %.4g  E %.3g meV/atom F %.3g meV/Å",
            st.epoch,
            st.step,
            train_loss,
            val_loss,
            1e3 * rec["valid_energy_mae"],
            1e3 * rec["valid_forces_mae"],
        )

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, directory: str | None = None) -> str:
        """Write ``state.msgpack`` (flax msgpack of the full state) and ``model.e3md`` (the
        current best EMA parameters as a model file) into ``directory``."""
        from flax import serialization

        directory = directory or self.config.checkpoint_dir
        os.makedirs(directory, exist_ok=True)
        st = self.state
        payload = {
            "params": serialization.to_state_dict(st.params),
            "opt_state": serialization.to_state_dict(st.opt_state),
            "ema": serialization.to_state_dict(st.ema),
            "best_params": serialization.to_state_dict(st.best_params),
            "meta": json.dumps(
                {
                    "step": st.step,
                    "epoch": st.epoch,
                    "best_loss": st.best_loss,
                    "best_epoch": st.best_epoch,
                    "bad_epochs": st.bad_epochs,
                    "elapsed": st.elapsed,
                    "history": st.history,
                    "stopped": st.stopped,
                    "config": self.config.to_dict(),
                }
            ),
        }
        tmp = os.path.join(directory, "state.msgpack.tmp")
        with open(tmp, "wb") as f:
            f.write(serialization.msgpack_serialize(payload))
        os.replace(tmp, os.path.join(directory, "state.msgpack"))
        try:
            self.potential().save(os.path.join(directory, "model.e3md"))
        except (ImportError, AttributeError) as err:  # Potential not available
            log.warning("checkpoint model file not written: %s", err)
        log.info("checkpoint written to %s (epoch %d, step %d)", directory, st.epoch, st.step)
        return directory

    def load_checkpoint(self, directory: str | None = None) -> None:
        """Restore the state saved by :meth:`save_checkpoint` (same config required).

        Raises:
          FileNotFoundError: no checkpoint in ``directory``.
          ValueError: the checkpoint belongs to a different configuration.
        """
        from flax import serialization

        directory = directory or self.config.checkpoint_dir
        path = os.path.join(directory, "state.msgpack")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no checkpoint at {path}")
        with open(path, "rb") as f:
            payload = serialization.msgpack_restore(f.read())
        meta = json.loads(payload["meta"])
        mine, theirs = self.config.to_dict(), meta["config"]
        for d in (mine, theirs):  # run-length settings may change on resume
            for k in ("max_time", "checkpoint_every_minutes", "checkpoint_dir", "output_dir"):
                d.get("training", {}).pop(k, None)
        if mine != theirs:
            raise ValueError(
                f"checkpoint {path} was written by a different config:\n{theirs}\nvs\n{mine}"
            )
        st = self.state
        st.params = serialization.from_state_dict(st.params, payload["params"])
        st.opt_state = serialization.from_state_dict(st.opt_state, payload["opt_state"])
        st.ema = serialization.from_state_dict(st.ema, payload["ema"])
        st.best_params = serialization.from_state_dict(st.best_params, payload["best_params"])
        for k in ("step", "epoch", "best_loss", "best_epoch", "bad_epochs", "elapsed", "history"):
            setattr(st, k, meta[k])
        st.stopped = meta.get("stopped", "")
        log.info("resumed from %s at epoch %d, step %d", path, st.epoch, st.step)

    # -- outputs -------------------------------------------------------------------------------
    def potential(self, params=None, metadata: dict | None = None):
        """The shipped :class:`e3md.potentials.Potential` (fitted E0 restored)."""
        from e3md.potentials import Potential

        if params is None:
            last = self.config.training.select == "last"
            params = self.state.ema if last else self.state.best_params
        return Potential(self.model_config, params, metadata=metadata or {})


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    outputs: bool = True,
    progress: Callable | None = None,
    hardware: str | None = None,
) -> dict:
    """Train a potential from ``config`` and write the potential, card and plots.

    Args:
      config: the run's configuration.
      resume: continue from the checkpoint in ``config.checkpoint_dir``.
      outputs: write ``<output_dir>/<name>.e3md``, ``README.md`` and PNG plots.
      progress: progress callback (see :meth:`Trainer.run`).
      hardware: description for the model card (default: detected).

    Returns:
      A summary dict (paths, metrics, timing).
    """
    trainer = Trainer(config)
    if resume:
        trainer.load_checkpoint()
    state = trainer.run(progress=progress)
    summary = {
        "stopped": state.stopped,
        "epochs": state.epoch,
        "steps": state.step,
        "time_s": state.elapsed,
        "best_epoch": state.best_epoch,
    }
    if outputs:
        summary.update(write_outputs(trainer, hardware=hardware))
    return summary


def hardware_description() -> str:
    """CPU model and the number of cores this process may use (for model cards)."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    import jax

    return (
        f"{model}, {cores} CPU cores available to the process, jax backend {jax.default_backend()}"
    )


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_outputs(
    trainer: "Trainer", hardware: str | None = None, output_dir: str | None = None
) -> dict:
    """Write the trained potential, its model card and plots into the output folder.

    Files: ``<name>.e3md`` (best EMA parameters, fitted E0/scale), ``README.md`` (model card),
    ``parity_energy.png``, ``parity_forces.png`` (``parity_stress.png``), ``learning_curve.png``
    and ``metrics.json``; with test data also ``test_parity_*.png``.

    Returns:
      ``{"output_dir", "potential_path", "sha256", "valid": metrics (eV units),
      "test": metrics or None}``.
    """
    from e3md import __version__, plots
    from e3md.evaluate import evaluate, format_table, report

    cfg, st = trainer.config, trainer.state
    out = output_dir or cfg.output_dir
    os.makedirs(out, exist_ok=True)
    hardware = hardware or hardware_description()
    pot = trainer.potential()
    valid_m, valid_pred = evaluate(pot, trainer.valid_data, cfg.training.batch_size)
    test_m = test_pred = None
    if trainer.test_data is not None and len(trainer.test_data):
        test_m, test_pred = evaluate(pot, trainer.test_data, cfg.training.batch_size)
    data_files = [(p, sha256_file(p)) for p in trainer.data_files]
    meta = {
        "name": cfg.name,
        "training": {
            "data": [{"path": p, "sha256": h} for p, h in data_files],
            "level_of_theory": cfg.data.level_of_theory,
            "n_train": len(trainer.train_data),
            "n_valid": len(trainer.valid_data),
            "split_seed": cfg.data.split_seed,
            "epochs": st.epoch,
            "steps": st.step,
            "best_epoch": st.best_epoch,
            "time_s": round(st.elapsed, 1),
            "hardware": hardware,
            "stopped": st.stopped,
            "config": cfg.to_dict(),
            "e3md_version": __version__,
        },
        "valid_metrics": report(valid_m),
        "test_metrics": report(test_m) if test_m else None,
    }
    path = os.path.join(out, f"{cfg.name}.e3md")
    pot.save(path, metadata=meta)
    digest = sha256_file(path)
    title = f"{cfg.name}: validation ({len(trainer.valid_data)} structures)"
    pngs = plots.parity_plots(valid_pred, os.path.join(out, "parity"), title)
    if test_pred is not None:
        pngs += plots.parity_plots(
            test_pred,
            os.path.join(out, "test_parity"),
            f"{cfg.name}: test ({len(trainer.test_data)} structures)",
        )
    if st.history:
        pngs.append(
            plots.learning_curve(st.history, os.path.join(out, "learning_curve.png"), cfg.name)
        )
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(
            {
                "sha256": digest,
                "valid": report(valid_m),
                "test": report(test_m) if test_m else None,
            },
            f,
            indent=1,
        )
    card = _model_card(
        trainer,
        digest,
        valid_m,
        test_m,
        hardware,
        data_files,
        [os.path.basename(p) for p in pngs],
        format_table,
    )
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(card)
    return {
        "output_dir": out,
        "potential_path": path,
        "sha256": digest,
        "valid": valid_m,
        "test": test_m,
    }


def _e0_note(trainer) -> str:
    from e3md.data import composition_matrix

    A = composition_matrix(trainer.train_data, trainer.model_config.species)
    if np.linalg.matrix_rank(A) >= A.shape[1]:
        return ""
    if trainer.config.data.isolated_atoms:
        return (
            " (the training compositions do not determine each element's E0: these are the "
            f"isolated-atom energies of `{trainer.config.data.isolated_atoms}` plus the "
            "smallest least-squares correction; only their sum over a composition matters)"
        )
    return (
        " (the training compositions do not determine each element's E0; this is the "
        "minimum-norm least-squares solution, and only its sum over a composition "
        "matters)"
    )


def _split_note(cfg: TrainConfig) -> str:
    if cfg.training.select == "last" and not cfg.training.patience:
        return (
            "The validation structures took part in no decision of the run (no early "
            "stopping, final parameters shipped): their errors are errors on unseen data."
        )
    return (
        "The validation structures were never fitted, but they chose the shipped epoch "
        "(early stopping / best epoch), so their errors are slightly optimistic."
    )


def _model_card(trainer, digest, valid_m, test_m, hardware, data_files, pngs, format_table):
    cfg, st = trainer.config, trainer.state
    mc = trainer.model_config
    n_params = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(st.best_params))
    symbols = __import__("ase.data").data.chemical_symbols
    e0 = ", ".join(f"{symbols[z]} {e:.6f}" for z, e in zip(mc.species, mc.e0, strict=True))
    lines = [
        f"# {cfg.name}",
        "",
        cfg.data.description or "An e3md equivariant potential.",
        "",
        "```python",
        "from e3md.potentials import load",
        f'pot = load("{cfg.name}")',
        "```",
        "",
        f"- **File**: `{cfg.name}.e3md`",
        f"- **File sha256**: `{digest}`",
        f"- **Reproduce**: `e3md train potentials/configs/{cfg.name}.toml` "
        "(from the repository root)",
        "",
        "## Data",
        "",
        f"- **Level of theory**: {cfg.data.level_of_theory}",
        f"- **Source**: {trainer.train_data.source}",
    ]
    lines += [f"- data file `{p}` sha256 `{h}`" for p, h in data_files]
    lines += [
        f"- **Split**: {len(trainer.train_data)} training / {len(trainer.valid_data)} "
        f"validation structures, drawn at random from the file(s) with seed "
        f"{cfg.data.split_seed}. "
        + _split_note(cfg)
        + (" Test errors below are on a separate held-out file." if test_m else ""),
        f"- **Validation indices** (0-based, into the concatenated file(s)): "
        f"{', '.join(str(int(i)) for i in trainer.valid_idx)}",
        "",
        "## Model",
        "",
        f"- {n_params} parameters, {mc.dtype}; cutoff {mc.cutoff} Å, max degree {mc.max_degree}, "
        f"{mc.num_features} features, {mc.num_iterations} message-passing iterations, "
        f"{mc.num_basis} {mc.radial_basis} radial functions, self-product {mc.self_product}",
        f"- Per-species E0 (least squares on the training set, eV): {e0}" + _e0_note(trainer),
        f"- scale (training force RMS) {mc.scale:.6g} eV, average neighbours "
        f"{mc.avg_num_neighbors:.4g}",
        "",
        "## Training",
        "",
        f"- {st.epoch} epochs, {st.step} steps, {st.elapsed / 60:.1f} min wall clock; "
        + (
            f"shipped the final EMA parameters (epoch {st.epoch})"
            if cfg.training.select == "last"
            else f"shipped the best EMA parameters (epoch {st.best_epoch})"
        )
        + f"; stopped because: {st.stopped}",
        f"- Hardware: {hardware}",
        "",
        "Full configuration (`e3md train` input):",
        "",
        "```toml",
        cfg.to_toml().rstrip(),
        "```",
        "",
        "## Validation errors",
        "",
        "```",
        format_table(valid_m),
        "```",
        "",
    ]
    if test_m:
        lines += ["## Test errors (held-out file)", "", "```", format_table(test_m), "```", ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in pngs] + [""]
    return "\n".join(lines)
