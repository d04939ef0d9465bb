"""Regression test for the XLA:CPU (YNN fusion) miscompile of a vmapped mat-vec followed by a reduction.

jax-ml/jax#39103: on jax/jaxlib 0.10.2 (CPU), jit(vmap(lambda r: jnp.sum((M @ r)**2)))(X) returns wrong values
for rows >= 16384 (float64) / >= 32768 (float32). jax_md's periodic displacement + norm hits this pattern.
A float32 variant (M passed as an argument, plain sum) is also wrong on jax 0.9.1-0.10.1.
All of it is fixed by XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= (YNN fusions off).
"""
import jax

jax.config.update("jax_enable_x64", True)  # needed for the float64 cases; float32 arrays stay float32
import jax.numpy as jnp
import numpy as np
import pytest

from e3md.compiler import jit as e3md_jit  # e3md compiles with its own XLA options

SIZES = (1000, 20000, 40000)  # 20000 and 40000 fall inside the bad window (2**14, 3*2**14)
DTYPES = (np.float32, np.float64)


def _tol(dtype):
    return dict(rtol=1e-9, atol=1e-9) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)


def _data(n, dtype):
    rng = np.random.default_rng(n)
    return rng.standard_normal((n, 3)).astype(dtype), rng.standard_normal((3, 3)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES + (16_385, 32_769))
def test_issue_39103_reproducer(n, dtype):
    """The upstream reproducer: constant matrix closed over, sum of squares, x = [i, 0, 0]."""
    i = jnp.arange(n, dtype=dtype)
    x = jnp.stack((i, jnp.zeros_like(i), jnp.zeros_like(i)), axis=1)
    matrix = jnp.eye(3, dtype=dtype)
    f = lambda x: jax.vmap(lambda row: jnp.sum((matrix @ row) ** 2))(x)
    expected = np.arange(n, dtype=np.float64) ** 2
    np.testing.assert_allclose(np.asarray(jax.jit(f)(x), np.float64), expected, rtol=1e-6 if dtype == np.float32 else 1e-12)


VARIANTS = {
    "sum": (lambda M, X: jax.vmap(lambda r: jnp.sum(M @ r))(X), lambda M, X: np.sum(X @ M.T, 1)),
    "sum_sq": (lambda M, X: jax.vmap(lambda r: jnp.sum((M @ r) ** 2))(X), lambda M, X: np.sum((X @ M.T) ** 2, 1)),
    "norm": (lambda M, X: jax.vmap(lambda r: jnp.linalg.norm(M @ r))(X), lambda M, X: np.linalg.norm(X @ M.T, axis=1)),
    "total_sum_sq": (lambda M, X: jnp.sum(jax.vmap(lambda r: (M @ r) ** 2)(X)), lambda M, X: np.sum((X @ M.T) ** 2)),
}


@pytest.mark.parametrize("jit", [jax.jit, e3md_jit], ids=["xla-defaults", "e3md-options"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_vmapped_matvec_reduction_matches_numpy(n, dtype, variant, jit):
    f, ref = VARIANTS[variant]
    X, M = _data(n, dtype)
    out = np.asarray(jit(f)(jnp.asarray(M), jnp.asarray(X)), np.float64)
    expected = ref(M.astype(np.float64), X.astype(np.float64))
    np.testing.assert_allclose(out, expected, **_tol(dtype))


def test_installed_jax_is_outside_the_known_bad_releases():
    """pyproject pins jax below 0.9.1; fail loudly if an environment slipped past the pin."""
    bad = {"0.10.2", "0.11.1"}
    assert jax.__version__ not in bad, f"jax {jax.__version__} miscompiles on CPU (jax issue 39103)"
