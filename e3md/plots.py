"""Parity plots and learning curves (matplotlib, Agg backend; PNG files).

Plots are drawn in meV units (energies per atom, force components, stress components) and
written with a fixed DPI so that model cards stay small.
"""

import logging
import os

import numpy as np

from e3md.evaluate import Predictions, metrics

log = logging.getLogger(__name__)

__all__ = ["learning_curve", "parity_plots"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _parity(ax, ref, pred, label, unit, mae):
    ref, pred = np.asarray(ref).reshape(-1), np.asarray(pred).reshape(-1)
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    pad = 0.03 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=0.8, zorder=0)
    ax.scatter(ref, pred, s=4, alpha=0.5, lw=0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"reference {label} ({unit})")
    ax.set_ylabel(f"predicted {label} ({unit})")
    ax.set_title(f"{label}: MAE {mae:.3g} {unit.split(' ')[0]}")


def parity_plots(pred: Predictions, path_prefix: str, title: str = "") -> list[str]:
    """Write ``<prefix>_energy.png`` (energy per atom relative to its mean, meV/atom),
    ``<prefix>_forces.png`` (force components, eV/Å; MAE in meV/Å) and, with stress labels,
    ``<prefix>_stress.png``.

    Returns:
      The written paths.
    """
    plt = _pyplot()
    m = metrics(pred)
    paths = []
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    # energies per atom relative to the reference mean (absolute values are ~ -500 eV/atom)
    e_ref = pred.energy_ref / pred.num_atoms
    e_pred = pred.energy_pred / pred.num_atoms
    mean = e_ref.mean()
    panels = [
        ("energy", e_ref - mean, e_pred - mean, "E/N − ⟨E/N⟩", "meV/atom", "energy_mae_per_atom")
    ]
    if pred.forces_ref is not None:
        panels.append(
            ("forces", pred.forces_ref, pred.forces_pred, "force component", "meV/Å", "forces_mae")
        )
    if pred.stress_ref is not None:
        panels.append(
            (
                "stress",
                pred.stress_ref,
                pred.stress_pred,
                "stress component",
                "meV/Å³",
                "stress_mae",
            )
        )
    for name, ref, predicted, label, unit, mae_key in panels:
        fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
        _parity(ax, 1e3 * ref, 1e3 * predicted, label, unit, 1e3 * m[mae_key])
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        paths.append(f"{path_prefix}_{name}.png")
        fig.savefig(paths[-1])
        plt.close(fig)
    log.info("wrote %s", paths)
    return paths


def learning_curve(history: list[dict], path: str, title: str = "") -> str:
    """Training / validation loss and validation energy & force MAE against epoch (log
    scale), written to ``path`` (PNG)."""
    plt = _pyplot()
    if not history:
        raise ValueError("no history to plot")
    epoch = np.array([h["epoch"] for h in history], dtype=float)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.4, 3.6), dpi=110)
    a1.semilogy(epoch, [h["train_loss"] for h in history], label="train loss")
    a1.semilogy(epoch, [h["valid_loss"] for h in history], label="validation loss (EMA)")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.legend(fontsize=8)
    a2.semilogy(epoch, [1e3 * h["valid_forces_mae"] for h in history], label="F MAE (meV/Å)")
    a2.semilogy(
        epoch, [1e3 * h["valid_energy_mae_total"] for h in history], label="E MAE (meV / structure)"
    )
    a2.set_xlabel("epoch")
    a2.set_ylabel("validation MAE")
    a2.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
