"""e3md.compiler: which XLA options e3md compiles with, that they reach XLA, that a model
compiled with them computes what XLA's defaults compute, and the persistent compilation cache
(in subprocesses: it is process-global JAX configuration)."""

import os
import platform
import subprocess
import sys
from pathlib import Path

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


def test_molecules_of_a_few_atoms_keep_xla_defaults(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    few = compiler.CLASSIC_EMITTER_MIN_ATOMS - 1
    assert compiler.compiler_options("cpu", num_atoms=few) == {}
    assert compiler.compiler_options("cpu", num_atoms=few + 1) == {OPTION: False}
    assert compiler.compiler_options("cpu", num_atoms=None) == {OPTION: False}
    # the cache key of the ASE calculator and the OpenMM force follows the same size classes
    assert compiler.compiler_options_key(few) == ()
    assert compiler.compiler_options_key(few + 1) == ((OPTION, False),)


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


# ------------------------------------------------------------------ persistent compilation cache

CACHE_PROBE = """
import sys, jax, jax.numpy as jnp
from e3md.compiler import enable_compile_cache
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(1) if event == "/jax/compilation_cache/cache_hits" else None
)
print(enable_compile_cache(sys.argv[1] if len(sys.argv) > 1 else None))
print(float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((3, 3))).sum()))
print("cache hits", len(hits))
"""


def run_python(code, *args, env=None, stderr=False):
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    return (lines, out.stderr) if stderr else lines


NO_CACHE_ENV = {
    "JAX_COMPILATION_CACHE_DIR": None,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": None,
    "TF_CPP_MIN_LOG_LEVEL": None,
}


def test_compile_cache_is_written_and_reused(tmp_path):
    cache = tmp_path / "cache"
    programs = cache / compiler.machine_key()
    first = run_python(CACHE_PROBE, cache, env=NO_CACHE_ENV)
    assert first[0] == str(programs) and first[2] == "cache hits 0"
    assert [p.name for p in cache.iterdir()] == [programs.name]
    entries = sorted(p.name for p in programs.iterdir())
    assert entries, "nothing was cached"
    again, log = run_python(CACHE_PROBE, cache, env=NO_CACHE_ENV, stderr=True)
    assert again[1] == first[1]  # the same result
    assert again[2] != "cache hits 0"  # ... from compiled programs read back from the cache
    assert sorted(p.name for p in programs.iterdir()) == entries
    # XLA's false alarm on reading back a program compiled here (on CPUs with AVX-512) is muted
    assert "cpu_aot_loader" not in log, log[:2000]


def test_machine_key_names_the_cpu_kind():
    key = compiler.machine_key()
    arch, digest = key.rsplit("-", 1)
    assert arch == platform.machine() and len(digest) == 12
    if platform.machine() == "x86_64" and Path("/proc/cpuinfo").exists():
        assert "flags" in compiler.cpu_description()
    assert compiler.machine_key() == key


def test_compile_cache_keeps_a_directory_the_user_configured(tmp_path):
    mine, other = tmp_path / "mine", tmp_path / "other"
    lines = run_python(CACHE_PROBE, other, env={"JAX_COMPILATION_CACHE_DIR": str(mine)})
    assert lines[0] == str(mine)
    assert not other.exists()


def test_compile_cache_default_dir_and_unwritable_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compiler.default_cache_dir() == tmp_path / "e3md" / "jax"
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    if jax.config.jax_compilation_cache_dir:
        pytest.skip("this test process already has a JAX compilation cache")
    assert compiler.enable_compile_cache(blocker / "cache") is None
    assert not jax.config.jax_compilation_cache_dir


def test_cli_turns_the_cache_on_unless_told_not_to(tmp_path, monkeypatch):
    from e3md import cli

    calls = []
    monkeypatch.setattr(compiler, "enable_compile_cache", calls.append)
    missing = str(tmp_path / "missing.e3md")  # fails fast, after the cache decision
    assert cli.main(["--compile-cache", str(tmp_path), "md", "--potential", missing]) == 2
    assert calls == [str(tmp_path)]
    assert cli.main(["--compile-cache", "none", "md", "--potential", missing]) == 2
    monkeypatch.delenv("E3MD_COMPILE_CACHE")
    assert cli.main(["md", "--potential", missing]) == 2
    assert calls == [str(tmp_path), None]  # None: the default directory


@pytest.mark.slow
def test_cli_md_gives_the_same_trajectory_from_the_cache(tmp_path):
    import ase.io

    model = tmp_path / "model.e3md"
    config = ModelConfig(species=(1, 6, 8), cutoff=4.0, max_degree=1, num_features=8)
    Potential.init(config, jax.random.PRNGKey(0)).save(model)
    ethanol = Path(compiler.__file__).parent / "data" / "ethanol.xyz"
    cache = tmp_path / "cache"
    frames = []
    for run in ("cold", "cached"):
        out = tmp_path / run
        out.mkdir()
        args = ["--compile-cache", cache, "md", "--potential", model, "--structure", ethanol]
        args += ["--steps", 20, "--chunk", 10, "--out", out / "t.extxyz", "--no-progress"]
        args += ["--log", out / "l.csv", "--checkpoint", out / "c.npz"]
        code = "import sys; from e3md.cli import main; sys.exit(main(sys.argv[1:]))"
        run_python(code, *args, env={"E3MD_COMPILE_CACHE": None})
        frames.append(ase.io.read(out / "t.extxyz", ":"))
    assert any(cache.iterdir())
    for a, b in zip(*frames, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
