"""Datasets: declared units, validation errors, splits, E0 least squares, force RMS, graphs."""

import ase
import ase.io
import ase.neighborlist
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from e3md import units
from e3md.data import (
    check_species,
    fit_e0,
    force_rms,
    load_dataset,
    load_isolated_atoms,
    split_indices,
)
from e3md.training import build_graph


def _write_npz(path, rng, n_frames=4, Z=(6, 1, 1, 8), **overrides):
    Z = np.asarray(Z, np.uint8)
    d = {
        "nuclear_charges": Z,
        "coords": rng.normal(size=(n_frames, Z.size, 3)) * 1.5,
        "energies": rng.normal(size=n_frames) - 1000.0,
        "forces": rng.normal(size=(n_frames, Z.size, 3)),
    }
    d.update(overrides)
    d = {k: v for k, v in d.items() if v is not None}
    np.savez(path, **d)
    return d


def _atoms(rng, symbols="CH4", periodic=False, energy=-10.0, forces=True, stress=None, info=None):
    atoms = ase.Atoms(symbols, positions=rng.normal(size=(len(ase.Atoms(symbols)), 3)) * 1.2)
    if periodic:
        atoms.cell = np.diag([5.0, 6.0, 7.0]) + 0.3 * rng.normal(size=(3, 3))
        atoms.pbc = True
    results = {"energy": energy}
    if forces:
        results["forces"] = rng.normal(size=(len(atoms), 3))
    if stress is not None:
        results["stress"] = stress
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info.update(info or {})
    return atoms


def test_rmd17_npz_is_converted_from_kcal_per_mol(tmp_path, rng):
    raw = _write_npz(tmp_path / "m.npz", rng)
    data = load_dataset(tmp_path / "m.npz")
    assert len(data) == 4 and data.species == (1, 6, 8)
    k = units.KCAL_PER_MOL
    np.testing.assert_allclose([s.energy for s in data], raw["energies"] * k, rtol=1e-14)
    np.testing.assert_allclose(data[2].forces, raw["forces"][2] * k, rtol=1e-14)
    np.testing.assert_allclose(data[1].positions, raw["coords"][1])
    assert not data.periodic and not data.has_stress
    assert abs(k - 0.0433641) < 1e-6  # the value the data README quotes


def test_real_rmd17_ethanol_loads(shared_data):
    path = shared_data / "rmd17" / "rmd17_ethanol_train_01.npz"
    data = load_dataset(path)
    raw = np.load(path)
    assert len(data) == 1000 and data.species == (1, 6, 8)
    np.testing.assert_allclose(data[7].energy, raw["energies"][7] * units.KCAL_PER_MOL)
    assert -4300 < data[0].energy < -4100  # about -4209 eV (data README)


def test_extxyz_energy_forces_stress_in_declared_units(tmp_path, rng):
    stress = rng.normal(size=6) * 1e-3
    frames = [_atoms(rng, periodic=True, stress=stress), _atoms(rng, periodic=True)]
    ase.io.write(tmp_path / "d.xyz", frames, format="extxyz")
    data = load_dataset(tmp_path / "d.xyz")
    assert data.periodic and data.has_stress
    np.testing.assert_allclose(data[0].stress, stress, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(data[0].forces, frames[0].calc.results["forces"], atol=1e-7)
    np.testing.assert_allclose(data[0].cell, frames[0].cell.array, atol=1e-7)
    assert data[1].stress is None
    # declared kJ/mol: energies, forces and stress all scale by the same factor
    data_kj = load_dataset(tmp_path / "d.xyz", energy_unit="kJ/mol")
    np.testing.assert_allclose(data_kj[0].energy, -10.0 * units.KJ_PER_MOL)
    np.testing.assert_allclose(data_kj[0].forces, data[0].forces * units.KJ_PER_MOL)
    np.testing.assert_allclose(data_kj[0].stress, data[0].stress * units.KJ_PER_MOL)
    # stress in GPa
    data_gpa = load_dataset(tmp_path / "d.xyz", stress_unit="GPa")
    np.testing.assert_allclose(data_gpa[0].stress, stress * units.GPA)


def test_index_selects_frames_of_both_formats(shared_data):
    path = shared_data / "rmd17" / "rmd17_ethanol_train_01.npz"
    full = load_dataset(path)
    for index, frames in (
        (":3", [0, 1, 2]),
        ("5", [5]),
        (-1, [len(full) - 1]),
        ("::400", [0, 400, 800]),
    ):
        part = load_dataset(path, index=index)
        assert len(part) == len(frames)
        for s, k in zip(part.structures, frames, strict=True):
            np.testing.assert_array_equal(s.positions, full[k].positions)
    with pytest.raises(ValueError, match="no frame 5000"):
        load_dataset(path, index="5000")
    si = shared_data / "si_mlearn" / "train.xyz"
    assert len(load_dataset(si, index="1:3")) == 2
    with pytest.raises(ValueError, match="fewer frames"):
        load_dataset(si, index="100000")


def test_real_si_stress_sign_and_voigt_order(shared_data):
    data = load_dataset(shared_data / "si_mlearn" / "train.xyz", index=":3")
    import ase.io

    atoms = ase.io.read(shared_data / "si_mlearn" / "train.xyz", index=0)
    np.testing.assert_allclose(data[0].stress, atoms.get_stress(), rtol=1e-12)
    # raw VASP numbers (kbar, xx yy zz xy yz zx, positive = compressive) -> ASE convention
    v = np.asarray(atoms.info["vasp_stress_kB"], dtype=float)
    np.testing.assert_allclose(data[0].stress, -v[[0, 1, 2, 4, 5, 3]] / 1602.1766, rtol=1e-6)


def test_missing_forces_is_a_clear_error(tmp_path, rng):
    ase.io.write(tmp_path / "d.xyz", [_atoms(rng), _atoms(rng, forces=False)], format="extxyz")
    with pytest.raises(ValueError, match="structure 1: has no forces"):
        load_dataset(tmp_path / "d.xyz")
    assert load_dataset(tmp_path / "d.xyz", require_forces=False)[1].forces is None
    _write_npz(tmp_path / "m.npz", rng, forces=None)
    with pytest.raises(ValueError, match="no forces"):
        load_dataset(tmp_path / "m.npz")


def test_missing_energy_is_a_clear_error(tmp_path, rng):
    atoms = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.8]])
    ase.io.write(tmp_path / "d.xyz", atoms, format="extxyz")
    with pytest.raises(ValueError, match="no energy"):
        load_dataset(tmp_path / "d.xyz")


def test_mixed_units_are_rejected(tmp_path, rng):
    frames = [
        _atoms(rng, info={"energy_unit": "eV"}),
        _atoms(rng, info={"energy_unit": "kcal/mol"}),
    ]
    ase.io.write(tmp_path / "mixed.xyz", frames, format="extxyz")
    with pytest.raises(ValueError, match="mixed units"):
        load_dataset(tmp_path / "mixed.xyz")
    # a label that contradicts the declaration
    ase.io.write(
        tmp_path / "kcal.xyz", [_atoms(rng, info={"energy_unit": "kcal/mol"})], format="extxyz"
    )
    with pytest.raises(ValueError, match="mixed units"):
        load_dataset(tmp_path / "kcal.xyz", energy_unit="eV")
    assert load_dataset(tmp_path / "kcal.xyz", energy_unit="kcal/mol")[0].energy == pytest.approx(
        -10.0 * units.KCAL_PER_MOL
    )
    # rMD17 files are kcal/mol by definition
    _write_npz(tmp_path / "m.npz", rng)
    with pytest.raises(ValueError, match="kcal/mol.*mixed units"):
        load_dataset(tmp_path / "m.npz", energy_unit="eV")
    with pytest.raises(ValueError, match="unknown energy unit"):
        load_dataset(tmp_path / "kcal.xyz", energy_unit="kcal")


def test_unknown_element_is_rejected(tmp_path, rng):
    _write_npz(tmp_path / "m.npz", rng, Z=(6, 1, 1, 9))  # fluorine
    with pytest.raises(ValueError, match=r"\['F'\].*not\s+know"):
        load_dataset(tmp_path / "m.npz", species=(1, 6, 8))
    data = load_dataset(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="Z=\\[9\\]"):
        check_species(data, (1, 6, 8))
    _write_npz(tmp_path / "z0.npz", rng, Z=(6, 0, 1, 8))
    with pytest.raises(ValueError, match="unknown element"):
        load_dataset(tmp_path / "z0.npz")


def test_empty_file_and_other_bad_input(tmp_path, rng):
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_dataset(tmp_path / "empty.xyz")
    (tmp_path / "blank.xyz").write_text("\n\n")
    with pytest.raises(ValueError, match="no structures|cannot read"):
        load_dataset(tmp_path / "blank.xyz")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nope.xyz")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match="unknown dataset format"):
        load_dataset(tmp_path / "x.txt", format="pdb")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_dataset(tmp_path / "x.txt")
    _write_npz(
        tmp_path / "zero.npz",
        rng,
        n_frames=0,
        coords=np.zeros((0, 4, 3)),
        energies=np.zeros(0),
        forces=np.zeros((0, 4, 3)),
    )
    with pytest.raises(ValueError, match="no structures"):
        load_dataset(tmp_path / "zero.npz")
    bad = rng.normal(size=(4, 4, 3))
    bad[1, 2, 0] = np.nan
    _write_npz(tmp_path / "nan.npz", rng, forces=bad)
    with pytest.raises(ValueError, match="structure 1: non-finite forces"):
        load_dataset(tmp_path / "nan.npz")
    _write_npz(tmp_path / "shape.npz", rng, forces=np.zeros((4, 3, 3)))
    with pytest.raises(ValueError, match="forces shape"):
        load_dataset(tmp_path / "shape.npz")


def test_split_is_seeded_disjoint_and_sized():
    tr, va = split_indices(1000, 950, 50, seed=3)
    assert tr.size == 950 and va.size == 50 and not set(tr) & set(va)
    tr2, va2 = split_indices(1000, 950, 50, seed=3)
    np.testing.assert_array_equal(va, va2)
    _, va3 = split_indices(1000, 950, 50, seed=4)
    assert set(va) != set(va3)
    tr4, va4 = split_indices(100, -1, 10, seed=0)
    assert tr4.size == 90 and va4.size == 10
    with pytest.raises(ValueError, match="cannot split"):
        split_indices(100, 95, 10, seed=0)


def test_e0_least_squares_recovers_known_shifts(tmp_path, rng):
    species = (1, 6, 8, 14)
    e0_true = np.array([-13.6, -1025.3, -2035.6, -158.0])
    frames = []
    for _ in range(40):
        counts = rng.integers(0, 6, size=4)
        counts[rng.integers(4)] += 1
        symbols = "".join(
            f"{s}{c}" for s, c in zip(["H", "C", "O", "Si"], counts, strict=True) if c
        )
        n = len(ase.Atoms(symbols))
        energy = float(counts @ e0_true + 0.002 * rng.normal() * n)  # small per-atom "binding"
        frames.append(_atoms(rng, symbols, energy=energy))
    ase.io.write(tmp_path / "d.xyz", frames, format="extxyz")
    data = load_dataset(tmp_path / "d.xyz")
    e0 = fit_e0(data, species)
    np.testing.assert_allclose(e0, e0_true, atol=0.02)
    # a shift of every energy by a multiple of the atom count moves every E0 by that amount
    e0_shift = fit_e0(
        type(data)(
            tuple(
                type(s)(
                    s.numbers, s.positions, s.cell, s.pbc, s.energy + 0.5 * s.num_atoms, s.forces
                )
                for s in data
            )
        ),
        species,
    )
    np.testing.assert_allclose(e0_shift - e0, 0.5, atol=1e-9)


def test_e0_prior_fills_only_what_the_data_leave_open(tmp_path, rng):
    """One composition fixes only sum_z n_z E0_z: the prior (isolated atoms) sets the rest,
    and with compositions that fix every E0 the prior changes nothing."""
    species = (1, 6, 8)
    iso = [
        _atoms(rng, "H", energy=-13.6),
        _atoms(rng, "C", energy=-1025.3),
        _atoms(rng, "O", energy=-2035.6),
    ]
    for a in iso:
        a.positions[:] = 0.0
    ase.io.write(tmp_path / "iso.xyz", iso, format="extxyz")
    prior = load_isolated_atoms(tmp_path / "iso.xyz", species)
    np.testing.assert_allclose(prior, [-13.6, -1025.3, -2035.6])

    counts = np.array([6, 2, 1])  # ethanol
    frames = [_atoms(rng, "C2H6O", energy=-4209.0 + 0.1 * rng.normal()) for _ in range(5)]
    ase.io.write(tmp_path / "eth.xyz", frames, format="extxyz")
    data = load_dataset(tmp_path / "eth.xyz")
    e0 = fit_e0(data, species, prior)
    mean_e = np.mean([s.energy for s in data])
    assert counts @ e0 == pytest.approx(mean_e, abs=1e-9)  # fits the data
    # the correction is the minimum-norm one: parallel to the composition
    delta = e0 - prior
    np.testing.assert_allclose(delta, counts * (mean_e - counts @ prior) / (counts @ counts))
    # without the prior: the minimum-norm E0 itself, far from atomic energies
    assert not np.allclose(fit_e0(data, species), e0, atol=1.0)

    # full-rank compositions: the prior does not matter
    mixed = [
        _atoms(rng, sym, energy=float(e))
        for sym, e in [("CH4", -1080.0), ("H2O", -2063.0), ("CO2", -5098.0), ("C2H6O", -4209.0)]
    ]
    ase.io.write(tmp_path / "mixed.xyz", mixed, format="extxyz")
    mixed = load_dataset(tmp_path / "mixed.xyz")
    np.testing.assert_allclose(fit_e0(mixed, species, prior), fit_e0(mixed, species), atol=1e-8)


def test_isolated_atoms_file_errors(tmp_path, rng):
    ase.io.write(tmp_path / "iso.xyz", [_atoms(rng, "H", energy=-13.6)], format="extxyz")
    with pytest.raises(ValueError, match=r"no isolated-atom energy for \['C'\]"):
        load_isolated_atoms(tmp_path / "iso.xyz", (1, 6))
    ase.io.write(tmp_path / "two.xyz", [_atoms(rng, "H2", energy=-27.0)], format="extxyz")
    with pytest.raises(ValueError, match="one atom"):
        load_isolated_atoms(tmp_path / "two.xyz", (1,))


def test_force_rms(tmp_path, rng):
    raw = _write_npz(tmp_path / "m.npz", rng)
    data = load_dataset(tmp_path / "m.npz")
    expected = np.sqrt(np.mean((raw["forces"] * units.KCAL_PER_MOL) ** 2))
    assert force_rms(data) == pytest.approx(expected, rel=1e-12)


def _ase_pairs(atoms, cutoff):
    i, j, D = ase.neighborlist.neighbor_list("ijD", atoms, cutoff)
    return sorted(
        zip(i.tolist(), j.tolist(), np.round(np.linalg.norm(D, axis=1), 9).tolist(), strict=True)
    )


@pytest.mark.parametrize("periodic", [False, True])
def test_graph_matches_ase_neighbour_list(tmp_path, rng, periodic):
    symbols = "Si8" if periodic else "C2H6O"
    atoms = _atoms(rng, symbols, periodic=periodic)
    if periodic:  # a small cell: many periodic images within the cutoff
        atoms.cell = np.array([[4.0, 0.0, 0.0], [1.0, 4.5, 0.0], [0.5, -0.7, 5.0]])
        atoms.positions = rng.uniform(size=(8, 3)) @ atoms.cell.array
    ase.io.write(tmp_path / "d.xyz", atoms, format="extxyz")
    s = load_dataset(tmp_path / "d.xyz")[0]
    cutoff = 3.7
    g = build_graph(s, cutoff)
    r = s.positions[g.src] - s.positions[g.dst] + g.shifts
    mine = sorted(
        zip(
            g.dst.tolist(),
            g.src.tolist(),
            np.round(np.linalg.norm(r, axis=1), 9).tolist(),
            strict=True,
        )
    )
    ref = ase.Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
    assert mine == _ase_pairs(ref, cutoff)
    assert len(mine) > (40 if periodic else 10)
