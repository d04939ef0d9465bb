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


def test_main_returns_zero(tmp_path, model_file_for_example):
    example = load_example()
    args = ["--model", model_file_for_example, "--steps", "20"]
    rc = example.main([*args, "--padding-nm", "0.8", "--cutoff-nm", "0.7"])
    assert rc == 0


@pytest.fixture
def model_file_for_example(tmp_path):
    import jax

    from e3md import potentials

    config = potentials.ModelConfig(
        species=(1, 6, 8),
        cutoff=4.0,
        max_degree=1,
        num_features=4,
        num_iterations=1,
        self_product=False,
        readout_features=4,
    )
    path = tmp_path / "hco.e3md"
    potentials.Potential.init(config, jax.random.PRNGKey(0)).save(path)
    return str(path)
