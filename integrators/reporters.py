"""Thermodynamic CSV log and ASE trajectories, each finalised atomically.

While a run is in progress, output goes to ``<name>.part`` next to the final path; only a
finished run (or one stopped by the blow-up guard, whose frames are all good) renames it to
``<name>``. A crash therefore leaves a ``.part`` file, never a truncated file posing as valid.
"""

import contextlib
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: trajectory suffix -> ase.io format
TRAJECTORY_FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".traj": "traj"}


def part_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".part")


def check_trajectory_path(path: str | os.PathLike) -> str:
    """Return the ``ase.io`` format for ``path``; raise ``ValueError`` for unknown suffixes."""
    suffix = Path(path).suffix.lower()
    if suffix not in TRAJECTORY_FORMATS:
        raise ValueError(
            f"trajectory {path}: unknown suffix {suffix!r}; use one of {sorted(TRAJECTORY_FORMATS)}"
        )
    return TRAJECTORY_FORMATS[suffix]


class _PartFile:
    def __init__(self, path):
        self.path = Path(path)
        self.part = part_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _finish(self, ok: bool) -> None:
        if ok:
            os.replace(self.part, self.path)
        else:
            log.warning("run did not finish; partial output left in %s", self.part)


class ThermoLog(_PartFile):
    """CSV thermodynamic log; columns ``[replica,] step, time_ps, epot_eV, ekin_eV, etot_eV,
    temperature_K[, pressure_bar, volume_A3]``."""

    def __init__(self, path, columns: list[str]):
        super().__init__(path)
        self.columns = columns
        self._fh = open(self.part, "w")
        self._fh.write(",".join(columns) + "\n")

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            self._fh.write(",".join(_fmt(row[c]) for c in self.columns) + "\n")
        self._fh.flush()

    def close(self, ok: bool = True) -> None:
        if self._fh.closed:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._finish(ok)


def _fmt(v) -> str:
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return repr(float(v))


class TrajectoryWriter(_PartFile):
    """Appends ``ase.Atoms`` frames (positions, momenta, cell, energy, forces) via ``ase.io``."""

    def __init__(self, path):
        super().__init__(path)
        self.format = check_trajectory_path(path)
        if self.format == "traj":
            from ase.io.trajectory import Trajectory

            self._traj = Trajectory(str(self.part), "w")
            self._fh = None
        else:
            self._traj = None
            self._fh = open(self.part, "w")
        self.frames = 0

    def write(self, atoms) -> None:
        if self._traj is not None:
            self._traj.write(atoms)
        else:
            import ase.io

            ase.io.write(self._fh, atoms, format="extxyz")
            self._fh.flush()
        self.frames += 1

    def close(self, ok: bool = True) -> None:
        if self._traj is not None:
            if getattr(self, "_closed", False):
                return
            self._traj.close()
        else:
            if self._fh.closed:
                return
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        self._closed = True
        self._finish(ok)


def make_frame(numbers, positions, momenta, masses, cell, pbc, energy, forces):
    """An ``ase.Atoms`` frame with a single-point calculator holding energy (eV) and forces
    (eV/Å). ``momenta`` are in jax-md units sqrt(amu·eV), which equal ASE's momentum unit."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc, masses=masses)
    atoms.set_momenta(momenta)
    atoms.calc = SinglePointCalculator(atoms, energy=float(energy), forces=np.asarray(forces))
    return atoms


@contextlib.contextmanager
def closing_all(writers):
    """Close every writer on exit; ``ok`` is decided by the caller through ``writer.ok``."""
    try:
        yield writers
    finally:
        for w in writers:
            with contextlib.suppress(Exception):
                w.close(getattr(w, "ok", False))
