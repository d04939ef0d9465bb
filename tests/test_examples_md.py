"""``examples/md_*.py`` run in-process with short settings."""

import csv
import importlib.util
from pathlib import Path

import ase.io
import jax
import numpy as np
import pytest
from e3md.potentials import ModelConfig, Potential

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # compiles an e3md model; the e3md MD path is covered fast elsewhere
def test_md_ethanol_example(tmp_path, capsys):
    config = ModelConfig(
        species=(1, 6, 8), cutoff=4.0, max_degree=1, num_features=8, readout_features=8,
        dtype="float64",
    )  # fmt: skip
    model = tmp_path / "small.e3md"
    Potential.init(config, jax.random.PRNGKey(0)).save(model)
    out = tmp_path / "run"
    got = load_example("md_ethanol").main(
        ["--potential", str(model), "--steps", "100", "--out", str(out)]
    )
    assert "<T> over the second half" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "thermo.csv")))
    assert len(rows) == 11 and rows[-1]["step"] == "100"
    frames = ase.io.read(out / "traj.extxyz", ":")
    assert len(frames) == 3  # steps 0, 50, 100
    np.testing.assert_allclose(frames[-1].positions, got["result"].positions, atol=1e-7)
    assert (out / "md.ckpt.npz").is_file()


def test_md_lj_replicas_npt_example(capsys):
    got = load_example("md_lj_replicas_npt").main(["--steps", "200", "--replicas", "2"])
    text = capsys.readouterr().out
    assert "replica 1:" in text and "target 500.0 bar" in text
    assert got["pressure"].shape == (11, 2) and np.all(np.isfinite(got["pressure"]))
    # replicas start from the same lattice with different velocities: they diverge
    assert not np.allclose(got["volume"][:, 0], got["volume"][:, 1])
