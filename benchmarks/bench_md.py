"""MD throughput of e3md's driver: steps/s, atom-steps/s and the host-time fraction.

Systems: ethanol (9 atoms, free space) and a periodic box of ethanol molecules on a grid
(``--grid 7`` -> 343 molecules, 3087 atoms). The e3md potential has the rMD17-ethanol
architecture (``potentials/configs/rmd17-ethanol.toml``: cutoff 5 Å, L = 2, 64 features,
2 iterations), shipped parameters if available, random ones otherwise (speed does not depend on
the values). The peer is jax-md's NequIP (``jax_md.energy.nequip_neighbor_list``, needs
e3nn-jax) of the same size (as many layers, ``F x 0e + F x 1o + F x 2e``, the same r_max),
run by the *same* driver, so the ratio compares the potentials.

"host fraction" = time spent on the host between chunks (overflow check, logging) divided by
the loop time, measured by :func:`e3md.integrators.run_md` itself (the first, compiling call is
excluded). Precision float32 (jax default), NVT Langevin, dt 0.5 fs, 300 K.

Usage: ``python benchmarks/bench_md.py [--grid 7] [--steps-small 2000] [--steps-box 100]``
"""

import argparse
import platform
import time

import ase.io
import jax
import numpy as np
from ase import Atoms
from e3md.integrators import make_space, run_md

import e3md


def ethanol() -> Atoms:
    return ase.io.read(f"{e3md.__path__[0]}/data/ethanol.xyz")


def ethanol_box(grid: int, spacing: float = 5.0, seed: int = 0) -> Atoms:
    """``grid**3`` randomly rotated ethanol molecules on a cubic grid (periodic)."""
    rng = np.random.default_rng(seed)
    mol = ethanol()
    mol.positions -= mol.get_center_of_mass()
    out = Atoms(cell=np.eye(3) * grid * spacing, pbc=True)
    for idx in np.ndindex(grid, grid, grid):
        m = mol.copy()
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        m.positions = m.positions @ (q * np.sign(np.linalg.det(q))).T
        m.positions += (np.array(idx) + 0.5) * spacing
        out += m
    return out


def e3md_builder():
    from e3md.potentials import ModelConfig, Potential, available, load

    if "rmd17-ethanol" in available():
        pot = load("rmd17-ethanol")
        source = "shipped rmd17-ethanol"
    else:
        config = ModelConfig(
            species=(1, 6, 8), cutoff=5.0, max_degree=2, num_features=64, num_iterations=2,
            num_basis=8, readout_features=64, dtype="float32",
        )  # fmt: skip
        pot = Potential.init(config, jax.random.PRNGKey(0))
        source = "random parameters, rmd17-ethanol architecture"

    def build(atoms, space):
        return pot.neighbor_list(
            space.displacement_fn, space.box, atoms.numbers, **space.neighbor_kwargs
        )

    c = pot.config
    source += (
        f" (cutoff {c.cutoff} Å, L={c.max_degree}, F={c.num_features}, "
        f"T={c.num_iterations}, {c.dtype})"
    )
    return build, pot.config, source


def nequip_builder(config):
    """jax-md NequIP of the e3md potential's size: F x 0e + F x 1o (+ F x 2e ...), T layers."""
    import jax.numpy as jnp
    from jax_md import energy

    f, lmax = config.num_features, config.max_degree
    irreps = " + ".join(f"{f}x{l}{'eo'[l % 2]}" for l in range(lmax + 1))
    cfg = energy.nequip.default_config()
    cfg.graph_net_steps = config.num_iterations
    cfg.hidden_irreps = irreps
    cfg.sh_irreps = " + ".join(f"1x{l}{'eo'[l % 2]}" for l in range(lmax + 1))
    cfg.n_elements = 3
    cfg.r_max = config.cutoff
    cfg.n_neighbors = 10.0
    cfg.shift, cfg.scale = 0.0, 1.0

    def build(atoms, space):
        table = {1: 0, 6: 1, 8: 2}
        onehot = jax.nn.one_hot(jnp.array([table[int(z)] for z in atoms.numbers]), 3)
        nl = dict(space.neighbor_kwargs)
        box = space.box if space.box is not None else np.eye(3) * 100.0  # free space: unused
        neighbor_fn, init_fn, efn = energy.nequip_neighbor_list(
            space.displacement_fn, box, cfg, atoms=onehot, **nl
        )
        nbrs = neighbor_fn.allocate(jnp.asarray(space.positions, jnp.float32))
        params = init_fn(jax.random.PRNGKey(0), jnp.asarray(space.positions, jnp.float32), nbrs)

        def energy_fn(R, neighbor, **kw):
            return efn(params, R, neighbor, **kw)

        return neighbor_fn, energy_fn

    source = f"jax-md NequIP, {config.num_iterations} layers, {irreps}, random parameters"
    return build, config.cutoff, source


def bench(name, atoms, builder, cutoff, steps, chunk):
    jax.clear_caches()
    space = make_space(atoms, cutoff, dtype=np.float32)
    neighbor_fn, energy_fn = builder(atoms, space)
    kw = dict(
        box=space.box, fractional=space.fractional, ensemble="nvt", dt_fs=0.5,
        temperature_K=300.0, chunk_steps=chunk, seed=0, max_force=1e6,
    )  # fmt: skip
    masses = np.asarray(atoms.get_masses(), np.float32)
    t0 = time.perf_counter()
    run_md(neighbor_fn, energy_fn, space.shift_fn, space.positions, masses, steps=chunk, **kw)
    t_first = time.perf_counter() - t0
    res = run_md(neighbor_fn, energy_fn, space.shift_fn, space.positions, masses, steps=steps, **kw)
    t = res.timings
    sps = steps / t["loop"]
    row = {
        "system": name,
        "atoms": len(atoms),
        "steps": steps,
        "steps/s": sps,
        "atom-steps/s": sps * len(atoms),
        "host %": 100 * t["loop_host"] / t["loop"],
        "first call s": t_first,
        "reallocs": res.reallocations,
    }
    print(
        f"{name:34s} N={len(atoms):5d}  {sps:9.1f} steps/s  {sps * len(atoms):11.0f} atom-steps/s"
        f"  host {row['host %']:5.2f} %  (first call {t_first:.1f} s, {steps} steps timed)",
        flush=True,
    )
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=7, help="molecules per box edge (7 -> 3087)")
    ap.add_argument("--steps-small", type=int, default=2000)
    ap.add_argument("--steps-box", type=int, default=100)
    ap.add_argument("--chunk-small", type=int, default=500)
    ap.add_argument("--chunk-box", type=int, default=50)
    ap.add_argument("--no-nequip", action="store_true")
    ap.add_argument("--systems", default="ethanol,box", help="comma list: ethanol, box")
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({platform.processor()}), "
          f"float32")  # fmt: skip
    e_build, config, source = e3md_builder()
    cutoff = config.cutoff
    print(f"e3md potential: {source}")
    wanted = args.systems.split(",")
    systems = []
    if "ethanol" in wanted:
        systems.append(("ethanol", ethanol(), args.steps_small, args.chunk_small))
    if "box" in wanted:
        systems.append((f"ethanol box {args.grid}^3", ethanol_box(args.grid), args.steps_box,
                        args.chunk_box))  # fmt: skip
    rows = []
    for name, atoms, steps, chunk in systems:
        rows.append(bench(f"e3md  {name}", atoms, e_build, cutoff, steps, chunk))
        if not args.no_nequip:
            n_build, n_cut, n_source = nequip_builder(config)
            r = bench(f"nequip {name}", atoms, n_build, n_cut, steps, chunk)
            r["ratio"] = rows[-1]["steps/s"] / r["steps/s"]
            print(f"  e3md / jax-md nequip speed ratio: {r['ratio']:.2f}  ({n_source})")
            rows.append(r)
    return rows


if __name__ == "__main__":
    main()
