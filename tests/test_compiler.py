"""e3md.compiler: which XLA options e3md compiles with, that they reach XLA, and that a model
compiled with them computes what XLA's defaults compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from e3md.potentials import ModelConfig, Potential

from e3md import compiler

OPTION = "xla_cpu_use_fusion_emitters"


def test_cpu_gets_the_classic_fusion_emitter(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert compiler.compiler_options("cpu") == {OPTION: False}
    assert compiler.compiler_options("gpu") == {}  # other backends keep XLA's defaults


def test_xla_flags_set_by_the_user_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{OPTION}=true")
    assert compiler.compiler_options("cpu") == {}


def test_an_option_this_xla_does_not_know_is_left_out(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert not compiler._xla_accepts("xla_option_that_does_not_exist", True)
    monkeypatch.setitem(compiler.CPU_OPTIONS, "xla_option_that_does_not_exist", True)
    assert compiler.compiler_options("cpu") == {OPTION: False}


def test_jit_passes_the_options_to_xla(monkeypatch):
    # an invalid value only fails if the option really reaches XLA's compile
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(compiler, "_xla_accepts", lambda name, value: True)
    monkeypatch.setitem(compiler.CPU_OPTIONS, OPTION, "not-a-bool")
    with pytest.raises(Exception, match=OPTION):
        compiler.jit(lambda x: x + 1)(1.0)
    # explicit options win over e3md's
    assert compiler.jit(lambda x: x + 1, compiler_options={OPTION: True})(1.0) == 2.0
    # decorator forms
    assert compiler.jit(static_argnums=1, compiler_options={OPTION: True})(lambda x, n: x * n)(
        2.0, 3
    ) == pytest.approx(6.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_compiled_with_e3md_options_matches_xla_defaults(dtype):
    config = ModelConfig(
        species=(1, 8),
        cutoff=4.0,
        max_degree=2,
        num_features=16,
        num_iterations=2,
        avg_num_neighbors=10.0,
        e0=(0.0, 0.0),
        dtype=dtype,
    )
    pot = Potential.init(config, jax.random.PRNGKey(3))
    rng = np.random.default_rng(0)
    n = 96  # ~1500 edges: two edge blocks of the default size
    R = rng.uniform(0, 11.0, size=(n, 3))
    Z = np.where(np.arange(n) % 3 == 0, 8, 1)
    # all pairs within the cutoff as edges (free space), some padded edges at the end
    i, j = np.nonzero(
        (np.linalg.norm(R[:, None] - R[None], axis=-1) < 4.0) & ~np.eye(n, dtype=bool)
    )
    pad = 37
    src = np.concatenate([j, np.zeros(pad, int)])
    dst = np.concatenate([i, np.zeros(pad, int)])
    edge_mask = np.arange(src.size) < i.size
    z = np.searchsorted(config.species, Z)

    def energy(R):
        r = R[src] - R[dst]
        e = pot.atomic_energies(r, z, src, dst, edge_mask, np.ones(n, bool))
        return jnp.sum(e)

    fn = jax.value_and_grad(energy)
    R = jnp.asarray(R, dtype)
    e_ref, f_ref = jax.jit(fn)(R)
    e, f = compiler.jit(fn)(R)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(e, e_ref, rtol=tol)
    np.testing.assert_allclose(f, f_ref, rtol=tol, atol=tol * np.abs(f_ref).max())
