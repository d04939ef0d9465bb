"""Four independent NPT replicas of Lennard-Jones argon at once (vmap), on a jax-md potential.

    python examples/md_lj_replicas_npt.py [--steps 4000] [--pressure 500]

The drivers take any jax-md ``(neighbor_fn, energy_fn)`` pair; here jax-md's Lennard-Jones
(sigma 3.4 Å, epsilon 10.4 meV, cut at 1.5 sigma) on 108 atoms. Prints each replica's mean
pressure and volume over the second half of the run.
"""

import argparse

import jax
from ase.build import bulk
from e3md.integrators import make_space, run_md
from jax_md import energy, partition


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--pressure", type=float, default=500.0, help="bar")
    ap.add_argument("--temperature", type=float, default=80.0, help="K")
    ap.add_argument("--replicas", type=int, default=4)
    args = ap.parse_args(argv)

    jax.config.update("jax_enable_x64", True)
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((3, 3, 3))
    space = make_space(atoms, 1.5 * 3.4)
    neighbor_fn, energy_fn = energy.lennard_jones_neighbor_list(
        space.displacement_fn, space.box, sigma=3.4, epsilon=0.0104, r_onset=1.2, r_cutoff=1.5,
        format=partition.Sparse, **space.neighbor_kwargs,
    )  # fmt: skip
    result = run_md(
        neighbor_fn,
        energy_fn,
        space.shift_fn,
        space.positions,
        atoms.get_masses(),
        box=space.box,
        fractional=True,
        replicas=args.replicas,
        ensemble="npt",
        temperature_K=args.temperature,
        pressure_bar=args.pressure,
        dt_fs=5.0,
        tau_barostat_fs=1000.0,
        steps=args.steps,
        chunk_steps=min(500, args.steps),
        log_every=10,
        seed=1,
    )
    half = len(result.thermo["step"]) // 2
    p = result.thermo["pressure_bar"][half:]
    V = result.thermo["volume_A3"][half:]
    for b in range(args.replicas):
        print(f"replica {b}: <P> = {p[:, b].mean():7.1f} bar, <V> = {V[:, b].mean():8.1f} A^3")
    print(f"all: <P> = {p.mean():.1f} bar (target {args.pressure} bar)")
    return {"result": result, "pressure": p, "volume": V}


if __name__ == "__main__":
    main()
