"""matmul, linear and (log-)softmax against NumPy float64 references."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minigrad as mg
import minigrad.nn.functional as F
from gradcheck import check_grad

dims = st.integers(1, 5)


@given(m=dims, k=dims, n=dims, batch=st.sampled_from([(), (2,), (2, 1), (1, 3)]),
       bbatch=st.sampled_from([(), (2,), (3,)]), seed=st.integers(0, 50))
def test_matmul_batched_broadcast(m, k, n, batch, bbatch, seed):
    try:
        np.broadcast_shapes(batch, bbatch)
    except ValueError:
        return
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(batch + (m, k)), rng.standard_normal(bbatch + (k, n))
    np.testing.assert_allclose((mg.tensor(a) @ mg.tensor(b)).numpy(), a @ b, rtol=1e-10)
    (ga, gb), w = check_grad(lambda x, y: x @ y, [a, b], seed)
    if not batch and not bbatch:
        np.testing.assert_allclose(ga, w @ b.T, rtol=1e-9)
        np.testing.assert_allclose(gb, a.T @ w, rtol=1e-9)


def test_matmul_vectors_and_noncontiguous():
    rng = np.random.default_rng(1)
    a, b, v = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), rng.standard_normal(3)
    np.testing.assert_allclose((mg.tensor(a) @ mg.tensor(b).T).numpy(), a @ b.T)
    check_grad(lambda x, y: x @ y.T, [a, b])
    check_grad(lambda x, y: x @ y, [a, v])
    check_grad(lambda x, y: x @ y, [v, a.T])
    check_grad(lambda x, y: x @ y, [a[::2, ::-1], b[:3, :2]])


@pytest.mark.parametrize("shapes", [((4, 3), (3, 5)), ((300, 200), (200, 150)),     # small, big
                                    ((2, 4, 3), (3, 5)), ((2, 4, 3), (2, 3, 5))])
def test_mixed_float_dtypes_promote(shapes):
    """float32 @ float64 computes in float64 (as elementwise ops promote); each leaf's
    gradient keeps its own dtype."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    for da, db in ((np.float32, np.float64), (np.float64, np.float32)):
        ta = mg.tensor(a.astype(da), requires_grad=True)
        tb = mg.tensor(b.astype(db), requires_grad=True)
        out = ta @ tb
        assert out.dtype == np.float64
        ref = a.astype(da).astype(np.float64) @ b.astype(db).astype(np.float64)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10)
        g = rng.standard_normal(out.shape)
        out.backward(mg.tensor(g))
        assert ta.grad.dtype == da and tb.grad.dtype == db
        gb = np.swapaxes(a.astype(da), -1, -2).astype(np.float64) @ g
        if gb.ndim > len(shapes[1]):
            gb = gb.sum(axis=0)
        np.testing.assert_allclose(ta.grad.numpy(), g @ np.swapaxes(b.astype(db), -1, -2),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(tb.grad.numpy(), gb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [4, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_with_mixed_float_dtypes_promotes(rows, bias):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((rows, 200))
    w = rng.standard_normal((150, 200)).astype(np.float32)
    b = rng.standard_normal(150).astype(np.float32) if bias else None
    out = mg.linear(mg.tensor(x), mg.tensor(w), None if b is None else mg.tensor(b))
    assert out.dtype == np.float64
    ref = x @ w.T.astype(np.float64) + (b.astype(np.float64) if bias else 0)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10)


def test_integer_matmul_stays_integer():
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    b = np.arange(8, dtype=np.int64).reshape(4, 2)
    for x, y in ((a, b), (a[None].repeat(2, 0), b)):
        out = mg.tensor(x) @ mg.tensor(y)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out.numpy(), x @ y)


def test_matmul_shape_error_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4, 5\)"):
        mg.zeros(2, 3) @ mg.zeros(4, 5)


def test_linear():
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), rng.standard_normal(5)
    np.testing.assert_allclose(mg.linear(mg.tensor(x), mg.tensor(w), mg.tensor(b)).numpy(), x @ w.T + b)
    (gx, gw, gb), g = check_grad(mg.linear, [x, w, b])
    np.testing.assert_allclose(gb, g.sum(0), rtol=1e-10)
    check_grad(mg.linear, [rng.standard_normal((2, 2, 3)), w])
    with pytest.raises(ValueError, match="3 features"):
        mg.linear(mg.zeros(2, 3), mg.zeros(5, 4))


def _log_softmax(x, axis):
    m = x.max(axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis, keepdims=True))


@given(shape=st.sampled_from([(3,), (2, 5), (2, 3, 4)]), seed=st.integers(0, 50), data=st.data())
def test_log_softmax_softmax(shape, seed, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = np.random.default_rng(seed).standard_normal(shape) * 3
    # atol: the row maximum's log-probability is -log(1 + tiny), a few ulps of 1.0 in absolute
    # terms, so a different summation order changes its *relative* error by ~1e-9
    np.testing.assert_allclose(mg.log_softmax(mg.tensor(x), axis).numpy(), _log_softmax(x, axis),
                               rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(mg.softmax(mg.tensor(x), axis).numpy(), np.exp(_log_softmax(x, axis)),
                               rtol=1e-10, atol=1e-14)
    (g,), w = check_grad(lambda t: mg.log_softmax(t, axis), [x], seed)
    p = np.exp(_log_softmax(x, axis))
    np.testing.assert_allclose(g, w - p * w.sum(axis, keepdims=True), rtol=1e-8, atol=1e-12)
    check_grad(lambda t: mg.softmax(t, axis), [x], seed)


@pytest.mark.parametrize("shape,axis,scale", [((64, 1000), 1, 1.0), ((33, 7), 1, 40.0), ((5, 1), 1, 1.0),
                                              ((6, 9), 0, 3.0), ((16, 4, 128, 128), -1, 3.0),
                                              ((2, 3, 17), 1, 10.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_kernels(shape, axis, scale, dtype):
    """softmax in one backend call each way (float32: the vectorised exp; its gradient from
    the output for both dtypes) against float64 and against the composed Backend default;
    a NaN or +inf makes its row NaN, -inf entries give 0."""
    from minigrad.backend import Backend
    from minigrad.cpu.backend import CPUBackend

    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    t = mg.tensor(x, requires_grad=True)
    y = mg.softmax(t, axis)
    assert y.dtype == dtype
    want = np.exp(_log_softmax(x.astype(np.float64), axis))
    tol = dict(rtol=2e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(y.numpy(), want, **tol)
    y.backward(mg.tensor(g))
    want_g = want * (g - (g * want).sum(axis, keepdims=True))
    np.testing.assert_allclose(t.grad.numpy(), want_g, rtol=tol["rtol"] * 5, atol=tol["atol"] * 10)
    be = CPUBackend()
    np.testing.assert_allclose(Backend.softmax(be, x, axis % x.ndim), y.numpy(), **tol)
    np.testing.assert_allclose(Backend.softmax_backward(be, y.numpy(), g, axis % x.ndim),
                               t.grad.numpy(), rtol=tol["rtol"] * 5, atol=tol["atol"] * 10)
    if x.ndim == 2 and axis == 1 and x.shape[1] > 2:
        special = x.copy()
        special[0, 1] = np.nan
        special[1, 0] = np.inf
        special[2, 2] = -np.inf
        out = mg.softmax(mg.tensor(special), 1).numpy()
        assert np.isnan(out[0]).all() and np.isnan(out[1]).all()
        assert out[2, 2] == 0 and np.isfinite(out[2]).all()


def test_softmax_dim_out_of_range_names_it():
    x = mg.ones((2, 3))
    for fn, name in ((mg.softmax, "softmax"), (mg.log_softmax, "log_softmax")):
        with pytest.raises(ValueError, match=name + r": dim 2 is out of range for a tensor with 2"):
            fn(x, 2)
        with pytest.raises(ValueError, match=r"dim -3 is out of range"):
            fn(x, -3)
        assert fn(x, -2).shape == (2, 3)
        with pytest.raises(TypeError, match=name + ": dim must be an integer, got None"):
            fn(x, None)


def test_log_softmax_is_stable_for_huge_logits():
    x = mg.tensor([[1000.0, 0.0, -1000.0]])
    out = mg.log_softmax(x, 1).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, 0], 0.0, atol=1e-6)


@pytest.mark.parametrize("shape,axis,scale", [((64, 1000), 1, 1.0), ((33, 7), 1, 40.0), ((5, 1), 1, 1.0),
                                              ((6, 9), 0, 3.0), ((2, 3, 17), -1, 10.0)])
def test_log_softmax_float32_kernel(shape, axis, scale):
    """The float32 path (vectorised exp, eight-way row maximum) against float64, with its
    gradient; -inf entries stay -inf, and a NaN or +inf makes its row NaN (as in float64)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    t = mg.tensor(x, requires_grad=True)
    y = mg.log_softmax(t, axis)
    assert y.dtype == mg.float32
    want = _log_softmax(x.astype(np.float64), axis)
    np.testing.assert_allclose(y.numpy(), want, rtol=2e-6, atol=2e-5 * max(1.0, scale))
    g = rng.standard_normal(shape).astype(np.float32)
    y.backward(mg.tensor(g))
    want_g = g - np.exp(want) * g.astype(np.float64).sum(axis, keepdims=True)
    np.testing.assert_allclose(t.grad.numpy(), want_g, rtol=1e-5, atol=1e-5)

    if x.ndim == 2 and axis == 1 and x.shape[1] > 2:
        special = x.copy()
        special[0, 1] = np.nan
        special[1, 0] = np.inf
        special[2, 2] = -np.inf
        out = mg.log_softmax(mg.tensor(special), 1).numpy()
        assert np.isnan(out[0]).all() and np.isnan(out[1]).all()
        assert out[2, 2] == -np.inf and np.isfinite(np.delete(out[2], 2)).all()
        np.testing.assert_allclose(out[3:], want[3:], rtol=2e-6, atol=2e-5 * max(1.0, scale))


@pytest.mark.parametrize("c", [1, 15, 16, 17, 31, 33, 255, 256, 257, 513])
def test_float32_row_kernels_at_vector_and_block_edges(c):
    """The float32 row kernels take the row maximum 16 lanes at a time plus a scalar tail,
    and sum exps in blocks of loss.SUM_BLOCK: widths on both sides of those edges, with each
    row's maximum placed at a different column (inside the vectors, in the tail, in the last
    block), against float64; a NaN or +inf in a row's last column makes that row NaN."""
    rng = np.random.default_rng(c)
    rows = min(c, 24)
    x = (rng.standard_normal((rows, c)) * 4).astype(np.float32)
    for r in range(rows):
        x[r, (r * 7919) % c if r else c - 1] = 30.0
    want = _log_softmax(x.astype(np.float64), 1)
    np.testing.assert_allclose(mg.log_softmax(mg.tensor(x), 1).numpy(), want, rtol=2e-6,
                               atol=2e-5)
    np.testing.assert_allclose(mg.softmax(mg.tensor(x), 1).numpy(), np.exp(want), rtol=2e-6,
                               atol=1e-7)
    labels = rng.integers(0, c, rows)
    loss = F.cross_entropy(mg.tensor(x), mg.tensor(labels)).numpy()
    np.testing.assert_allclose(loss, -want[np.arange(rows), labels].mean(), rtol=2e-6)
    if rows >= 2:
        special = x.copy()
        special[0, c - 1] = np.nan
        special[1, c - 1] = np.inf
        out = mg.log_softmax(mg.tensor(special), 1).numpy()
        assert np.isnan(out[:2]).all() and np.isfinite(out[2:]).all()
