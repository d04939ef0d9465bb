#!/usr/bin/env bash
# Run the issue-9 performance benchmark on a GPU machine (same script, same table).
# Usage (repository root, CUDA machine): bash benchmarks/gpu_run.sh [extra bench_performance args]
# PY (default: .venv/bin/python if present, else python3) must have a CUDA jax. If .whl/ exists
# (benchmarks/gpu_wheels.sh, run where PyPI is reachable), its wheels are installed without
# network into a temporary folder first: for an offline CUDA JAX image, which has its own jax
# (possibly newer than e3md's CPU pin; the CPU miscompile that pin avoids is CPU-only).
# Writes benchmarks/gpu_results.json (or $OUT/gpu_results.json when OUT is set), then times
# e3md at 12288 atoms with larger edge blocks and with all edges at once (EDGE_CHUNK = 1024 was
# chosen on CPU), and the time per atom of MD-like steps (20 per jitted loop) from 192 to 98304
# atoms (gpu_scaling.json).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -d .whl ]; then
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c 'import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else 1)'; then
  echo "gpu_run.sh: $PY's jax sees no GPU; install jax's CUDA plugin (pip install" \
    "\"jax[cuda12]==<this jax's version>\") or use a CUDA JAX image" >&2
  exit 1
fi
"$PY" -c 'import jax, e3md; print("jax", jax.__version__, "devices:", jax.devices(), "e3md", e3md.__version__)'
export PYTHONUNBUFFERED=1
"$PY" benchmarks/bench_performance.py --large --json "${OUT:-benchmarks}/gpu_results.json" "$@"
for chunk in 8192 65536 none; do
  "$PY" benchmarks/bench_performance.py --atoms 12288 --models e3md --edge-chunk "$chunk" --rounds 5
done
"$PY" benchmarks/bench_performance.py --scaling --steps 20 --atoms 192,1536,12288,98304 \
  --rounds 5 --json "${OUT:-benchmarks}/gpu_scaling.json"
