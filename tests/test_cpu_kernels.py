"""e3md's compiled CPU kernels (``e3md.nn.cpu_kernels``) against the XLA formulation of the same
rule (``e3md.nn.rows.coupling_row_messages`` under ``xla_only``), which
``test_nn_message_pass.py`` checks against the plain edge-list message pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3md.nn import cpu_kernels, rows
from e3md.nn.tensor import _coupling_support

pytestmark = pytest.mark.skipif(
    not cpu_kernels.kernels_enabled() or cpu_kernels._compiler() is None,
    reason="needs the CPU backend and a C++ compiler",
)

N, M, K, F = 23, 7, 5, 12


def _support(l_filter, l_in, l_out):
    return np.argwhere(_coupling_support(1, 1, l_filter, l_in, l_out, False, False))


def _inputs(rng, dtype, l_filter, l_in, l_out, F=F):
    support = _support(l_filter, l_in, l_out)
    n1, n2, n3 = (l_filter + 1) ** 2, (l_in + 1) ** 2, (l_out + 1) ** 2

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype)

    w = np.asarray(rng.normal(size=(N, M)))
    w[rng.random((N, M)) < 0.3] = 0  # padding slots
    adj = rng.integers(0, N, size=(N, M))
    adj[w == 0] = N + 3  # out of range on padding: clipped, as jnp.take(mode="clip")
    args = dict(
        wk=normal(l_filter + 1, K, F),
        t=normal(n1, n2, n3, F),
        inputs=normal(N, n2, F),
        radial=normal(N, M, K),
        angular=normal(N, M, n1),
        weights=jnp.asarray(w, dtype),
    )
    return support, args, jnp.asarray(adj), normal(N, n3, F)


def _messages(support, adj):
    def f(wk, t, inputs, radial, angular, weights):
        return rows.coupling_row_messages(
            wk, t, support, inputs, radial, angular, weights, adj, atoms_per_block=4
        )

    return f


def _vjp(f, args, ct, xla):
    def run():
        out, pull = jax.vjp(f, *args.values())
        return out, pull(ct)

    if xla:
        with cpu_kernels.xla_only():
            return run()
    return run()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(
    "degrees",
    [(1, 1, 0), (2, 2, 0), (1, 1, 1), (2, 1, 2)],  # e3md's last pass (small, medium), L > 0 out
)
def test_kernels_are_the_rule(degrees, dtype, rng, features=F):
    """Values and every cotangent (features, radial and angular basis, weights, filter weights,
    coupling tensor) equal the XLA rule's, padding slots and clipped senders included."""
    support, args, adj, ct = _inputs(rng, dtype, *degrees, F=features)
    f = _messages(support, adj)
    assert "ffi_call" in str(jax.make_jaxpr(f)(*args.values()))
    with cpu_kernels.xla_only():  # a new function: make_jaxpr caches traces per function
        assert "ffi_call" not in str(jax.make_jaxpr(_messages(support, adj))(*args.values()))
    out, grads = _vjp(f, args, ct, xla=False)
    out_ref, grads_ref = _vjp(f, args, ct, xla=True)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == jnp.float32 else dict(rtol=1e-11, atol=1e-11)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, out_ref, **tol)
    for name, a, b in zip(args, grads, grads_ref, strict=True):
        assert a.dtype == dtype, name
        np.testing.assert_allclose(a, b, **tol, err_msg=name)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("features", [32, 5])
def test_kernels_at_other_widths(features, dtype, rng):
    """The backward kernel works on vectors of the widest lane count that divides F (16 float32
    lanes at F = 32, one at F = 5): the same rule at those widths."""
    test_kernels_are_the_rule((1, 1, 0), dtype, rng, features=features)


def test_second_order_through_the_kernels(rng):
    """Parameter gradients of a force-like quantity (second order, as force training needs)
    go through the XLA rule's derivative and agree."""
    support, args, adj, ct = _inputs(rng, jnp.float64, 2, 2, 0)
    f = _messages(support, adj)
    c = jnp.asarray(rng.normal(size=args["radial"].shape))

    def h(wk, t):
        def energy(radial):
            a = dict(args, wk=wk, t=t, radial=radial)
            return jnp.sum(ct * f(*a.values()))

        return jnp.sum(c * jax.grad(energy)(args["radial"]))

    got = jax.grad(h, argnums=(0, 1))(args["wk"], args["t"])
    with cpu_kernels.xla_only():
        ref = jax.grad(h, argnums=(0, 1))(args["wk"], args["t"])
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_energy_and_forces_compile_without_the_parameter_kernel(rng):
    """Energy + forces run the forward and input-cotangent kernels only: XLA removes the
    parameter-cotangent call when nothing uses it (as in MD)."""
    support, args, adj, ct = _inputs(rng, jnp.float32, 2, 2, 0)
    f = _messages(support, adj)

    def energy(radial, angular):
        return jnp.sum(ct * f(*dict(args, radial=radial, angular=angular).values()))

    lowered = jax.jit(jax.value_and_grad(energy, argnums=(0, 1))).lower(
        args["radial"], args["angular"]
    )
    targets = lowered.compile().as_text()
    assert "e3md_rows_fwd" in targets and "e3md_rows_bwd" in targets
    assert "e3md_rows_grad" not in targets


def test_without_a_compiler_the_xla_rule_runs(rng, monkeypatch, tmp_path):
    """No compiler: a warning, then the XLA formulation (same values); E3MD_CPU_KERNELS=0
    switches the kernels off without a warning."""
    monkeypatch.setenv("E3MD_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "_compiler", lambda: None)
    monkeypatch.setattr(cpu_kernels, "_loaded", {})
    monkeypatch.setattr(cpu_kernels, "_warned", set())
    support, args, adj, ct = _inputs(rng, jnp.float32, 1, 1, 0)
    f = _messages(support, adj)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        jaxpr = str(jax.make_jaxpr(f)(*args.values()))
    assert "ffi_call" not in jaxpr
    monkeypatch.setenv("E3MD_CPU_KERNELS", "0")
    assert not cpu_kernels.kernels_enabled()
    assert cpu_kernels.rows_kernel(
        features=F, radial=K, filter_degree=1, n2=4, n3=1, support=support, dtype=np.float32
    ) is None  # fmt: skip


def test_a_damaged_cached_library_is_rebuilt(rng, monkeypatch, tmp_path):
    """A truncated library in the cache (a build killed half-way by another tool) is replaced,
    not loaded."""
    monkeypatch.setenv("E3MD_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "_loaded", {})
    config = dict(features=F, radial=K, filter_degree=1, n2=4, n3=1, dtype=np.float32)
    support = _support(1, 1, 0)
    assert cpu_kernels.rows_kernel(**config, support=support) is not None
    (lib,) = tmp_path.glob("rows_*.so")
    head = lib.read_bytes()[:1000]
    lib.unlink()  # a new file: truncating the loaded one in place would crash this process
    lib.write_bytes(head)
    monkeypatch.setattr(cpu_kernels, "_loaded", {})
    assert cpu_kernels.rows_kernel(**config, support=support) is not None
    assert lib.stat().st_size > 1000


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("K, lm", [(5, 4), (8, 9)])  # vectors of 1 lane; of 8 lanes
def test_class_sums_are_the_segment_sum(dtype, K, lm, rng):
    """The first message pass's per-(receiver, class) basis sums: values, cotangents of the
    radial and angular basis and the weights, and a second derivative, equal the XLA segment
    sum's; out-of-range segments (padding) are dropped."""
    from e3md.nn.message_pass import _class_sums

    edges, size = 57, 9
    assert cpu_kernels.class_sum_kernel(rows=lm, radial=K, dtype=dtype) is None  # forward mode
    with cpu_kernels.reverse_mode_only():
        kernel = cpu_kernels.class_sum_kernel(rows=lm, radial=K, dtype=dtype)
    radial = jnp.asarray(rng.normal(size=(edges, K)), dtype)
    angular = jnp.asarray(rng.normal(size=(edges, lm)), dtype)
    w = jnp.asarray(rng.normal(size=edges), dtype)
    seg = jnp.asarray(rng.integers(0, size + 2, size=edges))  # some out of range
    ct = jnp.asarray(rng.normal(size=(size, lm, K)), dtype)

    def xla(radial, angular, w):
        b = angular[:, :, None] * radial[:, None, :] * w[:, None, None]
        return jax.ops.segment_sum(b, seg, num_segments=size)

    def fused(radial, angular, w):
        return _class_sums(kernel, radial, angular, w, seg, size)

    tol = dict(rtol=2e-5, atol=2e-5) if dtype == jnp.float32 else dict(rtol=1e-12, atol=1e-12)
    args = (radial, angular, w)
    out, pull = jax.vjp(fused, *args)
    out_ref, pull_ref = jax.vjp(xla, *args)
    np.testing.assert_allclose(out, out_ref, **tol)
    for a, b in zip(pull(ct), pull_ref(ct), strict=True):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, **tol)

    c = jnp.asarray(rng.normal(size=radial.shape), dtype)

    def second(f):  # d/dw of <c, d<ct, f>/d radial>
        inner = jax.grad(lambda r, w: jnp.sum(ct * f(r, angular, w)))
        return jax.grad(lambda w: jnp.sum(c * inner(radial, w)))(w)

    np.testing.assert_allclose(second(fused), second(xla), **tol)


@pytest.mark.parametrize(
    "dtype, max_degree, cutoff_fn",  # each configuration is a kernel build (~5 s)
    [
        (jnp.float32, 1, "smooth"),
        (jnp.float64, 2, "cosine"),
        (jnp.float32, 3, "cosine"),
        (jnp.float64, 0, "smooth"),
    ],
)
def test_basis_kernel_is_the_model_basis(dtype, max_degree, cutoff_fn, rng):
    """The edge-basis kernel equals the model's XLA basis (Bessel x cutoff, spherical
    harmonics): values, the edge-vector cotangent and a second derivative, including a zero
    vector, a vector below the dtype's tiny, short vectors, vectors at and beyond the cutoff;
    NaN propagates; outside reverse_mode_only there is no kernel."""
    from e3md.potentials.config import ModelConfig
    from e3md.potentials.model import _edge_basis

    config = ModelConfig(species=(1, 8), max_degree=max_degree, cutoff_fn=cutoff_fn, cutoff=4.5)
    v = rng.normal(size=(203, 3)) * 2.5
    v[:6] = [[0, 0, 0], [1e-30, 0, 0], [4.5, 0, 0], [1e-3, 2e-3, 0], [0, 0, 4.4999], [0, 7, 1]]
    v = jnp.asarray(v, dtype)
    kw = dict(max_degree=max_degree, num=8, limit=4.5, cutoff=4.5, cutoff_fn=cutoff_fn)
    assert cpu_kernels.basis_kernel(**kw, dtype=dtype) is None  # forward mode allowed

    def xla(v):
        return _edge_basis(config, v)

    def fused(v):
        with cpu_kernels.reverse_mode_only():
            return _edge_basis(config, v)

    assert "ffi_call" in str(jax.make_jaxpr(fused)(v))
    assert "ffi_call" not in str(jax.make_jaxpr(xla)(v))
    # the kernel computes in float64 for both dtypes: compared with the float64 reference
    # (the float32 XLA basis is less accurate for short vectors, e.g. 3e-5 at 2e-3 Å)
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == jnp.float32 else dict(rtol=1e-12, atol=1e-12)
    ct = tuple(jnp.asarray(rng.normal(size=a.shape), dtype) for a in xla(v))
    # (row 1 is below float32's tiny, so not normalised in float32: its own dtype's reference)
    out, pull = jax.vjp(fused, v)
    (dv,) = pull(ct)
    for ref_dtype, rows_ in ((jnp.float64, np.arange(len(v)) != 1), (dtype, np.array([1]))):
        out_ref, pull_ref = jax.vjp(xla, v.astype(ref_dtype))
        for a, b in zip(out, out_ref, strict=True):
            assert a.dtype == dtype
            np.testing.assert_allclose(a[rows_], b[rows_], **tol)
        (dv_ref,) = pull_ref(tuple(g.astype(ref_dtype) for g in ct))
        scale = np.abs(np.asarray(dv_ref)).max(axis=1, keepdims=True) + 1  # 1/r grows near 0
        np.testing.assert_allclose((dv / scale)[rows_], (dv_ref / scale)[rows_], **tol)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == jnp.float32 else tol

    c = jnp.asarray(rng.normal(size=v.shape), dtype)[6:]
    g2 = tuple(g[6:] for g in ct)

    def second(f):  # d/dv of <c, d<ct, f>/dv>, through the reference rule for the kernel
        inner = jax.grad(lambda v: sum(jnp.sum(g * o) for g, o in zip(g2, f(v), strict=True)))
        return jax.grad(lambda v: jnp.sum(c * inner(v)))(v[6:])  # not at r = 0 (NaN there)

    np.testing.assert_allclose(second(fused), second(xla), **tol)

    with jax.debug_nans(False):
        radial = np.asarray(fused(v.at[7, 0].set(jnp.nan))[0])
    assert np.isnan(radial[7]).all() and np.isfinite(radial[8]).all()


@pytest.mark.parametrize(
    "features, max_degree, rows0, dtype",
    [
        (12, 1, 1, jnp.float64),  # the first iteration: x has its scalar row only
        (12, 2, 9, jnp.float64),
        (32, 1, 4, jnp.float32),  # 16 float32 lanes
        (5, 2, 9, jnp.float32),  # one lane
    ],
)
def test_atom_layers_are_the_model_layers(features, max_degree, rows0, dtype, rng):
    """The per-atom kernel (update, self-product, gated SiLU, mix) against the same layers
    applied as e3md.nn modules: values, and the cotangents of the features, the messages and
    every parameter (the last through the XLA formulation)."""
    from e3md.potentials.config import ModelConfig
    from e3md.potentials.model import _atom_layers, init_params

    import e3md.nn as enn

    F, L, lm = features, max_degree, (max_degree + 1) ** 2
    cfg = ModelConfig(
        species=(1, 8),
        max_degree=L,
        num_features=F,
        num_basis=4,
        dtype=jnp.dtype(dtype).name,
    )
    params = init_params(cfg, jax.random.key(0))["params"]
    # nonzero biases (zero at initialisation), so that every term is exercised
    params = jax.tree.map(lambda p: p + jnp.asarray(0.3 * rng.normal(size=p.shape), dtype), params)
    x = jnp.asarray(rng.normal(size=(N, 1, rows0, F)), dtype)
    m = jnp.asarray(rng.normal(size=(N, 1, lm, F)), dtype)
    ct = jnp.asarray(rng.normal(size=(N, 1, lm, F)), dtype)
    kw = dict(dtype=dtype, param_dtype=dtype)

    def layers(x, m, p):
        dense = enn.Dense(F, **kw)
        y = jnp.pad(x, [(0, 0), (0, 0), (0, lm - rows0), (0, 0)])
        y = y + dense.apply({"params": p["update_0"]}, m)
        a = dense.apply({"params": p["self_a_0"]}, y)
        b = dense.apply({"params": p["self_b_0"]}, y)
        product = enn.FusedTensor(max_degree=L, include_pseudotensors=False, **kw)
        y = y + product.apply({"params": p["self_product_0"]}, a, b)
        return dense.apply({"params": p["mix_0"]}, enn.silu(y))

    def fused(x, m, p):
        with cpu_kernels.reverse_mode_only():
            out = _atom_layers(cfg, p, 0, x, m)
        assert out is not None
        return out

    @jax.jit
    def value_and_cotangents(x, m, p):
        out, pull = jax.vjp(fused, x, m, p)
        out_ref, pull_ref = jax.vjp(layers, x, m, p)
        return (out, pull(ct)), (out_ref, pull_ref(ct))

    (got, dgot), (want, dwant) = value_and_cotangents(x, m, params)
    eps = 1e-12 if dtype == jnp.float64 else 1e-5  # relative to each array's largest entry

    def close(a, b):
        np.testing.assert_allclose(a, b, rtol=eps, atol=eps * float(np.abs(b).max()))

    close(got, want)
    for a, b in zip(jax.tree.leaves(dgot), jax.tree.leaves(dwant), strict=True):
        close(a, b)
    if dtype == jnp.float64 and L == 2:  # second order (parameter gradients of forces), via XLA

        def h(fn, p):
            return jnp.sum(ct * jax.grad(lambda x: jnp.sum(ct * fn(x, m, p)))(x)[..., :1, :])

        second = jax.jit(lambda p: (jax.grad(h, 1)(fused, p), jax.grad(h, 1)(layers, p)))
        for a, b in zip(*map(jax.tree.leaves, second(params)), strict=True):
            close(a, b)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("rows_", [5, 3000])  # one block of edges; several, on both threads
def test_take_rows_reverse_mode_is_the_scatter_add(dtype, rows_, rng):
    """e3md.graph.take_rows inside reverse_mode_only (the kernel's sum per row) against XLA's
    gather: values, the cotangent (repeated and absent indices), and a second derivative."""
    from e3md.graph import take_rows

    edges = 40 * rows_
    assert cpu_kernels.gather_kernel(columns=3, dtype=dtype) is None  # forward mode
    x = jnp.asarray(rng.normal(size=(rows_, 3)), dtype)
    idx = jnp.asarray(rng.integers(0, max(rows_ - 2, 1), size=edges))  # the last rows unused
    ct = jnp.asarray(rng.normal(size=(edges, 3)), dtype)

    def fused(x):
        with cpu_kernels.reverse_mode_only():
            return take_rows(x, idx)

    tol = dict(rtol=2e-5, atol=2e-4) if dtype == jnp.float32 else dict(rtol=1e-12, atol=1e-11)
    out, pull = jax.vjp(jax.jit(fused), x)
    out_ref, pull_ref = jax.vjp(lambda x: x[idx], x)
    np.testing.assert_array_equal(out, out_ref)
    (dx,), (dx_ref,) = pull(ct), pull_ref(ct)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, dx_ref, **tol)
    assert not np.any(np.asarray(dx[-2:]))  # rows no edge gathers

    def second(f):  # d/dx of <c, d<ct, sin(f(x))>/dx>
        inner = jax.grad(lambda x: jnp.sum(ct * jnp.sin(f(x))))
        c = jnp.ones_like(x)
        return jax.grad(lambda x: jnp.sum(c * inner(x)))(x)

    np.testing.assert_allclose(second(fused), second(lambda x: x[idx]), **tol)
    with cpu_kernels.reverse_mode_only():
        hlo = jax.jit(jax.grad(lambda x: jnp.sum(ct * take_rows(x, idx)))).lower(x).as_text()
    assert "e3md_gather_bwd" in hlo


def _space(kind, rng, n, dtype):
    from e3md import space

    cell = np.array([[9.0, 1.5, 0.3], [0.0, 8.0, -0.7], [0.0, 0.0, 10.0]], dtype)  # columns
    if kind == "periodic":
        disp, _ = space.periodic(np.array([9.0, 8.0, 10.0]))
    else:
        disp, _ = space.periodic_general(cell, fractional_coordinates=kind == "fractional")
    if kind == "fractional":
        return disp, rng.uniform(-0.4, 1.4, size=(n, 3))  # some outside the cell
    return disp, rng.uniform(-6.0, 16.0, size=(n, 3))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("kind", ["periodic", "general", "fractional"])
@pytest.mark.parametrize("n", [7, 300])  # one block of rows; several, on both threads
def test_row_edge_vectors_kernel_is_the_xla_formulation(dtype, kind, n, rng):
    """e3md.graph.row_edge_vectors inside reverse_mode_only with a space of e3md.space (the
    edge kernel) against its XLA formulation: vectors (wrapped across cells, zero on padding),
    the positions' cotangent, and a second derivative (through the reference)."""
    from e3md.graph import row_edge_vectors

    m = 9
    disp, R = _space(kind, rng, n, dtype)
    R = jnp.asarray(R, dtype)
    idx = rng.integers(0, n, size=(n, m))
    idx[:, -2:] = n  # padding, as jax-md
    idx[0, 0] = -1  # any index outside [0, N) is padding
    idx = jnp.asarray(idx, jnp.int32)
    ct = jnp.asarray(rng.normal(size=(n * m, 3)), dtype)

    def edges(R):
        return row_edge_vectors(disp, R, idx)[0]

    def fused(R):
        with cpu_kernels.reverse_mode_only():
            return edges(R)

    def reference(R):
        with cpu_kernels.xla_only():
            return edges(R)

    assert "e3md_edge_fwd" in jax.jit(fused).lower(R).as_text()
    assert "e3md_edge_fwd" not in jax.jit(edges).lower(R).as_text()  # forward mode allowed
    tol = dict(rtol=1e-5, atol=2e-5) if dtype == jnp.float32 else dict(rtol=1e-12, atol=1e-12)
    out, pull = jax.vjp(jax.jit(fused), R)
    out_ref, pull_ref = jax.vjp(reference, R)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, out_ref, **tol)
    assert not np.any(np.asarray(out).reshape(n, m, 3)[:, -2:])
    assert not np.any(np.asarray(out[0]))
    np.testing.assert_allclose(pull(ct)[0], pull_ref(ct)[0], **tol)

    def second(f):  # d/dR of <c, d<ct, sin(f(R))>/dR>
        inner = jax.grad(lambda R: jnp.sum(ct * jnp.sin(f(R))))
        c = jnp.ones_like(R)
        return jax.grad(lambda R: jnp.sum(c * inner(R)))(R)

    np.testing.assert_allclose(second(fused), second(reference), **tol)


def test_row_edge_vectors_kernel_only_for_a_known_constant_space(rng):
    """The edge kernel runs only where the space's matrices are known: not with keyword
    arguments (``perturbation=`` for the stress, ``box=`` for NPT), not for a box that is a
    tracer, not for jax-md's own spaces; the values are the same either way."""
    from jax_md import space as jspace

    from e3md import space
    from e3md.graph import row_edge_vectors

    n, m = 20, 6
    R = jnp.asarray(rng.uniform(0.0, 9.0, size=(n, 3)), jnp.float32)
    idx = jnp.asarray(rng.integers(0, n + 1, size=(n, m)), jnp.int32)
    disp, _ = space.periodic(9.0)
    eye = jnp.eye(3, dtype=jnp.float32)

    def hlo(f, *args):
        with cpu_kernels.reverse_mode_only():
            return jax.jit(f).lower(*args).as_text()

    assert "e3md_edge_fwd" in hlo(lambda R: row_edge_vectors(disp, R, idx)[0], R)
    strained = hlo(lambda R, p: row_edge_vectors(disp, R, idx, perturbation=p)[0], R, eye)
    assert "e3md_edge_fwd" not in strained
    traced = hlo(lambda R, L: row_edge_vectors(space.periodic(L)[0], R, idx)[0], R, 9.0)
    assert "e3md_edge_fwd" not in traced
    jax_md_disp, _ = jspace.periodic(9.0)
    assert "e3md_edge_fwd" not in hlo(lambda R: row_edge_vectors(jax_md_disp, R, idx)[0], R)
    singular, _ = space.periodic_general(np.zeros((3, 3)), fractional_coordinates=False)
    assert singular.minimum_image_transform(3) is None
    assert space.periodic(np.array([9.0, 9.0]))[0].minimum_image_transform(3) is None  # 2-D
    if jax.config.jax_enable_x64:  # a float64 cell makes the edge vectors float64
        cell64, _ = space.periodic_general(9.0 * np.eye(3), fractional_coordinates=False)
        assert "e3md_edge_fwd" not in hlo(lambda R: row_edge_vectors(cell64, R, idx)[0], R)
    with cpu_kernels.reverse_mode_only():
        got = jax.jit(lambda R: row_edge_vectors(disp, R, idx)[0])(R)
        want = row_edge_vectors(disp, R, idx, perturbation=eye)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
