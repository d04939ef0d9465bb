"""Langevin MD of ethanol with an e3md potential, then a look at the thermodynamic log.

    python examples/md_ethanol.py [--potential rmd17-ethanol|model.e3md] [--steps 2000]

Writes ``md_ethanol/traj.extxyz`` (every 50 steps), ``md_ethanol/thermo.csv`` and a checkpoint,
and prints the mean temperature of the second half of the run.
"""

import argparse
import csv
from pathlib import Path

import ase.io
import jax
import numpy as np
from e3md.integrators.atoms import run_atoms
from e3md.potentials import load

import e3md


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--potential", default="rmd17-ethanol")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--temperature", type=float, default=300.0, help="K")
    ap.add_argument("--dt", type=float, default=0.5, help="fs")
    ap.add_argument("--out", default="md_ethanol", help="output directory")
    args = ap.parse_args(argv)

    jax.config.update("jax_enable_x64", True)  # an application may choose float64
    atoms = ase.io.read(Path(e3md.__file__).parent / "data" / "ethanol.xyz")
    potential = load(args.potential)
    out = Path(args.out)
    result = run_atoms(
        atoms,
        potential,
        ensemble="nvt",
        temperature_K=args.temperature,
        dt_fs=args.dt,
        steps=args.steps,
        chunk_steps=min(100, args.steps),
        log_path=out / "thermo.csv",
        log_every=10,
        trajectory=out / "traj.extxyz",
        trajectory_every=50,
        checkpoint=out / "md.ckpt.npz",
        seed=0,
    )
    rows = list(csv.DictReader(open(out / "thermo.csv")))
    T = np.array([float(r["temperature_K"]) for r in rows[len(rows) // 2 :]])
    print(
        f"{args.steps} steps ({float(rows[-1]['time_ps']):.2f} ps): <T> over the second half = "
        f"{T.mean():.1f} K (target {args.temperature} K); {len(rows)} log rows; "
        f"loop {result.timings['loop']:.1f} s"
    )
    return {"rows": rows, "result": result}


if __name__ == "__main__":
    main()
