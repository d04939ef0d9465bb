"""Training pipeline: buckets, padding, energy/force/stress evaluation, config, loss, resume."""

import dataclasses
import json
import os

import ase
import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from e3md.potentials.config import ModelConfig

from e3md import training as tr
from e3md.data import Dataset, Structure

# ------------------------------------------------------------------------------------------
# a tiny independent pair model (float64) to test the batching / derivative plumbing without
# depending on the equivariant network: e_i = 1/2 sum_j w_{z_i z_j} exp(-(r-1)^2) fc(r)
# ------------------------------------------------------------------------------------------


def pair_factory(config):
    def fn(params, r_ij, species_index, src, dst, edge_mask, atom_mask):
        w = params["params"]["w"]
        r = jnp.sqrt(jnp.sum(jnp.where(edge_mask[:, None], r_ij, 1.0) ** 2, -1))
        fc = jnp.where(r < config.cutoff, 0.5 * (jnp.cos(jnp.pi * r / config.cutoff) + 1), 0.0)
        g = jnp.exp(-((r - 1.5) ** 2)) + 0.3 * jnp.exp(-0.5 * (r - 3.0) ** 2)
        e_edge = jnp.where(edge_mask, 0.5 * w[species_index[dst], species_index[src]] * g * fc, 0)
        e = jax.ops.segment_sum(e_edge, dst, num_segments=species_index.shape[0])
        e0 = jnp.asarray(config.e0)[species_index]
        return jnp.where(atom_mask, config.scale * e + config.shift + e0, 0.0)

    return fn


def pair_init(config, key):
    S = config.num_species
    w = jax.random.normal(key, (S, S), jnp.float64)
    return {"params": {"w": 0.5 * (w + w.T)}}


def _structure(rng, symbols, periodic=False):
    n = len(ase.Atoms(symbols))
    numbers = ase.Atoms(symbols).numbers
    if periodic:
        cell = np.array([[5.0, 0.0, 0.0], [0.8, 5.5, 0.0], [-0.4, 0.6, 6.0]])
        pos = rng.uniform(size=(n, 3)) @ cell
    else:
        cell = np.zeros((3, 3))
        pos = rng.normal(size=(n, 3)) * 1.3
    return Structure(
        numbers,
        pos,
        cell,
        (periodic,) * 3,
        float(rng.normal()),
        rng.normal(size=(n, 3)),
        rng.normal(size=6) * 0.01 if periodic else None,
    )


_JITTED = {}


def _pair_energy(config, params, s):
    """Energy of one structure through the pair model, graph rebuilt from scratch."""
    if config not in _JITTED:
        _JITTED[config] = jax.jit(pair_factory(config))
    g = tr.build_graph(s, config.cutoff)
    r = s.positions[g.src] - s.positions[g.dst] + g.shifts
    sidx = np.searchsorted(config.species, s.numbers)
    n, e = s.num_atoms, g.src.size
    return float(
        _JITTED[config](
            params,
            jnp.asarray(r),
            jnp.asarray(sidx),
            jnp.asarray(g.src),
            jnp.asarray(g.dst),
            jnp.ones(e, bool),
            jnp.ones(n, bool),
        ).sum()
    )


_predict = jax.jit(tr.predict, static_argnums=(0, 3))


@pytest.fixture
def pair_setup(keys):
    config = ModelConfig(
        species=(1, 6, 8, 14), cutoff=4.0, dtype="float64", e0=(-1.0, -2.0, -3.0, -4.0)
    )
    return config, pair_init(config, next(keys))


def test_collate_pads_and_masks(rng, pair_setup):
    config, _ = pair_setup
    data = Dataset((_structure(rng, "CH4"), _structure(rng, "H2O"), _structure(rng, "Si3", True)))
    e0 = np.asarray(config.e0)
    prep = tr.prepare(data, config.cutoff, config.species, e0)
    b = tr.collate(prep, [0, 1, 2], batch_size=4)
    n_real = 5 + 3 + 3
    assert b.atom_mask.sum() == n_real and b.positions.shape[0] > n_real
    assert b.edge_mask.sum() == sum(g.src.size for g in prep.graphs)
    np.testing.assert_array_equal(b.graph_mask, [True, True, True, False])
    np.testing.assert_array_equal(b.num_atoms, [5, 3, 3, 1])
    # energies are relative to the E0 baseline: CH4 -> -2 + 4 * -1
    assert b.energy[0] == pytest.approx(data[0].energy + 6.0)
    assert b.stress_mask.tolist() == [False, False, True, False]
    assert b.volume[2] == pytest.approx(data[2].volume)
    # padded edges point at a padded atom
    assert not b.atom_mask[b.src[~b.edge_mask]].any()
    with pytest.raises(ValueError, match="padding too small"):
        tr.collate(prep, [0, 1], batch_size=2, num_atoms=8)


def test_predict_matches_per_structure_and_finite_differences(rng, pair_setup):
    config, params = pair_setup
    data = Dataset((_structure(rng, "CH4"), _structure(rng, "Si4", True), _structure(rng, "C2H6O")))
    zero_e0 = np.zeros(config.num_species)
    prep = tr.prepare(data, config.cutoff, config.species, zero_e0)
    fn = pair_factory(config.replace(e0=()))
    batch = tr._to_device(tr.collate(prep, [0, 1, 2], batch_size=3), jnp.float64)
    E, F, S = _predict(fn, params, batch, True)
    cfg0 = config.replace(e0=())
    a = 0
    h = 1e-5
    for g, s in enumerate(data):
        assert E[g] == pytest.approx(_pair_energy(cfg0, params, s), rel=1e-12)
        # forces: central differences of the energy, graph rebuilt each time
        for atom, axis in [(0, 0), (s.num_atoms - 1, 2)]:

            def moved(d, atom=atom, axis=axis, s=s):
                pos = s.positions.copy()
                pos[atom, axis] += d
                return dataclasses.replace(s, positions=pos)

            fd = -(_pair_energy(cfg0, params, moved(h)) - _pair_energy(cfg0, params, moved(-h)))
            assert F[a + atom, axis] == pytest.approx(fd / (2 * h), rel=1e-6, abs=1e-9)
        if s.periodic:  # stress = (1/V) dE/deps under x -> x (1 + eps), cell too
            for i, j in [(0, 0), (1, 2), (0, 1)]:

                def strained(d, i=i, j=j, s=s):
                    eps = np.zeros((3, 3))
                    eps[i, j] += d / 2
                    eps[j, i] += d / 2
                    return dataclasses.replace(
                        s,
                        positions=s.positions @ (np.eye(3) + eps),
                        cell=s.cell @ (np.eye(3) + eps),
                    )

                fd = (
                    (
                        _pair_energy(cfg0, params, strained(h))
                        - _pair_energy(cfg0, params, strained(-h))
                    )
                    / (2 * h)
                    / s.volume
                )
                voigt = {(0, 0): 0, (1, 2): 3, (0, 1): 5}[(i, j)]
                assert S[g, voigt] == pytest.approx(fd, rel=1e-6, abs=1e-10)
        else:
            np.testing.assert_array_equal(S[g], 0.0)
        a += s.num_atoms


def test_predict_is_independent_of_padding(rng, pair_setup):
    config, params = pair_setup
    data = Dataset((_structure(rng, "CH4"), _structure(rng, "Si5", True)))
    prep = tr.prepare(data, config.cutoff, config.species, np.asarray(config.e0))
    fn = pair_factory(config.replace(e0=()))
    small = tr._to_device(tr.collate(prep, [0, 1], 2), jnp.float64)
    big = tr._to_device(tr.collate(prep, [0, 1], 5, num_atoms=64, num_edges=512), jnp.float64)
    E1, F1, S1 = _predict(fn, params, small, True)
    E2, F2, S2 = _predict(fn, params, big, True)
    np.testing.assert_allclose(E1, E2[:2], rtol=1e-13)
    np.testing.assert_allclose(F1[:10], F2[:10], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(S1, S2[:2], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(E2[2:], 0.0)
    np.testing.assert_array_equal(F2[10:], 0.0)


def test_uniform_dataset_compiles_once(rng, pair_setup):
    config, params = pair_setup
    data = Dataset(tuple(_structure(rng, "C2H6O") for _ in range(11)))
    prep = tr.prepare(data, config.cutoff, config.species, np.asarray(config.e0))
    shapes = {tuple(x.shape for x in b) for _, b in tr.batches(prep, 4, shuffle_seed=0)}
    assert len(shapes) == 1  # incl. the last, partial batch


def test_loss_is_zero_on_own_predictions_and_weighted(rng, pair_setup):
    config, params = pair_setup
    data = Dataset((_structure(rng, "CH4"), _structure(rng, "Si4", True)))
    prep = tr.prepare(data, config.cutoff, config.species, np.zeros(config.num_species))
    fn = pair_factory(config.replace(e0=()))
    b = tr._to_device(tr.collate(prep, [0, 1], 2), jnp.float64)
    E, F, S = _predict(fn, params, b, True)
    exact = b._replace(energy=E, forces=F, stress=S)
    w = tr.LossConfig(1.0, 10.0, 100.0)
    loss_fn = jax.jit(tr.loss_fn, static_argnums=(0, 3))
    loss, parts = loss_fn(fn, params, exact, w)
    assert float(loss) == pytest.approx(0.0, abs=1e-20)
    off = exact._replace(energy=E + jnp.array([0.4, 0.8]), forces=F + 0.1 * b.atom_mask[:, None])
    loss, parts = loss_fn(fn, params, off, w)
    # per-atom energy errors 0.4/5 and 0.8/4; forces 0.1 in every real component
    assert float(parts["energy"]) == pytest.approx(((0.4 / 5) ** 2 + (0.8 / 4) ** 2) / 2)
    assert float(parts["forces"]) == pytest.approx(0.01)
    assert float(loss) == pytest.approx(float(parts["energy"]) + 10 * 0.01)


def test_config_toml_round_trip_overrides_and_errors(tmp_path):
    text = """
name = "tiny"
[data]
train = "x.npz"
n_train = 20
n_valid = 5
[model]
num_features = 4
[optimizer]
name = "amsgrad"
[training]
max_epochs = 3
"""
    (tmp_path / "c.toml").write_text(text)
    cfg = tr.load_config(tmp_path / "c.toml", {"training.batch_size": 2, "loss.forces_weight": 5.0})
    assert cfg.data.train == ("x.npz",) and cfg.training.batch_size == 2
    assert cfg.loss.forces_weight == 5.0 and cfg.optimizer.name == "amsgrad"
    (tmp_path / "d.toml").write_text(cfg.to_toml())
    again = tr.load_config(tmp_path / "d.toml")
    assert again.to_dict() == cfg.to_dict()
    for bad, msg in [
        ({"training.epochs": 3}, "unknown keys"),
        ({"model.e0": [1.0]}, "fitted by training"),
        ({"model.width": 3}, "unknown keys"),
        ({"optimizer.name": "sgd"}, "adam"),
        ({"training.ema_decay": 1.0}, "ema_decay"),
        ({"colour": "red"}, "unknown config"),
    ]:
        with pytest.raises(ValueError, match=msg):
            tr.load_config(tmp_path / "c.toml", bad)


# ------------------------------------------------------------------------------------------
# with the e3md model (tiny)
# ------------------------------------------------------------------------------------------

TINY_MODEL = {
    "num_features": 4,
    "max_degree": 1,
    "num_iterations": 1,
    "num_basis": 4,
    "readout_features": 4,
    "cutoff": 4.0,
    "dtype": "float64",
}


def _tiny_config(tmp_path, data_path, **training):
    t = {
        "batch_size": 4,
        "max_epochs": 4,
        "ema_decay": 0.9,
        "seed": 1,
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "output_dir": str(tmp_path / "out"),
        **training,
    }
    return tr.config_from_dict(
        {
            "name": "tiny",
            "data": {
                "train": str(data_path),
                "n_train": 12,
                "n_valid": 4,
                "split_seed": 0,
                "level_of_theory": "PBE/def2-SVP",
            },
            "model": TINY_MODEL,
            "optimizer": {"learning_rate": 2e-2, "schedule": "constant"},
            "training": t,
        }
    )


@pytest.fixture
def ethanol16(shared_data, tmp_path):
    """The first 16 rMD17 ethanol frames as their own npz file."""
    src = np.load(shared_data / "rmd17" / "rmd17_ethanol_train_01.npz")
    path = tmp_path / "ethanol16.npz"
    np.savez(
        path,
        **{
            k: src[k][:16] if src[k].ndim > 1 or k != "nuclear_charges" else src[k]
            for k in ("nuclear_charges", "coords", "energies", "forces")
        },
    )
    return path


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.slow
def test_tiny_model_training_lowers_the_loss(tmp_path, ethanol16):
    cfg = _tiny_config(tmp_path, ethanol16, max_epochs=6, batch_size=2)
    cfg = dataclasses.replace(
        cfg,
        model={**cfg.model, "num_features": 8, "readout_features": 8},
        optimizer=dataclasses.replace(cfg.optimizer, learning_rate=0.1),
    )
    trainer = tr.Trainer(cfg)
    before = trainer.evaluate_prepared(trainer.state.params, trainer.train_prep)["loss"]
    trainer.run()
    after = trainer.evaluate_prepared(trainer.state.params, trainer.train_prep)["loss"]
    assert after < before  # small but consistent; see the full-size runs for real curves
    h = trainer.state.history
    assert len(h) == 6


@pytest.mark.slow
def test_resume_gives_the_same_parameters(tmp_path, ethanol16):
    full = tr.Trainer(_tiny_config(tmp_path / "a", ethanol16))
    full.run()
    first = tr.Trainer(_tiny_config(tmp_path / "b", ethanol16))
    first.run(num_epochs=2)  # writes a checkpoint and returns, as if interrupted
    assert first.state.epoch == 2
    resumed = tr.Trainer(_tiny_config(tmp_path / "b", ethanol16))
    resumed.load_checkpoint()
    assert resumed.state.step == first.state.step
    resumed.run()
    assert resumed.state.epoch == full.state.epoch == 4
    for a, b in zip(_leaves(full.state.params), _leaves(resumed.state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(full.state.ema), _leaves(resumed.state.ema), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(full.state.opt_state), _leaves(resumed.state.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [h["valid_loss"] for h in full.state.history] == [
        h["valid_loss"] for h in resumed.state.history
    ]
    # a checkpoint is not silently reused by a different run
    other = tr.Trainer(_tiny_config(tmp_path / "b", ethanol16, batch_size=3))
    with pytest.raises(ValueError, match="different config"):
        other.load_checkpoint()
    # checkpoints hold no pickles: a msgpack state and an e3md model file
    names = sorted(os.listdir(tmp_path / "b" / "ckpt"))
    assert names == ["model.e3md", "state.msgpack"]


@pytest.mark.slow
def test_outputs_potential_card_and_plots(tmp_path, ethanol16):
    from e3md.potentials import load

    cfg = _tiny_config(tmp_path, ethanol16, max_epochs=2)
    trainer = tr.Trainer(cfg)
    trainer.run()
    out = tr.write_outputs(trainer, hardware="test machine")
    files = set(os.listdir(tmp_path / "out"))
    assert {
        "tiny.e3md",
        "README.md",
        "parity_energy.png",
        "parity_forces.png",
        "learning_curve.png",
        "metrics.json",
    } <= files
    card = (tmp_path / "out" / "README.md").read_text()
    assert out["sha256"] in card and tr.sha256_file(out["potential_path"]) == out["sha256"]
    assert "12 training / 4 validation" in card and "PBE/def2-SVP" in card
    pot = load(out["potential_path"])
    assert pot.config.e0 == trainer.model_config.e0 and pot.config.scale > 0
    from e3md.evaluate import evaluate

    m, _ = evaluate(pot, trainer.valid_data)
    assert m["forces_mae"] == pytest.approx(out["valid"]["forces_mae"], rel=1e-9)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["valid"]["forces_mae_meV_per_A"] == pytest.approx(1e3 * m["forces_mae"])


@pytest.mark.slow
def test_cli_train_then_evaluate(tmp_path, ethanol16, capsys):
    from e3md.cli import main

    cfg = _tiny_config(tmp_path, ethanol16, max_epochs=1)
    (tmp_path / "c.toml").write_text(cfg.to_toml())
    assert (
        main(
            [
                "train",
                str(tmp_path / "c.toml"),
                "--no-progress",
                "--max-time",
                "10min",
                "--set",
                "loss.energy_weight=2.0",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "forces (per component)" in text
    card = (tmp_path / "out" / "README.md").read_text()
    assert "energy_weight = 2.0" in card and "max_time = 600.0" in card
    assert main(["evaluate", str(tmp_path / "out" / "tiny.e3md"), str(ethanol16), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_structures"] == 16 and report["forces_mae_meV_per_A"] > 0
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
