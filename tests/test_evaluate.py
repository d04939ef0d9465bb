"""Metrics: hand-checkable MAE/RMSE, unit conversion of the report, table, evaluate()."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from e3md.data import Dataset, Structure
from e3md.evaluate import Predictions, evaluate, format_table, metrics, report


def _hand_case():
    # two structures: 2 atoms and 4 atoms
    return Predictions(
        num_atoms=np.array([2, 4]),
        energy_ref=np.array([-10.0, -20.0]),
        energy_pred=np.array([-10.2, -19.6]),  # errors -0.2, +0.4 eV
        forces_ref=np.zeros((6, 3)),
        forces_pred=np.array(
            [[0.1, 0, 0], [0, -0.2, 0], [0, 0, 0], [0, 0, 0.3], [0, 0, 0], [0, 0, 0]]
        ),
        stress_ref=np.zeros((1, 6)),
        stress_pred=np.array([[0.001, 0, 0, 0, 0, -0.003]]),
    )


def test_metrics_on_a_hand_checkable_case():
    m = metrics(_hand_case())
    assert m["num_structures"] == 2 and m["num_atoms"] == 6
    assert m["energy_mae"] == pytest.approx(0.3)  # (0.2 + 0.4) / 2
    assert m["energy_rmse"] == pytest.approx(np.sqrt((0.04 + 0.16) / 2))
    assert m["energy_mae_per_atom"] == pytest.approx((0.1 + 0.1) / 2)
    assert m["energy_rmse_per_atom"] == pytest.approx(0.1)
    assert m["forces_mae"] == pytest.approx(0.6 / 18)  # per component over 6 atoms x 3
    assert m["forces_rmse"] == pytest.approx(np.sqrt(0.14 / 18))
    assert m["stress_mae"] == pytest.approx(0.004 / 6)
    assert m["stress_rmse"] == pytest.approx(np.sqrt(1e-5 / 6))


def test_report_and_table_are_in_mev():
    m = metrics(_hand_case())
    r = report(m)
    assert r["energy_mae_meV"] == pytest.approx(300.0)
    assert r["energy_mae_per_atom_meV"] == pytest.approx(100.0)
    assert r["forces_mae_meV_per_A"] == pytest.approx(1e3 * 0.6 / 18)
    assert r["stress_rmse_meV_per_A3"] == pytest.approx(1e3 * np.sqrt(1e-5 / 6))
    json.dumps(r)
    table = format_table(m)
    assert "300.000" in table and "100.000" in table and "33.333" in table
    assert "meV/Å³" in table and "2 structures, 6 atoms" in table
    no_stress = metrics(Predictions(np.array([1]), np.array([0.0]), np.array([0.001])))
    assert "stress_mae" not in no_stress and "stress" not in format_table(no_stress)
    with pytest.raises(ValueError, match="no structures"):
        metrics(Predictions(np.array([], int), np.array([]), np.array([])))


def test_from_lists_pairs_predictions_with_references():
    s = [
        Structure(
            np.array([1, 1]),
            np.zeros((2, 3)),
            np.zeros((3, 3)),
            (False,) * 3,
            -1.0,
            np.ones((2, 3)),
        ),
        Structure(
            np.array([8]), np.zeros((1, 3)), np.zeros((3, 3)), (False,) * 3, -2.0, np.zeros((1, 3))
        ),
    ]
    p = Predictions.from_lists(
        Dataset(tuple(s)), [-1.5, -2.0], [np.zeros((2, 3)), np.zeros((1, 3))]
    )
    m = metrics(p)
    assert m["energy_mae"] == pytest.approx(0.25) and m["forces_mae"] == pytest.approx(6 / 9)
    with pytest.raises(ValueError, match="predicted energies"):
        Predictions.from_lists(Dataset(tuple(s)), [0.0], None)


@pytest.mark.slow
def test_evaluate_recovers_known_label_offsets(rng, keys):
    """Label data with a potential's own predictions, shift the labels by known amounts, and
    check that evaluate() reports exactly those shifts."""
    from e3md.potentials import ModelConfig, Potential

    from e3md.evaluate import predict_dataset

    cfg = ModelConfig(
        species=(1, 6, 8),
        cutoff=4.0,
        num_features=4,
        max_degree=1,
        num_iterations=1,
        num_basis=4,
        readout_features=4,
        dtype="float64",
        e0=(-13.6, -1025.0, -2035.0),
        scale=0.5,
    )
    pot = Potential.init(cfg, next(keys))
    structs = []
    for k in range(5):
        Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1][: 5 + k % 4])
        R = rng.normal(size=(Z.size, 3)) * 1.2
        structs.append(Structure(Z, R, np.zeros((3, 3)), (False,) * 3, 0.0, np.zeros((Z.size, 3))))
    data = Dataset(tuple(structs))
    pred = predict_dataset(pot, data, batch_size=2)
    de = np.array([0.01, -0.02, 0.03, 0.0, 0.04])
    labelled = Dataset(
        tuple(
            Structure(
                s.numbers,
                s.positions,
                s.cell,
                s.pbc,
                float(pred.energy_pred[k] + de[k]),
                np.asarray(pred.forces_pred[sum(x.num_atoms for x in structs[:k]) :][: s.num_atoms])
                + 0.005,
            )
            for k, s in enumerate(structs)
        )
    )
    m, _ = evaluate(pot, labelled, batch_size=3)
    assert m["energy_mae"] == pytest.approx(np.mean(np.abs(de)), abs=1e-9)
    assert m["forces_mae"] == pytest.approx(0.005, abs=1e-9)
    # the prediction itself: energy includes the E0 baseline, and equals the model's sum
    s0 = structs[0]
    i, j = np.nonzero(~np.eye(s0.num_atoms, dtype=bool))
    r = s0.positions[j] - s0.positions[i]
    e_i = pot.atomic_energies(
        r, pot.species_index(s0.numbers), j, i, np.ones(i.size, bool), np.ones(s0.num_atoms, bool)
    )
    assert pred.energy_pred[0] == pytest.approx(float(jax.numpy.sum(e_i)), rel=1e-12)


def test_parity_plots_one_png_per_labelled_quantity(tmp_path):
    from e3md.plots import parity_plots

    paths = parity_plots(_hand_case(), str(tmp_path / "parity"), title="hand case")
    assert [p.rsplit("_", 1)[1] for p in paths] == ["energy.png", "forces.png", "stress.png"]
    assert all((tmp_path / p.rsplit("/", 1)[1]).stat().st_size > 1000 for p in paths)
    no_stress = dataclasses.replace(_hand_case(), stress_ref=None, stress_pred=None)
    assert len(parity_plots(no_stress, str(tmp_path / "p2"))) == 2
