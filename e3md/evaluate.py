r"""Error metrics of a potential on reference data.

For structures :math:`s` with :math:`N_s` atoms, predictions :math:`\hat y` and references
:math:`y`:

.. math::
   \mathrm{MAE}_E = \langle|\hat E_s - E_s|\rangle_s,\quad
   \mathrm{MAE}_{E/N} = \langle|\hat E_s - E_s|/N_s\rangle_s,\quad
   \mathrm{MAE}_F = \langle|\hat F_{i\alpha} - F_{i\alpha}|\rangle_{i\alpha},\quad
   \mathrm{MAE}_\sigma = \langle|\hat\sigma_{s,v} - \sigma_{s,v}|\rangle_{s,v}

and the RMSEs likewise; forces are averaged over Cartesian components of all atoms, stresses
over the six Voigt components of the structures that have a stress label.
:func:`metrics` returns eV / eV/Å / eV/Å³; :func:`report` converts to meV / meV/Å / meV/Å³.
"""

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

from e3md.data import Dataset

log = logging.getLogger(__name__)

__all__ = ["Predictions", "evaluate", "format_table", "metrics", "predict_dataset", "report"]


@dataclasses.dataclass(frozen=True, eq=False)
class Predictions:
    """Reference and predicted labels of a dataset, flattened (host numpy, eV units).

    Attributes:
      num_atoms: atoms per structure, (S,).
      energy_ref, energy_pred: total energies in eV, (S,).
      forces_ref, forces_pred: forces of all atoms stacked, eV/Å, (sum N_s, 3); None when the
        data have no forces.
      stress_ref, stress_pred: Voigt stresses in eV/Å³ of the structures that have one,
        (S_σ, 6); None when none has.
    """

    num_atoms: np.ndarray
    energy_ref: Float[np.ndarray, " S"]
    energy_pred: Float[np.ndarray, " S"]
    forces_ref: np.ndarray | None = None
    forces_pred: np.ndarray | None = None
    stress_ref: np.ndarray | None = None
    stress_pred: np.ndarray | None = None

    @classmethod
    def from_lists(
        cls,
        data: Dataset,
        energies: Sequence[float],
        forces: Sequence[np.ndarray] | None,
        stresses: Sequence[np.ndarray] | None = None,
    ) -> "Predictions":
        """Pair per-structure predictions with the references in ``data``."""
        n = np.array([s.num_atoms for s in data])
        e_ref = np.array([s.energy for s in data], dtype=np.float64)
        e_pred = np.asarray(energies, dtype=np.float64).reshape(-1)
        if e_pred.shape != e_ref.shape:
            raise ValueError(f"{e_pred.size} predicted energies for {e_ref.size} structures")
        f_ref = f_pred = None
        with_f = [k for k, s in enumerate(data) if s.forces is not None]
        if forces is not None and with_f:
            f_ref = np.concatenate([data[k].forces for k in with_f])
            f_pred = np.concatenate([np.asarray(forces[k], np.float64) for k in with_f])
        s_ref = s_pred = None
        with_s = [k for k, s in enumerate(data) if s.stress is not None]
        if stresses is not None and with_s:
            s_ref = np.stack([data[k].stress for k in with_s])
            s_pred = np.stack([np.asarray(stresses[k], np.float64) for k in with_s])
        return cls(n, e_ref, e_pred, f_ref, f_pred, s_ref, s_pred)


def _mae_rmse(err: np.ndarray) -> tuple[float, float]:
    err = np.asarray(err, dtype=np.float64)
    return float(np.mean(np.abs(err))), float(np.sqrt(np.mean(err**2)))


def metrics(pred: Predictions) -> dict[str, float]:
    """MAE and RMSE of energy (per structure and per atom), forces and stress.

    Returns:
      ``energy_mae``, ``energy_rmse`` (eV), ``energy_mae_per_atom``, ``energy_rmse_per_atom``
      (eV/atom), ``forces_mae``, ``forces_rmse`` (eV/Å, per component), ``stress_mae``,
      ``stress_rmse`` (eV/Å³, per Voigt component; only if stresses are present), and the
      counts ``num_structures``, ``num_atoms``.
    """
    if pred.energy_ref.size == 0:
        raise ValueError("no structures to compute metrics on")
    de = pred.energy_pred - pred.energy_ref
    out = {"num_structures": int(de.size), "num_atoms": int(pred.num_atoms.sum())}
    out["energy_mae"], out["energy_rmse"] = _mae_rmse(de)
    out["energy_mae_per_atom"], out["energy_rmse_per_atom"] = _mae_rmse(de / pred.num_atoms)
    if pred.forces_ref is not None:
        out["forces_mae"], out["forces_rmse"] = _mae_rmse(pred.forces_pred - pred.forces_ref)
    if pred.stress_ref is not None:
        out["stress_mae"], out["stress_rmse"] = _mae_rmse(pred.stress_pred - pred.stress_ref)
    return out


#: metric key -> (label, unit after conversion)
_ROWS = (
    ("energy", "energy (per structure)", "meV"),
    ("energy_per_atom", "energy (per atom)", "meV/atom"),
    ("forces", "forces (per component)", "meV/Å"),
    ("stress", "stress (per component)", "meV/Å³"),
)


def report(m: dict[str, float]) -> dict[str, float | int]:
    """The metrics of :func:`metrics` in meV units, keys suffixed with their unit:
    ``energy_{mae,rmse}_meV``, ``energy_{mae,rmse}_per_atom_meV``,
    ``forces_{mae,rmse}_meV_per_A``, ``stress_{mae,rmse}_meV_per_A3``."""
    names = {
        "energy_mae": "energy_mae_meV",
        "energy_rmse": "energy_rmse_meV",
        "energy_mae_per_atom": "energy_mae_per_atom_meV",
        "energy_rmse_per_atom": "energy_rmse_per_atom_meV",
        "forces_mae": "forces_mae_meV_per_A",
        "forces_rmse": "forces_rmse_meV_per_A",
        "stress_mae": "stress_mae_meV_per_A3",
        "stress_rmse": "stress_rmse_meV_per_A3",
    }
    out: dict[str, float | int] = {
        "num_structures": m["num_structures"],
        "num_atoms": m["num_atoms"],
    }
    out.update({new: 1e3 * m[old] for old, new in names.items() if old in m})
    return out


def format_table(m: dict[str, float]) -> str:
    """A plain-text table of MAE / RMSE in meV units."""
    lines = [f"{'quantity':<26}{'MAE':>12}{'RMSE':>12}  unit", "-" * 58]
    for key, label, unit in _ROWS:
        base = key.replace("_per_atom", "")
        suffix = "_per_atom" if key.endswith("per_atom") else ""
        mae, rmse = m.get(f"{base}_mae{suffix}"), m.get(f"{base}_rmse{suffix}")
        if mae is None:
            continue
        lines.append(f"{label:<26}{1e3 * mae:>12.3f}{1e3 * rmse:>12.3f}  {unit}")
    lines.append(f"({m['num_structures']} structures, {m['num_atoms']} atoms)")
    return "\n".join(lines)


def predict_dataset(
    potential, data: Dataset, batch_size: int = 8, compute_stress: bool | None = None
) -> Predictions:
    """Energies, forces (and stresses) of ``potential`` on every structure of ``data``.

    The potential's per-species ``e0`` baseline is added on the host in float64 (the network
    part runs in the potential's dtype), as in training.

    Args:
      potential: an :class:`e3md.potentials.Potential`.
      data: structures (e3md units).
      batch_size: structures per jitted call.
      compute_stress: default: whenever ``data`` has stress labels.

    Raises:
      ValueError: elements in ``data`` unknown to the potential.
    """
    import jax.numpy as jnp

    from e3md import training as tr
    from e3md.compiler import jit

    cfg = potential.config
    stress = data.has_stress if compute_stress is None else compute_stress
    prep = tr.prepare(data, cfg.cutoff, cfg.species, np.asarray(cfg.e0))
    energy_fn = tr.model_atomic_energy_fn(cfg.replace(e0=()))
    dtype = jnp.dtype(cfg.dtype)

    @jit
    def run(batch):
        return tr.predict(energy_fn, potential.params, batch, compute_stress=stress)

    E_pred, F_pred, S_pred = [], [], []
    for idx, batch in tr.batches(prep, batch_size):
        E, F, S = (np.asarray(x, np.float64) for x in run(tr._to_device(batch, dtype)))
        a = 0
        for g, k in enumerate(idx):
            n = data[k].num_atoms
            E_pred.append(E[g] + prep.baseline[k])
            F_pred.append(F[a : a + n])
            S_pred.append(S[g])
            a += n
    return Predictions.from_lists(data, E_pred, F_pred, S_pred if stress else None)


def evaluate(potential, data: Dataset, batch_size: int = 8) -> tuple[dict, Predictions]:
    """:func:`metrics` of ``potential`` on ``data`` (eV units), and the predictions."""
    pred = predict_dataset(potential, data, batch_size)
    return metrics(pred), pred
