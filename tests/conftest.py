"""Shared test fixtures. Tests run in float64 unless they ask for float32 explicitly."""

import itertools
import os

import jax
import numpy as np
import pytest

# in-process ``e3md`` CLI calls must not turn on a persistent compilation cache for the whole
# test session (or write to ~/.cache); tests/test_compiler.py checks the cache in subprocesses
os.environ["E3MD_COMPILE_CACHE"] = "none"

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_debug_nans", True)

SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def keys():
    """An endless supply of fresh PRNG keys: ``next(keys)``."""
    base = jax.random.PRNGKey(0)
    return (jax.random.fold_in(base, i) for i in itertools.count())


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA
