r"""Equivariant message passing, e3x-compatible (``e3x.nn.MessagePass``), FusedTensor by default.

Parameter tree (identical to e3x's, so e3x parameters apply unchanged)::

    {'filter': <Dense tree: '0+', '1-', ...>,          # basis -> filters, F = input features
     'fused_tensor': <FusedTensor tree>}              # or 'tensor' with use_fused_tensor=False
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Integer

from e3md.nn import cpu_kernels, rows
from e3md.nn.dense import Dense, degree_names
from e3md.nn.ops import gather_src, indexed_sum
from e3md.nn.tensor import FusedTensor, Tensor, _degrees, coupling_form

__all__ = ["MessagePass"]

Dtype = Any
Initializer = Any


def _broadcastable(target: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(target, shape) == tuple(target)
    except ValueError:
        return False


def _factored_filters(dense: Dense, radial, angular):
    """``Dense(angular ⊗ radial)`` computed as ``angular * Dense_per_degree(radial)``."""
    num_degrees = round(math.sqrt(angular.shape[-1]))
    rows = jnp.broadcast_to(
        radial[..., None, None, :], (*radial.shape[:-1], 1, num_degrees, radial.shape[-1])
    )
    r = dense(rows, per_degree=True)  # [..., 1, L+1, F]
    r = jnp.concatenate(
        [
            jnp.broadcast_to(r[..., l : l + 1, :], (*r.shape[:-2], 2 * l + 1, r.shape[-1]))
            for l in range(num_degrees)
        ],
        axis=-2,
    )
    return r * angular[..., None].astype(r.dtype)


def _edge_messages(inputs, basis, weights, dense, tensor, *, src_idx, adj_idx=None, **sum_kwargs):
    """Filters from the basis, times the (weighted) gathered senders, summed into receivers:
    the per-edge work of :class:`MessagePass`, whether over all edges or one block of them.
    ``sum_kwargs`` go to :func:`indexed_sum`."""
    if isinstance(basis, tuple | list):
        filters = _factored_filters(dense, *basis)
    else:
        filters = dense(basis)
    gathered = gather_src(inputs, adj_idx=adj_idx, src_idx=src_idx)
    if weights is not None:
        gathered = gathered * weights
    return indexed_sum(tensor(filters, gathered), adj_idx=adj_idx, **sum_kwargs)


def _sum_over_edge_blocks(block, edge_arrays, fills, edge_chunk):
    """``sum_b block(*edge_arrays[b])`` over blocks of ``edge_chunk`` edges (``lax.scan``).

    ``edge_arrays`` is a tuple of pytrees of per-edge arrays (leading axis E); the last block is
    padded with ``fills`` (one per entry), which must make ``block`` contribute 0. ``block``
    runs under ``jax.checkpoint``: the backward pass recomputes a block instead of storing its
    intermediates, so only the accumulated result and the inputs are kept.
    """
    xs = tuple(
        jax.tree.map(lambda a, fill=fill: rows.blocks(a, edge_chunk, fill), a)
        for a, fill in zip(edge_arrays, fills, strict=True)
    )
    block = jax.checkpoint(block, prevent_cse=False)
    out = jax.eval_shape(block, *jax.tree.map(lambda a: a[0], xs))

    def step(acc, x):
        return acc + block(*x), None

    acc, _ = jax.lax.scan(step, jnp.zeros(out.shape, out.dtype), xs)
    return acc


def _edge_sum(block, edge_arrays, fills, edge_chunk):
    """``block`` over all edges at once, or summed over blocks of ``edge_chunk`` edges."""
    if edge_chunk is None:
        return block(*edge_arrays)
    return _sum_over_edge_blocks(block, edge_arrays, fills, edge_chunk)


def _edge_weights(weights, num_edges, dtype):
    """Weights broadcastable to ``[E, P, LM, F]`` as an array with the edge axis, ``[E, ...]``."""
    if weights is None:
        return jnp.ones((num_edges, 1, 1, 1), dtype)
    weights = jnp.asarray(weights)
    weights = weights.reshape((1,) * (4 - weights.ndim) + weights.shape)  # numpy alignment
    return jnp.broadcast_to(weights, (num_edges, *weights.shape[1:]))


def _chunked_messages(
    inputs,
    basis,
    weights,
    src_idx,
    dst_idx,
    *,
    num_segments,
    edge_chunk,
    indices_are_sorted,
    dense,
    tensor,
    params,
):
    """``MessagePass`` over blocks of ``edge_chunk`` edges, accumulated by ``lax.scan``.

    Each block gathers its senders, builds its filters, forms the products and sums them into
    the receivers, recomputed in the backward pass (:func:`_sum_over_edge_blocks`), so no
    ``[E, P, LM, F]`` intermediate is stored; only per-node arrays and the (small) per-edge
    basis and indices are kept. Padding edges (to a whole number of blocks) carry zero weight
    and the out-of-range receiver ``num_segments`` (last, so sorted receivers stay sorted).
    """
    factored = isinstance(basis, tuple | list)
    weights = _edge_weights(weights, src_idx.shape[0], inputs.dtype)
    # unbound copies, bound inside the block: flax modules must not cross a jax transform
    dense, tensor = dense.clone(parent=None), tensor.clone(parent=None)

    def block(b, w, src, dst):
        return _edge_messages(
            inputs,
            b,
            w,
            dense.bind({"params": params["filter"]}),
            tensor.bind({"params": params[tensor.name]}),
            src_idx=src,
            dst_idx=dst,
            num_segments=num_segments,
            indices_are_sorted=indices_are_sorted,
        )

    edge_arrays = (tuple(basis) if factored else basis, weights, src_idx, dst_idx)
    return _sum_over_edge_blocks(block, edge_arrays, (0, 0, 0, num_segments), edge_chunk)


def _class_messages(
    table,
    basis,
    weights,
    src_idx,
    dst_idx,
    input_index,
    *,
    num_segments,
    edge_chunk,
    dense,
    tensor,
    params,
):
    r"""``MessagePass`` for inputs that depend only on the sender's class: ``x_j = t[c_j]``.

    The product is bilinear and the filter linear in the basis, so
    :math:`\sum_j w_{ij} T(\mathrm{Dense}(b_{ij}), t_{c_j}) = \sum_s T(\mathrm{Dense}(B_{is}),
    t_s)` with :math:`B_{is} = \sum_{j: c_j = s} w_{ij} b_{ij}`: the edges only sum their
    basis ``[1, LMb, K]`` per (receiver, class) and the F-wide filter and product run once per
    receiver and class -- per-edge work O(LMb K) instead of O(LMb F).
    """
    num_classes = table.shape[0]
    factored = isinstance(basis, tuple | list)
    weights = _edge_weights(weights, src_idx.shape[0], table.dtype)
    cls = jnp.take(input_index, src_idx, mode="clip")
    seg = jnp.where(dst_idx < num_segments, dst_idx * num_classes + cls, num_segments * num_classes)

    def block(b, w, seg):
        if factored:
            radial, angular = b
            b = angular[..., None] * radial[..., None, None, :]  # [E, 1, LMb, K]
        return jax.ops.segment_sum(b * w, seg, num_segments=num_segments * num_classes)

    size = num_segments * num_classes
    kernel = None
    if factored:
        radial, angular = basis
        kernel = cpu_kernels.class_sum_kernel(
            rows=angular.shape[-1], radial=radial.shape[-1], dtype=radial.dtype
        )
    if kernel is not None and angular.dtype == radial.dtype == weights.dtype:
        y = angular.reshape(-1, angular.shape[-1])
        summed = _class_sums(kernel, radial, y, weights.reshape(-1), seg, size)[:, None]
    else:
        edge_arrays = (tuple(basis) if factored else basis, weights, seg)
        summed = _edge_sum(block, edge_arrays, (0, 0, size), edge_chunk)
    products = _scalar_class_products(summed, table, tensor, params, num_segments)
    if products is not None:
        return products
    filters = dense(summed)  # [N*S, 1, LMb, F]
    x = jnp.broadcast_to(table, (num_segments, *table.shape)).reshape(-1, *table.shape[1:])
    products = tensor(filters, x)
    return products.reshape(num_segments, num_classes, *products.shape[1:]).sum(axis=1)


def _scalar_class_products(summed, table, tensor, params, num_segments):
    r"""The filter and product of :func:`_class_messages` summed over the classes, for scalar
    class features (``table [S, 1, 1, F]``) and a FusedTensor whose coupling is diagonal (row
    ``i`` of the filter to row ``i`` of the output, as a degree-0 factor gives), else None:

    .. math::
        m_{nif} = T_{i0if} \sum_{s,k} B_{nsik}\, W_{\ell(i)kf}\, t_{sf}

    with the per-class basis sums ``B = summed`` and the filter weights ``W``: one contraction
    over (class, radial function) per row instead of ``[N, S, LMb, F]`` filters, a product per
    class and a sum over classes (the same function, fewer and smaller XLA operations)."""
    num_classes, p1, lmb = table.shape[0], summed.shape[-3], summed.shape[-2]
    if not isinstance(tensor, FusedTensor) or table.shape[1:3] != (1, 1) or p1 != 1:
        return None
    lb = round(math.sqrt(lmb)) - 1
    kernels = params[tensor.name]
    dtype = tensor.dtype or jnp.result_type(summed, table, *kernels.values())
    kernels = {k: v.astype(dtype) for k, v in kernels.items()}
    form = coupling_form(
        kernels,
        1,
        1,
        lb,
        0,
        tensor.max_degree,
        tensor.include_pseudotensors,
        tensor.cartesian_order,
    )
    if form is None:
        return None
    t, support, (p3, lm3) = form
    n3 = p3 * lm3
    if n3 > lmb or not np.array_equal(support, [(i, 0, i) for i in range(n3)]):
        return None
    degree = _degrees(lb)[:n3]
    # the filter's weights (no bias with input_index)
    w = jnp.stack([params["filter"][n]["kernel"] for n in degree_names(lb)]).astype(dtype)[degree]
    q = w[:, None] * table[:, 0, 0, :].astype(dtype)[None, :, None, :]  # [n3, S, K, F]
    b = summed.reshape(num_segments, num_classes, lmb, -1)[:, :, :n3].astype(dtype)
    rows = jnp.einsum("nsik,iskf->nif", b, q, precision=tensor.precision)
    out = rows * t[np.arange(n3), 0, np.arange(n3)]
    return out.reshape(num_segments, p3, lm3, out.shape[-1])


def _class_sums(kernel, radial, angular, weights, seg, size):
    """``segment_sum(w[e] angular[e, :, None] radial[e, None, :], seg)`` ``[size, LMb, K]`` by
    the CPU kernel (:func:`e3md.nn.cpu_kernels.class_sum_kernel`), whose derivative is the XLA
    formula's (so second derivatives work)."""

    def xla(radial, angular, weights, seg):
        b = angular[:, :, None] * radial[:, None, :] * weights[:, None, None]
        return jax.ops.segment_sum(b, seg, num_segments=size)

    def xla_backward(res, g):
        *floats, seg = res
        _, pull = jax.vjp(lambda *a: xla(*a, seg), *floats)
        return (*pull(g), None)

    def forward(radial, angular, weights, seg):
        return kernel.forward(radial, angular, weights, seg, size)

    def backward(res, g):
        return (*kernel.backward(*res, g), None)

    sums = cpu_kernels.with_reference_derivative(forward, backward, xla_backward)
    return sums(radial, angular, weights, seg)


def _symmetric_messages(
    inputs, basis, weights, adj_idx, where, *, edge_chunk, dense, tensor, params, precision
):
    """``MessagePass`` over a symmetric list in receiver-major rows (:mod:`e3md.nn.rows`)."""
    num_nodes, slots = adj_idx.shape
    w = jnp.ones((num_nodes, slots), inputs.dtype) if weights is None else weights
    w = jnp.where(where, jnp.broadcast_to(w, (num_nodes, slots)), 0)
    atoms_per_block = num_nodes if edge_chunk is None else max(1, edge_chunk // max(slots, 1))
    atoms_per_block = min(atoms_per_block, num_nodes)
    factored = isinstance(basis, tuple | list)
    p, l2 = inputs.shape[-3], round(math.sqrt(inputs.shape[-2])) - 1
    form = None
    if factored and isinstance(tensor, FusedTensor):
        radial, angular = basis
        lb = round(math.sqrt(angular.shape[-1])) - 1
        kernels = params[tensor.name]
        # the computation dtype as FusedTensor's (flax promote_dtype)
        dtype = tensor.dtype or jnp.result_type(inputs, *kernels.values())
        kernels = {k: v.astype(dtype) for k, v in kernels.items()}
        form = coupling_form(
            kernels,
            1,
            p,
            lb,
            l2,
            tensor.max_degree,
            tensor.include_pseudotensors,
            tensor.cartesian_order,
        )
    if form is not None:
        t, support, (p3, lm3) = form
        wk = jnp.stack([params["filter"][n]["kernel"] for n in degree_names(lb)]).astype(dtype)
        out = rows.coupling_row_messages(
            wk,
            t,
            support,
            inputs.reshape(num_nodes, -1, inputs.shape[-1]).astype(dtype),
            radial.astype(dtype),
            angular[..., 0, :].astype(dtype),
            w.astype(dtype),
            adj_idx,
            atoms_per_block=atoms_per_block,
            precision=precision,
        )
        return out.reshape(num_nodes, p3, lm3, inputs.shape[-1])

    def filters(prm, b):
        d = dense.bind({"params": prm["filter"]})
        return _factored_filters(d, *b) if factored else d(b)

    def product(prm, f, g):
        return tensor.bind({"params": prm[tensor.name]})(f, g)

    return rows.generic_row_messages(
        params,
        inputs,
        tuple(basis) if factored else basis,
        w,
        adj_idx,
        filters=filters,
        product=product,
        atoms_per_block=atoms_per_block,
    )


class MessagePass(nn.Module):
    r"""One equivariant message-passing step.

    .. math::
        \mathbf f_{ij} = \mathrm{Dense}(\mathbf b_{ij}),\qquad
        \mathbf m_i = \sum_{j\in\mathcal N(i)} w_{ij}\;
          \mathrm{tensor}\bigl(\mathbf f_{ij},\ \mathbf x_j\bigr),

    where :math:`\mathbf b_{ij}` is the edge basis (:func:`e3md.nn.basis`), ``tensor`` is
    :class:`e3md.nn.FusedTensor` (default here; e3x defaults to ``Tensor``) or
    :class:`e3md.nn.Tensor`, and :math:`w_{ij}` are optional edge weights (1 if absent).

    Neighbourhoods come as either

    * a **dense** list ``adj_idx[..., N, M]`` (+ optional ``where[..., N, M]``; by default
      entries ``>= N`` are padding) with ``basis[..., N, M, 1, LM, K]``, or
    * a **sparse** list ``dst_idx[..., E]`` (receiver :math:`i`), ``src_idx[..., E]`` (sender
      :math:`j`) with ``basis[..., E, 1, LM, K]``; padded edges hold ``dst_idx == N`` (jax-md
      convention) and are dropped from the sum.

    Padded or masked edges contribute exactly nothing to values or gradients.

    Attributes:
      max_degree: output degree (default: max of the input and basis degrees).
      use_basis_bias: add a bias to the filter Dense (scalar channel).
      include_pseudotensors: if False, paths producing pseudotensors are omitted.
      cartesian_order: e3x's Cartesian order of the irreps.
      use_fused_tensor: FusedTensor (True, default) or the full Clebsch–Gordan Tensor.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      precision: ``jax.lax.Precision`` of the contractions.
      dense_kernel_init: filter Dense weight initialiser (LeCun normal).
      dense_bias_init: filter Dense bias initialiser (zeros).
      tensor_kernel_init: tensor-product initialiser (``None``: the tensor's default).
    """

    max_degree: int | None = None
    use_basis_bias: bool = False
    include_pseudotensors: bool = True
    cartesian_order: bool = True
    use_fused_tensor: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    dense_kernel_init: Initializer = nn.initializers.lecun_normal()
    dense_bias_init: Initializer = nn.initializers.zeros
    tensor_kernel_init: Initializer | None = None

    @nn.nowrap
    def _tensor(self) -> nn.Module:
        if self.use_fused_tensor:
            cls, name = FusedTensor, "fused_tensor"
        else:
            cls, name = Tensor, "tensor"
        kwargs = dict(
            max_degree=self.max_degree,
            include_pseudotensors=self.include_pseudotensors,
            cartesian_order=self.cartesian_order,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            name=name,
        )
        if self.tensor_kernel_init is not None:
            kwargs["kernel_init"] = self.tensor_kernel_init
        return cls(**kwargs)

    @nn.compact
    def __call__(
        self,
        inputs: Float[Array, "... N P LM F"],
        basis: Float[Array, "... 1 LMb K"] | tuple[Array, Array],
        weights: Float[Array, "..."] | None = None,
        *,
        adj_idx: Integer[Array, "... N M"] | None = None,
        where: Bool[Array, "... N M"] | None = None,
        dst_idx: Integer[Array, "... E"] | None = None,
        src_idx: Integer[Array, "... E"] | None = None,
        num_segments: int | None = None,
        indices_are_sorted: bool = False,
        edge_chunk: int | None = None,
        input_index: Integer[Array, " N"] | None = None,
        symmetric: bool = False,
    ) -> Float[Array, "... N P3 LM3 F"]:
        """Computes the messages ``m[..., N, P3, (L3+1)**2, F]``.

        Args:
          inputs: node features ``x[..., N, P, (L+1)**2, F]``.
          basis: edge basis, ``[..., N, M, 1, LMb, K]`` (dense) or ``[..., E, 1, LMb, K]``
            (sparse); or its factors ``(radial [..., K], angular [..., 1, LMb])`` from
            ``e3md.nn.basis(..., factored=True)``: the same function with the same parameters,
            but the filter weights contract the radial part once per degree and the result is
            multiplied by the angular part, instead of contracting all ``LMb`` rows (not with
            ``use_basis_bias``).
          weights: optional edge weights, broadcastable to the gathered inputs
            (``[..., N, M, P, LM, F]`` or ``[..., E, P, LM, F]``), e.g. ``w[E, 1, 1, 1]``.
          adj_idx: dense neighbour list.
          where: dense mask (default ``adj_idx < N``).
          dst_idx: sparse receivers (padding: ``N``).
          src_idx: sparse senders.
          num_segments: number of receivers (default ``N``, the node axis of ``inputs``).
          indices_are_sorted: promise that ``dst_idx`` is sorted (faster segment sum).
          edge_chunk: sparse, unbatched lists only: evaluate gather, filter, product and sum in
            blocks of this many edges (``lax.scan``, each block under ``jax.checkpoint``), so
            no ``[E, P, LM, F]`` tensor is ever stored, in the forward or the backward pass:
            memory O(N + edge_chunk) instead of O(E) per-edge features, for the same function
            (summation order aside). ``None`` (default) or ``>= E``: all edges at once.
          input_index: sparse, unbatched lists only: ``inputs`` is then a table
            ``[S, P, LM, F]`` of node classes (e.g. a species embedding) and node ``j`` has the
            features ``inputs[input_index[j]]``. The same function, computed by summing the
            weighted basis per (receiver, sender class) first and applying filter and product
            per receiver and class: per-edge work O(LMb K) instead of O(LMb F); for scalar
            classes (``[S, 1, 1, F]``) and a FusedTensor, filter, product and the sum over
            classes are one contraction per receiver and row. Needs per-edge
            scalar ``weights`` (``[E, 1, 1, 1]``) and ``use_basis_bias=False``. With a
            factored basis on CPU, inside :func:`e3md.nn.cpu_kernels.reverse_mode_only`, the
            per-class sums run as a compiled kernel (same function, reverse mode only).
          symmetric: dense, unbatched lists ``adj_idx[N, M]`` only: promise that the list is
            symmetric -- ``i <- j`` is an edge iff ``j <- i`` is, with equal weights and the
            basis of the reversed vector (``(-1)^l`` times the rows of degree ``l``, true for
            ``e3md.nn.basis``) -- as full neighbour lists are. The messages are then evaluated
            over blocks of ``max(1, edge_chunk // M)`` receivers (all at once if
            ``edge_chunk`` is None) with a reverse-mode rule that uses the symmetry: the
            senders' cotangents are sums over their own rows instead of scatters
            (:mod:`e3md.nn.rows`; 2-2.4x faster forward + backward on CPU). The same
            function; reverse-mode only (``jax.grad``/``jax.vjp``, also nested), not
            ``jax.jvp``. Needs per-edge scalar ``weights`` (``[N, M, 1, 1, 1]``). With a
            factored basis and a FusedTensor in its coupling form, on CPU the rule runs as
            compiled kernels (:func:`e3md.nn.cpu_kernels.rows_kernel`; same function).

        Returns:
          Messages per node.

        Raises:
          ValueError: for a missing, ambiguous or incomplete index list, incompatible
            shapes of ``inputs``/``basis``/``weights``, or malformed features.
        """
        if inputs.ndim < 4:
            raise ValueError(
                f"inputs need shape (..., N, P, (L+1)**2, F), received shape {inputs.shape}"
            )
        if adj_idx is None and (dst_idx is None or src_idx is None):
            raise ValueError(
                "give adj_idx (dense) or both dst_idx and src_idx (sparse), received "
                f"adj_idx={adj_idx is not None}, dst_idx={dst_idx is not None}, "
                f"src_idx={src_idx is not None}"
            )
        if adj_idx is not None and (dst_idx is not None or src_idx is not None):
            raise ValueError("give either adj_idx or dst_idx/src_idx, not both")
        num_nodes = inputs.shape[-4]
        table = None
        if input_index is not None:
            if adj_idx is not None or src_idx.ndim != 1 or input_index.ndim != 1:
                raise ValueError(
                    "input_index needs an unbatched sparse index list and indices of shape [N], "
                    f"received input_index of shape {input_index.shape}"
                )
            if self.use_basis_bias:
                raise ValueError("input_index cannot be used with use_basis_bias=True")
            if weights is not None and any(d != 1 for d in jnp.shape(weights)[1:]):
                raise ValueError(
                    "input_index needs per-edge scalar weights [E, 1, 1, 1], received shape "
                    f"{jnp.shape(weights)}"
                )
            table, inputs = inputs, jnp.take(inputs, input_index, axis=0, mode="clip")
            num_nodes = input_index.shape[0]
        # shape only: the senders are gathered where the messages are formed
        gather = functools.partial(gather_src, adj_idx=adj_idx, src_idx=src_idx)
        gathered_shape = jax.eval_shape(gather, inputs).shape
        if weights is not None and not _broadcastable(gathered_shape, jnp.shape(weights)):
            raise ValueError(
                f"weights with shape {jnp.shape(weights)} do not broadcast to the gathered "
                f"inputs of shape {gathered_shape}"
            )
        factored = isinstance(basis, tuple | list)
        if factored:
            radial, angular = basis
            edge_shape, shown = angular.shape[:-2], (radial.shape, angular.shape)
            if radial.shape[:-1] != edge_shape:
                raise ValueError(
                    f"basis factors of shapes {shown} do not match each other (expected "
                    "radial [..., K] and angular [..., 1, LMb] over the same edges)"
                )
            if self.use_basis_bias:
                raise ValueError("a factored basis cannot be used with use_basis_bias=True")
        else:
            edge_shape, shown = basis.shape[:-3], basis.shape
        if edge_shape != gathered_shape[:-3]:
            raise ValueError(
                f"basis of shape {shown} does not match the edges of the index list "
                f"(expected leading shape {gathered_shape[:-3]})"
            )
        if num_segments is None:
            num_segments = num_nodes
        if adj_idx is not None and where is None:
            where = adj_idx < num_nodes

        dense = Dense(
            features=inputs.shape[-1],
            use_bias=self.use_basis_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.dense_kernel_init,
            bias_init=self.dense_bias_init,
            name="filter",
        )
        tensor = self._tensor()
        if symmetric:
            if adj_idx is None or adj_idx.ndim != 2 or table is not None:
                raise ValueError(
                    "symmetric=True needs an unbatched dense index list adj_idx[N, M] (and no "
                    f"input_index), received adj_idx of shape "
                    f"{None if adj_idx is None else adj_idx.shape}"
                )
            if weights is not None and any(d != 1 for d in jnp.shape(weights)[2:]):
                raise ValueError(
                    "symmetric=True needs per-edge scalar weights [N, M, 1, 1, 1], "
                    f"received shape {jnp.shape(weights)}"
                )
            if edge_chunk is not None and edge_chunk < 1:
                raise ValueError(f"edge_chunk must be positive, received {edge_chunk}")
            if not self.is_initializing():
                return _symmetric_messages(
                    inputs,
                    basis,
                    None if weights is None else jnp.reshape(weights, jnp.shape(weights)[:2]),
                    adj_idx,
                    where,
                    edge_chunk=edge_chunk,
                    dense=dense.clone(parent=None),
                    tensor=tensor.clone(parent=None),
                    params=self.variables["params"],
                    precision=self.precision,
                )
            edge_chunk = None
        if edge_chunk is not None:
            if adj_idx is not None or src_idx.ndim != 1 or edge_chunk < 1:
                raise ValueError(
                    "edge_chunk needs a positive block size and an unbatched sparse index list "
                    f"(dst_idx, src_idx of shape [E]), received edge_chunk={edge_chunk}"
                    + ("" if adj_idx is None else " with adj_idx")
                )
            # init creates the parameters by one ordinary call
            if edge_chunk >= src_idx.shape[0] or self.is_initializing():
                edge_chunk = None
        if table is not None and not self.is_initializing():
            return _class_messages(
                table,
                basis,
                weights,
                src_idx,
                dst_idx,
                input_index,
                num_segments=num_segments,
                edge_chunk=edge_chunk,
                dense=dense,
                tensor=tensor,
                params=self.variables["params"],
            )
        if edge_chunk is not None:
            return _chunked_messages(
                inputs,
                basis,
                weights,
                src_idx,
                dst_idx,
                num_segments=num_segments,
                edge_chunk=edge_chunk,
                indices_are_sorted=indices_are_sorted,
                dense=dense,
                tensor=tensor,
                params=self.variables["params"],
            )
        return _edge_messages(
            inputs,
            basis,
            weights,
            dense,
            tensor,
            src_idx=src_idx,
            adj_idx=adj_idx,
            where=where,
            dst_idx=dst_idx,
            num_segments=num_segments,
            indices_are_sorted=indices_are_sorted,
        )
