"""Issue 9: one message pass on the edge list vs on symmetric receiver-major rows.

Energy + forces of the e3md model used to spend most of their time in the backward pass of
the last message pass (BENCHMARKS.md, "session 5"): per edge it gathers the sender's
features ``x[j]`` (``(L+1)^2 x F`` values), so its backward scatter-adds rows of that width
into the senders, and XLA's CPU scatter is a loop over rows. This script times that layer --
scalar messages ``m_i = sum_j w_ij FusedTensor(Dense(b_ij), x_j)`` from degree-L features and
a degree-L factored basis, random parameters -- on the same water box and jax-md list as
``bench_performance.py``, both ways:

* ``sparse``: ``e3md.nn.MessagePass`` on the edge list (edge blocks, ``jax.checkpoint``,
  reverse mode by JAX): the edge path, as training uses it.
* ``rows``: ``MessagePass(..., adj_idx=rows, symmetric=True)``: the same edges as
  receiver-major rows ``[N, M]`` (``M`` = most neighbours of any atom), blocks of atoms, and
  the reverse-mode rule of ``e3md/nn/rows.py`` that uses the list's symmetry (the cotangent of
  ``x_j`` is a sum over atom ``j``'s own row: no scatter): the evaluation path of the model.

Both get the same inputs (the basis in their own layout, built outside the timing); the
script checks that values and all cotangents agree before timing interleaved rounds.
Usage::

    python benchmarks/bench_message_layouts.py --atoms 1536 --sizes small,medium
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_performance as bp  # noqa: E402
from e3md.potentials.model import EDGE_CHUNK, _cutoff_fn, _radial_fn  # noqa: E402

import e3md.nn as enn  # noqa: E402
from e3md.compiler import jit  # noqa: E402
from e3md.graph import edge_vectors  # noqa: E402


def receiver_rows(idx, num_atoms):
    """Host: slot ``[N, M]`` -> edge index of a receiver-major layout of a Sparse list, -1 if
    empty; checks that the list is symmetric."""
    dst, src = (np.asarray(a) for a in idx)
    real = np.nonzero((dst < num_atoms) & (src < num_atoms))[0]
    pairs = set(zip(dst[real].tolist(), src[real].tolist(), strict=True))
    if pairs != {(j, i) for i, j in pairs}:
        raise ValueError("the neighbour list is not symmetric")
    order = real[np.argsort(dst[real], kind="stable")]
    counts = np.bincount(dst[order], minlength=num_atoms)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(order.size) - start[dst[order]]
    rows = np.full((num_atoms, counts.max()), -1)
    rows[dst[order], slot] = order
    return rows


def run(size, num_atoms, rounds, atoms_per_block, seed=0):
    displacement, _, z, R, nbrs, real, _ = bp.build_system(num_atoms)
    n = len(z)
    cfg = bp.e3md_config(size, real / n)
    L, F, K = cfg.max_degree, cfg.num_features, cfg.num_basis
    lm = (L + 1) ** 2
    r_ij, src, dst, mask = edge_vectors(displacement, R, nbrs.idx)
    src, dst = jnp.clip(src, 0, n - 1), jnp.clip(dst, 0, n - 1)
    radial, angular = enn.basis(
        jnp.where(mask[:, None], r_ij, jnp.asarray([0.5 * cfg.cutoff, 0.0, 0.0])),
        max_degree=L,
        num=K,
        radial_fn=_radial_fn(cfg),
        cutoff_fn=_cutoff_fn(cfg),
        factored=True,
    )
    w = mask.astype(jnp.float32) / cfg.avg_num_neighbors
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, 1, lm, F)), jnp.float32)
    layer = enn.MessagePass(max_degree=0, include_pseudotensors=False, use_basis_bias=False)
    kw = dict(src_idx=src, dst_idx=dst, num_segments=n, edge_chunk=EDGE_CHUNK)
    wb = w[:, None, None, None]
    params = layer.init(jax.random.PRNGKey(seed), x, (radial, angular), wb, **kw)
    params = jax.tree.map(
        lambda a: a + 0.1 * jnp.asarray(rng.normal(size=a.shape), a.dtype), params
    )
    rows = receiver_rows(nbrs.idx, n)
    slot = jnp.asarray(np.maximum(rows, 0))
    filled = jnp.asarray(rows >= 0)
    row_kw = dict(
        adj_idx=jnp.where(filled, src[slot], n),
        symmetric=True,
        edge_chunk=atoms_per_block * rows.shape[1],
    )
    w_rows = jnp.where(filled, w[slot], 0)[..., None, None, None]
    rad_rows = jnp.where(filled[..., None], radial[slot], 0)
    ang_rows = jnp.where(filled[..., None, None], angular[slot], 0)

    ct = jnp.asarray(rng.normal(size=(n, F)), jnp.float32)

    def sparse_loss(x, rad, ang):
        return jnp.sum(layer.apply(params, x, (rad, ang), wb, **kw)[:, 0, 0] * ct)

    def rows_loss(x, rad, ang):
        return jnp.sum(layer.apply(params, x, (rad, ang), w_rows, **row_kw)[:, 0, 0] * ct)

    # same function: values and every cotangent (the basis ones compared slot by slot)
    gs = jax.jit(jax.value_and_grad(sparse_loss, argnums=(0, 1, 2)))(x, radial, angular)
    gd = jax.jit(jax.value_and_grad(rows_loss, argnums=(0, 1, 2)))(x, rad_rows, ang_rows)
    pairs = {
        "value": (gs[0], gd[0]),
        "d x": (gs[1][0], gd[1][0]),
        "d radial": (jnp.where(filled[..., None], gs[1][1][slot], 0), gd[1][1]),
        "d angular": (jnp.where(filled[..., None, None], gs[1][2][slot], 0), gd[1][2]),
    }
    for name, (a, b) in pairs.items():
        err = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
        if not err < 1e-4:
            raise RuntimeError(f"rows and sparse disagree in {name}: relative {err:.1e}")

    calls = {
        "sparse fwd": (sparse_loss, (x, radial, angular)),
        "rows fwd": (rows_loss, (x, rad_rows, ang_rows)),
        "sparse fwd+bwd": (jax.grad(sparse_loss, argnums=(0, 1, 2)), (x, radial, angular)),
        "rows fwd+bwd": (jax.grad(rows_loss, argnums=(0, 1, 2)), (x, rad_rows, ang_rows)),
    }
    compiled, times = {}, {}
    for name, (fn, args) in calls.items():
        f = jit(fn, num_atoms=n)
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        compiled[name] = (f, args, time.perf_counter() - t0)
        times[name] = []
    for _ in range(rounds):
        for name, (f, args, _) in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(
        f"{size:6s} {n:6d} atoms, {real} real edges of {nbrs.idx.shape[1]} (Sparse) / "
        f"{rows.size} slots (rows, M = {rows.shape[1]})"
    )
    for name in calls:
        print(f"  {name:15s} {med[name]:8.1f} ms   compile {compiled[name][2]:5.2f} s")
    for part in ("fwd", "fwd+bwd"):
        ratio = med[f"sparse {part}"] / med[f"rows {part}"]
        print(f"  rows / sparse speed-up, {part}: {ratio:.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, nargs="+", default=[1536])
    ap.add_argument("--sizes", default="small,medium")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--atoms-per-block", type=int, default=16)
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}")
    for size in args.sizes.split(","):
        for num_atoms in args.atoms:
            run(size, num_atoms, args.rounds, args.atoms_per_block)


if __name__ == "__main__":
    main()
