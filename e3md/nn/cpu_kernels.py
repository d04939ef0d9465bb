"""Fused CPU kernels for e3md's message passes, built on first use and called through XLA's FFI.

- :func:`rows_kernel`: one configuration of :func:`e3md.nn.rows.coupling_row_messages` (the
  last message pass of the e3md model): forward, the input cotangents forces need, and the
  parameter cotangents (``rows_kernel.cc``).
- :func:`class_sum_kernel`: the per-(receiver, sender class) basis sums of the first message
  pass (``MessagePass(input_index=...)``) and their cotangents (``class_sum_kernel.cc``).
- :func:`basis_kernel`: the model's edge basis (Bessel functions times the cutoff, spherical
  harmonics) from the edge vectors, and the edge vectors' cotangent (``basis_kernel.cc``).
- :func:`atom_kernel`: the per-atom layers of a model iteration (update, self-product, gated
  SiLU, mix) and their input cotangents (``atom_kernel.cc``).
- :func:`gather_kernel`: the reverse mode of a row gather ``x[idx]``, a sum per row
  (``gather_kernel.cc``; :func:`e3md.graph.take_rows`).
- :func:`edge_kernel`: the edge vectors of a Dense neighbour list's rows under a minimum
  image, and the positions' cotangent (``edge_kernel.cc``; :func:`e3md.graph.row_edge_vectors`).
- :func:`library`: any of these sources built and loaded as a plain library; ``spin_kernel.cc``
  has no FFI target (the spinning threads of :mod:`e3md.cores`).

Each C++ source is compiled with the configuration's sizes (and couplings) as constants, by
the system's C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``), for this machine's CPU
(``-march=native``), into a cache folder (``$E3MD_KERNEL_CACHE``, else
``~/.cache/e3md/kernels``) keyed by the source, the configuration, the compiler, jaxlib and the
CPU; later processes load the cached library (a few ms). A build takes a few seconds, once per
configuration and machine.

Where no compiler works, or with ``E3MD_CPU_KERNELS=0``, inside :func:`xla_only`, or when JAX's
default backend is not the CPU, these functions return None and the XLA formulation runs
instead (the same function; a warning says why once per process when a build failed). The
callers make the XLA formulation the kernels' derivative, so second derivatives (parameter
gradients of forces) work either way.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from importlib import resources
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from e3md.compiler import cpu_description

__all__ = [
    "AtomKernel",
    "BasisKernel",
    "ClassSumKernel",
    "EdgeKernel",
    "GatherKernel",
    "RowsKernel",
    "atom_kernel",
    "basis_kernel",
    "class_sum_kernel",
    "edge_kernel",
    "gather_kernel",
    "kernels_enabled",
    "library",
    "reverse_mode_only",
    "rows_kernel",
    "with_reference_derivative",
    "xla_only",
]

_HEADER = "kernel_common.h"  # included by every *_kernel.cc
_log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: dict[str, dict[str, str] | None] = {}
_warned: set[str] = set()
_registered: dict[str, ctypes.CDLL] = {}
build_seconds = 0.0  # time this process spent building kernels (benchmarks report it apart)
_xla_only = threading.local()
_reverse_only = threading.local()


def kernels_enabled() -> bool:
    """Whether e3md may use its compiled CPU kernels in what is traced now
    (``E3MD_CPU_KERNELS`` not ``0``, not inside :func:`xla_only`, and JAX's default backend is
    the CPU)."""
    if getattr(_xla_only, "depth", 0):
        return False
    if os.environ.get("E3MD_CPU_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return jax.default_backend() == "cpu"


@contextlib.contextmanager
def xla_only():
    """Trace with the XLA formulation instead of the CPU kernels (the same function): for
    comparisons, XLA's FLOP count, or forward-mode derivatives.

    The choice is made when a function is traced, so wrap the call that traces (the first call
    of a jitted function, or ``jax.jit(...).lower``)."""
    _xla_only.depth = getattr(_xla_only, "depth", 0) + 1
    try:
        yield
    finally:
        _xla_only.depth -= 1


@contextlib.contextmanager
def reverse_mode_only():
    """Let what is traced inside use the kernels of functions whose XLA formulation would also
    allow forward mode (:func:`class_sum_kernel`, :func:`basis_kernel`): the caller promises
    reverse-mode derivatives only (``jax.grad``/``jax.vjp``, also nested; no
    ``jax.jvp``/``jax.hessian``).
    e3md's model does so where it is given rows of a symmetric list, which already promise it.
    """
    _reverse_only.depth = getattr(_reverse_only, "depth", 0) + 1
    try:
        yield
    finally:
        _reverse_only.depth -= 1


@dataclasses.dataclass(frozen=True)
class RowsKernel:
    """The three FFI targets of one configuration; see ``rows_kernel.cc`` for the math."""

    targets: dict[str, str]
    n3: int

    def forward(self, wk, te, x, rad, y, w, adj):
        """``out [N, n3, F]``."""
        out = jax.ShapeDtypeStruct((adj.shape[0], self.n3, x.shape[-1]), x.dtype)
        return _call(self.targets["fwd"], out, wk, te, x, rad, y, w, _int32(adj))

    def backward(self, wk, te, x, rad, y, w, adj, g):
        """``(dx, drad, dy)``."""
        outs = _like(x, rad, y)
        return _call(self.targets["bwd"], outs, wk, te, x, rad, y, w, _int32(adj), g)

    def grad(self, wk, te, x, rad, y, w, adj, g):
        """``(dwk, dte, dw)``."""
        outs = _like(wk, te, w)
        return _call(self.targets["grad"], outs, wk, te, x, rad, y, w, _int32(adj), g)


@dataclasses.dataclass(frozen=True)
class ClassSumKernel:
    """The two FFI targets of the class sums; see ``class_sum_kernel.cc`` for the math."""

    targets: dict[str, str]

    def forward(self, rad, y, w, seg, size: int):
        """``out [size, LM, K]`` from ``rad [E, K]``, ``y [E, LM]``, ``w [E]``, ``seg [E]``."""
        out = jax.ShapeDtypeStruct((size, y.shape[-1], rad.shape[-1]), rad.dtype)
        return _call(self.targets["fwd"], out, rad, y, w, _int32(seg))

    def backward(self, rad, y, w, seg, g):
        """``(drad, dy, dw)``."""
        return _call(self.targets["bwd"], _like(rad, y, w), rad, y, w, _int32(seg), g)


@dataclasses.dataclass(frozen=True)
class BasisKernel:
    """The two FFI targets of the edge basis; see ``basis_kernel.cc`` for the math."""

    targets: dict[str, str]
    num: int
    rows: int

    def forward(self, v):
        """``(radial [E, K], angular [E, (L+1)^2])`` from edge vectors ``v [E, 3]`` (Å)."""
        outs = tuple(jax.ShapeDtypeStruct((v.shape[0], n), v.dtype) for n in (self.num, self.rows))
        return _call(self.targets["fwd"], outs, v)

    def backward(self, v, dradial, dangular):
        """``dv [E, 3]``."""
        return _call(self.targets["bwd"], _like(v), v, dradial, dangular)[0]


@dataclasses.dataclass(frozen=True)
class AtomKernel:
    """The two FFI targets of one iteration's per-atom layers; see ``atom_kernel.cc``."""

    targets: dict[str, str]

    def forward(self, x0, m, w, bias, t):
        """``out [N, LM, F]`` from ``x0 [N, R0, F]`` (``R0 <= LM``), ``m [N, LM, F]``, the
        Dense weights ``w [4, L+1, F, F]`` and biases ``bias [4, F]`` (update, a, b, mix) and the
        self-product's couplings ``t [nnz, F]``."""
        return _call(self.targets["fwd"], _like(m), x0, m, w, bias, t)[0]

    def backward(self, x0, m, w, bias, t, g):
        """``(dx0, dm)``."""
        return _call(self.targets["bwd"], _like(x0, m), x0, m, w, bias, t, g)


@dataclasses.dataclass(frozen=True)
class GatherKernel:
    """The FFI target of a row gather's reverse mode; see ``gather_kernel.cc``."""

    targets: dict[str, str]

    def backward(self, idx, g, rows: int):
        """``out [rows, C]``: the sums of ``g [E, C]`` over the edges of each ``idx [E]``
        (indices outside ``[0, rows)`` dropped)."""
        out = jax.ShapeDtypeStruct((rows, g.shape[-1]), g.dtype)
        return _call(self.targets["bwd"], out, _int32(idx), g)


@dataclasses.dataclass(frozen=True)
class EdgeKernel:
    """The two FFI targets of the rows' edge vectors; see ``edge_kernel.cc`` for the math."""

    targets: dict[str, str]

    def forward(self, R, idx, a, b):
        """``r [N * M, 3]`` from positions ``R [N, 3]``, the rows ``idx [N, M]`` and the
        space's matrices ``a``, ``b`` (``[3, 3]``)."""
        out = jax.ShapeDtypeStruct((idx.size, 3), R.dtype)
        return _call(self.targets["fwd"], out, R, _int32(idx), a, b)

    def backward(self, idx, g):
        """``dR [N, 3]`` from ``g [N * M, 3]``."""
        out = jax.ShapeDtypeStruct((idx.shape[0], 3), g.dtype)
        return _call(self.targets["bwd"], out, _int32(idx), g)


def with_reference_derivative(forward, backward, reference_backward):
    """``f(*args) = forward(*args)`` with the reverse-mode rule ``backward(args, g)`` -- the
    kernels, which JAX cannot differentiate -- whose own derivative is that of
    ``reference_backward(args, g)``, the same function as JAX operations: second derivatives
    (parameter gradients of forces) then go through the reference."""

    @jax.custom_vjp
    def rule(args, g):
        return backward(args, g)

    def rule_derivative(primals, ct):
        return jax.vjp(reference_backward, *primals)[1](ct)

    # both forward rules call the function itself, so that an outer derivative takes the
    # custom rule too instead of differentiating the kernel call
    rule.defvjp(lambda args, g: (rule(args, g), (args, g)), rule_derivative)

    @jax.custom_vjp
    def f(*args):
        return forward(*args)

    f.defvjp(lambda *args: (f(*args), args), rule)
    return f


def _int32(a):
    return a.astype(jnp.int32)


def _like(*arrays):
    return tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays)


def _call(target, outs, *args):
    return jax.ffi.ffi_call(target, outs, vmap_method="sequential")(*args)


def _real(dtype) -> dict | None:
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return {"E3MD_REAL": "float", "E3MD_DTYPE": "F32"}
    if dtype == np.float64:
        return {"E3MD_REAL": "double", "E3MD_DTYPE": "F64"}
    return None


def _support_defines(support: np.ndarray) -> dict:
    """The -D flags of a product's nonzero couplings ``support [nnz, 3]`` (E3MD_NNZ and the
    columns E3MD_SI, E3MD_SJ, E3MD_SK)."""
    columns = {f"E3MD_S{c}": ",".join(map(str, support[:, q])) for q, c in enumerate("IJK")}
    return {"E3MD_NNZ": support.shape[0], **columns}


def rows_kernel(
    *, features: int, radial: int, filter_degree: int, n2: int, n3: int, support, dtype
) -> RowsKernel | None:
    """The compiled kernels for this configuration, or None where they cannot be used.

    Args:
      features: F.
      radial: K, radial functions per edge.
      filter_degree: Lb (the filter has ``(Lb+1)**2`` rows).
      n2, n3: input and output rows (``P * (L+1)**2``).
      support: the nonzero couplings ``[nnz, 3]`` of (filter row, input row, output row).
      dtype: float32 or float64.
    """
    real = _real(dtype)
    support = np.asarray(support, np.int64).reshape(-1, 3)
    if not kernels_enabled() or real is None or support.shape[0] == 0:
        return None
    defines = {
        **real,
        "E3MD_F": features,
        "E3MD_K": radial,
        "E3MD_L1": filter_degree + 1,
        "E3MD_N1": (filter_degree + 1) ** 2,
        "E3MD_N2": n2,
        "E3MD_N3": n3,
        **_support_defines(support),
    }
    targets = _targets("rows", defines, ("fwd", "bwd", "grad"))
    return None if targets is None else RowsKernel(targets, n3)


def class_sum_kernel(*, rows: int, radial: int, dtype) -> ClassSumKernel | None:
    """The compiled class-sum kernels for ``rows`` angular rows and ``radial`` functions, or
    None where they cannot be used: also outside :func:`reverse_mode_only` (the sums are
    reverse-mode only with the kernels, forward-mode too without)."""
    real = _real(dtype)
    if not kernels_enabled() or real is None or not getattr(_reverse_only, "depth", 0):
        return None
    targets = _targets("class_sum", {**real, "E3MD_LM": rows, "E3MD_K": radial}, ("fwd", "bwd"))
    return None if targets is None else ClassSumKernel(targets)


def basis_kernel(
    *, max_degree: int, num: int, limit: float, cutoff: float, cutoff_fn: str, dtype
) -> BasisKernel | None:
    """The compiled edge-basis kernels: the Bessel radial basis (``num`` functions on
    ``[0, limit]`` Å) times the ``cutoff_fn`` (``"smooth"`` or ``"cosine"``, radius ``cutoff``
    Å), and the Racah-normalised real spherical harmonics up to ``max_degree`` in e3x's
    Cartesian order -- :func:`e3md.nn.basis` with ``factored=True``. None where they cannot be
    used, also outside :func:`reverse_mode_only` (as :func:`class_sum_kernel`)."""
    from e3md.so3._common import cartesian_permutation
    from e3md.so3.harmonics import _normalization_factors

    real = _real(dtype)
    if not kernels_enabled() or real is None or not getattr(_reverse_only, "depth", 0):
        return None
    if cutoff_fn not in ("smooth", "cosine"):
        raise ValueError(f"no basis kernel for the cutoff {cutoff_fn!r}")
    perm = cartesian_permutation(max_degree)
    norm = _normalization_factors(max_degree, "racah")[perm]
    defines = {
        **real,
        "E3MD_L": max_degree,
        "E3MD_K": num,
        "E3MD_LIMIT": repr(float(limit)),
        "E3MD_RC": repr(float(cutoff)),
        "E3MD_COSINE": int(cutoff_fn == "cosine"),
        "E3MD_YNORM": ",".join(repr(float(c)) for c in norm),
        "E3MD_YPERM": ",".join(str(int(i)) for i in perm),
    }
    targets = _targets("basis", defines, ("fwd", "bwd"))
    return None if targets is None else BasisKernel(targets, num, (max_degree + 1) ** 2)


def gather_kernel(*, columns: int, dtype) -> GatherKernel | None:
    """The compiled reverse mode of a gather of rows of ``columns`` values, or None where it
    cannot be used: also outside :func:`reverse_mode_only` (a gather allows forward mode)."""
    real = _real(dtype)
    if not kernels_enabled() or real is None or not getattr(_reverse_only, "depth", 0):
        return None
    targets = _targets("gather", {**real, "E3MD_C": columns}, ("bwd",))
    return None if targets is None else GatherKernel(targets)


def edge_kernel(*, rows: int, dtype) -> EdgeKernel | None:
    """The compiled edge-vector kernels for rows of ``rows`` slots, or None where they cannot be
    used: also outside :func:`reverse_mode_only` (the XLA formulation allows forward mode)."""
    real = _real(dtype)
    if not kernels_enabled() or real is None or not getattr(_reverse_only, "depth", 0):
        return None
    targets = _targets("edge", {**real, "E3MD_M": rows}, ("fwd", "bwd"))
    return None if targets is None else EdgeKernel(targets)


def atom_kernel(*, features: int, max_degree: int, support, dtype) -> AtomKernel | None:
    """The compiled per-atom kernels of an iteration with ``features`` and degrees up to
    ``max_degree`` whose self-product has the nonzero couplings ``support [nnz, 3]`` of
    (a row, b row, output row); None where they cannot be used, also outside
    :func:`reverse_mode_only` (its XLA formulation allows forward mode)."""
    real = _real(dtype)
    support = np.asarray(support, np.int64).reshape(-1, 3)
    if not kernels_enabled() or real is None or not getattr(_reverse_only, "depth", 0):
        return None
    defines = {
        **real,
        "E3MD_F": features,
        "E3MD_L": max_degree,
        **_support_defines(support),
    }
    targets = _targets("atom", defines, ("fwd", "bwd"))
    return None if targets is None else AtomKernel(targets)


def _targets(name: str, defines: dict, kinds: tuple[str, ...]) -> dict[str, str] | None:
    """FFI target names of ``{name}_kernel.cc`` built with ``defines`` (built, loaded and
    registered once per process)."""
    key = repr((name, sorted(defines.items())))
    with _lock:
        if key not in _loaded:
            _loaded[key] = _load(name, defines, kinds)
        return _loaded[key]


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cache_dir() -> Path:
    base = os.environ.get("E3MD_KERNEL_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "e3md" / "kernels"


def library(name: str, defines: dict | None = None) -> tuple[ctypes.CDLL, str] | None:
    """``{name}_kernel.cc`` built with ``defines`` (from the cache where it is there), loaded;
    with its build's digest. None where no compiler works (a warning says why once)."""
    cxx = _compiler()
    if cxx is None:
        _warn_once("no C++ compiler found (set CXX)")
        return None
    package = resources.files("e3md.nn")
    source = package.joinpath(f"{name}_kernel.cc").read_text()
    header = package.joinpath(_HEADER).read_text()
    flags = ["-O3", "-march=native", "-std=c++17", "-shared"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.insert(2, "-mprefer-vector-width=512")  # GCC and clang default to 256 bits
    flags += ["-fPIC", "-fno-math-errno", "-fopenmp-simd"]
    flags += [f"-D{k}={v}" for k, v in (defines or {}).items()]
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = [source, header, *flags, version, jax.lib.__version__, cpu_description()]
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]
    path = _cache_dir() / f"{name}_{digest}.so"
    if not _intact(path) and not _build(cxx, flags, source, header, path):
        return None
    try:
        return ctypes.CDLL(str(path)), digest
    except OSError as err:
        _warn_once(f"cannot load {path}: {err}")
        return None


def _load(name: str, defines: dict, kinds: tuple[str, ...]) -> dict[str, str] | None:
    built = library(name, defines)
    if built is None:
        return None
    lib, digest = built
    targets = {}
    for kind in kinds:
        target = f"e3md_{name}_{kind}_{digest}"
        if target not in _registered:  # XLA refuses a second registration of a name
            capsule = jax.ffi.pycapsule(getattr(lib, f"e3md_{name}_{kind}"))
            jax.ffi.register_ffi_target(target, capsule, platform="cpu")
            _registered[target] = lib  # the library stays loaded while XLA may call it
        targets[kind] = target
    return targets


def _stamp(path: Path) -> Path:
    return path.with_suffix(".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(path: Path) -> bool:
    """The cached library exists and is the one built (a truncated or altered file is built
    again, not loaded)."""
    try:
        return _stamp(path).read_text().strip() == _sha256(path)
    except OSError:
        return False


def _build(cxx: str, flags: list[str], source: str, header: str, path: Path) -> bool:
    global build_seconds
    start = time.perf_counter()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            src = Path(tmp) / "kernel.cc"
            src.write_text(source)
            (Path(tmp) / _HEADER).write_text(header)
            built = Path(tmp) / path.name
            cmd = [cxx, *flags, f"-I{jax.ffi.include_dir()}", str(src), "-o", str(built)]
            _log.info("building e3md's CPU kernel %s (once for this CPU)", path.name)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                _warn_once(f"{cxx} failed:\n{proc.stderr[-2000:]}")
                return False
            # atomic replacements: concurrent builds leave one whole library and its hash
            stamp = Path(tmp) / "sha256"
            stamp.write_text(_sha256(built))
            os.replace(built, path)
            os.replace(stamp, _stamp(path))
            return True
    except OSError as err:
        _warn_once(f"cannot build in {path.parent}: {err}")
        return False
    finally:
        build_seconds += time.perf_counter() - start


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"e3md's CPU kernels are not available ({reason}); using the XLA formulation "
            "(the same function, slower on CPU)",
            RuntimeWarning,
            stacklevel=3,
        )
