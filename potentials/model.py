r"""The e3md equivariant network and the one core function every path calls.

Architecture (NequIP/MACE-like, built only from ``e3md.nn`` layers)
--------------------------------------------------------------------
For atoms :math:`i` with species :math:`z_i` and edges :math:`(i \leftarrow j)` with vectors
:math:`\mathbf r_{ij} = \mathbf R_j - \mathbf R_i` (Å, receiver :math:`i` = ``dst``, sender
:math:`j` = ``src``):

1. Species embedding: :math:`x_i^{(0)} = \mathrm{Embed}(z_i) \in \mathbb R^{1\times1\times F}`.
2. Edge basis: :math:`b_{ij} = g_k(r_{ij})\,u(r_{ij})\,Y_{lm}(\hat{\mathbf r}_{ij})`, radial basis
   :math:`g_k` (``config.radial_basis``, :math:`K` functions), smooth cutoff :math:`u` that
   vanishes with all derivatives at :math:`r_c`, real spherical harmonics up to degree :math:`L`.
3. :math:`T` iterations of

   .. math::
     m_i &= \frac{1}{\bar n}\sum_{j} w_{ij}\,\mathrm{FusedTensor}
            \big(x_j,\ \mathrm{Dense}(b_{ij})\big)
            \qquad (\text{``MessagePass``, no pseudotensors})\\
     x_i &\leftarrow x_i + \mathrm{Dense}(m_i)\\
     x_i &\leftarrow x_i + \mathrm{FusedTensor}(\mathrm{Dense}(x_i), \mathrm{Dense}(x_i))
            \qquad (\text{if ``self_product``})\\
     x_i &\leftarrow \mathrm{Dense}(\mathrm{silu}(x_i))

   where :math:`w_{ij}\in\{0,1\}` is the edge mask, :math:`\bar n` = ``avg_num_neighbors`` and
   silu is the equivariant gated SiLU (the scalar channel gates every degree). The last
   iteration only produces scalars (degree 0): nothing downstream reads higher degrees, so their
   FLOPs are skipped.
4. Readout: :math:`\mathrm{NN}_i = \mathrm{Dense}_1(\mathrm{silu}(\mathrm{Dense}_H(x_i^{l=0})))`,
   and :math:`e_i = \mathrm{scale}\cdot\mathrm{NN}_i + \mathrm{shift} + e_0[z_i]` (eV), times the
   atom mask.

Why this design: the FusedTensor product costs :math:`O(L^3 F)` per edge instead of the
:math:`O(L^5 F)` (per path) of a full Clebsch-Gordan tensor product at equal expressivity for
:math:`L \le 2`--3 (Unke & Maennel, "E3x", 2024), so edges -- which dominate cost (tens per
atom) -- are cheap. Body order is raised per *atom* by the optional self-product rather than per
edge, which is the MACE idea at a fraction of the cost. Pseudotensors are omitted: an energy is
a true scalar, and without them the reflection behaviour follows from the degree alone, which
halves the feature memory. Messages are divided by a constant mean neighbour count rather than
normalised per atom, so energies stay strictly local and extensive.

Measured (BENCHMARKS.md, "Potential"): on a quick ethanol fit (400 structures, 640 steps) the
self-product lowered the validation force MAE from 124.7 to 96.8 meV/Å for 1.27x the FLOPs of
energy + forces, so ``self_product=True`` is the default.

Evaluation (the same function, cheaper): the first iteration's inputs are the species
embedding, so its messages are formed per (receiver, sender species) from the summed basis
(``MessagePass(input_index=...)``), and message passing runs over blocks of ``edge_chunk``
edges so that no edge-sized feature tensor is stored (``atomic_energies``; BENCHMARKS.md).
Given the edges as rows of a full neighbour list (``symmetric_rows``), the later message
passes differentiate through sums over each atom's own row instead of scatters
(``MessagePass(symmetric=True)``, :mod:`e3md.nn.rows`). That path promises reverse-mode
derivatives only, so on CPU the edge basis, the first pass's per-species sums and the last
pass, and the per-atom layers (update, self-product, gated SiLU, mix) of iterations with
degrees > 0 run as e3md's compiled kernels (:mod:`e3md.nn.cpu_kernels`; the same function).

Padding rules: edges with ``edge_mask = False`` or whose endpoints are padded atoms and atoms with
``atom_mask = False`` contribute exactly zero (the mask multiplies the gathered sender features,
and the tensor product is bilinear), and padded entries never produce NaNs in values or
gradients (their edge vectors are replaced by a safe constant before any norm is taken).
"""

import functools
from contextlib import nullcontext

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from e3md.potentials.config import ModelConfig
from jaxtyping import Array, ArrayLike, Bool, Float, Int

__all__ = [
    "EDGE_CHUNK",
    "EnergyModel",
    "atomic_energies",
    "init_params",
    "species_index",
    "species_table",
]

# Edges per block of the message-passing scan (``atomic_energies(edge_chunk=...)``). Chosen by
# measurement (BENCHMARKS.md, "edge blocks"): on 2 CPU cores 1024 was fastest among 256-4096
# for both benchmark sizes at 192-12288 atoms; [1024, 9, 64] float32 intermediates are 2.4 MB.
EDGE_CHUNK = 1024


def species_table(config: ModelConfig) -> np.ndarray:
    """Lookup table ``t[Z] = species_index`` (``-1`` for unknown elements), shape ``[119]``."""
    table = np.full(119, -1, dtype=np.int32)
    table[np.asarray(config.species)] = np.arange(config.num_species, dtype=np.int32)
    return table


def species_index(config: ModelConfig, atomic_numbers: ArrayLike) -> np.ndarray:
    """Map atomic numbers to the model's species indices (host side).

    Args:
      config: model configuration (``config.species`` lists the known elements).
      atomic_numbers: integer atomic numbers, any shape.

    Returns:
      ``int32`` numpy array of the same shape with indices into ``config.species``.

    Raises:
      ValueError: if an element is not in ``config.species`` (the message names it), or the
        input is not integer-valued.
    """
    z = np.asarray(atomic_numbers)
    if z.size and not np.issubdtype(z.dtype, np.integer):
        if not np.all(np.isfinite(z)) or np.any(z != np.round(z)):
            raise ValueError(f"atomic numbers must be integers, got dtype {z.dtype}")
        z = z.astype(np.int64)
    z = z.astype(np.int64)
    table = species_table(config)
    bad = (z < 0) | (z > 118)
    idx = np.where(bad, -1, table[np.clip(z, 0, 118)])
    if np.any(idx < 0):
        unknown = sorted({int(v) for v in z[idx < 0]})
        raise ValueError(
            f"elements with atomic numbers {unknown} are not known to this model; "
            f"it knows {list(config.species)}"
        )
    return idx.astype(np.int32)


def _pad_degree(x: jax.Array, max_degree: int) -> jax.Array:
    """Zero-pad or truncate the degree axis (-2) of ``x[..., P, LM, F]`` to ``max_degree``."""
    lm = (max_degree + 1) ** 2
    have = x.shape[-2]
    if have == lm:
        return x
    if have > lm:
        return x[..., :lm, :]
    pad = [(0, 0)] * x.ndim
    pad[-2] = (0, lm - have)
    return jnp.pad(x, pad)


def _radial_fn(config: ModelConfig):
    import e3md.nn as enn

    fn = {
        "bessel": getattr(enn, "bessel", None),
        "gaussian": getattr(enn, "gaussian", None),
        "reciprocal_bernstein": getattr(enn, "reciprocal_bernstein", None),
    }[config.radial_basis]
    if fn is None:
        raise RuntimeError(f"e3md.nn does not provide the radial basis {config.radial_basis!r}")
    if config.radial_basis in ("bessel", "gaussian"):
        return functools.partial(fn, limit=config.cutoff)
    return fn  # reciprocal_bernstein: no limit, its range is set by the reciprocal mapping


def _cutoff_fn(config: ModelConfig):
    import e3md.nn as enn

    fn = {"smooth": enn.smooth_cutoff, "cosine": enn.cosine_cutoff}[config.cutoff_fn]
    return functools.partial(fn, cutoff=config.cutoff)


def _edge_basis(config: ModelConfig, r: Array) -> tuple[Array, Array]:
    """``enn.basis(r, factored=True)`` of the model: ``(g_k u [E, K], Y [E, 1, (L+1)^2])``.

    Inside :func:`e3md.nn.cpu_kernels.reverse_mode_only`, a Bessel basis runs as e3md's CPU
    kernel (:func:`e3md.nn.cpu_kernels.basis_kernel`; the same function, one pass over the
    edges each way), whose own derivative is the XLA formulation's."""
    import e3md.nn as enn
    from e3md.nn import cpu_kernels

    def reference(r):
        radial, angular = enn.basis(
            r,
            max_degree=config.max_degree,
            num=config.num_basis,
            radial_fn=_radial_fn(config),
            cutoff_fn=_cutoff_fn(config),
            factored=True,
        )
        return radial, angular[:, 0]

    kernel = None
    if config.radial_basis == "bessel":
        kernel = cpu_kernels.basis_kernel(
            max_degree=config.max_degree,
            num=config.num_basis,
            limit=config.cutoff,
            cutoff=config.cutoff,
            cutoff_fn=config.cutoff_fn,
            dtype=r.dtype,
        )
    if kernel is None:
        radial, angular = reference(r)
    else:

        def backward(args, g):
            return (kernel.backward(*args, *g),)

        def reference_backward(args, g):
            return jax.vjp(reference, *args)[1](g)

        fused = cpu_kernels.with_reference_derivative(kernel.forward, backward, reference_backward)
        radial, angular = fused(r)
    return radial, angular[:, None, :]


def _atom_layers(config: ModelConfig, params: dict, t: int, x: Array, m: Array):
    """Iteration ``t``'s per-atom layers after its message pass -- the update, the
    self-product, the gated SiLU and the mix of :class:`EnergyModel` -- as e3md's CPU kernel
    (:func:`e3md.nn.cpu_kernels.atom_kernel`; the same function, reverse mode only), or None
    where it cannot be used. ``x [N, 1, R0, F]`` are the features before the update (``R0``
    rows, zero-padded to ``(L+1)^2``), ``m [N, 1, (L+1)^2, F]`` the messages."""
    import e3md.nn as enn
    from e3md.nn import cpu_kernels
    from e3md.nn.dense import degree_names
    from e3md.nn.tensor import _coupling_support, _coupling_tensor, _effective_pseudotensors

    L, F = config.max_degree, config.num_features
    if x.shape[-3] != 1 or x.shape[-2] > (L + 1) ** 2:
        return None
    dtype = jnp.dtype(config.dtype)
    product = enn.FusedTensor(max_degree=L, include_pseudotensors=False, dtype=dtype)
    pseudo = _effective_pseudotensors(1, 1, L, L, L, product.include_pseudotensors)
    form = (1, 1, L, L, L, pseudo, product.cartesian_order)
    support = np.argwhere(_coupling_support(*form))
    kernel = cpu_kernels.atom_kernel(features=F, max_degree=L, support=support, dtype=dtype)
    if kernel is None:
        return None
    names = ("update", "self_a", "self_b", "mix")
    prm = {name: params[f"{name}_{t}"] for name in names}
    prm["product"] = params[f"self_product_{t}"]
    dense = enn.Dense(F, dtype=dtype, param_dtype=dtype)

    def reference(x0, m, prm):
        x = _pad_degree(x0, L) + dense.apply({"params": prm["update"]}, m)
        a = dense.apply({"params": prm["self_a"]}, x)
        b = dense.apply({"params": prm["self_b"]}, x)
        x = x + product.apply({"params": prm["product"]}, a, b)
        return dense.apply({"params": prm["mix"]}, enn.silu(x))

    def packed(prm):
        degree = degree_names(L)
        w = jnp.stack([jnp.stack([prm[n][d]["kernel"] for d in degree]) for n in names])
        bias = jnp.stack([prm[n]["0+"]["bias"] for n in names])
        kernels = {k: v.astype(dtype) for k, v in prm["product"].items()}
        i, j, k = support.T
        return w.astype(dtype), bias.astype(dtype), _coupling_tensor(kernels, *form)[i, j, k]

    def forward(x0, m, prm):
        n, lm = m.shape[0], m.shape[-2]
        out = kernel.forward(x0.reshape(n, -1, F), m.reshape(n, lm, F), *packed(prm))
        return out.reshape(m.shape)

    def backward(args, g):
        x0, m, prm = args
        n, lm = m.shape[0], m.shape[-2]
        dx0, dm = kernel.backward(
            x0.reshape(n, -1, F), m.reshape(n, lm, F), *packed(prm), g.reshape(n, lm, F)
        )
        # the parameters' cotangents from the XLA formulation: XLA removes it where they are
        # unused (forces, MD)
        dprm = jax.vjp(lambda p: reference(x0, m, p), prm)[1](g)[0]
        return dx0.reshape(x0.shape), dm.reshape(m.shape), dprm

    def reference_backward(args, g):
        return jax.vjp(reference, *args)[1](g)

    fused = cpu_kernels.with_reference_derivative(forward, backward, reference_backward)
    return fused(x.astype(dtype), m.astype(dtype), prm)


class EnergyModel(nn.Module):
    """Flax module computing per-atom energies (eV); see the module docstring for the math.

    Attributes:
      config: the model's :class:`ModelConfig` (hashable, static).
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        r_ij: Float[Array, "E 3"],
        species_index: Int[Array, " N"],
        src: Int[Array, " E"],
        dst: Int[Array, " E"],
        edge_mask: Bool[Array, " E"],
        atom_mask: Bool[Array, " N"],
        edge_chunk: int | None = None,
        symmetric_rows: int | None = None,
    ) -> Float[Array, " N"]:
        import e3md.nn as enn
        from e3md.nn.cpu_kernels import reverse_mode_only

        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        L, F = cfg.max_degree, cfg.num_features
        num_atoms = species_index.shape[0]
        kw = dict(dtype=dtype, param_dtype=dtype)
        if symmetric_rows is not None and r_ij.shape[0] != num_atoms * symmetric_rows:
            raise ValueError(
                f"symmetric_rows={symmetric_rows} needs {num_atoms} x {symmetric_rows} edges, "
                f"received {r_ij.shape[0]}"
            )

        # --- sanitise padding: masked edges get safe indices and a safe vector -------------
        atom_mask = jnp.asarray(atom_mask, bool)
        src_c = jnp.clip(src, 0, num_atoms - 1)
        dst_c = jnp.clip(dst, 0, num_atoms - 1)
        in_range = (src >= 0) & (src < num_atoms) & (dst >= 0) & (dst < num_atoms)
        mask = jnp.asarray(edge_mask, bool) & in_range & atom_mask[src_c] & atom_mask[dst_c]
        safe = jnp.asarray([0.5 * cfg.cutoff, 0.0, 0.0], dtype)
        r_ij = jnp.where(mask[:, None], jnp.asarray(r_ij, dtype), safe)
        z = jnp.where(atom_mask, species_index, 0)

        # --- edge basis, as its factors g_k u [E, K] and Y_lm [E, 1, (L+1)^2] ----------------
        # (MessagePass contracts the radial factor with its filter weights once per degree,
        # then multiplies by Y: the same function as the [E, 1, (L+1)^2, K] product basis)
        # rows of a symmetric list promise reverse mode only: the basis and the first pass's
        # per-species sums may then use e3md's CPU kernels
        promise = reverse_mode_only if symmetric_rows is not None else nullcontext
        with promise():
            radial, angular = _edge_basis(cfg, r_ij)
        basis = (radial.astype(dtype), angular.astype(dtype))
        # exact zeros for padded edges; 1/n̄ normalisation folded into the same multiply
        weights = (mask.astype(dtype) / cfg.avg_num_neighbors)[:, None, None, None]

        # the embedding table [S,1,1,F]: the first message pass sums its edges per (receiver,
        # sender species) before the F-wide filter and product (MessagePass input_index)
        table = enn.Embed(num_embeddings=cfg.num_species, features=F, **kw)(
            jnp.arange(cfg.num_species)
        )
        x = table[z]  # [N,1,1,F]
        rows_given = symmetric_rows is not None and not self.is_initializing()
        if rows_given:
            # the same edges as receiver-major rows [N, M] of a symmetric list: message passes
            # on node features use MessagePass(symmetric=True) (no scatter in reverse mode)
            shape = (num_atoms, symmetric_rows)
            rows = dict(
                adj_idx=src_c.reshape(shape),
                where=mask.reshape(shape),
                symmetric=True,
                edge_chunk=edge_chunk,
            )
            row_basis = (radial.reshape(*shape, -1), angular.reshape(*shape, *angular.shape[1:]))
            row_weights = weights.reshape(*shape, 1, 1, 1)
        for t in range(cfg.num_iterations):
            last = t == cfg.num_iterations - 1
            out_degree = 0 if last else L
            message_pass = enn.MessagePass(
                max_degree=out_degree,
                include_pseudotensors=False,
                use_fused_tensor=True,
                use_basis_bias=False,
                name=f"message_{t}",
                **kw,
            )
            if t > 0 and rows_given:
                m = message_pass(x, row_basis, row_weights, **rows)
            else:
                with promise():
                    m = message_pass(
                        table if t == 0 else x,
                        basis,
                        weights,
                        src_idx=src_c,
                        dst_idx=dst_c,
                        num_segments=num_atoms,
                        edge_chunk=edge_chunk,
                        input_index=z if t == 0 else None,
                    )
            fused = None
            if cfg.self_product and out_degree > 0 and rows_given:
                with promise():
                    fused = _atom_layers(cfg, self.variables["params"], t, x, m)
            if fused is not None:
                x = fused
                continue
            x = _pad_degree(x, out_degree) + enn.Dense(F, name=f"update_{t}", **kw)(m)
            if cfg.self_product and out_degree > 0:
                a = enn.Dense(F, name=f"self_a_{t}", **kw)(x)
                b = enn.Dense(F, name=f"self_b_{t}", **kw)(x)
                x = x + enn.FusedTensor(
                    max_degree=out_degree,
                    include_pseudotensors=False,
                    name=f"self_product_{t}",
                    **kw,
                )(a, b)
            x = enn.Dense(F, name=f"mix_{t}", **kw)(enn.silu(x))

        h = x[..., 0:1, 0:1, :]  # scalars [N,1,1,F]
        h = enn.silu(enn.Dense(cfg.readout_features, name="readout_hidden", **kw)(h))
        nn_i = enn.Dense(1, name="readout", **kw)(h)[:, 0, 0, 0]
        e0 = jnp.asarray(cfg.e0, dtype)[z]
        e_i = cfg.scale * nn_i + cfg.shift + e0
        return jnp.where(atom_mask, e_i, jnp.zeros((), dtype))


def init_params(config: ModelConfig, key: jax.Array) -> dict:
    """Random parameters for ``config`` (a flax variables dict ``{"params": ...}``).

    Args:
      config: model configuration.
      key: PRNG key.

    Returns:
      The variables dict accepted by :func:`atomic_energies` (dtype ``config.dtype``).
    """
    dtype = jnp.dtype(config.dtype)
    # a tiny two-atom graph: shapes only matter for initialisation
    r = jnp.asarray([[1.0, 0.3, -0.2], [-1.0, -0.3, 0.2]], dtype)
    z = jnp.zeros(2, jnp.int32)
    src = jnp.asarray([1, 0], jnp.int32)
    dst = jnp.asarray([0, 1], jnp.int32)
    ones = jnp.ones(2, bool)
    return _jitted_init(config)(key, r, z, src, dst, ones, ones)


@functools.lru_cache(maxsize=16)
def _jitted_init(config: ModelConfig):
    # eager flax init dispatches hundreds of tiny ops; one compiled call is much faster. Plain
    # jax.jit, not e3md.compiler.jit: XLA's classic emitter compiles init 2.5x slower.
    return jax.jit(EnergyModel(config).init)


def atomic_energies(
    config: ModelConfig,
    params: dict,
    r_ij: Float[Array, "E 3"],
    species_index: Int[Array, " N"],
    src: Int[Array, " E"],
    dst: Int[Array, " E"],
    edge_mask: Bool[Array, " E"],
    atom_mask: Bool[Array, " N"],
    *,
    edge_chunk: int | None = EDGE_CHUNK,
    symmetric_rows: int | None = None,
) -> Float[Array, " N"]:
    r"""Per-atom energies :math:`e_i` in eV: THE core function of every e3md energy path.

    jax-md (``potentials.energy``), ASE, OpenMM and training all compute edge vectors their own
    way and call this. It is pure and jit/grad/vmap-friendly; ``config`` is static (hashable).

    Args:
      config: model configuration.
      params: flax variables dict ``{"params": ...}`` (from :func:`init_params` or a file).
      r_ij: edge vectors
        :math:`\mathbf r_{ij} = \mathbf R_{\mathrm{src}} - \mathbf R_{\mathrm{dst}}` in Å
        (from receiver ``dst`` = i to sender ``src`` = j, including any periodic shift).
      species_index: index into ``config.species`` per atom (see :func:`species_index`);
        anything for padded atoms.
      src: sender atom index j per edge; padded edges may hold any value (e.g. ``N``).
      dst: receiver atom index i per edge; padded edges may hold any value.
      edge_mask: True for real edges. Edges touching a padded atom are ignored as well.
      atom_mask: True for real atoms.
      edge_chunk: evaluate the per-edge work of message passing in blocks of this many edges
        (see ``e3md.nn.MessagePass``): the same function with per-edge memory bounded by the
        block instead of the whole graph, and faster on CPU because a block's intermediates
        stay in cache. ``None``: all edges at once. Graphs with at most ``edge_chunk`` edges
        are evaluated at once either way.
      symmetric_rows: promise that the edges are receiver-major rows of this many slots
        (edge ``e`` belongs to receiver ``e // symmetric_rows``; ``E = N * symmetric_rows``)
        of a *symmetric* list (``i <- j`` is a real edge iff ``j <- i`` is, with
        :math:`\mathbf r_{ji} = -\mathbf r_{ij}`), as jax-md's ``Dense`` lists and full host
        lists are. The same function; the message passes after the first then run with
        ``MessagePass(symmetric=True)``, whose reverse-mode rule needs no scatter (energy +
        forces 1.3-1.7x faster on CPU, BENCHMARKS.md), but which supports reverse-mode
        differentiation only (not ``jax.jvp``/``jax.hessian``: use ``None`` for those).

    Returns:
      :math:`e_i` in eV, shape ``[N]``, dtype ``config.dtype``; exactly 0 for padded atoms.
      The total energy is ``e_i.sum()``. Edges longer than ``config.cutoff`` contribute 0.
    """
    return EnergyModel(config).apply(
        params,
        r_ij,
        species_index,
        src,
        dst,
        edge_mask,
        atom_mask,
        edge_chunk=edge_chunk,
        symmetric_rows=symmetric_rows,
    )
