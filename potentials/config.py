"""``ModelConfig``: the frozen, JSON-round-trippable hyperparameters of an e3md potential.

The config is both a static argument of every jitted energy function (it is hashable) and the
config half of a model file (``e3md.io``). Everything that changes the *function* a set of
parameters computes lives here, including the fitted per-species reference energies ``e0`` and
the ``scale``/``shift`` of the readout, so that a model file is self-contained.
"""

import dataclasses
import json
import math
from typing import Any

__all__ = ["ModelConfig", "RADIAL_BASES", "CUTOFF_FNS", "DTYPES"]

#: radial basis choices (functions of ``e3md.nn``)
RADIAL_BASES = ("bessel", "gaussian", "reciprocal_bernstein")
#: cutoff function choices (functions of ``e3md.nn``)
CUTOFF_FNS = ("smooth", "cosine")
#: computation / parameter dtypes
DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    r"""Hyperparameters of the e3md equivariant potential (see ``e3md.potentials.model``).

    Attributes:
      species: atomic numbers the model knows, strictly increasing (e.g. ``(1, 6, 8)``). The
        position of an element in this tuple is its ``species_index``.
      cutoff: interaction cutoff radius :math:`r_c` in Å. Edges with :math:`r \ge r_c` contribute
        exactly zero (the cutoff function and all its derivatives vanish there).
      max_degree: maximum degree :math:`L` of the equivariant features and spherical harmonics.
      num_features: number of feature channels :math:`F` per irrep.
      num_iterations: number of message-passing iterations :math:`T`.
      num_basis: number of radial basis functions :math:`K`.
      radial_basis: one of :data:`RADIAL_BASES`.
      cutoff_fn: one of :data:`CUTOFF_FNS`.
      self_product: if True, each iteration also applies a node-level ``FusedTensor(x, x)``
        self-product (raises body order per atom, not per edge).
      readout_features: hidden width of the scalar readout MLP.
      avg_num_neighbors: messages are divided by this number (typical neighbour count within
        the cutoff in the training data), keeping activations O(1).
      e0: per-species reference energies in eV, aligned with ``species`` (fitted by training;
        ``()`` means all zero and is normalised to a tuple of zeros).
      scale: scale of the network's atomic-energy output in eV.
      shift: shift of the atomic energies in eV (added to every real atom).
      dtype: ``"float32"`` (default) or ``"float64"``; parameters and computation use it.

    The atomic energy is

    .. math::
      e_i = \mathrm{scale}\cdot \mathrm{NN}_i + \mathrm{shift} + e_0[Z_i]\quad\text{(eV)}.
    """

    species: tuple[int, ...]
    cutoff: float = 5.0
    max_degree: int = 2
    num_features: int = 32
    num_iterations: int = 2
    num_basis: int = 8
    radial_basis: str = "bessel"
    cutoff_fn: str = "smooth"
    self_product: bool = True
    readout_features: int = 32
    avg_num_neighbors: float = 1.0
    e0: tuple[float, ...] = ()
    scale: float = 1.0
    shift: float = 0.0
    dtype: str = "float32"

    def __post_init__(self):
        def fix(name, value):
            object.__setattr__(self, name, value)

        try:
            species = tuple(int(z) for z in self.species)
        except TypeError as err:
            raise ValueError(f"species must be a sequence of atomic numbers: {err}") from None
        if not species:
            raise ValueError("species must name at least one element")
        if any(not 1 <= z <= 118 for z in species):
            raise ValueError(f"species must be atomic numbers in 1..118, got {species}")
        if any(a >= b for a, b in zip(species, species[1:], strict=False)):
            raise ValueError(f"species must be strictly increasing, got {species}")
        fix("species", species)
        e0 = tuple(float(e) for e in self.e0) if self.e0 else (0.0,) * len(species)
        if len(e0) != len(species):
            raise ValueError(f"e0 has {len(e0)} entries but there are {len(species)} species")
        fix("e0", e0)
        for name in ("cutoff", "avg_num_neighbors", "scale", "shift"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
            fix(name, value)
        if not all(math.isfinite(e) for e in e0):
            raise ValueError(f"e0 must be finite, got {e0}")
        if self.cutoff <= 0:
            raise ValueError(f"cutoff must be > 0 Å, got {self.cutoff}")
        if self.avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be > 0, got {self.avg_num_neighbors}")
        for name, low in (
            ("max_degree", 0),
            ("num_features", 1),
            ("num_iterations", 1),
            ("num_basis", 1),
            ("readout_features", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
            fix(name, int(value))
        if not isinstance(self.self_product, bool):
            raise ValueError(f"self_product must be a bool, got {self.self_product!r}")
        for name, choices in (
            ("radial_basis", RADIAL_BASES),
            ("cutoff_fn", CUTOFF_FNS),
            ("dtype", DTYPES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")

    @property
    def num_species(self) -> int:
        """Number of elements the model knows."""
        return len(self.species)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def to_json(self) -> str:
        """JSON text with sorted keys; ``ModelConfig.from_json(c.to_json()) == c``."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a dict holding exactly the fields of ``ModelConfig``.

        Raises:
          ValueError: unknown or missing keys, or invalid values.
        """
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(names - set(data))
        if unknown or missing:
            raise ValueError(f"model config: unknown keys {unknown}, missing keys {missing}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        """Inverse of :meth:`to_json`.

        Raises:
          ValueError: malformed JSON, unknown or missing keys, or invalid values.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"model config is not valid JSON: {err}") from None
        return cls.from_dict(data)
