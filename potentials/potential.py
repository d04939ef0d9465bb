"""``Potential``: a model config plus parameters, with file I/O and the jax-md entry point.

Shipped potentials live in ``potentials/<name>/<name>.e3md`` (installed as
``e3md/potentials/<name>/<name>.e3md``) and are loaded by name:
``e3md.potentials.load("rmd17-ethanol")``; any other argument is treated as a path.
"""

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from e3md.potentials import energy as _energy
from e3md.potentials.config import ModelConfig
from e3md.potentials.model import atomic_energies, init_params, species_index
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from e3md import io

__all__ = ["KIND", "Potential", "available", "load"]

#: ``kind`` field of potential model files
KIND = "potential"
_SHIPPED = Path(__file__).resolve().parent


class Potential:
    """An e3md potential: :class:`ModelConfig` + parameters (+ free-form metadata).

    Attributes:
      config: the model configuration.
      params: flax variables dict ``{"params": ...}`` (arrays of dtype ``config.dtype``).
      metadata: JSON-compatible information (training data, errors, ...), saved with the file.
    """

    def __init__(self, config: ModelConfig, params: dict, metadata: dict | None = None):
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.params = params
        self.metadata = dict(metadata or {})

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def init(cls, config: ModelConfig, key: jax.Array, metadata: dict | None = None):
        """A randomly initialised potential (for training, or tests)."""
        return cls(config, init_params(config, key), metadata)

    # -- properties ----------------------------------------------------------------------------
    @property
    def cutoff(self) -> float:
        """Interaction cutoff in Å."""
        return self.config.cutoff

    @property
    def species(self) -> tuple[int, ...]:
        """Atomic numbers the potential knows (sorted)."""
        return self.config.species

    def __repr__(self) -> str:
        c = self.config
        n = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(self.params))
        return (
            f"Potential(species={c.species}, cutoff={c.cutoff} Å, L={c.max_degree}, "
            f"F={c.num_features}, T={c.num_iterations}, {n} parameters, {c.dtype})"
        )

    # -- evaluation ------------------------------------------------------------------------------
    def species_index(self, atomic_numbers: ArrayLike) -> np.ndarray:
        """Atomic numbers -> species indices (raises ValueError for unknown elements)."""
        return species_index(self.config, atomic_numbers)

    def atomic_energies(
        self,
        r_ij: Float[Array, "E 3"],
        species_index: Int[Array, " N"],
        src: Int[Array, " E"],
        dst: Int[Array, " E"],
        edge_mask: Bool[Array, " E"],
        atom_mask: Bool[Array, " N"],
    ) -> Float[Array, " N"]:
        """Per-atom energies in eV; see :func:`e3md.potentials.model.atomic_energies`."""
        return atomic_energies(
            self.config, self.params, r_ij, species_index, src, dst, edge_mask, atom_mask
        )

    def neighbor_list(self, displacement_fn: Any, box: Any, species: ArrayLike, **nl_options):
        """``(neighbor_fn, energy_fn)`` in jax-md style; see
        :func:`e3md.potentials.energy.neighbor_list` for the options (``per_atom``,
        ``dr_threshold``, ``fractional_coordinates``, ...)."""
        return _energy.neighbor_list(
            self.config, self.params, displacement_fn, box, species, **nl_options
        )

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        """Write a safe model file (see :mod:`e3md.io`); ``metadata`` updates ``self.metadata``."""
        meta = {**self.metadata, **(metadata or {})}
        io.write_model_file(
            path,
            kind=KIND,
            config=self.config.to_dict(),
            species=self.config.species,
            params=self.params,
            metadata=meta,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Potential":
        """Read a model file; structure, shapes and dtypes are checked against the config.

        Raises:
          e3md.io.ModelFileError: corrupt, tampered, wrong version/kind, or parameters that do
            not match the configuration.
        """
        mf = io.read_model_file(path, kind=KIND)
        try:
            config = ModelConfig.from_dict(mf.config)
        except (TypeError, ValueError) as err:
            raise io.ModelFileError(f"model file {os.fspath(path)!r}: bad config: {err}") from None
        if list(config.species) != list(mf.header["species"]):
            raise io.ModelFileError(
                f"model file {os.fspath(path)!r}: header species {mf.header['species']} differ "
                f"from config species {list(config.species)}"
            )
        template = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
        params = _restore(template, mf.params, os.fspath(path))
        return cls(config, params, mf.metadata)


def _restore(template: Any, state: Any, path: str, where: str = "") -> Any:
    """Match a restored state dict against the shape template; return jnp arrays."""
    if isinstance(template, dict):
        if not isinstance(state, dict) or set(state) != set(template):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise io.ModelFileError(
                f"model file {path!r}: parameters at '{where or '/'}' have keys {got}, "
                f"expected {sorted(template)}"
            )
        return {k: _restore(template[k], state[k], path, f"{where}/{k}") for k in template}
    arr = np.asarray(state)
    if arr.shape != template.shape or arr.dtype != template.dtype:
        raise io.ModelFileError(
            f"model file {path!r}: parameter {where} has shape {arr.shape} {arr.dtype}, "
            f"expected {template.shape} {template.dtype}"
        )
    return jnp.asarray(arr)


def available() -> list[str]:
    """Names of the potentials shipped with e3md (``potentials/<name>/<name>.e3md``)."""
    return sorted(
        d.name for d in _SHIPPED.iterdir() if d.is_dir() and (d / f"{d.name}.e3md").is_file()
    )


def load(name_or_path: str | os.PathLike) -> Potential:
    """Load a shipped potential by name, or a model file by path.

    Args:
      name_or_path: a shipped name (e.g. ``"rmd17-ethanol"``), or a path to an ``.e3md`` file.

    Returns:
      The :class:`Potential`.

    Raises:
      FileNotFoundError: neither a file nor a shipped name (the message lists shipped names).
      e3md.io.ModelFileError: the file is corrupt, tampered, or of the wrong version/kind.
    """
    p = Path(name_or_path)
    if p.is_file():
        return Potential.from_file(p)
    name = str(name_or_path)
    shipped = _SHIPPED / name / f"{name}.e3md"
    if "/" not in name and os.sep not in name and shipped.is_file():
        return Potential.from_file(shipped)
    raise FileNotFoundError(
        f"no potential {name!r}: not a file, and not a shipped name. Shipped potentials: "
        f"{available() or 'none'}"
    )
