"""Checkpoints in a safe format: one ``.npz`` (``allow_pickle=False``) with a JSON header.

Layout of a checkpoint file::

    __header__   uint8[...]   UTF-8 JSON: format, e3md version, metadata, sha256 of the arrays
    <name>       any numeric array, e.g. ``state/position``, ``neighbor/idx``

The sha256 covers every array's name, dtype, shape and bytes (sorted by name), so a truncated,
edited or mixed-up file is refused on load. Nothing is ever pickled. Files are written to a
temporary name in the same directory, flushed, fsynced and renamed, so a crash never leaves a
half-written file under the final name.
"""

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "e3md-md-checkpoint"
FORMAT_VERSION = 1


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The temporary file keeps ``path``'s extension (``suffix``), so writers that infer a format
    from the name (``ase.io``) still work. On an exception the temporary file is removed and
    ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part" + suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype.str).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict[str, Any]
) -> None:
    """Write ``arrays`` and JSON-serialisable ``metadata`` atomically to ``path`` (.npz).

    Raises:
      ValueError: an array has an object dtype (it would need pickle).
    """
    from e3md import __version__

    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise ValueError(f"checkpoint array {k!r} has dtype object; refusing to pickle")
        if k == "__header__":
            raise ValueError("'__header__' is reserved")
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "e3md_version": __version__,
        "sha256": _digest(arrays),
        "metadata": metadata,
    }
    buf = io.BytesIO()
    blob = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
    np.savez(buf, __header__=blob, **arrays)
    with atomic_path(path, suffix=".npz") as tmp:
        tmp.write_bytes(buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its hash.

    Returns:
      ``(arrays, metadata)``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a checkpoint, unknown format version, or the hash does not match.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile / format errors
        raise ValueError(f"{path} is not a readable e3md checkpoint: {e}") from e
    if "__header__" not in arrays:
        raise ValueError(f"{path} is not an e3md checkpoint (no header)")
    header = json.loads(arrays.pop("__header__").tobytes().decode())
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {header.get('format')!r}")
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format version {header.get('format_version')} "
            f"is not supported (expected {FORMAT_VERSION})"
        )
    digest = _digest(arrays)
    if digest != header.get("sha256"):
        raise ValueError(
            f"{path}: checkpoint hash mismatch (file {header.get('sha256')}, content {digest});"
            " the file is corrupt or was modified"
        )
    return arrays, header["metadata"]
