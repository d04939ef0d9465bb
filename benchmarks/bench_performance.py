"""Issue 9: energy+forces throughput of the e3md potential vs equal-size peers (one run).

Contenders, all on the SAME periodic water box, the SAME displacement function
(``e3md.space.periodic``, jax-md's ``space.periodic`` with a vectorised minimum image;
``--displacement jax-md`` for jax-md's own) and the SAME jax-md neighbour list (cutoff
5 Å, no skin): the peers share its ``Sparse`` format (``capacity_multiplier`` 1.25, jax-md's
default, so padded edges are shared as well), e3md uses its defaults, the ``Dense`` format of
the same list (rows of ``M`` slots per atom, ``M`` = 1.1 x the largest neighbour count, about
as many slots as the Sparse list has edges; its padding is counted in its time):

* ``e3md``: the e3md potential (``e3md.potentials``; ``energy_fn`` of
  :func:`e3md.potentials.energy.neighbor_list`, energy and ``jax.grad`` forces).
* ``e3x Fused``: the same architecture written with e3x modules (``e3x.nn.MessagePass`` with
  ``FusedTensor``, e3x ``Dense``/``Embed``/``FusedTensor`` self-product/``silu``/``basis``). It
  runs with e3md's parameters (identical parameter trees), and the script checks that both
  give the same energy, so this column is exactly the same mathematical function.
* ``e3x Tensor``: the same with e3x's full Clebsch-Gordan ``Tensor`` (e3x's default) in the
  message pass and the self-product (its own random parameters; different function, same size).
* ``nequip``: ``jax_md.energy.nequip_neighbor_list`` with hidden irreps ``F x 0e + F x 1o
  (+ F x 2e)`` (natural parity, no pseudotensors), ``sh_irreps`` up to ``L``, ``graph_net_steps
  = iterations``, ``num_basis = K``, ``r_max`` = 5 Å and its default radial MLP (2 x 64).

Sizes: small (F, L, iterations, K) = (32, 1, 2, 8), medium = (64, 2, 2, 8); 192, 1536 atoms by
default, 12288 and ~100k with ``--large``. For each (size, atoms) cell every
contender is compiled first (compile time = trace + lower + XLA compile), then the timed calls
are interleaved round-robin (``--rounds``) after a warm-up and the median is reported, so the
ratios of one cell come from the same run under the same machine load. In each round every
contender makes untimed calls for at least 20 ms (``--warm-up-s``; at least one call) right
before its timed one (as in MD, where the potential is called once per step, back to back), so
no contender is timed on caches, buffers and cores its predecessor left cold (until session 7
the timed call came right after the previous contender's; until session 16 one untimed call).

Columns: atom-steps/s = atoms / median seconds per energy+forces call; ``x nequip`` = ratio
to nequip in the same cell; ``% peak`` = XLA cost-analysis FLOPs / time / matmul peak, where
the peak is a jitted float32 2048^3 matmul measured in the same run (for e3md the FLOPs of its
XLA formulation: XLA counts none inside e3md's CPU kernels); ``useful % peak`` uses
instead the FLOPs an ideal implementation of e3md's function needs (:func:`ideal_flops`, real
edges only, no padding, 3 x forward for energy+forces); memory = XLA memory analysis of the
compiled program (arguments + outputs + temporaries, GiB) and the measured peak RSS growth of
the process during the first call (VmHWM after resetting it, minus the RSS before).

Every contender is called with its parameters raveled into one flat array (unraveled inside
the jitted function, :func:`flat_parameters`): one argument instead of one per parameter array,
whose handling costs JAX and XLA ~2 µs each per call here (session 18); ``--pytree-params``
passes each its own parameter pytree instead.

XLA options: e3md compiles with its own (``e3md.compiler``: on CPU the classic fusion emitter),
as every e3md entry point does; the peers with XLA's defaults, as their users run them.
``--peers-with-e3md-options`` gives the peers e3md's options too, and the contender
``"e3md xla-defaults"`` is e3md compiled with XLA's defaults (how much of a ratio is the
options). The header line prints the options used. The contender ``"e3md sparse"`` is e3md on
the shared Sparse list (the edge path, as in training and for forward-mode derivatives): how
much of a ratio is the rows layout. ``"e3md no-kernels"`` is e3md without its compiled CPU
kernels (``e3md.nn.cpu_kernels``): every step as XLA operations.

``--scaling`` times e3md alone at every ``--atoms``, the rounds interleaved across them, and
prints the time per atom against the median; with ``--steps K`` each timed call is K energy +
forces evaluations inside one jitted loop (:func:`in_loop`), as the MD driver runs its steps,
and the time is per evaluation.

A contender whose XLA memory estimate exceeds ``--mem-limit-gib`` (default: 90 % of the
device's free memory: the GPU's, or the available RAM on CPU) is compiled and reported but not
run ("does not fit").

Usage::

    python benchmarks/bench_performance.py --quick     # 192 atoms, both sizes, 5 rounds
    python benchmarks/bench_performance.py             # 192 and 1536 atoms
    python benchmarks/bench_performance.py --large     # + 12288 atoms and ~100k
    python benchmarks/bench_performance.py --models e3md --atoms 98304 --fit-gib 24
    python benchmarks/bench_performance.py --models e3md,nequip --atoms 1536 --sizes medium
    python benchmarks/bench_performance.py --peers-with-e3md-options
    python benchmarks/bench_performance.py --models "e3md,e3md xla-defaults" --large
    python benchmarks/bench_performance.py --scaling --atoms 192,1536,12288,98304
    python benchmarks/bench_performance.py --scaling --steps 20 --atoms 192,1536,12288
    python benchmarks/bench_performance.py --models "e3md,e3md sparse" --large
    python benchmarks/bench_performance.py --models "e3md,e3md no-kernels" --atoms 1536
"""

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from e3md.potentials.model import EDGE_CHUNK

SIZES = {"small": (32, 1, 2, 8), "medium": (64, 2, 2, 8)}
CUTOFF = 5.0  # Å
CAPACITY = 1.25  # capacity multiplier of the shared Sparse list (jax-md's default)
# the periodic space all contenders share (--displacement): e3md.space.periodic (jax-md's with a
# vectorised minimum image) or jax_md.space.periodic (a scalar fmod per component on the CPU)
DISPLACEMENTS = ("e3md", "jax-md")
displacement_kind = DISPLACEMENTS[0]
# untimed calls before each timed one last at least this long (at least one call; see
# _warm_up)
WARM_UP_S = 0.02
MODELS = ("e3md", "e3x Fused", "e3x Tensor", "nequip")
# also available: e3md compiled with XLA's default options instead of e3md's (A/B of the options)
E3MD_XLA_DEFAULTS = "e3md xla-defaults"
# and e3md on the shared Sparse list (edges) instead of its Dense rows (A/B of the layouts)
E3MD_SPARSE = "e3md sparse"
# and e3md without its CPU kernels (e3md.nn.cpu_kernels; XLA operations only, A/B)
E3MD_NO_KERNELS = "e3md no-kernels"
E3MD_VARIANTS = (E3MD_XLA_DEFAULTS, E3MD_SPARSE, E3MD_NO_KERNELS)
# every contender takes its parameters as one flat array (False: as its own pytree; --pytree-params)
FLAT_PARAMS = True
WATER_MOLECULE_VOLUME = 18.015 / (0.602214 * 0.997)  # Å^3 per molecule at 0.997 g/cm^3


# ----------------------------------------------------------------------------------------------
# System and neighbour list
# ----------------------------------------------------------------------------------------------


def water_box(molecules_per_side: int, seed: int = 0):
    """A periodic cubic box of water at 0.997 g/cm^3: molecules on a simple cubic grid with
    random orientations (O-H 0.9572 Å, H-O-H 104.52°) and a small jitter.

    Returns:
      ``(positions [N, 3] Å, atomic_numbers [N], box side Å)`` with ``N = 3 n^3``.
    """
    rng = np.random.default_rng(seed)
    n = molecules_per_side
    a = WATER_MOLECULE_VOLUME ** (1 / 3)
    side = n * a
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3) * a
    half = np.deg2rad(104.52) / 2
    local = 0.9572 * np.array(
        [[0, 0, 0], [np.sin(half), np.cos(half), 0], [-np.sin(half), np.cos(half), 0]]
    )
    q, r = np.linalg.qr(rng.normal(size=(len(grid), 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    mol = (
        np.einsum("mij,aj->mai", q, local)
        + grid[:, None, :]
        + rng.normal(scale=0.05, size=(len(grid), 1, 3))
    )
    pos = np.mod(mol.reshape(-1, 3), side)
    z = np.tile(np.array([8, 1, 1]), len(grid))
    return pos, z, side


def molecules_per_side(num_atoms: int) -> int:
    return max(2, round((num_atoms / 3) ** (1 / 3)))


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def e3md_config(size: str, avg_num_neighbors: float):
    from e3md.potentials import ModelConfig

    f, l, t, k = SIZES[size]
    return ModelConfig(
        species=(1, 8),
        cutoff=CUTOFF,
        max_degree=l,
        num_features=f,
        num_iterations=t,
        num_basis=k,
        readout_features=f,
        avg_num_neighbors=avg_num_neighbors,
    )


def _peer_module(config, fused: bool):
    """e3md's architecture (``potentials/model.py``) written with e3x layers."""
    import e3x
    import flax.linen as nn

    import e3md.nn

    class PeerModel(nn.Module):
        @nn.compact
        def __call__(self, r_ij, z, src, dst, edge_mask):
            cfg = config
            L, F = cfg.max_degree, cfg.num_features
            n = z.shape[0]
            src_c = jnp.clip(src, 0, n - 1)
            dst_c = jnp.clip(dst, 0, n - 1)
            mask = edge_mask & (src < n) & (dst < n)
            safe = jnp.asarray([0.5 * cfg.cutoff, 0.0, 0.0], r_ij.dtype)
            r_ij = jnp.where(mask[:, None], r_ij, safe)
            basis = e3x.nn.basis(
                r_ij,
                max_degree=L,
                num=cfg.num_basis,
                radial_fn=functools.partial(e3md.nn.bessel, limit=cfg.cutoff),
                cutoff_fn=functools.partial(e3x.nn.smooth_cutoff, cutoff=cfg.cutoff),
            )
            weights = (mask.astype(r_ij.dtype) / cfg.avg_num_neighbors)[:, None, None, None]
            x = e3x.nn.Embed(num_embeddings=cfg.num_species, features=F)(z)
            for t in range(cfg.num_iterations):
                out_degree = 0 if t == cfg.num_iterations - 1 else L
                m = e3x.nn.MessagePass(
                    max_degree=out_degree,
                    include_pseudotensors=False,
                    use_fused_tensor=fused,
                    use_basis_bias=False,
                    name=f"message_{t}",
                )(x, basis, weights, src_idx=src_c, dst_idx=dst_c, num_segments=n)
                lm = (out_degree + 1) ** 2
                have = x.shape[-2]
                x = (
                    x[..., :lm, :]
                    if have >= lm
                    else jnp.pad(x, ((0, 0), (0, 0), (0, lm - have), (0, 0)))
                )
                x = x + e3x.nn.Dense(F, name=f"update_{t}")(m)
                if cfg.self_product and out_degree > 0:
                    a = e3x.nn.Dense(F, name=f"self_a_{t}")(x)
                    b = e3x.nn.Dense(F, name=f"self_b_{t}")(x)
                    tensor = e3x.nn.FusedTensor if fused else e3x.nn.Tensor
                    x = x + tensor(
                        max_degree=out_degree, include_pseudotensors=False, name=f"self_product_{t}"
                    )(a, b)
                x = e3x.nn.Dense(F, name=f"mix_{t}")(e3x.nn.silu(x))
            h = x[..., 0:1, 0:1, :]
            h = e3x.nn.silu(e3x.nn.Dense(cfg.readout_features, name="readout_hidden")(h))
            nn_i = e3x.nn.Dense(1, name="readout")(h)[:, 0, 0, 0]
            e0 = jnp.asarray(cfg.e0, r_ij.dtype)[z]
            return cfg.scale * nn_i + cfg.shift + e0

    return PeerModel()


@dataclasses.dataclass
class Contender:
    name: str
    fn: object  # (params, R, neighbor) -> (energy, gradient)
    params: object
    energy: object = None  # (params, R, neighbor) -> energy, for the cross-check
    flops_fn: object = None  # same function as fn, if XLA's FLOP count of fn would be wrong
    compiler_options: dict = dataclasses.field(default_factory=dict)  # XLA options of its jit
    neighbor: object = None  # its own list of the same pairs (None: the shared Sparse list)

    def nbrs(self, shared):
        return shared if self.neighbor is None else self.neighbor


def flat_parameters(c: Contender) -> Contender:
    """``c`` called with its parameters raveled into one array (``jax.flatten_util``), unraveled
    inside the jitted function: one argument instead of one per parameter array (e3md's model
    has 49, each costing about 2 µs per call here, mostly in JAX's and XLA's per-argument
    handling; the ASE calculator passes e3md's parameters the same way)."""
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(c.params)

    def flattened(f):
        return None if f is None else (lambda p, R, nb: f(unravel(p), R, nb))

    return dataclasses.replace(
        c,
        fn=flattened(c.fn),
        params=flat,
        energy=flattened(c.energy),
        flops_fn=flattened(c.flops_fn),
    )


def build_contenders(
    size, names, system, seed=0, edge_chunk=EDGE_CHUNK, peer_options=None, skin=0.0
):
    """Build every requested contender on ``system`` (from :func:`build_system`); returns
    ``({name: Contender}, e3md config)``.

    e3md runs on its default neighbour list, jax-md's ``Dense`` format of the same pairs
    (same cutoff, skin and capacity multiplier; rows of a symmetric list, which its
    reverse-mode rule needs), the peers on the shared ``Sparse`` list.

    e3md compiles with e3md's XLA options (``e3md.compiler``, as every e3md jit does); the
    peers with ``peer_options`` (default: XLA's defaults, as their users would run them).
    """
    from e3md.potentials.energy import neighbor_list as e3md_neighbor_list
    from e3md.potentials.model import init_params, species_index

    from e3md.compiler import compiler_options
    from e3md.graph import edge_vectors
    from e3md.nn import cpu_kernels

    displacement, side, z, R, nbrs, real_edges, _ = system
    avg_nb = real_edges / len(z)
    config = e3md_config(size, avg_nb)
    e3md_params = init_params(config, jax.random.PRNGKey(seed))
    out = {}
    zi = jnp.asarray(species_index(config, z))

    def with_grad(energy):
        return jax.value_and_grad(energy, argnums=1)

    if E3MD_SPARSE in names:

        def on_edges(chunk):
            _, energy = e3md_neighbor_list(
                config, e3md_params, displacement, side, z, edge_chunk=chunk, format="sparse"
            )
            return lambda p, R, nb: energy(R, nb, params=p)

        e_sparse = on_edges(edge_chunk)
        out[E3MD_SPARSE] = Contender(
            E3MD_SPARSE,
            with_grad(e_sparse),
            e3md_params,
            e_sparse,
            flops_fn=with_grad(on_edges(None)),
            compiler_options=compiler_options(),
        )

    if {"e3md", E3MD_XLA_DEFAULTS, E3MD_NO_KERNELS} & set(names):
        nl = dict(dr_threshold=skin)  # e3md's default capacity for its list format
        jax.clear_caches()  # jax-md 0.2.29 dislikes building two systems in one process otherwise
        neighbor_fn, energy_fn = e3md_neighbor_list(
            config, e3md_params, displacement, side, z, edge_chunk=edge_chunk, **nl
        )
        dense_nbrs = neighbor_fn.allocate(R)
        # the same function over all edges at once, only for XLA's FLOP count: the cost
        # analysis counts the body of the edge-block scan once, not once per block
        _, energy_all = e3md_neighbor_list(
            config, e3md_params, displacement, side, z, edge_chunk=None, **nl
        )

        def params_first(energy_fn):
            return lambda p, R, nb: energy_fn(R, nb, params=p)

        def xla_only(energy_fn):
            def energy(*args):
                with cpu_kernels.xla_only():
                    return energy_fn(*args)

            return energy

        # XLA counts no FLOPs in e3md's CPU kernels (FFI calls): count the XLA formulation
        e_e3md, e_all = params_first(energy_fn), xla_only(params_first(energy_all))
        for name, options, energy in (
            ("e3md", compiler_options(), e_e3md),
            (E3MD_XLA_DEFAULTS, {}, e_e3md),
            (E3MD_NO_KERNELS, compiler_options(), xla_only(e_e3md)),
        ):
            if name in names:
                out[name] = Contender(
                    name,
                    with_grad(energy),
                    e3md_params,
                    energy,
                    flops_fn=with_grad(e_all),
                    compiler_options=options,
                    neighbor=dense_nbrs,
                )

    for name, fused in (("e3x Fused", True), ("e3x Tensor", False)):
        if name not in names:
            continue
        module = _peer_module(config, fused)

        def e_peer(p, R, nb, module=module):
            r, src, dst, mask = edge_vectors(displacement, R, nb.idx)
            return jnp.sum(module.apply(p, r, zi, src, dst, mask))

        if fused:
            params = e3md_params  # identical trees: the same function, checked in run_cell
        else:
            r, src, dst, mask = edge_vectors(displacement, R, nbrs.idx)
            params = jax.jit(module.init)(jax.random.PRNGKey(seed), r, zi, src, dst, mask)
        out[name] = Contender(
            name, with_grad(e_peer), params, e_peer, None, dict(peer_options or {})
        )

    if "nequip" in names:
        from jax_md import energy as jmd_energy
        from jax_md._nn import nequip

        f, l, t, k = SIZES[size]
        cfg = nequip.default_config()
        cfg.graph_net_steps = t
        cfg.n_elements = 2
        cfg.hidden_irreps = " + ".join(f"{f}x{d}{'eo'[d % 2]}" for d in range(l + 1))
        cfg.sh_irreps = " + ".join(f"1x{d}{'eo'[d % 2]}" for d in range(l + 1))
        cfg.num_basis = k
        cfg.r_max = CUTOFF
        cfg.n_neighbors = avg_nb
        cfg.shift, cfg.scale = 0.0, 1.0
        atoms = jax.nn.one_hot(jnp.asarray(z == 8, jnp.int32), 2)
        _, init_fn, nq_energy = jmd_energy.nequip_neighbor_list(
            displacement, side, cfg, atoms=atoms
        )
        params = jax.jit(init_fn)(jax.random.PRNGKey(seed), R, nbrs)
        out["nequip"] = Contender(
            "nequip", with_grad(nq_energy), params, nq_energy, None, dict(peer_options or {})
        )
    if FLAT_PARAMS:
        out = {name: flat_parameters(c) for name, c in out.items()}
    return out, config


# ----------------------------------------------------------------------------------------------
# Ideal FLOP count of e3md's function
# ----------------------------------------------------------------------------------------------


def _paths(l1: int, l2: int, l3: int):
    """Parity-allowed coupling paths (no pseudotensors, P = 1 inputs)."""
    return [
        (a, b, c)
        for a in range(l1 + 1)
        for b in range(l2 + 1)
        for c in range(abs(a - b), min(a + b, l3) + 1)
        if (a + b + c) % 2 == 0
    ]


@functools.cache
def tensor_product_flops(l1: int, l2: int, l3: int) -> int:
    """FLOPs per feature of the cheapest exact evaluation of a FusedTensor-style product of
    degree-``l1`` and degree-``l2`` inputs to degree ``l3`` (P = 1, no pseudotensors).

    Minimum of (a) the sparse Clebsch-Gordan form: a multiply-add per nonzero CG coefficient of
    every parity-allowed path plus one weight multiply per output entry and path, and (b) the
    sparse matrix form of FusedTensor: nonzeros of the used change-of-basis columns for both
    inputs and the output, (2l~+1)^3 multiply-adds per matrix product (one per parity
    combination that can reach an output degree), plus the per-degree weights.
    """
    from e3md import so3

    cg = np.asarray(so3.clebsch_gordan(l1, l2, l3))
    a_cnt = 0
    for a, b, c in _paths(l1, l2, l3):
        block = cg[a * a : (a + 1) ** 2, b * b : (b + 1) ** 2, c * c : (c + 1) ** 2]
        a_cnt += 2 * int(np.count_nonzero(np.abs(block) > 1e-12)) + (2 * c + 1)
    lmax = max(l1, l2, l3)
    basis = np.asarray(so3.matrix_basis(lmax))
    nm = basis.shape[0]
    nnz = lambda deg: int(np.count_nonzero(np.abs(basis[:, :, : (deg + 1) ** 2]) > 1e-12))  # noqa: E731
    products = 0
    for pa in (0, 1):
        for pb in (0, 1):
            has_a = any(d % 2 == pa for d in range(l1 + 1))
            has_b = any(d % 2 == pb for d in range(l2 + 1))
            reach = any(d % 2 == (pa + pb) % 2 for d in range(l3 + 1))
            products += has_a and has_b and reach
    b_cnt = 2 * (nnz(l1) + nnz(l2)) + (l1 + 1) ** 2 + (l2 + 1) ** 2  # to matrices (+ weights)
    b_cnt += products * 2 * nm**3 + 2 * products * nnz(l3) + (l3 + 1) ** 2  # products, back
    return min(a_cnt, b_cnt)


def ideal_flops(config, num_atoms: int, num_edges: int) -> float:
    """FLOPs an ideal implementation needs for energy+forces of e3md's function (3 x forward).

    Forward per real edge and iteration: radial contraction into the filter
    ((L+1) K F multiply-adds, then (L+1)^2 F multiplies by Y_lm), the tensor product
    (:func:`tensor_product_flops`), the sum over edges ((L3+1)^2 F adds); per edge once: the
    basis (~10 K + 3 (L+1)^2). Per atom and iteration: Dense layers (2 (L+1)^2 F^2 each),
    the self-product, the gated SiLU (~5 (L+1)^2 F); the readout MLP. Backward ~ 2 x forward.
    """
    L, F, K = config.max_degree, config.num_features, config.num_basis
    lm = (L + 1) ** 2
    edge = 10 * K + 3 * lm
    atom = 0.0
    l_in = 0
    for t in range(config.num_iterations):
        l_out = 0 if t == config.num_iterations - 1 else L
        lmo = (l_out + 1) ** 2
        edge += 2 * (L + 1) * K * F + lm * F
        edge += tensor_product_flops(L, l_in, l_out) * F + lmo * F
        atom += 2 * lmo * F * F  # update Dense
        if config.self_product and l_out > 0:
            atom += 2 * 2 * lmo * F * F + tensor_product_flops(l_out, l_out, l_out) * F
        atom += 5 * lmo * F + 2 * lmo * F * F  # silu + mix Dense
        l_in = l_out
    atom += 2 * F * config.readout_features + 2 * config.readout_features
    return 3.0 * (edge * num_edges + atom * num_atoms)


# ----------------------------------------------------------------------------------------------
# Measurement helpers
# ----------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _available_bytes() -> int:
    """Free memory of the default device: its allocator's limit less what is in use where it
    reports them (GPU), else the host's available memory (CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Achieved FLOP/s of a jitted float32 ``n x n x n`` matmul (median of ``repeats``)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, a))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, a))
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts)


def compile_contender(c: Contender, R, nbrs):
    """Compile ``c.fn`` for these shapes; returns (compiled, seconds, flops, xla bytes).

    ``seconds`` excludes building e3md's CPU kernels (once per machine and configuration, then
    cached on disk), which is reported apart (``cpu_kernels.build_seconds``)."""
    from e3md.nn import cpu_kernels

    built = cpu_kernels.build_seconds
    t0 = time.perf_counter()
    fn = jax.jit(c.fn, compiler_options=c.compiler_options or None)
    compiled = fn.lower(c.params, R, nbrs).compile()
    seconds = time.perf_counter() - t0 - (cpu_kernels.build_seconds - built)
    if c.flops_fn is None:
        cost = compiled.cost_analysis()
    else:  # HLO cost analysis of the unoptimised program: no XLA compile needed
        cost = jax.jit(c.flops_fn).lower(c.params, R, nbrs).cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    mem = compiled.memory_analysis()
    xla_bytes = float("nan")
    if mem is not None:
        xla_bytes = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - getattr(mem, "alias_size_in_bytes", 0)
        )
    return compiled, seconds, flops, xla_bytes


# ----------------------------------------------------------------------------------------------
# One cell
# ----------------------------------------------------------------------------------------------


def build_system(num_atoms: int, skin: float = 0.0):
    from jax_md import partition, space

    import e3md.space

    pos, z, side = water_box(molecules_per_side(num_atoms))
    periodic = e3md.space.periodic if displacement_kind == "e3md" else space.periodic
    displacement, _ = periodic(side)
    jax.clear_caches()  # jax-md 0.2.29 dislikes building two systems in one process otherwise
    neighbor_fn = partition.neighbor_list(
        displacement,
        side,
        CUTOFF,
        dr_threshold=skin,
        capacity_multiplier=CAPACITY,
        format=partition.Sparse,
    )
    R = jnp.asarray(pos, jnp.float32)
    nbrs = neighbor_fn.allocate(R)
    real = int(jnp.sum(nbrs.idx[0] < len(z)))
    return displacement, side, z, R, nbrs, real, neighbor_fn


def run_cell(
    size,
    num_atoms,
    names,
    rounds,
    mem_limit,
    peak,
    check=True,
    skin=0.0,
    edge_chunk=EDGE_CHUNK,
    peer_options=None,
):
    system = build_system(num_atoms, skin)
    _, _, z, R, nbrs, real_edges, _ = system
    n = len(z)
    contenders, config = build_contenders(
        size, names, system, edge_chunk=edge_chunk, peer_options=peer_options, skin=skin
    )
    info = dict(size=size, atoms=n, edges=int(nbrs.idx.shape[1]), real_edges=real_edges)
    rows = {}
    compiled = {}
    for name, c in contenders.items():
        try:
            fn, secs, flops, xla_bytes = compile_contender(c, R, c.nbrs(nbrs))
        except Exception as exc:  # noqa: BLE001 - report (e.g. out of memory) and go on
            rows[name] = dict(error=f"{type(exc).__name__}: {str(exc)[:100]}")
            continue
        rows[name] = dict(compile_s=secs, flops=flops, xla_gib=xla_bytes / 2**30)
        if xla_bytes > mem_limit:
            rows[name]["error"] = f"needs {xla_bytes / 2**30:.1f} GiB (XLA) - does not fit"
            continue
        base = _rss_bytes()
        have_reset = _peak_rss_reset()
        try:
            energy, _ = jax.block_until_ready(fn(c.params, R, c.nbrs(nbrs)))  # warm-up
        except Exception as exc:  # noqa: BLE001
            rows[name]["error"] = f"{type(exc).__name__}: {str(exc)[:100]}"
            continue
        rows[name]["rss_gib"] = (_peak_rss_bytes() - base) / 2**30 if have_reset else float("nan")
        rows[name]["energy"] = float(energy)
        compiled[name] = fn
    if check and "e3md" in rows and "e3x Fused" in rows:
        e1, e2 = rows["e3md"].get("energy"), rows["e3x Fused"].get("energy")
        if e1 is not None and e2 is not None:
            info["e3md_vs_e3x_rel"] = abs(e1 - e2) / max(abs(e1), 1e-30)
    times = {k: [] for k in compiled}
    for _ in range(rounds):
        for name, fn in compiled.items():
            c = contenders[name]
            _warm_up(fn, (c.params, R, c.nbrs(nbrs)))
            t0 = time.perf_counter()
            jax.block_until_ready(fn(c.params, R, c.nbrs(nbrs)))
            times[name].append(time.perf_counter() - t0)
    ideal = ideal_flops(config, n, real_edges)
    info["ideal_gflop"] = ideal / 1e9
    for name, ts in times.items():
        med = statistics.median(ts)
        r = rows[name]
        r["seconds"] = med
        r["atom_steps"] = n / med
        r["pct_peak"] = 100 * r["flops"] / med / peak
        r["useful_pct_peak"] = 100 * ideal / med / peak if name.startswith("e3") else float("nan")
    if "nequip" in times:
        for name in times:
            rows[name]["x_nequip"] = rows[name]["atom_steps"] / rows["nequip"]["atom_steps"]
    for other, key in (
        (E3MD_XLA_DEFAULTS, "e3md_vs_xla_defaults"),
        (E3MD_SPARSE, "e3md_vs_sparse"),
        (E3MD_NO_KERNELS, "e3md_vs_no_kernels"),
    ):
        if "e3md" in times and other in times:
            info[key] = rows["e3md"]["atom_steps"] / rows[other]["atom_steps"]
    del system
    return info, rows


def _warm_up(fn, args):
    """Untimed calls of ``fn(*args)`` for at least ``WARM_UP_S`` (at least one call), so the timed
    call that follows starts, as in MD (one call per step, back to back), from its own warm
    caches and buffers and from a machine busy with it, not from the previous contender's or
    cell's GiBs (until session 7 the timed call came right after them) or idle cores.

    One call was the warm-up until session 16. On this project's machine (a KVM guest, two
    vCPUs) a short call needs several: right after a 12288-atom call the 192-atom call took up
    to 1.6x its back-to-back time for 3 calls, after 80 ms asleep 1.3-2.2x for more than 10
    (BENCHMARKS.md, session 16) -- waking the pool's second thread is slow until the cores have
    been busy a while.
    """
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    while time.perf_counter() - t0 < WARM_UP_S:
        jax.block_until_ready(fn(*args))


def in_loop(c: Contender, steps: int) -> Contender:
    """``c`` evaluated ``steps`` times inside one jitted ``lax.fori_loop``, as e3md's MD driver
    runs its steps (a chunk of steps per call): each step moves the positions by 1e-9 times the
    gradient, so no evaluation can be hoisted out of the loop, and returns the last
    (energy, gradient). XLA then allocates the temporaries once per call of the loop, not once
    per step, and JAX's dispatch and the hand-offs between threads at a call's start and end
    are paid once per ``steps``."""
    fn = c.fn

    def looped(params, R, nb):
        def step(_, carry):
            energy, grad = fn(params, carry[0], nb)
            return carry[0] - 1e-9 * grad, energy, grad

        zeros = [jnp.zeros(a.shape, a.dtype) for a in jax.eval_shape(fn, params, R, nb)]
        return jax.lax.fori_loop(0, steps, step, (R, *zeros))[1:]

    return dataclasses.replace(c, fn=looped, flops_fn=None)


def scaling(size: str, atoms: list[int], rounds: int, name: str = "e3md", steps: int = 1):
    """Time per atom of one contender at every atom count, with the rounds interleaved across
    the atom counts (every system compiled first): a phase change of the machine then hits all
    counts alike, unlike cells timed one after the other. With ``steps`` > 1 each timed call
    is :func:`in_loop`'s ``steps`` evaluations, and the time is per evaluation.

    Returns ``(rows, spread)``: rows ``(atoms, median seconds, µs per atom, per atom / median
    per atom)`` and max/min of the time per atom.
    """
    cells = []
    for n in atoms:
        system = build_system(n)
        c = build_contenders(size, [name], system)[0][name]
        if steps > 1:
            c = in_loop(c, steps)
        nbrs = c.nbrs(system[4])
        fn = compile_contender(c, system[3], nbrs)[0]
        jax.block_until_ready(fn(c.params, system[3], nbrs))
        cells.append((n, fn, (c.params, system[3], nbrs)))
    times = {n: [] for n, *_ in cells}
    for _ in range(rounds):
        for n, fn, args in cells:
            _warm_up(fn, args)
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[n].append((time.perf_counter() - t0) / steps)
    per_atom = {n: statistics.median(ts) / n for n, ts in times.items()}
    mid = statistics.median(per_atom.values())
    rows = [(n, statistics.median(times[n]), 1e6 * per_atom[n], per_atom[n] / mid) for n in atoms]
    return rows, max(per_atom.values()) / min(per_atom.values())


# ----------------------------------------------------------------------------------------------
# Profile: where e3md's energy+forces time goes
# ----------------------------------------------------------------------------------------------


def _time_compiled(fn, args, rounds):
    from e3md.compiler import jit

    compiled = jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def profile(size: str, num_atoms: int, rounds: int = 5):
    """Time e3md's building blocks at the shapes of one benchmark cell, forward and
    forward+backward (vector-Jacobian product with a random cotangent), each jitted alone.

    Returns rows ``(component, fwd ms, fwd+bwd ms)``; the whole model is the last row.
    """
    from e3md.potentials.model import _cutoff_fn, _radial_fn, init_params, species_index

    import e3md.nn as enn
    from e3md.graph import edge_vectors

    displacement, side, z, R, nbrs, real_edges, _ = build_system(num_atoms)
    n = len(z)
    config = e3md_config(size, real_edges / n)
    L, F, K = config.max_degree, config.num_features, config.num_basis
    lm = (L + 1) ** 2
    e = nbrs.idx.shape[1]
    rng = np.random.default_rng(0)
    key = jax.random.PRNGKey(0)

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    def vjp_of(f):
        def g(*args):
            out, pull = jax.vjp(f, *args)
            ct = jax.tree_util.tree_map(jnp.ones_like, out)
            return pull(ct)

        return g

    src = jnp.clip(nbrs.idx[1], 0, n - 1)
    dst = jnp.clip(nbrs.idx[0], 0, n - 1)
    r_ij, *_ = edge_vectors(displacement, R, nbrs.idx)
    basis = enn.basis(r_ij, L, K, _radial_fn(config), _cutoff_fn(config))
    parts = []

    def add(name, f, *args):
        parts.append(
            (
                name,
                _time_compiled(f, args, rounds) * 1e3,
                _time_compiled(vjp_of(f), args, rounds) * 1e3,
            )
        )

    add("edge vectors (displacement)", lambda R: edge_vectors(displacement, R, nbrs.idx)[0], R)
    add(
        "basis (norm, Y_lm, Bessel, cutoff)",
        lambda r: enn.basis(r, L, K, _radial_fn(config), _cutoff_fn(config)),
        r_ij,
    )
    filt = enn.Dense(F)
    pf = filt.init(key, basis)
    add(f"filter Dense [E,{lm},{K}]->[E,{lm},{F}]", lambda p, b: filt.apply(p, b), pf, basis)
    for lin, lout in ((0, L), (L, 0)):
        x = normal(n, 1, (lin + 1) ** 2, F)
        add(f"gather x[src] [E,{(lin + 1) ** 2},{F}]", lambda x: jnp.take(x, src, axis=0), x)
        ft = enn.FusedTensor(max_degree=lout, include_pseudotensors=False)
        a, b = normal(e, 1, lm, F), normal(e, 1, (lin + 1) ** 2, F)
        pt = ft.init(key, a, b)
        add(
            f"FusedTensor per edge L{L} x L{lin} -> L{lout}",
            lambda p, a, b, ft=ft: ft.apply(p, a, b),
            pt,
            a,
            b,
        )
        m = normal(e, 1, (lout + 1) ** 2, F)
        add(
            f"segment sum [E,{(lout + 1) ** 2},{F}]->[N]",
            lambda m: jax.ops.segment_sum(m, dst, num_segments=n),
            m,
        )
    x = normal(n, 1, lm, F)
    d = enn.Dense(F)
    pd = d.init(key, x)
    add(f"node Dense [N,{lm},{F}] (x4 per iteration)", lambda p, x: d.apply(p, x), pd, x)
    ft = enn.FusedTensor(max_degree=L, include_pseudotensors=False)
    pt = ft.init(key, x, x)
    add(f"node self-product FusedTensor L{L}", lambda p, x: ft.apply(p, x, x), pt, x)
    params = init_params(config, key)
    zi = jnp.asarray(species_index(config, z))
    from e3md.potentials.model import atomic_energies

    def whole(p, R):
        r, s, t, msk = edge_vectors(displacement, R, nbrs.idx)
        return jnp.sum(atomic_energies(config, p, r, zi, s, t, msk, jnp.ones(n, bool)))

    add("WHOLE MODEL (energy; fwd+bwd = energy+forces+param grads)", whole, params, R)
    return dict(size=size, atoms=n, edges=e, real_edges=real_edges), parts


def _fmt(rows, name):
    r = rows.get(name)
    if r is None:
        return "-"
    if "seconds" not in r:
        return r.get("error", "-")
    s = f"{r['atom_steps']:.3g}"
    if "x_nequip" in r and name != "nequip":
        s += f" ({r['x_nequip']:.2f}x)"
    s += f", {r['pct_peak']:.1f}%"
    if not math.isnan(r.get("useful_pct_peak", float("nan"))):
        s += f" (useful {r['useful_pct_peak']:.1f}%)"
    s += f", {r['xla_gib']:.2f}/{r['rss_gib']:.2f} GiB, {r['compile_s']:.1f}s"
    return s


def largest_fit(
    size: str, name: str, limit_bytes: float, start_atoms: int = 12288, edge_chunk=EDGE_CHUNK
):
    """Largest water box that ``name`` fits in ``limit_bytes`` (XLA memory analysis).

    Compiles (does not run) energy+forces at doubling atom counts from ``start_atoms`` until the
    estimate exceeds the limit, then interpolates linearly between the last two counts (memory
    is linear in N for every contender at these sizes). If building a system fails first (the
    jax-md neighbour-list allocation needs host memory too), the last two points are
    extrapolated and ``error`` says why. Returns a dict with the compiled ``(atoms, GiB)``
    points, the ``atoms`` estimate and ``error``.
    """
    points = []
    error = None
    n = start_atoms
    while True:
        try:
            system = build_system(n)
            _, _, z, R, nbrs, _, _ = system
            c, _ = build_contenders(size, [name], system, edge_chunk=edge_chunk)
            *_, xla_bytes = compile_contender(c[name], R, c[name].nbrs(nbrs))
        except Exception as exc:  # noqa: BLE001 - e.g. the neighbour list itself out of memory
            error = f"{n} atoms: {type(exc).__name__}: {str(exc)[:160]}"
            print(f"#   {name} {size}: {error}", flush=True)
            break
        points.append((len(z), xla_bytes / 2**30))
        print(f"#   {name} {size}: {len(z)} atoms -> {xla_bytes / 2**30:.2f} GiB (XLA)", flush=True)
        del c, system, nbrs
        if xla_bytes > limit_bytes or len(points) > 8:
            break
        n *= 2
    if not points:
        return dict(size=size, model=name, points=[], atoms=None, error=error)
    if len(points) == 1:
        (n1, g1), (n0, g0) = points[0], (0, 0.0)
    else:
        (n0, g0), (n1, g1) = points[-2], points[-1]
    slope = (g1 - g0) / (n1 - n0)
    estimate = n0 + (limit_bytes / 2**30 - g0) / slope
    # beyond the last point (it fitted, the next build failed): a linear extrapolation
    return dict(size=size, model=name, points=points, atoms=int(estimate), error=error)


def _malloc_note() -> str:
    from e3md import memory

    tunables = os.environ.get("GLIBC_TUNABLES")
    extra = f"; GLIBC_TUNABLES={tunables}" if tunables else ""
    if memory.kept():
        return "malloc: glibc keeps freed memory (E3MD_MALLOC=keep, e3md.memory)" + extra
    return "malloc: the C library's defaults (E3MD_MALLOC=keep keeps freed memory)" + extra


def _idle_note() -> str:
    from e3md import cores

    if cores.cores_awake():
        return f"idle CPUs: kept awake by {cores.cores_awake()} SCHED_IDLE threads (E3MD_IDLE=spin)"
    return "idle CPUs: the system's (E3MD_IDLE=spin keeps them awake, e3md.cores)"


def main(argv=None):
    global displacement_kind, WARM_UP_S, FLAT_PARAMS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="192 atoms only, 5 rounds")
    ap.add_argument("--large", action="store_true", help="add 12288 atoms and ~100k")
    ap.add_argument("--atoms", default=None, help="comma-separated atom counts (overrides)")
    ap.add_argument("--sizes", default="small,medium")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--mem-limit-gib", type=float, default=None)
    ap.add_argument("--skin", type=float, default=0.0, help="neighbour-list skin, Å")
    ap.add_argument(
        "--displacement",
        choices=DISPLACEMENTS,
        default=displacement_kind,
        help="periodic space of all contenders: e3md.space.periodic or jax_md.space.periodic",
    )
    ap.add_argument(
        "--warm-up-s",
        type=float,
        default=WARM_UP_S,
        help="untimed calls before each timed one for at least this long (0: one call)",
    )
    ap.add_argument("--json", default=None, help="also write the raw results to this file")
    ap.add_argument("--profile", action="store_true", help="time e3md's components instead")
    ap.add_argument(
        "--scaling",
        action="store_true",
        help="instead: e3md's time per atom at each --atoms, rounds interleaved across them",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=1,
        help="with --scaling: time STEPS energy+forces evaluations inside one jitted loop, as"
        " the MD driver runs them, per evaluation (default 1: one call each)",
    )
    ap.add_argument(
        "--edge-chunk",
        default=str(EDGE_CHUNK),
        help=f"e3md's edges per message-passing block ('none': all at once; default {EDGE_CHUNK})",
    )
    ap.add_argument(
        "--fit-gib",
        type=float,
        default=None,
        help="instead of timing: largest system each model fits in this many GiB (XLA estimate)",
    )
    ap.add_argument(
        "--pytree-params",
        action="store_true",
        help="pass every contender its parameters as its own pytree (default: one flat array)",
    )
    ap.add_argument(
        "--peers-with-e3md-options",
        action="store_true",
        help="compile the peers with e3md's XLA options too (default: XLA's defaults)",
    )
    args = ap.parse_args(argv)
    if args.steps < 1 or (args.steps > 1 and not args.scaling):
        ap.error("--steps takes a positive count, and only with --scaling")
    displacement_kind, WARM_UP_S = args.displacement, args.warm_up_s
    FLAT_PARAMS = not args.pytree_params
    edge_chunk = None if args.edge_chunk.lower() == "none" else int(args.edge_chunk)
    names = [s.strip() for s in args.models.split(",") if s.strip()]
    unknown = sorted(set(names) - set(MODELS) - set(E3MD_VARIANTS))
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {MODELS + E3MD_VARIANTS}")
    sizes = [s.strip() for s in args.sizes.split(",")]
    if args.atoms:
        atoms = [int(a) for a in args.atoms.split(",")]
    elif args.quick:
        atoms = [192]
    else:
        atoms = [192, 1536] + ([12288, 98304] if args.large else [])
    rounds = args.rounds or (5 if args.quick else 7)
    if args.profile:
        for size in sizes:
            for n in atoms:
                info, parts = profile(size, n, rounds)
                print(f"# profile {info}")
                print("| component | fwd ms | fwd+bwd ms |")
                print("|---|---:|---:|")
                for name, tf, tb in parts:
                    print(f"| {name} | {tf:.1f} | {tb:.1f} |", flush=True)
        return parts
    print(f"# {_malloc_note()}")
    print(f"# {_idle_note()}")
    print(
        f"# displacement: {displacement_kind} space.periodic, shared; warm-up: untimed calls"
        f" for >= {1e3 * WARM_UP_S:g} ms before each timed call; parameters passed as"
        f" {'one flat array' if FLAT_PARAMS else 'pytrees'}"
    )
    if args.scaling:
        out = []
        for size in sizes:
            rows, spread = scaling(size, atoms, rounds, steps=args.steps)
            how = "one call each" if args.steps == 1 else f"{args.steps} steps per jitted loop"
            print(
                f"# scaling, {size}, e3md, median of {rounds} rounds interleaved across sizes,"
                f" {how}"
            )
            print("| atoms | ms per evaluation | µs per atom | per atom / median |")
            print("|---:|---:|---:|---:|")
            for n, sec, us, rel in rows:
                print(f"| {n} | {1e3 * sec:.1f} | {us:.1f} | {rel:.2f} |")
            print(f"# max / min time per atom: {spread:.2f}", flush=True)
            out.append(dict(size=size, steps=args.steps, rows=rows, spread=spread))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=1)
        return out
    if args.fit_gib:
        fits = []
        for size in sizes:
            for name in names:
                fit = largest_fit(
                    size, name, args.fit_gib * 2**30, atoms[-1], edge_chunk=edge_chunk
                )
                fits.append(fit)
                print(
                    f"| {size} | {name} | {fit['atoms']} atoms fit in {args.fit_gib:g} GiB | "
                    + ", ".join(f"{a}: {g:.2f} GiB" for a, g in fit["points"])
                    + (f"; stopped at {fit['error']}" if fit["error"] else "")
                    + " |",
                    flush=True,
                )
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(fits, fh, indent=1)
        return fits
    mem_limit = (args.mem_limit_gib * 2**30) if args.mem_limit_gib else 0.9 * _available_bytes()
    peak = matmul_peak_flops()
    dev = jax.devices()[0]
    print(
        f"# jax {jax.__version__} on {dev.platform} ({dev.device_kind}),"
        f" {platform.processor() or '?'}"
        f" x{os.cpu_count()}, float32, median of {rounds} interleaved rounds;"
        f" matmul peak (2048^3 f32, this run) {peak / 1e9:.0f} GFLOP/s;"
        f" load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    from e3md.compiler import compiler_options

    e3md_options = compiler_options()
    peer_options = e3md_options if args.peers_with_e3md_options else {}
    print(f"# XLA options: e3md {e3md_options or 'defaults'}, peers {peer_options or 'defaults'}")
    print("# cell: atom-steps/s (x nequip), % of matmul peak from XLA FLOPs (useful = ideal")
    print("#   FLOPs of e3md's function), XLA/RSS-growth GiB, compile s")
    header = "| atoms | size | " + " | ".join(names) + " | edges (real) | ideal GFLOP |"
    print(header)
    print("|" + "---|" * (len(names) + 4), flush=True)
    results = []
    for size in sizes:
        for n in atoms:
            info, rows = run_cell(
                size,
                n,
                names,
                rounds,
                mem_limit,
                peak,
                edge_chunk=edge_chunk,
                peer_options=peer_options,
            )
            results.append(dict(info=info, rows=rows))
            cells = " | ".join(_fmt(rows, name) for name in names)
            chk = info.get("e3md_vs_e3x_rel")
            note = "" if chk is None else f" (E rel diff e3md/e3x {chk:.1e})"
            if "e3md_vs_xla_defaults" in info:
                note += f" (e3md / e3md with XLA defaults: {info['e3md_vs_xla_defaults']:.2f}x)"
            if "e3md_vs_sparse" in info:
                note += f" (e3md / e3md on the Sparse list: {info['e3md_vs_sparse']:.2f}x)"
            if "e3md_vs_no_kernels" in info:
                note += f" (e3md / e3md without CPU kernels: {info['e3md_vs_no_kernels']:.2f}x)"
            print(
                f"| {info['atoms']} | {size} | {cells} | {info['edges']} ({info['real_edges']})"
                f" | {info['ideal_gflop']:.2f} |{note}",
                flush=True,
            )
    from e3md.nn import cpu_kernels

    print(
        f"# e3md's CPU kernels: {cpu_kernels.build_seconds:.1f} s of building in this run "
        "(0 when cached; not in the compile times)"
    )
    if args.json:
        with open(args.json, "w") as fh:
            results_json = dict(peak_flops=peak, results=results)
            results_json["kernel_build_s"] = cpu_kernels.build_seconds
            json.dump(results_json, fh, indent=1, default=float)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
