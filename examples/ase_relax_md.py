"""Relax a structure, then run a short ASE Langevin MD with an e3md potential; write extxyz.

Usage::

    python examples/ase_relax_md.py                                # first shipped potential
    python examples/ase_relax_md.py --potential my.e3md --structure start.xyz --steps 500

What it does:

1. ``E3MDCalculator`` wraps the potential (a shipped name or a ``*.e3md`` file).
2. BFGS relaxes the structure to ``--fmax`` (eV/Å); a periodic structure is relaxed with
   ``FrechetCellFilter``, so the cell relaxes too (stress from the same potential).
3. Langevin MD at ``--temperature-K`` with a ``--dt-fs`` time step; every ``--interval`` steps a
   frame (positions, velocities, energy, per-atom energies, forces, stress) is appended to
   ``--output`` in extended XYZ.

The default structure is picked from the elements the potential knows: ethanol if it knows H, C
and O, otherwise a small bulk crystal of its first element; ``--structure`` takes any file ASE
reads, a molecule name from ``ase.build.molecule`` or ``bulk:<symbol>``.
"""

import argparse
import sys
import time

import numpy as np
from ase import units
from ase.build import bulk, molecule
from ase.data import chemical_symbols
from ase.filters import FrechetCellFilter
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.optimize import BFGS

from e3md import potentials
from e3md.ase import E3MDCalculator

NO_SHIPPED = (
    "no trained potential is shipped with this e3md installation yet; pass --potential FILE "
    "(an *.e3md model file, e.g. from `e3md train` or Potential.save)"
)


def default_structure(species):
    """Ethanol if the potential knows H, C and O, else a 2x2x2 bulk crystal of its first element."""
    if {1, 6, 8} <= set(species):
        return molecule("CH3CH2OH")
    return bulk(chemical_symbols[species[0]], cubic=True) * (2, 2, 2)


def load_structure(spec):
    if spec.startswith("bulk:"):
        return bulk(spec[5:], cubic=True) * (2, 2, 2)
    try:
        return read(spec)
    except FileNotFoundError:
        return molecule(spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--potential", help="shipped name or *.e3md file (default: first shipped)")
    parser.add_argument("--structure", help="file, ase molecule name, or bulk:<symbol>")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--fmax", type=float, default=0.05, help="relaxation target, eV/Å")
    parser.add_argument("--relax-steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=200, help="MD steps")
    parser.add_argument("--dt-fs", type=float, default=0.5)
    parser.add_argument("--temperature-K", type=float, default=300.0)
    parser.add_argument("--friction-per-fs", type=float, default=0.01)
    parser.add_argument("--interval", type=int, default=10, help="MD steps between frames")
    parser.add_argument("--output", default="ase_relax_md.extxyz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    name = args.potential
    if name is None:
        shipped = potentials.available()
        if not shipped:
            print(NO_SHIPPED, file=sys.stderr)
            return 1
        name = shipped[0]
    pot = potentials.load(name)
    print(f"potential {name}: {pot}")
    calc = E3MDCalculator(pot, dtype=args.dtype)

    atoms = load_structure(args.structure) if args.structure else default_structure(pot.species)
    atoms.calc = calc
    periodic = atoms.pbc.all()
    e_start = atoms.get_potential_energy()
    opt = BFGS(FrechetCellFilter(atoms) if periodic else atoms, logfile=None)
    converged = opt.run(fmax=args.fmax, steps=args.relax_steps)
    fmax = np.linalg.norm(atoms.get_forces(), axis=1).max()
    print(
        f"relaxed {atoms.get_chemical_formula()} ({'cell + atoms' if periodic else 'atoms'}): "
        f"E {e_start:.4f} -> {atoms.get_potential_energy():.4f} eV, max |F| {fmax:.4f} eV/Å "
        f"after {opt.nsteps} steps ({'converged' if converged else 'NOT converged'})"
    )

    rng = np.random.default_rng(args.seed)
    thermalize_momenta(atoms, temperature_K=args.temperature_K, rng=rng)
    dyn = Langevin(
        atoms,
        args.dt_fs * units.fs,
        temperature_K=args.temperature_K,
        friction=args.friction_per_fs / units.fs,
        rng=rng,
        fixcm=False,
        logfile=None,
    )
    open(args.output, "w").close()  # frames are appended; frame 0 is the relaxed structure

    def frame():
        write(args.output, atoms, format="extxyz", append=True)
        print(
            f"step {dyn.nsteps:6d}  E_pot {atoms.get_potential_energy():12.4f} eV  "
            f"T {atoms.get_temperature():7.1f} K"
        )

    dyn.attach(frame, interval=args.interval)
    t0 = time.perf_counter()
    dyn.run(args.steps)
    elapsed = time.perf_counter() - t0
    print(
        f"{args.steps} MD steps in {elapsed:.1f} s ({1e3 * elapsed / max(args.steps, 1):.2f} "
        f"ms/step, {len(calc.traces)} compile(s)); trajectory written to {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
