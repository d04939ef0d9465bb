"""``examples/openmm_mlmm_ethanol.py``: ML/MM ethanol (e3md) in TIP3P water (amber14)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openmm")
pytest.importorskip("openmmml")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "openmm_mlmm_ethanol.py"


def load_example():
    spec = importlib.util.spec_from_file_location("openmm_mlmm_ethanol", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlmm_ethanol_in_water_runs(capsys):
    example = load_example()
    steps = 300
    out = example.run(steps=steps, padding_nm=0.8, cutoff_nm=0.7, report_every=50)
    printed = capsys.readouterr().out
    assert "e3md ML/MM" in printed and f"step {steps:6d}" in printed
    assert out["ml_atoms"] == list(range(9))  # ethanol is the first residue
    assert out["num_waters"] > 50
    assert out["num_atoms"] == 9 + 3 * out["num_waters"]
    energies = np.array(out["energies_kj_per_mol"])
    ml_energies = np.array(out["ml_energies_kj_per_mol"])
    assert len(energies) == steps // 50
    assert np.all(np.isfinite(energies)) and np.all(np.isfinite(ml_energies))
    # the e3md part is a real, changing contribution
    assert np.ptp(ml_energies) > 0.0
    temps = np.array(out["temperatures_K"])
    assert np.all(np.isfinite(temps) & (temps > 0.0))
    if out["model"].startswith("shipped"):
        # a trained potential keeps ethanol bonded, and the thermostat holds the temperature.
        # (The untrained fallback has no bonds: its ethanol falls apart and the bare hydroxyl
        # H, charged and without Lennard-Jones radius as in OPLS/TIP3P, can fuse with a water
        # oxygen and heat the system; only finiteness is checked then.)
        assert np.all((temps > 150.0) & (temps < 450.0)), temps


def test_main_returns_zero(capsys):
    """The command line; the fallback model file is byte-identical to the one above, so the
    compiled force is reused (``e3md.openmm`` memoises by model hash)."""
    example = load_example()
    rc = example.main(["--steps", "10", "--padding-nm", "0.8", "--cutoff-nm", "0.7"])
    assert rc == 0
    assert "step     10" in capsys.readouterr().out
