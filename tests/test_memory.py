"""e3md.memory: with ``E3MD_MALLOC=keep`` and e3md imported first, a jitted call's large
temporaries are reused, not faulted in anew every call; by default the C library's settings stay
(each case in a fresh process: the setting is per process)."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# a ~97 MB temporary (exp(x) feeds a reduction and a product) and the page faults per call,
# after warm-up calls: with one arena the heap grows by a few blocks at first (a block freed by
# XLA's worker thread just after the result is ready, small allocations inside freed blocks),
# then every block is reused; the pause lets the worker free its block. The faults of a call are
# the median over 7 calls: now and then the worker frees its block only after the next call
# has taken a new one, and that one call faults the whole block in (1 call in 4 in ~1 run in 3)
SCRIPT = """
import resource, statistics, time
import e3md  # before any JAX computation
import jax, jax.numpy as jnp
x = jnp.ones((24000, 1024), jnp.float32)
f = jax.jit(lambda x: jnp.sum(jnp.exp(x) * jnp.sum(jnp.exp(x), 0))).lower(x).compile()
temp = f.memory_analysis().temp_size_in_bytes
def call():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    time.sleep(0.05)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
for _ in range(8):
    call()
faults = statistics.median(call() for _ in range(7))
print(temp, faults, e3md._memory.kept())
"""


def _run(mode=None):
    env = dict(os.environ)
    env.pop("E3MD_MALLOC", None)
    if mode is not None:
        env["E3MD_MALLOC"] = mode
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    temp, faults, applied = out.stdout.split()[-3:]
    return int(temp), float(faults), applied == "True"


def test_large_temporaries_are_reused_across_calls():
    temp, faults_system, applied = _run()
    assert not applied  # not by default
    pages = temp / os.sysconf("SC_PAGE_SIZE")
    assert pages > 10_000, "the test needs a large temporary buffer"
    if faults_system < 0.5 * pages:
        pytest.skip("this C library reuses the block without e3md's settings")
    _, faults_keep, applied = _run("keep")
    assert applied
    assert faults_keep < 0.02 * pages, (faults_keep, faults_system, pages)


def test_an_unknown_mode_is_a_clear_error():
    env = dict(os.environ, E3MD_MALLOC="fast")
    out = subprocess.run(
        [sys.executable, "-c", "import e3md"], env=env, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "E3MD_MALLOC must be 'keep' or 'system'" in out.stderr
