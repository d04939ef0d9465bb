"""``examples/ase_relax_md.py``: relax + short ASE MD, extxyz output (run in-process)."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest
from ase.io import read
from e3md.potentials import ModelConfig, Potential

from e3md import potentials
from e3md.ase import E3MDCalculator

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "ase_relax_md.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("ase_relax_md", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    config = ModelConfig(
        species=(1, 6, 8),
        cutoff=4.0,
        max_degree=1,
        num_features=8,
        num_iterations=1,
        num_basis=4,
        readout_features=8,
        avg_num_neighbors=6.0,
        scale=0.2,
        dtype="float64",
    )
    path = tmp_path_factory.mktemp("model") / "small.e3md"
    Potential.init(config, jax.random.PRNGKey(5)).save(path)
    return path


def test_example_relaxes_runs_md_and_writes_extxyz(example, model_file, tmp_path, capsys):
    out = tmp_path / "traj.extxyz"
    argv = ["--potential", str(model_file), "--dtype", "float64", "--relax-steps", "20"]
    argv += ["--steps", "20", "--interval", "5", "--output", str(out)]
    assert example.main(argv) == 0
    text = capsys.readouterr().out
    assert "relaxed C2H6O" in text and "trajectory written" in text
    frames = read(out, index=":")
    assert len(frames) == 1 + 20 // 5  # steps 0, 5, ..., 20
    assert all(len(f) == 9 for f in frames)
    assert not np.allclose(frames[0].positions, frames[-1].positions)  # the atoms moved
    # the stored energies and forces belong to the stored positions
    calc = E3MDCalculator(potentials.load(model_file), dtype="float64")
    for f in (frames[0], frames[-1]):
        stored_e, stored_f = f.get_potential_energy(), f.get_forces()
        np.testing.assert_allclose(calc.get_potential_energy(f), stored_e, rtol=1e-6)
        np.testing.assert_allclose(calc.get_forces(f), stored_f, atol=1e-6)


def test_example_without_a_shipped_potential_says_so(example, capsys):
    if potentials.available():
        pytest.skip("a potential is shipped; the default run is exercised by the slow test")
    assert example.main(["--steps", "1"]) == 1
    assert "no trained potential is shipped" in capsys.readouterr().err


@pytest.mark.slow
def test_example_default_shipped_potential(example, tmp_path):
    if not potentials.available():
        pytest.skip("no potential shipped yet")
    out = tmp_path / "traj.extxyz"
    assert example.main(["--steps", "20", "--relax-steps", "50", "--output", str(out)]) == 0
    assert len(read(out, index=":")) == 3  # steps 0, 10, 20
