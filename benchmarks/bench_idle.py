"""What ``E3MD_IDLE=spin`` (:mod:`e3md.cores`) does to e3md's energy + forces calls, in one
process: the spinning threads are started and stopped between rounds, so both settings see
the same compiled programs, the same memory and the same machine state.

Each round times every cell (size, atoms) under both settings, in an order that alternates
between rounds; a cell's time in a round is the median of several back-to-back calls after
``bench_performance._warm_up``. Prints the median per setting, spin / system, and the time per
atom against the median per atom of each setting (``bench_performance --scaling``'s measure).

Threads started at import (``E3MD_IDLE=spin``, before JAX creates its thread pools) measured
more at 192 atoms than this toggle does (BENCHMARKS.md, session 21): compare separate
processes with ``bench_performance.py --scaling`` for that.

    python benchmarks/bench_idle.py --sizes small,medium --atoms 192,1536 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import bench_performance as bp
import jax

from e3md import cores


def _median_call(fn, args, calls):
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="small")
    p.add_argument("--atoms", default="192,1536,12288")
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args(argv)
    if cores.cores_awake():
        raise SystemExit("run without E3MD_IDLE=spin: the script switches it itself")
    sizes = args.sizes.split(",")
    atoms = [int(a) for a in args.atoms.split(",")]
    cells = []
    for size in sizes:
        for n in atoms:
            system = bp.build_system(n)
            c = bp.build_contenders(size, ["e3md"], system)[0]["e3md"]
            nbrs = c.nbrs(system[4])
            fn = bp.compile_contender(c, system[3], nbrs)[0]
            fargs = (c.params, system[3], nbrs)
            jax.block_until_ready(fn(*fargs))
            t = _median_call(fn, fargs, 3)  # then about 50 ms of calls per timing
            cells.append((size, n, fn, fargs, max(3, int(0.05 / t))))
    modes = ("system", "spin")
    times = {(m, s, n): [] for m in modes for s, n, *_ in cells}
    for r in range(args.rounds):
        for m in modes if r % 2 == 0 else modes[::-1]:
            if m == "spin":
                cores.keep_cores_awake()
            for size, n, fn, fargs, calls in cells:
                bp._warm_up(fn, fargs)
                times[m, size, n].append(_median_call(fn, fargs, calls))
            cores.let_cores_sleep()
    print(f"# {bp._malloc_note()}")
    print(f"# median of {args.rounds} rounds; E3MD_IDLE switched in-process between rounds")
    print(
        "| size | atoms | system ms | spin ms | spin / system | system per atom / median "
        "| spin per atom / median |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        med = {m: {n: statistics.median(times[m, size, n]) for n in atoms} for m in modes}
        mid = {m: statistics.median(t / n for n, t in med[m].items()) for m in modes}
        for n in atoms:
            a, b = med["system"][n], med["spin"][n]
            print(
                f"| {size} | {n} | {1e3 * a:.3f} | {1e3 * b:.3f} | {b / a:.3f} "
                f"| {a / n / mid['system']:.2f} | {b / n / mid['spin']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
