"""Reference datasets for training and evaluation: extended XYZ (ase.io) and rMD17 npz files.

Every dataset is converted on load into e3md's internal units (Å, eV, eV/Å, eV/Å³ with ASE's
stress sign) from units the caller *declares*; nothing is guessed from magnitudes. A file that
labels its own units (an ``energy_unit`` info key in extended XYZ, an ``energy_unit`` entry in an
npz) must agree with the declaration and be consistent across frames.

Loading is host-side numpy work; nothing here is traced by jax.
"""

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence

import ase.data
import ase.units
import numpy as np
from jaxtyping import Float, Int

from e3md import units

log = logging.getLogger(__name__)

#: energy unit name -> eV per unit
ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": units.KCAL_PER_MOL,
    "kJ/mol": units.KJ_PER_MOL,
    "Hartree": ase.units.Hartree,
}
#: length unit name -> Å per unit
LENGTH_UNITS: dict[str, float] = {
    "Å": 1.0,
    "A": 1.0,
    "angstrom": 1.0,
    "nm": 10.0,
    "Bohr": ase.units.Bohr,
}
#: stress unit names other than "<energy>/<length>^3" -> eV/Å³ per unit
STRESS_UNITS: dict[str, float] = {"GPa": units.GPA, "kbar": 1e3 * units.BAR, "bar": units.BAR}

#: known file formats and the energy unit each stores (None: the caller declares it)
FORMATS: dict[str, str | None] = {"extxyz": None, "rmd17": "kcal/mol"}


@dataclasses.dataclass(frozen=True, eq=False)
class Structure:
    """One labelled configuration in e3md units.

    Attributes:
      numbers: atomic numbers, shape (N,).
      positions: Cartesian positions in Å, shape (N, 3).
      cell: lattice vectors as **rows** (ASE convention) in Å, shape (3, 3); zeros when the
        structure is not periodic.
      pbc: periodicity along each lattice vector.
      energy: total energy in eV, or None when the file has none.
      forces: forces -dE/dR in eV/Å, shape (N, 3), or None.
      stress: stress σ = (1/V) ∂E/∂ε in eV/Å³, Voigt order xx yy zz yz xz xy, positive =
        tensile (ASE convention), shape (6,), or None.
    """

    numbers: Int[np.ndarray, " N"]
    positions: Float[np.ndarray, "N 3"]
    cell: Float[np.ndarray, "3 3"]
    pbc: tuple[bool, bool, bool]
    energy: float | None
    forces: Float[np.ndarray, "N 3"] | None
    stress: Float[np.ndarray, "6"] | None = None

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def periodic(self) -> bool:
        return bool(any(self.pbc))

    @property
    def volume(self) -> float:
        """Cell volume in Å³ (0 for a non-periodic structure)."""
        return float(abs(np.linalg.det(self.cell))) if self.periodic else 0.0


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An ordered collection of :class:`Structure` with a record of where it came from.

    Attributes:
      structures: the configurations, in file order.
      source: human-readable origin (paths, format, declared units), for model cards.
    """

    structures: tuple[Structure, ...]
    source: str = ""

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Dataset(self.structures[i], self.source)
        return self.structures[i]

    def __iter__(self):
        return iter(self.structures)

    def subset(self, indices: Iterable[int]) -> "Dataset":
        """The structures at ``indices`` (in that order)."""
        return Dataset(tuple(self.structures[int(i)] for i in indices), self.source)

    @property
    def species(self) -> tuple[int, ...]:
        """Sorted atomic numbers present in the data."""
        return tuple(sorted({int(z) for s in self.structures for z in s.numbers}))

    @property
    def num_atoms(self) -> int:
        return sum(s.num_atoms for s in self.structures)

    @property
    def has_stress(self) -> bool:
        return any(s.stress is not None for s in self.structures)

    @property
    def periodic(self) -> bool:
        return any(s.periodic for s in self.structures)


def _unit_factor(name: str, table: dict[str, float], kind: str) -> float:
    if name not in table:
        raise ValueError(f"unknown {kind} unit {name!r}; known: {sorted(table)}")
    return table[name]


def stress_factor(stress_unit: str | None, energy_unit: str, length_unit: str) -> float:
    """eV/Å³ per declared stress unit (default: energy_unit / length_unit³)."""
    if stress_unit is None:
        return ENERGY_UNITS[energy_unit] / LENGTH_UNITS[length_unit] ** 3
    if stress_unit in STRESS_UNITS:
        return STRESS_UNITS[stress_unit]
    e, sep, rest = stress_unit.partition("/")
    if sep and rest.rstrip("³3").rstrip("^") in LENGTH_UNITS and e in ENERGY_UNITS:
        return ENERGY_UNITS[e] / LENGTH_UNITS[rest.rstrip("³3").rstrip("^")] ** 3
    raise ValueError(
        f"unknown stress unit {stress_unit!r}; use one of {sorted(STRESS_UNITS)} or "
        "'<energy unit>/<length unit>^3'"
    )


def detect_format(path: str | os.PathLike) -> str:
    """``"rmd17"`` for ``.npz``, ``"extxyz"`` for ``.xyz`` / ``.extxyz``.

    Raises:
      ValueError: for any other suffix.
    """
    p = str(path).lower()
    if p.endswith(".npz"):
        return "rmd17"
    if p.endswith((".xyz", ".extxyz")):
        return "extxyz"
    raise ValueError(f"cannot tell the format of {path!s}: expected .npz (rMD17) or .xyz/.extxyz")


def load_dataset(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    energy_unit: str | None = None,
    length_unit: str = "Å",
    stress_unit: str | None = None,
    require_forces: bool = True,
    species: Sequence[int] | None = None,
    index: str | int | slice = ":",
) -> Dataset:
    r"""Load a labelled dataset and convert it to e3md units.

    Forces are read in ``energy_unit / length_unit``. rMD17 npz files (keys ``nuclear_charges``,
    ``coords``, ``energies``, ``forces``) store kcal/mol and kcal/mol/Å by definition of the
    format; extended XYZ files default to eV and eV/Å.

    Args:
      path: file to read.
      format: ``"extxyz"`` or ``"rmd17"``; default from the suffix (:func:`detect_format`).
      energy_unit: declared unit of energies (and of forces per ``length_unit``): one of
        :data:`ENERGY_UNITS`. Default: the format's unit (eV for extended XYZ).
      length_unit: declared unit of positions and cells, one of :data:`LENGTH_UNITS`.
      stress_unit: declared unit of stresses (default ``energy_unit/length_unit^3``).
      require_forces: raise if a structure has no forces.
      species: if given, the atomic numbers a model knows; any other element is an error.
      index: ASE-style frame selection (``":100"``, ``"5"``, ``"-10:"``, ``"::2"``, an int or
        a slice), for both formats.

    Returns:
      The :class:`Dataset` in Å / eV / eV/Å / eV/Å³.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: empty file, unknown format or unit, a declared unit that contradicts the
        format or the file's own unit labels, frames with different unit labels (mixed units),
        missing energies or forces, non-finite values, wrong shapes, or unknown elements.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"dataset file {path} is empty: it contains no structures")
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; known: {sorted(FORMATS)}")
    fixed = FORMATS[fmt]
    if fixed is not None and energy_unit is not None and energy_unit != fixed:
        raise ValueError(
            f"{path}: {fmt} files store energies in {fixed}, but energy_unit={energy_unit!r} "
            "was declared; mixed units are not allowed"
        )
    energy_unit = energy_unit or fixed or "eV"
    e_fac = _unit_factor(energy_unit, ENERGY_UNITS, "energy")
    l_fac = _unit_factor(length_unit, LENGTH_UNITS, "length")
    s_fac = stress_factor(stress_unit, energy_unit, length_unit)
    if fmt == "rmd17":
        structures = _select(_read_rmd17(path, energy_unit), index, path)
    else:
        structures = _read_extxyz(path, energy_unit, index)
    if not structures:
        raise ValueError(f"dataset file {path} contains no structures")
    out = []
    for k, s in enumerate(structures):
        out.append(_convert_and_check(s, k, path, e_fac, l_fac, s_fac, require_forces))
    data = Dataset(
        tuple(out),
        f"{path} ({fmt}; energies in {energy_unit}, lengths in {length_unit})",
    )
    if species is not None:
        check_species(data, species)
    log.info("loaded %d structures (%d atoms) from %s", len(data), data.num_atoms, path)
    return data


def check_species(data: Dataset, species: Sequence[int]) -> None:
    """Raise ``ValueError`` if ``data`` contains an element outside ``species``."""
    unknown = sorted(set(data.species) - {int(z) for z in species})
    if unknown:
        names = [ase.data.chemical_symbols[z] for z in unknown]
        known = [ase.data.chemical_symbols[int(z)] for z in species]
        raise ValueError(
            f"data ({data.source}) contains elements {names} (Z={unknown}) that the model does "
            f"not know; model species: {known}"
        )


def concatenate(datasets: Sequence[Dataset]) -> Dataset:
    """One dataset holding all structures of ``datasets`` (already in e3md units)."""
    if not datasets:
        raise ValueError("no datasets to concatenate")
    return Dataset(
        tuple(s for d in datasets for s in d.structures), "; ".join(d.source for d in datasets)
    )


def _select(structures: list, index: str | int | slice, path: str) -> list:
    """``structures[index]`` with an ASE-style ``index`` (as ``ase.io.read`` takes it)."""
    from ase.io.formats import string2index

    pick = string2index(index) if isinstance(index, str) else index
    if isinstance(pick, int):
        if not -len(structures) <= pick < len(structures):
            raise ValueError(f"{path}: no frame {pick} (the file has {len(structures)})")
        return [structures[pick]]
    return structures[pick]


def _read_rmd17(path: str, energy_unit: str) -> list[Structure]:
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        missing = {"nuclear_charges", "coords", "energies"} - keys
        if missing:
            raise ValueError(f"{path}: not an rMD17 npz file, missing keys {sorted(missing)}")
        if "energy_unit" in keys and str(f["energy_unit"]) != energy_unit:
            raise ValueError(
                f"{path}: file labels energies as {str(f['energy_unit'])!r} but "
                f"{energy_unit!r} was declared (mixed units)"
            )
        Z = np.asarray(f["nuclear_charges"]).astype(np.int64)
        R = np.asarray(f["coords"], dtype=np.float64)
        E = np.asarray(f["energies"], dtype=np.float64).reshape(-1)
        F = np.asarray(f["forces"], dtype=np.float64) if "forces" in keys else None
    if R.ndim != 3 or R.shape[1:] != (Z.shape[0], 3):
        raise ValueError(f"{path}: coords shape {R.shape} does not match {Z.shape[0]} atoms")
    if E.shape[0] != R.shape[0]:
        raise ValueError(f"{path}: {E.shape[0]} energies for {R.shape[0]} frames")
    if F is not None and F.shape != R.shape:
        raise ValueError(f"{path}: forces shape {F.shape} differs from coords {R.shape}")
    zero = np.zeros((3, 3))
    return [
        Structure(Z, R[k], zero, (False, False, False), float(E[k]), None if F is None else F[k])
        for k in range(R.shape[0])
    ]


def _read_extxyz(path: str, energy_unit: str, index) -> list[Structure]:
    import ase.io

    try:
        frames = ase.io.read(path, index=index, format="extxyz")
    except Exception as err:  # ase raises many types for malformed files
        reason = str(err) or type(err).__name__
        if isinstance(err, IndexError | StopIteration):  # ase's words for a frame past the end
            reason = "the file has fewer frames"
        raise ValueError(f"{path}: cannot read frames {index!r} as extended XYZ: {reason}") from err
    if not isinstance(frames, list):
        frames = [frames]
    labels = {}
    out = []
    for k, atoms in enumerate(frames):
        label = atoms.info.get("energy_unit", atoms.info.get("energy_units"))
        if label is not None:
            labels.setdefault(str(label), k)
        results = dict(atoms.calc.results) if atoms.calc is not None else {}
        energy = results.get("energy", results.get("free_energy", atoms.info.get("energy")))
        forces = results.get("forces", atoms.arrays.get("forces"))
        stress = results.get("stress", atoms.info.get("stress"))
        if stress is not None:
            stress = np.asarray(stress, dtype=np.float64)
            if stress.shape == (3, 3):
                stress = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            elif stress.shape != (6,):
                raise ValueError(f"{path} frame {k}: stress has shape {stress.shape}")
        pbc = tuple(bool(p) for p in atoms.pbc)
        cell = np.asarray(atoms.cell.array, dtype=np.float64) if any(pbc) else np.zeros((3, 3))
        out.append(
            Structure(
                np.asarray(atoms.numbers, dtype=np.int64),
                np.asarray(atoms.positions, dtype=np.float64),
                cell,
                pbc,
                None if energy is None else float(energy),
                None if forces is None else np.asarray(forces, dtype=np.float64),
                stress,
            )
        )
    if len(labels) > 1:
        raise ValueError(
            f"{path}: frames carry different energy unit labels {labels} (label: first frame); "
            "mixed units in one file are not allowed"
        )
    if labels and next(iter(labels)) != energy_unit:
        raise ValueError(
            f"{path}: file labels energies as {next(iter(labels))!r} but {energy_unit!r} was "
            "declared (mixed units)"
        )
    return out


def _convert_and_check(
    s: Structure,
    k: int,
    path: str,
    e_fac: float,
    l_fac: float,
    s_fac: float,
    require_forces: bool,
) -> Structure:
    where = f"{path} structure {k}"
    n = s.numbers.shape[0]
    if n == 0:
        raise ValueError(f"{where}: has no atoms")
    bad = s.numbers[(s.numbers < 1) | (s.numbers >= len(ase.data.chemical_symbols))]
    if bad.size:
        raise ValueError(f"{where}: unknown element(s) with atomic number {sorted(set(bad))}")
    if s.energy is None:
        raise ValueError(f"{where}: has no energy label")
    if s.forces is None:
        if require_forces:
            raise ValueError(f"{where}: has no forces (missing forces); forces are required")
    elif s.forces.shape != (n, 3):
        raise ValueError(f"{where}: forces have shape {s.forces.shape}, expected ({n}, 3)")
    if s.periodic and abs(np.linalg.det(s.cell)) < 1e-6:
        raise ValueError(f"{where}: periodic structure with a degenerate cell {s.cell.tolist()}")
    positions = s.positions * l_fac
    cell = s.cell * l_fac
    energy = s.energy * e_fac
    forces = None if s.forces is None else s.forces * (e_fac / l_fac)
    stress = None if s.stress is None else s.stress * s_fac
    for name, value in (
        ("positions", positions),
        ("energy", energy),
        ("forces", forces),
        ("stress", stress),
    ):
        if value is not None and not np.all(np.isfinite(value)):
            raise ValueError(f"{where}: non-finite {name}")
    return Structure(s.numbers, positions, cell, s.pbc, energy, forces, stress)


def split_indices(n: int, n_train: int, n_valid: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(n)`` into disjoint training and validation indices.

    Args:
      n: number of structures.
      n_train: training structures (``-1``: all not used for validation).
      n_valid: validation structures.
      seed: seed of the permutation (numpy ``default_rng``).

    Returns:
      ``(train, valid)`` index arrays, each sorted.

    Raises:
      ValueError: if the sizes do not fit in ``n``.
    """
    if n_train < 0:
        n_train = n - n_valid
    if n_train <= 0 or n_valid < 0 or n_train + n_valid > n:
        raise ValueError(f"cannot split {n} structures into {n_train} train + {n_valid} valid")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_train]), np.sort(perm[n_train : n_train + n_valid])


def composition_matrix(data: Dataset, species: Sequence[int]) -> Int[np.ndarray, "S Z"]:
    """Counts of each species in each structure, shape (num_structures, len(species))."""
    index = {int(z): i for i, z in enumerate(species)}
    A = np.zeros((len(data), len(species)), dtype=np.int64)
    for k, s in enumerate(data):
        for z in s.numbers:
            A[k, index[int(z)]] += 1
    return A


def fit_e0(
    data: Dataset, species: Sequence[int], prior: Sequence[float] | None = None
) -> Float[np.ndarray, " Z"]:
    r"""Per-species reference energies by linear least squares.

    .. math::
       E0 = e_{\mathrm{prior}} + \arg\min_{e} \sum_s \Big(E_s - \sum_z n_{sz}
            (e_{\mathrm{prior},z} + e_z)\Big)^2

    where :math:`n_{sz}` counts atoms of species z in structure s. When the compositions do not
    determine every :math:`e_z` (e.g. a single molecule), the minimum-norm correction is used:
    E0 stays as close to ``prior`` (isolated-atom energies, see :func:`load_isolated_atoms`) as
    the data allow, or to zero without a prior. When the compositions do determine every E0,
    the prior makes no difference.

    Args:
      data: training structures with energies (eV).
      species: atomic numbers, one E0 per entry.
      prior: optional per-species prior E0 in eV, same order as ``species``.

    Returns:
      E0 in eV per atom, shape (len(species),).
    """
    check_species(data, species)
    A = composition_matrix(data, species).astype(np.float64)
    E = np.array([s.energy for s in data], dtype=np.float64)
    base = np.zeros(len(species)) if prior is None else np.asarray(prior, np.float64)
    if base.shape != (len(species),):
        raise ValueError(f"prior E0 has shape {base.shape}, expected ({len(species)},)")
    delta, *_ = np.linalg.lstsq(A, E - A @ base, rcond=None)
    return base + delta


def load_isolated_atoms(
    path: str | os.PathLike, species: Sequence[int], energy_unit: str = "eV"
) -> Float[np.ndarray, " Z"]:
    """Energies of isolated atoms (one single-atom frame per element, extended XYZ).

    Args:
      path: file with one frame per element (an ``energy`` per frame).
      species: atomic numbers whose energies are wanted, in this order.
      energy_unit: declared energy unit of the file.

    Returns:
      Energies in eV, shape (len(species),).

    Raises:
      ValueError: a frame with more than one atom or without an energy, an element listed
        twice with different energies, or an element of ``species`` missing from the file.
    """
    frames = load_dataset(path, format="extxyz", energy_unit=energy_unit, require_forces=False)
    table: dict[int, float] = {}
    for s in frames:
        if s.num_atoms != 1:
            raise ValueError(f"{path}: isolated-atom frames hold one atom, found {s.num_atoms}")
        z = int(s.numbers[0])
        if z in table and abs(table[z] - s.energy) > 1e-9:
            raise ValueError(f"{path}: two different energies for element Z={z}")
        table[z] = float(s.energy)
    missing = [ase.data.chemical_symbols[int(z)] for z in species if int(z) not in table]
    if missing:
        raise ValueError(f"{path}: no isolated-atom energy for {missing}")
    return np.array([table[int(z)] for z in species])


def force_rms(data: Dataset) -> float:
    r"""Root mean square of all force components, :math:`\sqrt{\langle F_{i\alpha}^2\rangle}`
    in eV/Å: the natural energy scale of a force-trained model's atomic energies."""
    F = np.concatenate([s.forces.reshape(-1) for s in data if s.forces is not None])
    if F.size == 0:
        raise ValueError("no forces to compute a force RMS from")
    return float(np.sqrt(np.mean(F**2)))
