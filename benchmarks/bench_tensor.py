"""Tensor-product throughput: e3md FusedTensor vs e3x FusedTensor / Tensor vs e3nn-jax.

Forward and forward+backward (gradients w.r.t. parameters and both inputs), float32, E edges,
features ``(E, P, (L+1)**2, F)``. All implementations of one shape are compiled first, then timed
interleaved (round-robin, ``--repeats`` rounds) and the median is reported, so every ratio in a
row comes from the same run under the same machine load. GFLOP/s = XLA's cost-analysis FLOP
count of the compiled program / median time.

The e3nn-jax column is ``e3nn.elementwise_tensor_product`` (channel-wise CG product of
``F x 0e + F x 1o + ...`` irreps, no weights): the closest built-in e3nn-jax op doing the work of a
channel-wise tensor product (``e3nn.tensor_product`` couples all F x F channel pairs).

Usage::

    python benchmarks/bench_tensor.py            # L in {1,2,3}, F in {32,64,128}, P in {1,2}
    python benchmarks/bench_tensor.py --quick    # L=2, F in {32,64}, P in {1,2}
"""

import argparse
import platform
import statistics
import time

import e3nn_jax as e3nn
import e3x
import jax
import jax.numpy as jnp
import numpy as np

import e3md.nn


def _irreps(lmax: int, f: int, parity: int) -> str:
    out = []
    for l in range(lmax + 1):
        natural = "e" if l % 2 == 0 else "o"
        out.append(f"{f}x{l}{natural}")
        if parity == 2:
            out.append(f"{f}x{l}{'o' if natural == 'e' else 'e'}")
    return "+".join(out)


def _make_flax(module, x, y):
    params = module.init(jax.random.PRNGKey(0), x, y)
    out = jax.eval_shape(module.apply, params, x, y)
    ct = jnp.asarray(np.random.default_rng(1).normal(size=out.shape), out.dtype)

    def fwd(params, x, y):
        return module.apply(params, x, y)

    def loss(params, x, y, ct):
        return jnp.vdot(module.apply(params, x, y), ct)

    fb = jax.grad(loss, argnums=(0, 1, 2))
    return (fwd, (params, x, y)), (fb, (params, x, y, ct))


def _make_e3nn(x, y, lmax, parity):
    e, _, _, f = x.shape
    ir1, ir2 = e3nn.Irreps(_irreps(lmax, f, parity)), e3nn.Irreps(_irreps(lmax, f, parity))
    a = e3nn.IrrepsArray(ir1, jnp.reshape(x, (e, -1)))
    b = e3nn.IrrepsArray(ir2, jnp.reshape(y, (e, -1)))
    keep = [f"{l}{p}" for l in range(lmax + 1) for p in "eo"]

    def fwd(a_arr, b_arr):
        out = e3nn.elementwise_tensor_product(
            e3nn.IrrepsArray(ir1, a_arr), e3nn.IrrepsArray(ir2, b_arr), filter_ir_out=keep
        )
        return out.array

    out_dim = jax.eval_shape(fwd, a.array, b.array).shape
    ct = jnp.ones(out_dim, x.dtype)
    fb = jax.grad(lambda a_, b_, c_: jnp.vdot(fwd(a_, b_), c_), argnums=(0, 1))
    return (fwd, (a.array, b.array)), (fb, (a.array, b.array, ct))


def _compile(fn, args):
    compiled = jax.jit(fn).lower(*args).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    jax.block_until_ready(compiled(*args))  # warm-up
    return compiled, flops


def run_shape(lmax, f, parity, edges, repeats, impls):
    rng = np.random.default_rng(0)
    shape = (edges, parity, (lmax + 1) ** 2, f)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    y = jnp.asarray(rng.normal(size=shape), jnp.float32)
    # Output parity channels = input ones (P=1 -> no pseudotensors, as in an MD potential).
    kw = dict(max_degree=lmax, include_pseudotensors=parity == 2)
    builders = {
        "e3md Fused": lambda: _make_flax(e3md.nn.FusedTensor(**kw), x, y),
        "e3x Fused": lambda: _make_flax(e3x.nn.FusedTensor(**kw), x, y),
        "e3x Tensor": lambda: _make_flax(e3x.nn.Tensor(**kw), x, y),
        "e3nn elemwise": lambda: _make_e3nn(x, y, lmax, parity),
    }
    compiled = {}
    for name in impls:
        try:
            (fwd, fa), (fb, ba) = builders[name]()
            compiled[(name, "fwd")] = (*_compile(fwd, fa), fa)
            compiled[(name, "fwd+bwd")] = (*_compile(fb, ba), ba)
        except Exception as exc:  # noqa: BLE001 - report and continue (e.g. out of memory)
            print(f"  {name}: failed ({type(exc).__name__}: {str(exc)[:80]})")
    times = {k: [] for k in compiled}
    for _ in range(repeats):
        for k, (fn, _, args) in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[k].append(time.perf_counter() - t0)
    rows = []
    for (name, mode), (_, flops, _) in compiled.items():
        med = statistics.median(times[(name, mode)])
        rows.append((name, mode, med, flops))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="L=2, F in {32, 64}, fewer repeats")
    ap.add_argument("--edges", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--impls", default="e3md Fused,e3x Fused,e3x Tensor,e3nn elemwise")
    args = ap.parse_args()
    degrees, feats = ((2,), (32, 64)) if args.quick else ((1, 2, 3), (32, 64, 128))
    repeats = args.repeats or (5 if args.quick else 7)
    impls = [s.strip() for s in args.impls.split(",")]
    print(
        f"# jax {jax.__version__} on {jax.devices()[0].platform}, {platform.processor() or '?'},"
        f" E={args.edges}, float32, median of {repeats} interleaved repeats"
    )
    header = (
        "| L | F | P | impl | fwd ms | fwd GFLOP/s | fwd+bwd ms | fwd+bwd GFLOP/s"
        " | e3x Fused / this (fwd+bwd) |"
    )
    print(header)
    print("|" + "---|" * 9)
    for lmax in degrees:
        for f in feats:
            for parity in (1, 2):
                rows = run_shape(lmax, f, parity, args.edges, repeats, impls)
                by = {(n, m): (t, fl) for n, m, t, fl in rows}
                ref = by.get(("e3x Fused", "fwd+bwd"), (float("nan"), 0))[0]
                for name in impls:
                    if (name, "fwd") not in by or (name, "fwd+bwd") not in by:
                        continue
                    tf, ff = by[(name, "fwd")]
                    tb, fb = by[(name, "fwd+bwd")]
                    print(
                        f"| {lmax} | {f} | {parity} | {name} | {tf * 1e3:.1f} | {ff / tf / 1e9:.1f}"
                        f" | {tb * 1e3:.1f} | {fb / tb / 1e9:.1f} | {ref / tb:.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
