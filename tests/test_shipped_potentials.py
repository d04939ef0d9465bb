"""Shipped potentials: load by name, file hash matches the model card, stored config present,
energies and forces on a few training structures within the card's reported error scale."""

import re
from pathlib import Path

import numpy as np
import pytest
from e3md.potentials import available, load

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "potentials"
NAMES = available()


def _card(name: str) -> str:
    return (SHIPPED / name / "README.md").read_text()


def _card_metrics(card: str, section: str) -> dict[str, float]:
    """MAEs (meV units) from a card's table, e.g. section="Validation errors"."""
    text = card.split(f"## {section}", 1)[1].split("##", 1)[0]
    out = {}
    for key, label in (
        ("energy", "energy (per structure)"),
        ("forces", "forces (per component)"),
        ("stress", "stress (per component)"),
    ):
        m = re.search(re.escape(label) + r"\s+([0-9.]+)\s+([0-9.]+)", text)
        if m:
            out[key] = float(m.group(1))
    return out


def test_the_default_md_potential_is_shipped():
    assert "rmd17-ethanol" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_shipped_potential_file_matches_its_card(name):
    from e3md.training import load_config, sha256_file

    pot = load(name)
    card = _card(name)
    m = re.search(r"File sha256\*\*: `([0-9a-f]{64})`", card)
    assert m, "card has no file hash"
    assert sha256_file(SHIPPED / name / f"{name}.e3md") == m.group(1)
    assert pot.metadata["name"] == name
    cfg = load_config(SHIPPED / "configs" / f"{name}.toml")
    assert cfg.name == name
    for png in ("parity_energy.png", "parity_forces.png", "learning_curve.png"):
        assert (SHIPPED / name / png).stat().st_size > 1000
    mets = _card_metrics(card, "Validation errors")
    assert {"energy", "forces"} <= set(mets)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_shipped_potential_reproduces_training_structures(name, shared_data):
    from e3md.data import load_dataset
    from e3md.evaluate import evaluate
    from e3md.training import sha256_file

    pot = load(name)
    info = pot.metadata["training"]
    source = info["data"][0]
    path = shared_data / source["path"].split("shared/data/", 1)[1]
    assert sha256_file(path) == source["sha256"], "reference data changed since training"
    cfg = info["config"]["data"]
    data = load_dataset(path, format=cfg.get("format"), energy_unit=cfg.get("energy_unit"))
    valid = set(
        int(i)
        for i in re.search(r"Validation indices\*\*[^:]*: ([0-9, ]+)", _card(name))
        .group(1)
        .split(",")
    )
    picks = [k for k in range(0, len(data), max(1, len(data) // 12)) if k not in valid][:8]
    m, _ = evaluate(pot, data.subset(picks))
    card = _card_metrics(_card(name), "Validation errors")
    # training structures: errors of the same order as the validation MAE (generous factor 3
    # for 8 samples), in meV
    assert 1e3 * m["energy_mae"] <= 3 * card["energy"] + 0.5
    assert 1e3 * m["forces_mae"] <= 3 * card["forces"]
    if "stress" in card and "stress_mae" in m:
        assert 1e3 * m["stress_mae"] <= 3 * card["stress"] + 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_shipped_potential_agrees_with_the_ase_calculator(name, shared_data):
    """The training/evaluation path and the independent ASE-calculator path give the same
    energy and forces for a training structure (float32 model: meV-level agreement)."""
    import ase

    from e3md.ase import E3MDCalculator
    from e3md.data import load_dataset
    from e3md.evaluate import predict_dataset

    pot = load(name)
    source = pot.metadata["training"]["data"][0]
    path = shared_data / source["path"].split("shared/data/", 1)[1]
    cfg = pot.metadata["training"]["config"]["data"]
    s = load_dataset(path, format=cfg.get("format"), energy_unit=cfg.get("energy_unit"))[0]
    pred = predict_dataset(
        pot,
        load_dataset(path, format=cfg.get("format"), energy_unit=cfg.get("energy_unit")).subset(
            [0]
        ),
    )
    atoms = ase.Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
    atoms.calc = E3MDCalculator(name)
    assert atoms.get_potential_energy() == pytest.approx(pred.energy_pred[0], abs=5e-3)
    np.testing.assert_allclose(atoms.get_forces(), pred.forces_pred, atol=2e-3)
