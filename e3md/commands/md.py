"""Run molecular dynamics with an e3md potential (NVE, NVT Langevin, NVT Nosé-Hoover, NPT).

With no arguments this runs 1000 NVT steps of ethanol (the shipped example structure) at 300 K
with the shipped rMD17 ethanol potential. Units: --dt in fs, --temperature in K, --pressure in
bar; the log is CSV (step, time_ps, energies in eV, temperature in K[, pressure_bar,
volume_A3]). Outputs are written to '<file>.part' and renamed when the run ends.
"""

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_POTENTIAL = "rmd17-ethanol"
DEFAULT_STRUCTURE = "ethanol"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument(
        "--potential",
        default=DEFAULT_POTENTIAL,
        help="shipped potential name or path to an .e3md model file",
    )
    parser.add_argument(
        "--structure",
        default=DEFAULT_STRUCTURE,
        help="structure file readable by ase.io (first frame), or a shipped example name",
    )
    parser.add_argument(
        "--ensemble", choices=("nve", "nvt", "nvt-nh", "npt"), default="nvt", help="ensemble"
    )
    parser.add_argument("--temperature", type=float, default=300.0, help="temperature in K")
    parser.add_argument("--dt", type=float, default=0.5, help="time step in fs")
    parser.add_argument("--steps", type=int, default=1000, help="number of MD steps")
    parser.add_argument("--pressure", type=float, default=1.0, help="NPT pressure in bar")
    parser.add_argument("--friction", type=float, default=10.0, help="Langevin friction in 1/ps")
    parser.add_argument("--out", default="traj.extxyz", help="trajectory (.extxyz/.xyz/.traj)")
    parser.add_argument("--out-every", type=int, default=100, help="trajectory stride (steps)")
    parser.add_argument("--log", default="thermo.csv", help="thermodynamic CSV log")
    parser.add_argument("--log-every", type=int, default=10, help="log stride (steps)")
    parser.add_argument("--checkpoint", default="md.ckpt.npz", help="checkpoint file to write")
    parser.add_argument(
        "--checkpoint-every", type=int, default=1000, help="checkpoint stride (steps)"
    )
    parser.add_argument("--restart", default=None, help="continue from this checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed of velocities and noise")
    parser.add_argument("--chunk", type=int, default=100, help="steps per jitted chunk")
    parser.add_argument(
        "--max-force", type=float, default=100.0, help="blow-up guard threshold in eV/Å"
    )
    parser.add_argument(
        "--precision", choices=("float32", "float64"), default="float64", help="MD precision"
    )
    parser.add_argument(
        "--sort-atoms",
        action="store_true",
        help="list the atoms in spatial order before the run (faster steps for large systems "
        "given in no spatial order; outputs then list the atoms in that order)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _structure(spec: str):
    import ase.io

    import e3md

    shipped = Path(e3md.__file__).parent / "data" / f"{spec}.xyz"
    path = Path(spec)
    if not path.is_file():
        if shipped.is_file() and "/" not in spec:
            path = shipped
        else:
            raise FileNotFoundError(f"structure file not found: {spec}")
    try:
        return ase.io.read(path, index=0)
    except Exception as e:
        raise ValueError(f"cannot read structure {path}: {e}") from e


def run(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="e3md md: %(message)s")
    try:
        return _run(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"e3md md: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import jax

    if args.precision == "float64":
        # the CLI is an application entry point: it, not the library, chooses the precision
        jax.config.update("jax_enable_x64", True)
    import numpy as np

    from e3md.integrators import MDBlowUpError
    from e3md.integrators.atoms import run_atoms

    atoms = _structure(args.structure)
    if args.sort_atoms:
        from e3md.neighbors import spatial_order

        atoms = atoms[spatial_order(atoms.positions, atoms.cell if atoms.pbc.all() else None)]
    try:
        from e3md.potentials import load

        potential = load(args.potential)
    except FileNotFoundError as e:
        hint = ""
        if args.potential == DEFAULT_POTENTIAL:
            hint = (
                " (the default potential is not shipped in this checkout yet; pass "
                "--potential <file.e3md>)"
            )
        raise FileNotFoundError(f"{e}{hint}") from None
    except Exception as e:  # corrupt / tampered model file
        raise ValueError(f"cannot load potential {args.potential!r}: {e}") from e

    bar = None
    progress = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=args.steps, unit="step", desc=f"MD {args.ensemble}")

        def progress(done, total):
            bar.n = done
            bar.refresh()

    dtype = np.float64 if args.precision == "float64" else np.float32
    try:
        res = run_atoms(
            atoms,
            potential,
            dtype=dtype,
            steps=args.steps,
            ensemble=args.ensemble,
            dt_fs=args.dt,
            temperature_K=args.temperature,
            pressure_bar=args.pressure,
            friction_per_ps=args.friction,
            seed=args.seed,
            chunk_steps=args.chunk,
            log_path=args.log,
            log_every=args.log_every,
            trajectory=args.out,
            trajectory_every=args.out_every,
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            restart=args.restart,
            max_force=args.max_force,
            progress=progress,
        )
    except MDBlowUpError as e:
        print(f"e3md md: {e}", file=sys.stderr)
        return 3
    finally:
        if bar is not None:
            bar.close()
    th = res.thermo
    t = res.timings
    print(
        f"e3md md: {res.step} steps ({th['time_ps'][-1]:.3f} ps) of {len(atoms)} atoms, "
        f"{args.ensemble}; final T = {float(np.mean(th['temperature_K'][-1])):.1f} K, "
        f"Etot = {float(np.mean(th['etot_eV'][-1])):.6f} eV; wall {t['total']:.1f} s. "
        f"Wrote {args.out}, {args.log}, {args.checkpoint}"
        + (" (atoms in spatial order, --sort-atoms)." if args.sort_atoms else ".")
    )
    return 0
