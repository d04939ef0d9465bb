#!/usr/bin/env bash
# Run the issue-9 performance benchmark on a GPU machine (same script, same table).
# Usage (repository root, CUDA machine): bash benchmarks/gpu_run.sh [extra bench_performance args]
# Installs jax's CUDA plugin into the existing venv if jax sees no GPU, then runs the benchmark
# with --large and writes benchmarks/gpu_results.json, then times e3md at 12288 atoms with larger
# edge blocks and with all edges at once (EDGE_CHUNK = 1024 was chosen on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if ! "$PY" -c 'import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else 1)'; then
  JAXV=$("$PY" -c 'import jax; print(jax.__version__)')
  "$PY" -m pip install "jax[cuda12]==${JAXV}"
fi
"$PY" -c 'import jax; print("devices:", jax.devices())'
"$PY" benchmarks/bench_performance.py --large --json benchmarks/gpu_results.json "$@"
for chunk in 8192 65536 none; do
  "$PY" benchmarks/bench_performance.py --atoms 12288 --models e3md --edge-chunk "$chunk" --rounds 5
done
