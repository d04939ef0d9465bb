"""Safe model files: round trip, and every corrupt-file case gives a clear error."""

import hashlib
import json
import pickle
import struct

import e3md.potentials as potentials
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from e3md.potentials import ModelConfig, Potential, atomic_energies, species_index

from e3md import io

R = np.array([[0.0, 0.0, 0.0], [1.1, 0.1, 0.0], [-0.3, 1.0, 0.2], [0.6, -0.9, 0.4]])
Z = np.array([6, 1, 8, 1])


@pytest.fixture(scope="module")
def pot():
    cfg = ModelConfig(
        species=(1, 6, 8),
        cutoff=3.0,
        max_degree=1,
        num_features=4,
        num_iterations=1,
        num_basis=4,
        readout_features=4,
        e0=(-1.0, -2.0, -3.0),
        dtype="float32",
    )
    return Potential.init(cfg, jax.random.PRNGKey(3), metadata={"note": "test"})


_ae = jax.jit(atomic_energies, static_argnums=0)


def energies(p):
    N = len(R)
    dst, src = np.nonzero(~np.eye(N, dtype=bool))
    r = jnp.asarray(R[src] - R[dst], jnp.float32)
    zi = jnp.asarray(species_index(p.config, Z))
    ones = jnp.ones(len(src), bool)
    return np.asarray(_ae(p.config, p.params, r, zi, src, dst, ones, jnp.ones(N, bool)))


def test_round_trip_bit_identical(pot, tmp_path):
    path = tmp_path / "m.e3md"
    pot.save(path, metadata={"rmse": 0.01})
    back = potentials.load(path)
    assert back.config == pot.config
    assert back.metadata == {"note": "test", "rmse": 0.01}
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(pot.params), leaves(back.params), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(energies(back), energies(pot))
    header = io.read_model_file(path).header
    assert header["kind"] == "potential"
    assert header["units"] == {"length": "Å", "energy": "eV"}
    assert header["species"] == [1, 6, 8]
    assert header["format_version"] == io.FORMAT_VERSION


def _split(path):
    data = path.read_bytes()
    n = len(io.MAGIC)
    (hl,) = struct.unpack_from("<Q", data, n)
    header = json.loads(data[n + 8 : n + 8 + hl])
    return header, data[n + 8 + hl :]


def _join(path, header, payload):
    head = json.dumps(header).encode()
    path.write_bytes(io.MAGIC + struct.pack("<Q", len(head)) + head + payload)


@pytest.fixture
def saved(pot, tmp_path):
    path = tmp_path / "m.e3md"
    pot.save(path)
    return path


def test_truncated(saved):
    data = saved.read_bytes()
    for cut in (3, len(io.MAGIC) + 4, 40, len(data) - 10):
        saved.write_bytes(data[:cut])
        with pytest.raises(io.ModelFileError, match="truncated|magic"):
            potentials.load(saved)


def test_tampered_payload(saved):
    data = bytearray(saved.read_bytes())
    data[-5] ^= 0x01
    saved.write_bytes(bytes(data))
    with pytest.raises(io.ModelFileError, match="integrity"):
        potentials.load(saved)


def test_tampered_header_config(saved):
    """Changing the config without touching the payload: params no longer fit -> error."""
    header, payload = _split(saved)
    header["config"]["num_features"] = 5
    _join(saved, header, payload)
    with pytest.raises(io.ModelFileError, match="shape"):
        potentials.load(saved)
    header["config"]["num_features"] = 4
    header["config"]["bogus"] = 1
    _join(saved, header, payload)
    with pytest.raises(io.ModelFileError, match="unknown keys"):
        potentials.load(saved)


def test_wrong_version_and_kind(saved):
    header, payload = _split(saved)
    _join(saved, {**header, "format_version": 2}, payload)
    with pytest.raises(io.ModelFileError, match="format version 2"):
        potentials.load(saved)
    _join(saved, {**header, "kind": "dataset"}, payload)
    with pytest.raises(io.ModelFileError, match="holds a 'dataset'"):
        potentials.load(saved)
    _join(saved, {**header, "units": {"length": "nm", "energy": "eV"}}, payload)
    with pytest.raises(io.ModelFileError, match="units"):
        potentials.load(saved)


def test_bad_magic_and_header(saved, tmp_path):
    data = saved.read_bytes()
    saved.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(io.ModelFileError, match="magic"):
        potentials.load(saved)
    saved.write_bytes(io.MAGIC + struct.pack("<Q", 5) + b"{nope" + b"")
    with pytest.raises(io.ModelFileError, match="malformed JSON"):
        potentials.load(saved)


class _Boom:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickle_payload_never_runs(saved, capsys):
    """A pickle with a valid hash is refused as undecodable; no code runs."""
    header, _ = _split(saved)
    payload = pickle.dumps({"params": _Boom()})
    header["payload"]["size"] = len(payload)
    header["payload"]["sha256"] = hashlib.sha256(payload).hexdigest()
    _join(saved, header, payload)
    with pytest.raises(io.ModelFileError):
        potentials.load(saved)
    assert "pickle code ran" not in capsys.readouterr().out


def test_load_by_name(pot, tmp_path, monkeypatch):
    import e3md.potentials.potential as mod

    (tmp_path / "toy").mkdir()
    pot.save(tmp_path / "toy" / "toy.e3md")
    monkeypatch.setattr(mod, "_SHIPPED", tmp_path)
    assert potentials.available() == ["toy"]
    back = potentials.load("toy")
    np.testing.assert_array_equal(energies(back), energies(pot))
    with pytest.raises(FileNotFoundError, match=r"Shipped potentials: \['toy'\]"):
        potentials.load("rmd17-nothing")


def test_write_rejects_non_json_metadata(pot, tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        pot.save(tmp_path / "x.e3md", metadata={"bad": object()})
    with pytest.raises(ValueError, match="JSON"):
        pot.save(tmp_path / "y.e3md", metadata={"nan": float("nan")})
