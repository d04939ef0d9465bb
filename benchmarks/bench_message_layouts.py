"""Issue 9 design study: the last message pass on a receiver-major list, differentiated by symmetry.

Energy + forces of the e3md model spend most of their time in the backward pass of the last
message pass (BENCHMARKS.md, "session 5"): per edge it gathers the sender's features
``x[j]`` (``(L+1)^2 x F`` values), so its backward scatter-adds rows of that width into the
senders, and XLA's CPU scatter is a loop over rows (~0.5 us per 576-value row here).

This script measures the alternative, on the same water box and the same jax-md ``Sparse``
list as ``bench_performance.py``, for that one layer -- scalar messages
``m_i = sum_j w_ij sum_lm T_lm R_l(r_ij) Y_lm(r_ij) x_j[lm]`` (FusedTensor of a degree-L
filter and degree-L features into degree 0, factored basis; random parameters):

* ``sparse``: ``e3md.nn.MessagePass`` as the model calls it (edge blocks, ``jax.checkpoint``,
  reverse mode by JAX).
* ``dense``: the edges as receiver-major rows ``[N, M]`` (``M`` = most neighbours of any
  atom, padding masked), blocks of atoms, and a hand-written reverse-mode rule that uses the
  list's symmetry: the edge ``i <- j`` exists iff ``j <- i`` does, with the same weight and
  the reversed vector (``Y_lm(-r) = (-1)^l Y_lm(r)``), so the cotangent of ``x_j`` is a sum
  over atom ``j``'s own row of ``(-1)^l T_lm R_l Y_lm w g_i`` with the narrow (``F``-wide)
  cotangents ``g_i`` of its neighbours gathered -- a reduction, no scatter. Minor-axis sums
  are matrix products with a ones vector (XLA's CPU reduction over the last axis was 2x
  slower per block).

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
from e3md.nn.tensor import _coupling_tensor  # noqa: E402


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


def dense_message_pass(Wk, Td, degree, adj, weights, atoms_per_block):
    """``(x [N, LM, F], radial [N, M, K], Y [N, M, LM]) -> m [N, F]`` with the symmetric
    reverse-mode rule (see the module docstring)."""
    n, F = adj.shape[0], Td.shape[-1]
    blocks = -(-n // atoms_per_block)
    sign = jnp.asarray((-1.0) ** degree, Td.dtype)
    num_degrees = int(degree.max()) + 1
    ones = jnp.ones((F, 1), Td.dtype)

    def split(a, fill=0):
        pad = blocks * atoms_per_block - a.shape[0]
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1), constant_values=fill)
        return a.reshape(blocks, atoms_per_block, *a.shape[1:])

    def radial_filter(rad):
        return jnp.einsum("bmk,lkf->bmlf", rad, Wk)[:, :, degree]  # [B, M, LM, F]

    def forward(x, rad, Y):
        def step(_, b):
            rad, Y, w, a = b
            g = jnp.take(x, a, axis=0, mode="clip")
            prod = jnp.sum(Td * radial_filter(rad) * Y[..., None] * g, axis=2)
            return None, jnp.sum(prod * w[..., None], axis=1)

        _, out = jax.lax.scan(step, None, (split(rad), split(Y), split(weights), split(adj, n)))
        return out.reshape(-1, F)[:n]

    @jax.custom_vjp
    def messages(x, rad, Y):
        return forward(x, rad, Y)

    def fwd(x, rad, Y):
        return forward(x, rad, Y), (x, rad, Y)

    def bwd(res, gout):
        x, rad, Y = res

        def step(_, b):
            rad, Y, w, a, g_i = b
            Rb = radial_filter(rad)
            g_j = jnp.take(gout, a, axis=0, mode="fill", fill_value=0) * w[..., None]
            # cotangent of x for the block's atoms, as senders of their rows' reversed edges
            dx = jnp.sum(Td * g_j[:, :, None, :] * Rb * (Y * sign)[..., None], axis=1)
            # cotangents of the block's own edges i <- j
            u = Td * (g_i[:, None, :] * w[..., None])[:, :, None, :]
            u = u * jnp.take(x, a, axis=0, mode="clip")
            uY = u * Y[..., None]
            dR = jnp.stack(
                [jnp.sum(uY[:, :, l * l : (l + 1) ** 2], axis=2) for l in range(num_degrees)],
                axis=2,
            )
            drad = jnp.einsum("bmlf,lkf->bmk", dR, Wk)
            dY = jnp.matmul(u * Rb, ones)[..., 0]
            return None, (dx, drad, dY)

        xs = (split(rad), split(Y), split(weights), split(adj, n), split(gout))
        _, out = jax.lax.scan(step, None, xs)
        return tuple(a.reshape(-1, *a.shape[2:])[:n] for a in out)

    messages.defvjp(fwd, bwd)
    return messages


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
    p = params["params"]
    Wk = jnp.stack([p["filter"][f"{l}{'+-'[l % 2]}"]["kernel"] for l in range(L + 1)])
    T = _coupling_tensor(p["fused_tensor"], 1, 1, L, L, 0, False, True)[:, :, 0]
    Td = jnp.stack([T[i, i] for i in range(lm)])
    if not np.allclose(np.abs(np.asarray(T)).sum(), np.abs(np.asarray(Td)).sum()):
        raise RuntimeError("expected a diagonal coupling tensor for degree-0 messages")
    degree = np.repeat(np.arange(L + 1), 2 * np.arange(L + 1) + 1)

    rows = receiver_rows(nbrs.idx, n)
    slot = jnp.asarray(np.maximum(rows, 0))
    filled = jnp.asarray(rows >= 0)
    adj = jnp.where(filled, src[slot], n)
    rad_d = jnp.where(filled[..., None], radial[slot], 0)
    Y_d = jnp.where(filled[..., None], angular[:, 0][slot], 0)
    dense = dense_message_pass(Wk, Td, degree, adj, jnp.where(filled, w[slot], 0), atoms_per_block)

    ct = jnp.asarray(rng.normal(size=(n, F)), jnp.float32)

    def sparse_loss(x, rad, ang):
        return jnp.sum(layer.apply(params, x, (rad, ang), wb, **kw)[:, 0, 0] * ct)

    def dense_loss(x, rad, Y):
        return jnp.sum(dense(x[:, 0], rad, Y) * ct)

    # same function: values and every cotangent (the basis ones compared slot by slot)
    gs = jax.jit(jax.value_and_grad(sparse_loss, argnums=(0, 1, 2)))(x, radial, angular)
    gd = jax.jit(jax.value_and_grad(dense_loss, argnums=(0, 1, 2)))(x, rad_d, Y_d)
    pairs = {
        "value": (gs[0], gd[0]),
        "d x": (gs[1][0], gd[1][0]),
        "d radial": (jnp.where(filled[..., None], gs[1][1][slot], 0), gd[1][1]),
        "d Y": (jnp.where(filled[..., None], gs[1][2][:, 0][slot], 0), gd[1][2]),
    }
    for name, (a, b) in pairs.items():
        err = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
        if not err < 1e-4:
            raise RuntimeError(f"dense and sparse disagree in {name}: relative {err:.1e}")

    calls = {
        "sparse fwd": (lambda x, r, a: sparse_loss(x, r, a), (x, radial, angular)),
        "dense fwd": (lambda x, r, y: dense_loss(x, r, y), (x, rad_d, Y_d)),
        "sparse fwd+bwd": (jax.grad(sparse_loss, argnums=(0, 1, 2)), (x, radial, angular)),
        "dense fwd+bwd": (jax.grad(dense_loss, argnums=(0, 1, 2)), (x, rad_d, Y_d)),
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
        f"{rows.size} slots (dense, M = {rows.shape[1]})"
    )
    for name in calls:
        print(f"  {name:15s} {med[name]:8.1f} ms   compile {compiled[name][2]:5.2f} s")
    for part in ("fwd", "fwd+bwd"):
        ratio = med[f"sparse {part}"] / med[f"dense {part}"]
        print(f"  dense / sparse speed-up, {part}: {ratio:.2f}x")


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
