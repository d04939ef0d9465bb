"""``e3md md``: runs with a (randomly initialised) model file, restarts, and fails cleanly."""

import csv
from pathlib import Path

import ase.io
import jax
import numpy as np
import pytest
from ase import Atoms
from e3md.potentials import ModelConfig, Potential, available

import e3md
from e3md.cli import main

ETHANOL = Path(e3md.__file__).parent / "data" / "ethanol.xyz"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    config = ModelConfig(
        species=(1, 6, 8), cutoff=4.0, max_degree=1, num_features=8, readout_features=8,
        dtype="float64",
    )  # fmt: skip
    path = tmp_path_factory.mktemp("model") / "random.e3md"
    Potential.init(config, jax.random.PRNGKey(0)).save(path)
    return path


def md(tmp_path, *extra):
    args = [
        "md", "--out", str(tmp_path / "traj.extxyz"), "--log", str(tmp_path / "thermo.csv"),
        "--checkpoint", str(tmp_path / "ckpt.npz"), "--no-progress", *map(str, extra),
    ]  # fmt: skip
    return main(args)


COMMON = ("--structure", ETHANOL, "--ensemble", "nvt", "--dt", 0.5, "--temperature", 300)
COMMON += ("--chunk", 10, "--log-every", 10)


def test_md_runs(tmp_path, model_file, capsys):
    assert md(tmp_path, "--potential", model_file, *COMMON, "--steps", 20, "--out-every", 10) == 0
    assert "20 steps" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "thermo.csv")))
    assert [int(r["step"]) for r in rows] == [0, 10, 20]
    frames = ase.io.read(tmp_path / "traj.extxyz", ":")
    assert len(frames) == 3 and frames[0].get_chemical_formula() == "C2H6O"
    assert (tmp_path / "ckpt.npz").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz", "thermo.csv", "traj.extxyz"]


@pytest.mark.slow
def test_md_restart_equals_uninterrupted(tmp_path, model_file):
    common = ("--potential", model_file, *COMMON)
    first, more, full = (tmp_path / d for d in ("first", "more", "full"))
    for d in (first, more, full):
        d.mkdir()
    assert md(first, *common, "--steps", 20) == 0
    assert md(more, *common, "--steps", 40, "--restart", first / "ckpt.npz") == 0
    rows2 = list(csv.DictReader(open(more / "thermo.csv")))
    assert [int(r["step"]) for r in rows2] == [30, 40]
    assert md(full, *common, "--steps", 40) == 0
    rows3 = list(csv.DictReader(open(full / "thermo.csv")))
    assert [r["etot_eV"] for r in rows3[-2:]] == [r["etot_eV"] for r in rows2]


def write_xyz(path, atoms):
    ase.io.write(path, atoms, format="extxyz")
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "structure file not found"),
        ("unknown_element", "elements [18]"),
        ("small_cell", "2 x cutoff"),
        ("nan", "NaN"),
        ("bad_potential", "no potential"),
    ],
)
def test_md_bad_input(tmp_path, model_file, capsys, case, message):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    structure = ETHANOL
    potential = model_file
    if case == "missing":
        structure = inputs / "nope.xyz"
    elif case == "unknown_element":
        structure = write_xyz(inputs / "ar.xyz", Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 3.0]]))
    elif case == "small_cell":
        atoms = ase.io.read(ETHANOL)
        atoms.cell = np.eye(3) * 6.0
        atoms.pbc = True
        structure = write_xyz(inputs / "box.xyz", atoms)
    elif case == "nan":
        atoms = ase.io.read(ETHANOL)
        atoms.positions[2, 0] = np.nan
        structure = write_xyz(inputs / "nan.xyz", atoms)
    elif case == "bad_potential":
        potential = inputs / "missing.e3md"
    out = tmp_path / "out"
    out.mkdir()
    rc = md(out, "--potential", potential, "--structure", structure, "--steps", 5)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert list(out.iterdir()) == []  # nothing written, not even partial files


@pytest.mark.slow
def test_md_default_potential_runs(tmp_path):
    if "rmd17-ethanol" not in available():
        pytest.skip("rmd17-ethanol is not shipped in this checkout")
    assert md(tmp_path, "--steps", 20, "--chunk", 10) == 0
    assert (tmp_path / "traj.extxyz").is_file()


def test_md_default_potential(tmp_path, capsys):
    if "rmd17-ethanol" in available():
        from e3md.potentials import load

        pot = load("rmd17-ethanol")  # the default resolves; running it is the slow test above
        assert set(pot.species) >= {1, 6, 8}
    else:
        assert md(tmp_path, "--steps", 20) == 2
        err = capsys.readouterr().err
        assert "rmd17-ethanol" in err and "not shipped" in err
        assert list(tmp_path.iterdir()) == []


def test_md_parser_does_not_import_jax_md():
    import subprocess
    import sys

    code = (
        "import sys; from e3md.cli import build_parser; p = build_parser(); "
        "a = p.parse_args(['md', '--steps', '7']); print(a.steps, a.ensemble, a.potential, "
        "'jax_md' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["7", "nvt", "rmd17-ethanol", "False"], out.stderr


def test_md_sort_atoms(tmp_path, model_file, capsys):
    """``--sort-atoms`` runs the atoms in :func:`e3md.neighbors.spatial_order` and says so; a
    restart must use the same order (the checkpoint's atomic numbers are checked)."""
    from e3md.neighbors import spatial_order

    ethanol = ase.io.read(ETHANOL)
    ethanol.center()
    box = Atoms(cell=np.eye(3) * 16.0, pbc=True)
    for shift in np.stack(np.meshgrid(*[[0.0, 8.0]] * 3, indexing="ij"), -1).reshape(-1, 3):
        copy = ethanol.copy()
        copy.positions += shift - copy.positions.mean(0)  # straddling the sort's cells
        box += copy
    mols = np.random.default_rng(0).permutation(8)
    box = box[(9 * mols[:, None] + np.arange(9)).reshape(-1)]
    sorted_box = box[spatial_order(box.positions, box.cell)]
    assert not np.array_equal(sorted_box.numbers, box.numbers)
    structure = write_xyz(tmp_path / "box.xyz", box)
    common = ("--potential", model_file, *COMMON[2:], "--structure", structure)
    first, again = tmp_path / "first", tmp_path / "again"
    for d in (first, again):
        d.mkdir()
    assert md(first, *common, "--steps", 10, "--sort-atoms") == 0
    assert "spatial order" in capsys.readouterr().out
    frame = ase.io.read(first / "traj.extxyz", 0)
    np.testing.assert_array_equal(frame.numbers, sorted_box.numbers)
    d = frame.positions - sorted_box.positions
    np.testing.assert_allclose(d - np.round(d / 16.0) * 16.0, 0.0, atol=1e-6)
    assert md(again, *common, "--steps", 20, "--restart", first / "ckpt.npz") == 2
    assert "differ from the checkpoint" in capsys.readouterr().err
    assert list(again.iterdir()) == []  # nothing written
