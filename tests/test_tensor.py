"""e3md.nn Tensor / FusedTensor against e3x (oracle, identical parameters) and O(3) equivariance."""

import e3x
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3md import so3
from e3md.nn import FusedTensor, Tensor


def _features(rng, p, lmax, f=3, batch=2, dtype=np.float64):
    return jnp.asarray(rng.normal(size=(batch, p, (lmax + 1) ** 2, f)).astype(dtype))


def _randomised(params, rng):
    """Every parameter (masked ones too) random, so no path can hide behind a zero weight."""
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), params)


def _o3_transform(x, q):
    """Features under the orthogonal matrix q (rows convention of so3.wigner_d): degree blocks
    by D(det(q) q), times det(q) for the odd-parity channel (P=2) or det(q)**l (P=1)."""
    s = float(np.linalg.det(np.asarray(q)))
    lmax = round(np.sqrt(x.shape[-2])) - 1
    d = so3.wigner_d(q * s, lmax)
    y = jnp.einsum("...pnf,nm->...pmf", x, d)
    if x.shape[-3] == 2:
        return y * jnp.asarray([1.0, s])[:, None, None]
    ls = np.repeat(np.arange(lmax + 1), 2 * np.arange(lmax + 1) + 1)
    return y * jnp.asarray(s**ls)[:, None]


FUSED_CASES = [  # (P1, P2, include_pseudotensors, (L1, L2, L3))
    (1, 1, True, (2, 2, 2)),
    (1, 1, False, (1, 2, 3)),
    (2, 2, True, (3, 2, 4)),
    (2, 1, False, (4, 4, 4)),
    (1, 2, True, (0, 2, 2)),
    (2, 2, False, (1, 1, 0)),
]


@pytest.mark.parametrize("p1,p2,pseudo,degrees", FUSED_CASES)
def test_fused_tensor_matches_e3x(rng, p1, p2, pseudo, degrees):
    l1, l2, l3 = degrees
    x, y = _features(rng, p1, l1), _features(rng, p2, l2)
    ref = e3x.nn.FusedTensor(max_degree=l3, include_pseudotensors=pseudo)
    ours = FusedTensor(max_degree=l3, include_pseudotensors=pseudo)
    key = jax.random.PRNGKey(7)
    p_ref, p_ours = ref.init(key, x, y), ours.init(key, x, y)
    # Identical parameter trees, and identical initial values for the same key.
    assert jax.tree.structure(p_ref) == jax.tree.structure(p_ours)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=0), p_ref, p_ours)
    params = _randomised(p_ref, rng)
    out = ours.apply(params, x, y)
    expected = ref.apply(params, x, y)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-10, rtol=0)


def test_fused_tensor_matches_e3x_float32(rng):
    x = _features(rng, 2, 2, f=8, dtype=np.float32)
    y = _features(rng, 1, 3, f=8, dtype=np.float32)
    ref, ours = e3x.nn.FusedTensor(max_degree=3), FusedTensor(max_degree=3)
    params = ref.init(jax.random.PRNGKey(0), x, y)
    out = jax.jit(ours.apply)(params, x, y)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref.apply(params, x, y), atol=1e-5, rtol=0)


TENSOR_CASES = [
    (1, 1, True, (1, 1, 2)),
    (1, 2, False, (2, 1, 3)),
    (2, 2, True, (2, 2, 2)),
    (2, 1, True, (0, 2, 2)),
]


@pytest.mark.parametrize("p1,p2,pseudo,degrees", TENSOR_CASES)
def test_tensor_matches_e3x(rng, p1, p2, pseudo, degrees):
    l1, l2, l3 = degrees
    x, y = _features(rng, p1, l1), _features(rng, p2, l2)
    ref = e3x.nn.Tensor(max_degree=l3, include_pseudotensors=pseudo)
    ours = Tensor(max_degree=l3, include_pseudotensors=pseudo)
    key = jax.random.PRNGKey(3)
    p_ref, p_ours = ref.init(key, x, y), ours.init(key, x, y)
    assert jax.tree.structure(p_ref) == jax.tree.structure(p_ours)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=0), p_ref, p_ours)
    params = _randomised(p_ref, rng)
    np.testing.assert_allclose(ours.apply(params, x, y), ref.apply(params, x, y), atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("module", ["fused", "tensor"])
@pytest.mark.parametrize("p1,p2", [(1, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("pseudo", [True, False])
@pytest.mark.parametrize("degrees", [(4, 4, 4), (3, 4, 2), (4, 2, 6)])
def test_matches_e3x_sweep(rng, module, p1, p2, pseudo, degrees):
    l1, l2, l3 = degrees
    x, y = _features(rng, p1, l1), _features(rng, p2, l2)
    ref_cls, our_cls = (
        (e3x.nn.FusedTensor, FusedTensor) if module == "fused" else (e3x.nn.Tensor, Tensor)
    )
    ref = ref_cls(max_degree=l3, include_pseudotensors=pseudo)
    params = _randomised(ref.init(jax.random.PRNGKey(0), x, y), rng)
    out = our_cls(max_degree=l3, include_pseudotensors=pseudo).apply(params, x, y)
    np.testing.assert_allclose(out, ref.apply(params, x, y), atol=1e-10)


@pytest.mark.parametrize("improper", [False, True])
@pytest.mark.parametrize(
    "module,p1,p2,pseudo,degrees",
    [
        ("fused", 2, 2, True, (3, 3, 6)),
        ("fused", 1, 1, False, (3, 2, 5)),
        ("tensor", 2, 1, True, (2, 2, 4)),
    ],
)
def test_equivariance_rotation_and_reflection(keys, rng, improper, module, p1, p2, pseudo, degrees):
    l1, l2, l3 = degrees
    cls = FusedTensor if module == "fused" else Tensor
    m = cls(max_degree=l3, include_pseudotensors=pseudo)
    x, y = _features(rng, p1, l1), _features(rng, p2, l2)
    params = _randomised(m.init(next(keys), x, y), rng)
    q = so3.random_rotation(next(keys))
    q = -q if improper else q
    lhs = m.apply(params, _o3_transform(x, q), _o3_transform(y, q))
    rhs = _o3_transform(m.apply(params, x, y), q)
    assert float(jnp.abs(rhs).max()) > 1e-3  # a vanishing output would pass trivially
    np.testing.assert_allclose(lhs, rhs, atol=1e-10)


def test_fused_tensor_grad_finite_through_harmonics_at_origin(keys):
    m = FusedTensor(max_degree=2, include_pseudotensors=False)
    r = jnp.zeros((3, 3)).at[1].set(jnp.asarray([0.3, -0.2, 1.0]))

    def energy(params, r):
        y = so3.spherical_harmonics(r, 2)[:, None, :, None] * jnp.ones(4)
        return jnp.sum(m.apply(params, y, y) ** 2)

    y0 = jnp.ones((3, 1, 9, 4))
    params = m.init(next(keys), y0, y0)
    g = jax.grad(energy, argnums=(0, 1))(params, r)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))


def test_fused_tensor_traces_tables_as_constants(rng):
    x = _features(rng, 2, 2)
    m = FusedTensor()
    params = m.init(jax.random.PRNGKey(0), x, x)
    traces = []

    @jax.jit
    def f(params, x):
        traces.append(1)
        return m.apply(params, x, x)

    f(params, x)
    f(params, x + 1.0)
    assert len(traces) == 1


def test_fused_tensor_is_traced_once_per_shape_across_outer_traces(rng, monkeypatch):
    """The product is jitted on its own: re-tracing an outer function (an MD step, its initial
    forces, its energy report) must not trace the unrolled product again."""
    import e3md.nn.tensor as tensor_module

    calls = []
    unrolled = tensor_module._fused_unrolled
    monkeypatch.setattr(
        tensor_module, "_fused_unrolled", lambda *a: calls.append(1) or unrolled(*a)
    )
    x = _features(rng, 1, 2)
    m = FusedTensor(include_pseudotensors=False)
    params = m.init(jax.random.PRNGKey(0), x, x)
    tensor_module._fused_tensor_jit.clear_cache()
    calls.clear()
    outer = [jax.jit(lambda p, x, k=k: k * m.apply(p, x, x)) for k in (1.0, 2.0)]
    a, b = (f(params, x) for f in outer)
    np.testing.assert_allclose(b, 2 * a)
    assert len(calls) == 1


@pytest.mark.parametrize("cls", [FusedTensor, Tensor])
def test_bad_inputs_raise(cls):
    m = cls()
    with pytest.raises(ValueError, match="axis -2"):
        m.init(jax.random.PRNGKey(0), jnp.ones((1, 5, 2)), jnp.ones((1, 4, 2)))
    with pytest.raises(ValueError, match="parity"):
        m.init(jax.random.PRNGKey(0), jnp.ones((3, 4, 2)), jnp.ones((1, 4, 2)))
    with pytest.raises(ValueError, match="features"):
        m.init(jax.random.PRNGKey(0), jnp.ones((1, 4, 2)), jnp.ones((1, 4, 3)))
    with pytest.raises(ValueError, match="at most 2"):
        cls(max_degree=3).init(jax.random.PRNGKey(0), jnp.ones((1, 4, 2)), jnp.ones((1, 4, 2)))


def test_fused_tensor_second_order_grads_match_e3x(rng):
    """Forces-in-the-loss training differentiates twice (reverse over reverse): the custom
    transpose rules must agree with e3x's autodiff, value and gradient of the gradient."""
    x, y = _features(rng, 2, 2), _features(rng, 1, 2)
    ref, ours = e3x.nn.FusedTensor(), FusedTensor()
    params = _randomised(ref.init(jax.random.PRNGKey(0), x, y), rng)
    ct = jnp.asarray(rng.normal(size=ref.apply(params, x, y).shape))

    def second(module):
        def inner(x, y):
            return jnp.vdot(module.apply(params, x, y), ct)

        return jax.grad(lambda x: jnp.sum(jax.grad(inner, argnums=1)(x, y) ** 2))(x)

    np.testing.assert_allclose(second(ours), second(ref), atol=1e-9)


@pytest.mark.parametrize("strategy", [None, "coupling", "unrolled", "sparse", "dense"])
def test_fused_tensor_strategies_agree_with_e3x(rng, monkeypatch, strategy):
    import e3md.nn.tensor as tensor_module

    monkeypatch.setattr(tensor_module, "_CONTRACTION", strategy)
    cases = [
        (2, 2, True, (2, 3, 3)),
        (1, 1, False, (3, 2, 4)),
        # degenerate products of message passing: filter x scalars, projection to scalars
        (1, 1, False, (2, 0, 2)),
        (1, 1, False, (2, 2, 0)),
        (2, 1, True, (1, 0, 1)),
        # degree 1 throughout: few couplings, the small model's self-product
        (1, 1, False, (1, 1, 1)),
    ]
    for p1, p2, pseudo, (l1, l2, l3) in cases:
        x, y = _features(rng, p1, l1), _features(rng, p2, l2)
        ref = e3x.nn.FusedTensor(max_degree=l3, include_pseudotensors=pseudo)
        ours = FusedTensor(max_degree=l3, include_pseudotensors=pseudo)
        params = _randomised(ref.init(jax.random.PRNGKey(0), x, y), rng)
        out = ours.apply(params, x, y)
        np.testing.assert_allclose(out, ref.apply(params, x, y), atol=1e-10)
        if strategy not in (None, "coupling"):
            continue
        # kernel gradients (training) too: the coupling tensor is a function of the kernels
        ct = jnp.asarray(rng.normal(size=out.shape))
        params64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        grads = [
            jax.jit(jax.grad(lambda p, m=m, x=x, y=y, ct=ct: jnp.vdot(m.apply(p, x, y), ct)))(
                params64
            )
            for m in (ours, ref)
        ]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-10), *grads)


def test_coupling_strategy_is_chosen_for_products_with_few_couplings():
    from e3md.nn.tensor import _coupling_support, _default_strategy

    # a degree-2 filter times scalars couples each entry with itself: 9 terms
    assert _coupling_support(1, 1, 2, 0, 2, False, True).sum() == 9
    assert _default_strategy(1, 1, 2, 0, 2, False, True) == "coupling"
    assert _default_strategy(1, 1, 2, 2, 0, False, True) == "coupling"
    # degree 1 throughout: 10 couplings (scalar out: x_0 y_0 and x . y, 4; vector out: x_0 y
    # and x y_0, 6; the cross product would be a pseudovector)
    assert _coupling_support(1, 1, 1, 1, 1, False, True).sum() == 10
    assert _default_strategy(1, 1, 1, 1, 1, False, True) == "coupling"
    assert _default_strategy(1, 1, 2, 2, 2, False, True) == "unrolled"
    assert _default_strategy(2, 2, 2, 2, 2, True, True) == "sparse"


def test_coupling_tensor_equals_the_product_on_one_hot_inputs(rng):
    """The coupling tensor formed from the float64 constants and the kernels equals the product
    itself (unrolled / sparse strategy) applied to every pair of one-hot inputs: the
    factorisation over kernel rows holds for random kernels."""
    from e3md.nn.tensor import _coupling_tensor, _one_hot_product

    for p1, p2, pseudo, (l1, l2, l3) in [
        (1, 1, False, (2, 2, 2)),
        (2, 1, True, (1, 2, 2)),
        (2, 2, True, (2, 1, 3)),
    ]:
        x, y = _features(rng, p1, l1), _features(rng, p2, l2)
        m = FusedTensor(max_degree=l3, include_pseudotensors=pseudo)
        params = _randomised(m.init(jax.random.PRNGKey(0), x, y), rng)["params"]
        kernels = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        args = (p1, p2, l1, l2, l3, pseudo, True)
        t = _coupling_tensor(kernels, *args)
        direct = _one_hot_product(kernels, *args, None)
        np.testing.assert_allclose(t, direct.reshape(t.shape), atol=1e-12)


def test_fused_tensor_forward_mode_matches_reverse_mode(rng):
    x, y = _features(rng, 1, 2, batch=1), _features(rng, 2, 1, batch=1)
    m = FusedTensor()
    params = m.init(jax.random.PRNGKey(0), x, y)
    f = lambda x: m.apply(params, x, y)
    np.testing.assert_allclose(jax.jacfwd(f)(x), jax.jacrev(f)(x), atol=1e-12)


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.float64])
def test_fused_tensor_kernels_have_param_dtype(param_dtype):
    """Every kernel in param_dtype, also where e3x's per-degree output variance is a float64
    array (the suite runs with x64 enabled, where that used to promote four kernels)."""
    x = jnp.ones((3, 1, 9, 4), jnp.float32)
    layer = FusedTensor(max_degree=2, include_pseudotensors=False, param_dtype=param_dtype)
    params = layer.init(jax.random.PRNGKey(0), x, x)["params"]
    assert {str(v.dtype) for v in params.values()} == {jnp.dtype(param_dtype).name}


@pytest.mark.parametrize("strategy", [None, "unrolled", "sparse", "dense"])
def test_fused_tensor_backward_has_no_scatter(rng, monkeypatch, strategy):
    """Selecting rows by parity must transpose into slices, not a scatter-add: XLA's CPU
    backend runs a scatter as a loop over rows (the degree-2 self-product's backward used to
    spend most of its time in such loops)."""
    import e3md.nn.tensor as tensor_module

    monkeypatch.setattr(tensor_module, "_CONTRACTION", strategy)
    x = _features(rng, 1, 2)
    m = FusedTensor(include_pseudotensors=False)
    params = m.init(jax.random.PRNGKey(0), x, x)
    grad = jax.grad(lambda x, y: jnp.sum(jnp.sin(m.apply(params, x, y))), argnums=(0, 1))
    hlo = jax.jit(grad).lower(x, 2 * x).as_text()
    assert "scatter" not in hlo


def test_take_rows_is_take():
    from e3md.nn.tensor import _take_rows

    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 9, 4)))
    for idx in ([0, 4, 5, 6, 7, 8], [1, 2, 3], [0, 6, 7, 8, 1, 2, 3, 4, 5], [8, 0], [3]):
        idx = np.asarray(idx)
        ct = jnp.cos(jnp.take(x, idx, axis=1))
        (ours,) = jax.vjp(lambda x, idx=idx: _take_rows(x, idx, -2), x)[1](ct)
        (ref,) = jax.vjp(lambda x, idx=idx: jnp.take(x, idx, axis=1), x)[1](ct)
        np.testing.assert_array_equal(_take_rows(x, idx, -2), jnp.take(x, idx, axis=1))
        np.testing.assert_array_equal(ours, ref)
    with pytest.raises(ValueError, match="distinct"):
        _take_rows(x, np.asarray([1, 1]), 1)
