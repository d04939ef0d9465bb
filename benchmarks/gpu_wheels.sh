#!/usr/bin/env bash
# Fetch what benchmarks/gpu_run.sh needs beyond a CUDA JAX image into .whl/ (git-ignored), on a
# machine that can reach PyPI, so that the GPU machine needs no network: e3md's own wheel and
# the pure-Python packages such images lack (jax-md, e3x, e3nn-jax, ase and their small
# imports). jax, jaxlib, the CUDA plugin, flax, optax, numpy, scipy, msgpack, tqdm, psutil are
# taken from the image. Usage (repository root): bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .whl
mkdir .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: -c requirements/lock-py311.txt -d .whl \
  jax-md e3x e3nn-jax ase jraph ml_collections more-itertools frozendict
# e3x's Wigner-D lookup table (94 MB) is a cache e3x rebuilds when first needed, and the
# benchmark never rotates: leave it out so that .whl fits a 64 MiB transfer.
"$PY" - <<'PYEOF'
import glob, os, zipfile
(src,) = glob.glob(".whl/e3x-*.whl")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(src + ".tmp", "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not item.filename.endswith("/_wigner_d_lut.npz"):
            zout.writestr(item, zin.read(item.filename))
os.replace(src + ".tmp", src)
PYEOF
"$PY" -m pip wheel -q --no-deps -w .whl .
ls -l .whl
du -sh .whl
