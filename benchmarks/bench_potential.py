"""Energy + forces throughput of the e3md potential vs equal-size peers, ratios from one run.

Peers (same features F, degree L, iterations T, radial functions K, cutoff):

* ``e3x``: the *same architecture* built from e3x modules (Embed, MessagePass with FusedTensor,
  Dense, gated silu, FusedTensor self-product, scalar readout) -- isolates the layer code.
* ``nequip``: ``jax_md.energy.nequip_neighbor_list`` with hidden irreps
  ``F x 0e + F x 1o + F x 2e`` (up to L), T interaction blocks, K radial functions.

All three get the same jax-md Sparse neighbour list and positions; timed is one jitted call of
energy + forces (``jax.value_and_grad``), neighbour-list updates excluded. Systems: a 21-atom
molecule (aspirin from ``../shared/data/rmd17`` when present, else a synthetic molecule), a
periodic water box of ~1k atoms (``--large`` adds ~10k), and ``--scaling`` times e3md alone
from ~100 atoms up to ``--max-atoms`` to show linear cost. Peak memory is XLA's
``memory_analysis`` of the compiled call (temporaries + outputs + arguments).

Usage::

    .venv/bin/python benchmarks/bench_potential.py --quick
    .venv/bin/python benchmarks/bench_potential.py --large --scaling
"""

import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "rmd17"


# ----------------------------------------------------------------------------------- systems


def water_box(n_side: int, rng: np.random.Generator):
    """n_side**3 randomly oriented waters on a cubic grid at ~1 g/cm³ (Å, periodic)."""
    spacing = 29.9 ** (1.0 / 3.0)  # Å per molecule at 1 g/cm³
    side = n_side * spacing
    theta = np.deg2rad(104.52) / 2
    mol = 0.9572 * np.array(
        [
            [0, 0, 0],
            [np.sin(theta), np.cos(theta), 0],
            [-np.sin(theta), np.cos(theta), 0],
        ]
    )
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    R, Z = [], []
    for g in grid:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        R.append((mol - mol.mean(0)) @ q.T + (g + 0.5) * spacing)
        Z += [8, 1, 1]
    return np.concatenate(R) % side, np.array(Z), side


def molecule21():
    path = SHARED / "rmd17_aspirin_train_01.npz"
    if path.is_file():
        d = np.load(path)
        return np.asarray(d["coords"][0], np.float64), np.asarray(d["nuclear_charges"]), "aspirin"
    rng = np.random.default_rng(0)  # synthetic: a chain with side atoms, no overlaps
    R = np.cumsum(rng.normal(size=(21, 3)) * 0.6 + [1.0, 0, 0], 0)
    return R, np.array([6] * 9 + [8] * 4 + [1] * 8), "synthetic-21"


# ----------------------------------------------------------------------------------- models


def e3x_model(cfg):
    """The e3md architecture (potentials/model.py) built from e3x modules."""
    import e3x
    import flax.linen as nn

    L, F = cfg.max_degree, cfg.num_features

    class E3xEnergy(nn.Module):
        @nn.compact
        def __call__(self, r, z, src, dst, mask):
            n = z.shape[0]
            basis = e3x.nn.basis(
                r,
                max_degree=L,
                num=cfg.num_basis,
                radial_fn=lambda x, num: e3x.nn.sinc(x, num, cfg.cutoff),
                cutoff_fn=lambda x: e3x.nn.smooth_cutoff(x, cfg.cutoff),
            )
            w = (mask / cfg.avg_num_neighbors)[:, None, None, None]
            x = e3x.nn.Embed(cfg.num_species, F)(z)
            for t in range(cfg.num_iterations):
                deg = 0 if t == cfg.num_iterations - 1 else L
                m = e3x.nn.MessagePass(
                    max_degree=deg, include_pseudotensors=False, use_fused_tensor=True
                )(x, basis, w, src_idx=src, dst_idx=dst, num_segments=n)
                x = e3x.nn.change_max_degree_or_type(x, max_degree=deg) + e3x.nn.Dense(F)(m)
                if cfg.self_product and deg > 0:
                    a, b = e3x.nn.Dense(F)(x), e3x.nn.Dense(F)(x)
                    x = x + e3x.nn.FusedTensor(max_degree=deg, include_pseudotensors=False)(a, b)
                x = e3x.nn.Dense(F)(e3x.nn.silu(x))
            h = e3x.nn.silu(e3x.nn.Dense(cfg.readout_features)(x[..., 0:1, 0:1, :]))
            return e3x.nn.Dense(1)(h)[:, 0, 0, 0].sum()

    return E3xEnergy()


def build(name, cfg, R, Z, box, key):
    """(energy_forces(R, nbrs) jitted, nbrs, neighbor_fn) for one model on one system."""
    from e3md.potentials import Potential
    from jax_md import energy, partition, space

    from e3md.graph import edge_vectors

    periodic = box is not None
    if periodic:
        disp, _ = space.periodic(box)
    else:
        disp, _ = space.free()
    jax.clear_caches()  # jax-md 0.2.29: building the same system twice errors otherwise
    if name == "e3md":
        pot = Potential.init(cfg, key)
        nf, ef = pot.neighbor_list(disp, box, Z, dr_threshold=0.5, disable_cell_list=not periodic)
        fn = jax.jit(jax.value_and_grad(ef))
        nbrs = nf.allocate(R)
        return fn, nbrs, nf
    nf = partition.neighbor_list(
        disp,
        box if periodic else 1.0,
        cfg.cutoff,
        dr_threshold=0.5,
        format=partition.Sparse,
        disable_cell_list=not periodic,
    )
    nbrs = nf.allocate(R)
    zi = jnp.asarray(np.searchsorted(np.asarray(cfg.species), Z))
    if name == "e3x":
        model = e3x_model(cfg)
        r, src, dst, mask = edge_vectors(disp, R, nbrs.idx)
        params = model.init(key, r, zi, src, dst, mask.astype(R.dtype))

        def ef(R, nb):
            r, src, dst, mask = edge_vectors(disp, R, nb.idx)
            r = jnp.where(mask[:, None], r, cfg.cutoff)
            s, d = jnp.where(mask, src, 0), jnp.where(mask, dst, 0)
            return model.apply(params, r, zi, s, d, mask.astype(R.dtype))

        fn = jax.jit(jax.value_and_grad(ef))
        return fn, nbrs, nf
    if name == "nequip":
        from jax_md._nn import nequip

        ncfg = nequip.default_config()
        ncfg.graph_net_steps = cfg.num_iterations
        ncfg.n_elements = cfg.num_species
        parities = ["0e", "1o", "2e", "3o", "4e"]
        ncfg.hidden_irreps = " + ".join(
            f"{cfg.num_features}x{parities[l]}" for l in range(cfg.max_degree + 1)
        )
        ncfg.sh_irreps = " + ".join(f"1x{parities[l]}" for l in range(cfg.max_degree + 1))
        ncfg.num_basis = cfg.num_basis
        ncfg.r_max = cfg.cutoff
        ncfg.n_neighbors = cfg.avg_num_neighbors
        ncfg.radial_net_n_hidden = cfg.num_features
        ncfg.scale, ncfg.shift = 1.0, 0.0
        atoms = jax.nn.one_hot(zi, cfg.num_species, dtype=R.dtype)
        jax.clear_caches()
        nf2, init_fn, efn = energy.nequip_neighbor_list(
            disp,
            box if periodic else 1.0,
            ncfg,
            atoms=atoms,
            dr_threshold=0.5,
            disable_cell_list=not periodic,
        )
        nbrs = nf2.allocate(R)
        params = init_fn(key, R, nbrs)
        fn = jax.jit(jax.value_and_grad(lambda R, nb: efn(params, R, nb)))
        return fn, nbrs, nf2
    raise ValueError(name)


# ----------------------------------------------------------------------------------- timing


def peak_bytes(fn, *args):
    try:
        m = fn.lower(*args).compile().memory_analysis()
        return int(m.temp_size_in_bytes + m.output_size_in_bytes + m.argument_size_in_bytes)
    except Exception:  # not every backend reports it
        return -1


def bench_system(label, R, Z, box, cfg, models, repeats, rng_key):
    R = jnp.asarray(R, jnp.dtype(cfg.dtype))
    fns = {}
    for name in models:
        t0 = time.perf_counter()
        fn, nbrs, _ = build(name, cfg, R, Z, box, rng_key)
        jax.block_until_ready(fn(R, nbrs))
        compile_s = time.perf_counter() - t0
        mem = peak_bytes(fn, R, nbrs)
        fns[name] = (fn, nbrs, compile_s, mem)
    times = {name: [] for name in models}
    for _ in range(repeats):  # interleaved, so load changes hit all models alike
        for name in models:
            fn, nbrs, *_ = fns[name]
            t0 = time.perf_counter()
            jax.block_until_ready(fn(R, nbrs))
            times[name].append(time.perf_counter() - t0)
    n = R.shape[0]
    rows = []
    base = statistics.median(times["e3md"])
    for name in models:
        t = statistics.median(times[name])
        fn, nbrs, compile_s, mem = fns[name]
        edges = int(np.sum(np.asarray(nbrs.idx[0]) < n))
        rows.append(
            f"| {label} | {n} | {edges} | {name} | {t * 1e3:.2f} | {t / n * 1e6:.2f} | "
            f"{t / base:.2f}x | {compile_s:.0f} | {mem / 2**20:.0f} |"
        )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats, small systems only")
    p.add_argument("--large", action="store_true", help="add a ~10k-atom water box")
    p.add_argument("--scaling", action="store_true", help="e3md alone vs N (water boxes)")
    p.add_argument("--max-atoms", type=int, default=30000)
    p.add_argument("--models", default="e3md,e3x,nequip")
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--max-degree", type=int, default=2)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--float64", action="store_true")
    args = p.parse_args(argv)
    if args.float64:
        jax.config.update("jax_enable_x64", True)

    from e3md.potentials import ModelConfig

    models = args.models.split(",")
    if "e3md" not in models:
        models = ["e3md"] + models
    repeats = args.repeats or (3 if args.quick else 10)
    cfg = ModelConfig(
        species=(1, 6, 8),
        cutoff=args.cutoff,
        max_degree=args.max_degree,
        num_features=args.features,
        num_iterations=args.iterations,
        num_basis=8,
        readout_features=args.features,
        avg_num_neighbors=20.0,
        dtype="float64" if args.float64 else "float32",
    )
    key = jax.random.PRNGKey(0)
    rng = np.random.default_rng(0)
    print(f"# jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(
        f"# F={cfg.num_features} L={cfg.max_degree} T={cfg.num_iterations} K={cfg.num_basis} "
        f"cutoff={cfg.cutoff} Å, {cfg.dtype}, self_product={cfg.self_product}, "
        f"median of {repeats}, energy+forces per call"
    )
    print("| system | atoms | edges | model | ms/call | µs/atom | vs e3md | compile s | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    systems = []
    Rm, Zm, name = molecule21()
    systems.append((f"{name} (free)", Rm, Zm, None))
    R, Z, side = water_box(7, rng)
    systems.append(("water box", R, Z, side))
    if args.large:
        R, Z, side = water_box(15, rng)
        systems.append(("water box", R, Z, side))
    for label, R, Z, box in systems:
        for row in bench_system(label, R, Z, box, cfg, models, repeats, key):
            print(row, flush=True)
    if args.scaling:
        print("\n# e3md scaling (water boxes): time per atom should stay flat")
        print("| atoms | ms/call | µs/atom |")
        print("|---|---|---|")
        n_side = 4
        while 3 * n_side**3 <= args.max_atoms:
            R, Z, side = water_box(n_side, rng)
            fn, nbrs, _ = build("e3md", cfg, jnp.asarray(R, jnp.dtype(cfg.dtype)), Z, side, key)
            Rj = jnp.asarray(R, jnp.dtype(cfg.dtype))
            jax.block_until_ready(fn(Rj, nbrs))
            ts = []
            for _ in range(max(2, repeats // 2)):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(Rj, nbrs))
                ts.append(time.perf_counter() - t0)
            t = statistics.median(ts)
            print(f"| {len(R)} | {t * 1e3:.1f} | {t / len(R) * 1e6:.2f} |", flush=True)
            n_side = int(np.ceil(n_side * 1.6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
