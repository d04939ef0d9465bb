"""Safe model files (``*.e3md``): a JSON header plus a flax msgpack payload. Never pickles.

File layout (all integers little-endian)::

    b"E3MD\\x00"                 5-byte magic
    uint64 header_length         bytes of the UTF-8 JSON header that follows
    header (JSON, UTF-8)         see below
    payload                      flax.serialization msgpack of the parameter state dict

The header is a JSON object::

    {"format": "e3md-model", "format_version": 1, "e3md_version": "0.1.0",
     "kind": "potential", "config": {...}, "units": {"length": "Å", "energy": "eV"},
     "species": [1, 6, 8], "metadata": {...},
     "payload": {"encoding": "flax-msgpack", "size": 12345, "sha256": "..."}}

Reading checks, in order, and raises :class:`ModelFileError` (a ``ValueError``) naming the
problem: magic, header length and JSON, format name and version, kind, payload size
(truncation), sha256 (tampering), then decodes the payload with ``flax.serialization
.msgpack_restore``, which only builds dicts, lists, numbers, strings and numpy arrays -- no code
is ever run while loading.
"""

import dataclasses
import hashlib
import json
import os
import struct
from typing import Any

import numpy as np

from e3md._version import __version__

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAGIC",
    "ModelFile",
    "ModelFileError",
    "read_model_file",
    "write_model_file",
]

MAGIC = b"E3MD\x00"
FORMAT_NAME = "e3md-model"
FORMAT_VERSION = 1
_LEN = struct.Struct("<Q")
_MAX_HEADER = 16 * 1024 * 1024
UNITS = {"length": "Å", "energy": "eV"}


class ModelFileError(ValueError):
    """A model file is unreadable, corrupt, tampered with, or of the wrong version or kind."""


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """Contents of a model file.

    Attributes:
      header: the decoded JSON header (see module docstring).
      params: parameter state dict: nested dicts of numpy arrays.
    """

    header: dict
    params: dict

    @property
    def kind(self) -> str:
        return self.header["kind"]

    @property
    def config(self) -> dict:
        return self.header["config"]

    @property
    def metadata(self) -> dict:
        return self.header["metadata"]


def _to_state_dict(params: Any) -> Any:
    from flax import serialization

    state = serialization.to_state_dict(params)

    def convert(x):
        if isinstance(x, dict):
            return {str(k): convert(v) for k, v in x.items()}
        return np.asarray(x)

    return convert(state)


def write_model_file(
    path: str | os.PathLike,
    *,
    kind: str,
    config: dict,
    species: list[int] | tuple[int, ...],
    params: Any,
    metadata: dict | None = None,
) -> None:
    """Write a model file (atomically: a temporary file is renamed into place).

    Args:
      path: destination, conventionally ending in ``.e3md``.
      kind: what the file holds, e.g. ``"potential"``; readers ask for a kind.
      config: JSON-compatible model configuration.
      species: atomic numbers the model knows.
      params: parameter pytree (nested dicts of arrays, e.g. flax variables).
      metadata: JSON-compatible free-form information (training set, errors, date, ...).

    Raises:
      ValueError: if ``config``/``metadata`` are not JSON-serialisable.
    """
    from flax import serialization

    payload = serialization.msgpack_serialize(_to_state_dict(params))
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "e3md_version": __version__,
        "kind": str(kind),
        "config": config,
        "units": dict(UNITS),
        "species": [int(z) for z in species],
        "metadata": metadata or {},
        "payload": {
            "encoding": "flax-msgpack",
            "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        },
    }
    try:
        head = json.dumps(header, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"model header is not JSON-serialisable: {err}") from None
    head_bytes = head.encode("utf-8")
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(MAGIC)
        fh.write(_LEN.pack(len(head_bytes)))
        fh.write(head_bytes)
        fh.write(payload)
    os.replace(tmp, path)


def read_model_file(path: str | os.PathLike, *, kind: str | None = None) -> ModelFile:
    """Read and verify a model file.

    Args:
      path: the file.
      kind: if given, the file's ``kind`` must equal it.

    Returns:
      The verified :class:`ModelFile`.

    Raises:
      FileNotFoundError: no such file.
      ModelFileError: bad magic, truncated, malformed header, unsupported format version,
        wrong kind, payload size or sha256 mismatch, undecodable payload.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        data = fh.read()
    where = f"model file {path!r}"
    if data[: len(MAGIC)] != MAGIC:
        raise ModelFileError(f"{where} is not an e3md model file (bad magic bytes)")
    pos = len(MAGIC)
    if len(data) < pos + _LEN.size:
        raise ModelFileError(f"{where} is truncated (no header length)")
    (head_len,) = _LEN.unpack_from(data, pos)
    pos += _LEN.size
    if head_len > _MAX_HEADER or len(data) < pos + head_len:
        raise ModelFileError(
            f"{where} is truncated or corrupt: header of {head_len} bytes announced, "
            f"{len(data) - pos} bytes present"
        )
    try:
        header = json.loads(data[pos : pos + head_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{where} has a malformed JSON header: {err}") from None
    pos += head_len
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{where}: header does not declare format {FORMAT_NAME!r}")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{where} has format version {version!r}; this e3md ({__version__}) reads version "
            f"{FORMAT_VERSION}"
        )
    required = ("e3md_version", "kind", "config", "units", "species", "metadata", "payload")
    missing = [k for k in required if k not in header]
    if missing:
        raise ModelFileError(f"{where}: header lacks {missing}")
    if kind is not None and header["kind"] != kind:
        raise ModelFileError(f"{where} holds a {header['kind']!r}, expected a {kind!r}")
    if header["units"] != UNITS:
        raise ModelFileError(f"{where} uses units {header['units']}, expected {UNITS}")
    info = header["payload"]
    if not isinstance(info, dict) or info.get("encoding") != "flax-msgpack":
        raise ModelFileError(f"{where}: unsupported payload encoding {info!r}")
    payload = data[pos:]
    if len(payload) != info.get("size"):
        raise ModelFileError(
            f"{where} is truncated or has trailing data: payload has {len(payload)} bytes, "
            f"header says {info.get('size')}"
        )
    digest = hashlib.sha256(payload).hexdigest()
    if digest != info.get("sha256"):
        raise ModelFileError(
            f"{where} failed its integrity check (sha256 {digest} != {info.get('sha256')}); "
            "the parameters were modified or corrupted"
        )
    from flax import serialization

    try:
        params = serialization.msgpack_restore(payload)
    except Exception as err:  # msgpack raises several types; all mean "corrupt"
        raise ModelFileError(f"{where}: payload cannot be decoded: {err}") from None
    if not isinstance(params, dict):
        raise ModelFileError(f"{where}: payload is not a parameter dict")
    return ModelFile(header=header, params=params)
