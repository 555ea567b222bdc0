"""Every CUDA backend method against a NumPy float64 reference (and the CPU backend where it exists).

Shapes are tiny: under ``NUMBA_ENABLE_CUDASIM=1`` each GPU thread is a Python thread.
"""

import numpy as np
import pytest

import reference as ref
from minigrad_cuda.memory import BlockPool, size_class

RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float32):
    """Standard-normal test data."""
    return RNG.standard_normal(shape).astype(dtype)


def close(got, want, tol=1e-5):
    """Assert equal shapes and values (NaN == NaN) within ``tol`` (relative to magnitude)."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol,
                               atol=tol, equal_nan=True)


def cpu_has(cpu, method, *args):
    """True when the CPU backend implements ``method`` (other modules land concurrently)."""
    try:
        getattr(cpu, method)(*args)
        return True
    except (ImportError, NotImplementedError, AttributeError, ModuleNotFoundError):
        return False


# --- storage --------------------------------------------------------------------


@pytest.mark.parametrize("array", [rand(3, 4), rand(2, 3).astype(np.float64),
                                   np.arange(5, dtype=np.int64), np.array([True, False]),
                                   np.float32(2.5) * np.ones(()), np.zeros((0, 3), np.float32)])
def test_roundtrip(be, array):
    out = be.to_numpy(be.from_numpy(array))
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_full_astype_copy_fill(be):
    close(be.to_numpy(be.full((2, 3), 1.5, np.float32)), np.full((2, 3), 1.5))
    x = rand(3, 4)
    y = be.astype(be.from_numpy(x), np.float64)
    assert y.dtype == np.float64
    close(be.to_numpy(y), x)
    assert be.to_numpy(be.astype(be.from_numpy(np.array([1.7, -2.2])), np.int64)).tolist() == [1, -2]
    d = be.full((3, 4), 0, np.float32)
    be.copy_(d, be.from_numpy(x))
    close(be.to_numpy(d), x)
    be.copy_(d, be.from_numpy(x[0]))  # broadcast source
    close(be.to_numpy(d), np.broadcast_to(x[0], (3, 4)))
    be.fill_(d, -2)
    close(be.to_numpy(d), np.full((3, 4), -2.0))


# --- elementwise ------------------------------------------------------------------

UNARY = ["neg", "exp", "log", "sqrt", "relu", "sigmoid", "tanh", "abs", "sign", "erf"]


@pytest.mark.parametrize("op", UNARY)
def test_unary(be, cpu, op):
    x = np.array([[-2.0, -0.5, 0.0, 0.3], [1.0, 4.0, np.nan, -np.inf]], np.float32)
    got = be.to_numpy(be.unary(op, be.from_numpy(x)))
    want = cpu.unary(op, x)
    assert got.dtype == want.dtype
    close(got, want, 1e-6)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow", "maximum", "minimum",
                                "eq", "ne", "lt", "le", "gt", "ge"])
@pytest.mark.parametrize("sa,sb", [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)),
                                   ((1,), (2, 3))])
def test_binary(be, cpu, op, sa, sb):
    a = np.abs(rand(*sa)) + 0.5 if op == "pow" else rand(*sa)
    b = rand(*sb)
    if op in ("eq", "ne", "le", "ge") and sa == sb:
        b[0] = a[0]
    got = be.to_numpy(be.binary(op, be.from_numpy(a), be.from_numpy(b)))
    want = cpu.binary(op, a, b)
    assert got.dtype == want.dtype
    close(got, want, 1e-5)


def test_binary_mixed_dtypes(be, cpu):
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    b = rand(3)
    for op in ("add", "mul", "div", "gt"):
        got = be.to_numpy(be.binary(op, be.from_numpy(a), be.from_numpy(b)))
        want = cpu.binary(op, a, b)
        assert got.dtype == want.dtype
        close(got, want)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow", "maximum", "minimum", "gt", "eq"])
@pytest.mark.parametrize("reverse", [False, True])
def test_scalar(be, cpu, op, reverse):
    x = np.abs(rand(2, 5)) + 0.25
    for s in (2.0, 0.5, 3):
        got = be.to_numpy(be.scalar(op, be.from_numpy(x), s, reverse))
        want = cpu.scalar(op, x, s, reverse)
        if op in ("gt", "eq") and reverse:  # the interface says op(s, x); the CPU ignores reverse here
            want = {"gt": np.greater, "eq": np.equal}[op](s, x).astype(x.dtype)
        assert got.dtype == want.dtype
        close(got, want, 1e-5)


def test_scalar_int_tensor(be, cpu):
    x = np.arange(-3, 3, dtype=np.int64)
    for op, s in (("mul", 2), ("div", 2), ("add", 0.5), ("lt", 0.5)):
        got = be.to_numpy(be.scalar(op, be.from_numpy(x), s))
        want = cpu.scalar(op, x, s)
        assert got.dtype == want.dtype, op
        close(got, want)


def test_where(be):
    c = (rand(3, 1) > 0).astype(np.float32)
    a, b = rand(3, 4), rand(4)
    close(be.to_numpy(be.where(be.from_numpy(c), be.from_numpy(a), be.from_numpy(b))),
          np.where(c != 0, a, b))


@pytest.mark.parametrize("op", ["relu", "sigmoid", "tanh"])
def test_activation_grad(be, op):
    x = rand(3, 4).astype(np.float64)
    y = {"relu": np.maximum(x, 0), "sigmoid": 1 / (1 + np.exp(-x)), "tanh": np.tanh(x)}[op]
    gy = rand(3, 4).astype(np.float64)
    want = {"relu": gy * (y > 0), "sigmoid": gy * y * (1 - y), "tanh": gy * (1 - y * y)}[op]
    close(be.to_numpy(be.activation_grad(op, be.from_numpy(y), be.from_numpy(gy))), want, 1e-12)
    gb = rand(4).astype(np.float64)  # broadcast gradient
    want_b = {"relu": gb * (y > 0), "sigmoid": gb * y * (1 - y), "tanh": gb * (1 - y * y)}[op]
    close(be.to_numpy(be.activation_grad(op, be.from_numpy(y), be.from_numpy(gb))), want_b, 1e-12)


# --- reductions ---------------------------------------------------------------------


@pytest.mark.parametrize("shape,axes", [((3, 4), (1,)), ((3, 4), (0,)), ((2, 3, 4), (0, 2)),
                                        ((2, 3, 4), (1,)), ((2, 3, 4), (0, 1, 2)), ((5,), (0,)),
                                        ((3, 5000), (1,)), ((600, 3), (0,)), ((2, 1, 3), (1,))])
@pytest.mark.parametrize("keepdims", [False, True])
def test_sum_max(be, shape, axes, keepdims):
    x = rand(*shape)
    d = be.from_numpy(x)
    close(be.to_numpy(be.sum(d, axes, keepdims)), x.astype(np.float64).sum(axes, keepdims=keepdims), 1e-4)
    close(be.to_numpy(be.max(d, axes, keepdims)), x.max(axes, keepdims=keepdims), 0)


def test_reduce_nan_and_ints(be):
    x = np.array([[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]], np.float32)
    close(be.to_numpy(be.max(be.from_numpy(x), (1,), False)), [np.nan, 6.0], 0)
    i = np.arange(12).reshape(3, 4)
    s = be.to_numpy(be.sum(be.from_numpy(i), (0,), False))
    assert s.dtype == np.int64 and s.tolist() == i.sum(0).tolist()


@pytest.mark.parametrize("xs,shape", [((3, 4), (4,)), ((2, 3, 4), (3, 1)), ((2, 3), (2, 3)),
                                      ((2, 3), ())])
def test_sum_to_shape(be, cpu, xs, shape):
    x = rand(*xs)
    close(be.to_numpy(be.sum_to_shape(be.from_numpy(x), shape)), cpu.sum_to_shape(x, shape), 1e-5)


# --- shape ------------------------------------------------------------------------------


def test_reshape_transpose_broadcast(be):
    x = rand(2, 3, 4)
    d = be.from_numpy(x)
    close(be.to_numpy(be.reshape(d, (4, 6))), x.reshape(4, 6), 0)
    for axes in ((2, 0, 1), (1, 0, 2), (0, 2, 1)):
        t = be.transpose(d, axes)
        close(be.to_numpy(t), np.transpose(x, axes), 0)
        close(be.to_numpy(be.reshape(t, (-1,))), np.transpose(x, axes).reshape(-1), 0)
    close(be.to_numpy(be.broadcast_to(be.from_numpy(x[:, :1]), (2, 3, 4))),
          np.broadcast_to(x[:, :1], (2, 3, 4)), 0)


INDEXES = [
    (1,), (slice(None), 2), (slice(1, None), slice(None, None, -2)), (Ellipsis, 1),
    (None, slice(0, 2), Ellipsis, None), (-1, slice(None), slice(3, 0, -1)),
    (1, 2, 3), (-1, 0), (np.array([0, 2, 0]),), (slice(None), np.array([[1, 1], [2, 0]])),
    (np.array([0, 1]), slice(None), np.array([3, 3])), (np.array([True, False, True]),),
]


@pytest.mark.parametrize("index", INDEXES, ids=[repr(i) for i in range(len(INDEXES))])
def test_getitem_index_add(be, cpu, index):
    x = rand(3, 4, 5)
    got = be.to_numpy(be.getitem(be.from_numpy(x), index))
    close(got, x[index], 0)
    g = rand(*x[index].shape)
    want = np.zeros(x.shape, np.float32)
    np.add.at(want, index, g)
    close(be.to_numpy(be.index_add(x.shape, index, be.from_numpy(g))), want, 1e-6)


def test_pad_concatenate(be):
    x = rand(2, 3, 4)
    pads = ((0, 1), (2, 0), (1, 3))
    close(be.to_numpy(be.pad(be.from_numpy(x), pads, 0.5)),
          np.pad(x, pads, constant_values=0.5), 0)
    parts = [rand(2, k, 3) for k in (1, 3, 2)]
    for axis, ps in ((1, parts), (0, [rand(1, 2), rand(3, 2)]), (2, [rand(2, 2, 1), rand(2, 2, 3)])):
        close(be.to_numpy(be.concatenate([be.from_numpy(p) for p in ps], axis)),
              np.concatenate(ps, axis), 0)


# --- linear algebra ------------------------------------------------------------------


@pytest.mark.parametrize("sa,sb", [((5, 7), (7, 9)), ((20, 33), (33, 18)), ((3, 300), (300, 4)),
                                   ((2, 5, 6), (2, 6, 3)), ((2, 5, 6), (6, 3)),
                                   ((4, 6), (3, 6, 2)), ((2, 1, 3, 4), (1, 3, 4, 5))])
def test_matmul(be, sa, sb):
    a, b = rand(*sa), rand(*sb)
    close(be.to_numpy(be.matmul(be.from_numpy(a), be.from_numpy(b))),
          np.matmul(a.astype(np.float64), b), 1e-4)


def test_matmul_float64(be):
    a, b = rand(9, 17, dtype=np.float64), rand(17, 5, dtype=np.float64)
    got = be.to_numpy(be.matmul(be.from_numpy(a), be.from_numpy(b)))
    assert got.dtype == np.float64
    close(got, a @ b, 1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_linear(be, cpu, bias):
    x, w = rand(6, 10), rand(7, 10)
    b = rand(7) if bias else None
    got = be.to_numpy(be.linear(be.from_numpy(x), be.from_numpy(w),
                                be.from_numpy(b) if bias else None))
    want = x.astype(np.float64) @ w.T.astype(np.float64) + (b if bias else 0)
    close(got, want, 1e-4)
    close(got, cpu.linear(x, w, b), 1e-4)


# --- convolution and pooling -----------------------------------------------------------

CONVS = [  # (x shape, w shape, stride, padding, dilation)
    ((2, 3, 7, 6), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2, 8, 7), (3, 2, 3, 2), (2, 1), (1, 0), (1, 2)),
    ((2, 4, 5, 5), (3, 4, 1, 1), (2, 2), (0, 0), (1, 1)),
    ((1, 1, 9, 9), (2, 1, 5, 5), (2, 3), (2, 2), (1, 1)),
    # stride 2 with dilation 2: the odd stride phases get no taps (dX writes zeros there)
    ((2, 3, 6, 5), (4, 3, 2, 2), (2, 2), (0, 1), (2, 2)),
]


@pytest.mark.parametrize("xs,ws,stride,padding,dilation", CONVS)
def test_conv2d(be, cpu, xs, ws, stride, padding, dilation):
    x, w, b = rand(*xs), rand(*ws), rand(ws[0])
    want = ref.conv2d(x, w, b, stride, padding, dilation)
    got = be.to_numpy(be.conv2d(be.from_numpy(x), be.from_numpy(w), be.from_numpy(b), stride,
                                padding, dilation))
    close(got, want, 1e-4)
    close(be.to_numpy(be.conv2d(be.from_numpy(x), be.from_numpy(w), None, stride, padding,
                                dilation)), want - b[None, :, None, None], 1e-4)
    if cpu_has(cpu, "conv2d", x, w, b, stride, padding, dilation):
        close(got, cpu.conv2d(x, w, b, stride, padding, dilation), 1e-4)
    gy = rand(*want.shape)
    gx, gw, gb = be.conv2d_backward(be.from_numpy(x), be.from_numpy(w), be.from_numpy(gy),
                                    stride, padding, dilation, True, True, True)
    rx, rw, rb = ref.conv2d_grads(x, w, gy, stride, padding, dilation)
    close(be.to_numpy(gx), rx, 1e-4)
    close(be.to_numpy(gw), rw, 1e-4)
    close(be.to_numpy(gb), rb, 1e-4)
    none = be.conv2d_backward(be.from_numpy(x), be.from_numpy(w), be.from_numpy(gy), stride,
                              padding, dilation, False, True, False)
    assert none[0] is None and none[2] is None


DEPTHWISE = [  # x shape, channel multiplier, kernel, stride, padding, dilation
    ((2, 3, 5, 6), 1, (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2, 7, 7), 2, (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 2, 6, 5), 1, (2, 3), (2, 1), (0, 2), (2, 1)),
]


@pytest.mark.parametrize("xs,m,k,stride,padding,dilation", DEPTHWISE)
def test_depthwise_conv2d(be, cpu, xs, m, k, stride, padding, dilation):
    """groups equal to the input channels, against the ungrouped reference with a
    block-diagonal weight, and against the CPU's depthwise kernels."""
    c = xs[1]
    x, w, b = rand(*xs), rand(c * m, 1, *k), rand(c * m)
    full = np.zeros((c * m, c) + k, np.float32)
    for o in range(c * m):
        full[o, o // m] = w[o, 0]
    want = ref.conv2d(x, full, b, stride, padding, dilation)
    got = be.to_numpy(be.depthwise_conv2d(be.from_numpy(x), be.from_numpy(w), be.from_numpy(b),
                                          stride, padding, dilation))
    close(got, want, 1e-4)
    close(got, cpu.depthwise_conv2d(x, w, b, stride, padding, dilation), 1e-4)
    gy = rand(*want.shape)
    gx, gw, gb = be.depthwise_conv2d_backward(be.from_numpy(x), be.from_numpy(w),
                                              be.from_numpy(gy), stride, padding, dilation,
                                              True, True, True)
    rx, rw, rb = ref.conv2d_grads(x, full, gy, stride, padding, dilation)
    close(be.to_numpy(gx), rx, 1e-4)
    close(be.to_numpy(gw), np.stack([rw[o, o // m] for o in range(c * m)])[:, None], 1e-4)
    close(be.to_numpy(gb), rb, 1e-4)
    only_w = be.depthwise_conv2d_backward(be.from_numpy(x), be.from_numpy(w), be.from_numpy(gy),
                                          stride, padding, dilation, False, True, False)
    assert only_w[0] is None and only_w[2] is None
    addend = rand(*xs)
    summed, _, _ = be.depthwise_conv2d_backward(be.from_numpy(x), be.from_numpy(w),
                                                be.from_numpy(gy), stride, padding, dilation,
                                                True, False, False, gx_addend=be.from_numpy(addend))
    close(be.to_numpy(summed), rx + addend, 1e-4)


def test_conv2d_weight_grad_split_k(be):
    """A long N*OH*OW reduction goes through the split-K path."""
    x, w = rand(4, 2, 12, 12), rand(3, 2, 3, 3)
    gy = rand(4, 3, 12, 12)
    _, gw, _ = be.conv2d_backward(be.from_numpy(x), be.from_numpy(w), be.from_numpy(gy),
                                  (1, 1), (1, 1), (1, 1), False, True, False)
    close(be.to_numpy(gw), ref.conv2d_grads(x, w, gy, (1, 1), (1, 1), (1, 1))[1], 1e-3)


POOLS = [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 2), (1, 0))]


@pytest.mark.parametrize("kernel,stride,padding", POOLS)
def test_max_pool(be, cpu, kernel, stride, padding):
    x = rand(2, 3, 7, 6)
    y, backward = ref.max_pool2d(x, kernel, stride, padding)
    gy_, am = be.max_pool2d(be.from_numpy(x), kernel, stride, padding)
    close(be.to_numpy(gy_), y, 0)
    gy = rand(*y.shape)
    close(be.to_numpy(be.max_pool2d_backward(be.from_numpy(gy), am, x.shape)), backward(gy), 1e-5)
    if cpu_has(cpu, "max_pool2d", x, kernel, stride, padding):
        yc, amc = cpu.max_pool2d(x, kernel, stride, padding)
        np.testing.assert_array_equal(be.to_numpy(am), amc)


@pytest.mark.parametrize("kernel,stride,padding", POOLS)
@pytest.mark.parametrize("include_pad", [True, False])
def test_avg_pool(be, cpu, kernel, stride, padding, include_pad):
    x = rand(2, 3, 7, 6)
    y, backward = ref.avg_pool2d(x, kernel, stride, padding, include_pad)
    close(be.to_numpy(be.avg_pool2d(be.from_numpy(x), kernel, stride, padding, include_pad)), y, 1e-5)
    gy = rand(*y.shape)
    got = be.to_numpy(be.avg_pool2d_backward(be.from_numpy(gy), x.shape, kernel, stride, padding,
                                             include_pad))
    close(got, backward(gy), 1e-5)


# --- fused layers ----------------------------------------------------------------------


@pytest.mark.parametrize("shape,axis", [((4, 10), 1), ((3, 300), 1), ((2, 5, 3, 2), 1), ((4, 3), 0)])
def test_log_softmax(be, cpu, shape, axis):
    x = rand(*shape) * 3
    y = ref.log_softmax(x, axis)
    got = be.log_softmax(be.from_numpy(x), axis)
    close(be.to_numpy(got), y, 1e-5)
    close(be.to_numpy(got), cpu.log_softmax(x, axis), 1e-5)
    gy = rand(*shape)
    want = gy - np.exp(y) * gy.astype(np.float64).sum(axis, keepdims=True)
    close(be.to_numpy(be.log_softmax_backward(got, be.from_numpy(gy), axis)), want, 1e-5)


@pytest.mark.parametrize("N,C,smoothing", [(5, 10, 0.0), (3, 300, 0.1), (4, 3, 0.25)])
def test_softmax_cross_entropy(be, N, C, smoothing):
    logits = rand(N, C) * 2
    labels = RNG.integers(0, C, N)
    loss, probs = be.softmax_cross_entropy(be.from_numpy(logits), be.from_numpy(labels), smoothing)
    rl, rp, rg = ref.cross_entropy(logits, labels, smoothing)
    close(be.to_numpy(loss), rl, 1e-5)
    close(be.to_numpy(probs), rp, 1e-5)
    gl = rand(N)
    got = be.softmax_cross_entropy_backward(probs, be.from_numpy(labels), smoothing, be.from_numpy(gl))
    close(be.to_numpy(got), rg * gl[:, None], 1e-5)


def test_softmax_cross_entropy_masked_logit_is_finite(be, cpu):
    """A -inf logit that is not the target: finite loss without smoothing, +inf with it, as
    on the CPU backend and in PyTorch."""
    logits = np.array([[1.0, 2.0, -np.inf, 0.5], [0.1, -np.inf, 0.3, 0.2]], np.float32)
    labels = np.array([1, 3])
    for smoothing in (0.0, 0.1):
        loss, _ = be.softmax_cross_entropy(be.from_numpy(logits), be.from_numpy(labels), smoothing)
        want, _ = cpu.softmax_cross_entropy(cpu.from_numpy(logits), cpu.from_numpy(labels),
                                            smoothing)
        want = cpu.to_numpy(want)
        np.testing.assert_allclose(be.to_numpy(loss), want, rtol=1e-6)
        assert np.isfinite(want).all() == (smoothing == 0.0)


def test_softmax_cross_entropy_bad_label_is_nan(be):
    loss, _ = be.softmax_cross_entropy(be.from_numpy(rand(2, 3)), be.from_numpy(np.array([0, 7])), 0.0)
    assert np.isnan(be.to_numpy(loss)[1]) and np.isfinite(be.to_numpy(loss)[0])


@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 4, 5)])
def test_batch_norm(be, shape):
    x = rand(*shape) * 2 + 1
    C = shape[1]
    gamma, beta = rand(C), rand(C)
    y, mean, var, inv = be.batch_norm_train(be.from_numpy(x), be.from_numpy(gamma),
                                            be.from_numpy(beta), 1e-5)
    ry, rm, rv, ri = ref.batch_norm(x, gamma, beta, 1e-5)
    for got, want in ((y, ry), (mean, rm), (var, rv), (inv, ri)):
        close(be.to_numpy(got), want, 1e-4)
    ye = be.batch_norm_eval(be.from_numpy(x), mean, var, be.from_numpy(gamma), be.from_numpy(beta), 1e-5)
    close(be.to_numpy(ye), ry, 1e-4)
    gy = rand(*shape)
    gx, gg, gb = be.batch_norm_backward(be.from_numpy(gy), be.from_numpy(x), be.from_numpy(gamma),
                                        mean, inv)
    rx, rg, rb = ref.batch_norm_grads(x, gamma, gy, 1e-5)
    close(be.to_numpy(gx), rx, 1e-4)
    close(be.to_numpy(gg), rg, 1e-4)
    close(be.to_numpy(gb), rb, 1e-4)


def test_batch_norm_without_affine(be):
    x = rand(5, 3)
    y, *_ = be.batch_norm_train(be.from_numpy(x), None, None, 1e-5)
    close(be.to_numpy(y), ref.batch_norm(x, np.ones(3), np.zeros(3), 1e-5)[0], 1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tracked", [(True, True, True), (True, False, False), (False, True, True),
                                     (False, False, True)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_train_tracked_matches_the_cpu(be, cpu, dtype, tracked, affine):
    """The statistics kernel's running-buffer update and batch count give what the CPU's
    separate updates give (same rounding: from the stored batch statistics), update only
    the buffers passed, and count once however many blocks the channels take."""
    C = 5
    x = (rand(3, C, 4, 2) * 2 + 1).astype(dtype)
    gamma, beta = (rand(C).astype(dtype) if affine else None for _ in range(2))
    rm0, rv0 = rand(C).astype(dtype), (rand(C) ** 2 + 0.5).astype(dtype)
    results = {}
    for name, b in (("cuda", be), ("cpu", cpu)):
        up = lambda a: None if a is None else b.from_numpy(a)  # noqa: E731
        rm, rv = up(rm0.copy()), up(rv0.copy())
        counter = b.from_numpy(np.array([41], np.int64))
        out = b.batch_norm_train_tracked(up(x), up(gamma), up(beta), 1e-5,
                                         rm if tracked[0] else None, rv if tracked[1] else None,
                                         0.8, 0.2, 0.2 * 24 / 23, counter if tracked[2] else None)
        results[name] = [b.to_numpy(a) for a in out] + [b.to_numpy(rm), b.to_numpy(rv),
                                                        b.to_numpy(counter)]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got, want in zip(results["cuda"], results["cpu"]):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    rm, rv, counter = results["cuda"][-3:]
    assert counter[0] == 41 + tracked[2]
    np.testing.assert_array_equal(rm == rm0, np.full(C, not tracked[0]))
    np.testing.assert_array_equal(rv == rv0, np.full(C, not tracked[1]))
    assert rm.dtype == dtype and rv.dtype == dtype


def test_batch_norm_train_tracked_buffers_of_another_dtype(be, cpu):
    """float64 running buffers with float32 input take the separate updates (src rounded to
    float32 first), as on the CPU."""
    x = rand(4, 3, 5)
    results = []
    for b in (be, cpu):
        rm, rv = b.from_numpy(np.zeros(3)), b.from_numpy(np.ones(3))
        b.batch_norm_train_tracked(b.from_numpy(x), None, None, 1e-5, rm, rv, 0.9, 0.1, 0.1,
                                   None)
        results.append((b.to_numpy(rm), b.to_numpy(rv)))
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert got.dtype == np.float64



# --- batch norm with a fused residual add and relu --------------------------------------

_BN_SHAPE = (3, 4, 2, 5)


def _bn_tol(dtype):
    return 1e-4 if dtype == np.float32 else 1e-10


def _bn_residual(be, kind, shape, dtype):
    """(device residual or None, its float64 values): "contiguous", or "transposed" (a
    non-contiguous device view); one element is NaN, which relu must keep."""
    if kind is None:
        return None, 0.0
    r = rand(*shape).astype(dtype)
    r[0, 1, 0, 2] = np.nan
    if kind == "contiguous":
        return be.from_numpy(r), r.astype(np.float64)
    dev = be.from_numpy(np.ascontiguousarray(r.T)).T
    assert tuple(dev.shape) == shape and not dev.is_c_contiguous()
    return dev, r.astype(np.float64)


def _affine_params(be, C, dtype, affine):
    """(device gamma, device beta, float64 gamma, float64 beta) (None/ones/zeros without)."""
    if not affine:
        return None, None, np.ones(C), np.zeros(C)
    g, b = rand(C).astype(dtype), rand(C).astype(dtype)
    return be.from_numpy(g), be.from_numpy(b), g.astype(np.float64), b.astype(np.float64)


def _check_relu_output(got, want, relu, tol):
    close(got, want, tol)
    if relu:   # exact zeros (no negatives) where the sum is negative; NaN kept
        assert np.all((got >= 0) | np.isnan(got))
        assert np.all(got[want < -1e-3] == 0)
        assert np.isnan(got).sum() == np.isnan(want).sum()


# Each value of each argument at least once, every (residual, relu) pair (the simulator is slow).
_FUSED_CASES = [(np.float32, True, None, True), (np.float64, False, None, False),
                (np.float32, False, "contiguous", True), (np.float64, True, "contiguous", False),
                (np.float64, True, "transposed", True), (np.float32, False, "transposed", False)]


@pytest.mark.parametrize("dtype, affine, residual, relu", _FUSED_CASES)
def test_batch_norm_train_fused_relu_residual(be, dtype, affine, residual, relu):
    """y = relu(bn(x) + residual) in the output pass; the statistics are unchanged."""
    x = (rand(*_BN_SHAPE) * 2 + 1).astype(dtype)
    C = x.shape[1]
    g, b, g64, b64 = _affine_params(be, C, dtype, affine)
    res, r64 = _bn_residual(be, residual, x.shape, dtype)
    y, mean, var, inv = be.batch_norm_train(be.from_numpy(x), g, b, 1e-5, relu, res)
    ry, rm, rv, ri = ref.batch_norm(x, g64, b64, 1e-5)
    want = ry + r64
    if relu:
        want = np.maximum(want, 0.0)
    got = be.to_numpy(y)
    assert got.dtype == dtype and got.shape == x.shape
    tol = _bn_tol(dtype)
    _check_relu_output(got, want, relu, tol)
    _, pm, pv, pi = be.batch_norm_train(be.from_numpy(x), g, b, 1e-5)
    for got_stat, want_stat, plain in ((mean, rm, pm), (var, rv, pv), (inv, ri, pi)):
        close(be.to_numpy(got_stat), want_stat, tol)
        np.testing.assert_array_equal(be.to_numpy(got_stat), be.to_numpy(plain))


@pytest.mark.parametrize("dtype, affine, residual, relu", _FUSED_CASES)
def test_batch_norm_eval_fused_relu_residual(be, dtype, affine, residual, relu):
    """Eval mode: y = relu((x - mean) / sqrt(var + eps) * gamma + beta + residual)."""
    x = rand(*_BN_SHAPE).astype(dtype)
    C = x.shape[1]
    mean, var = rand(C).astype(dtype), (rand(C) ** 2 + 0.5).astype(dtype)
    g, b, g64, b64 = _affine_params(be, C, dtype, affine)
    res, r64 = _bn_residual(be, residual, x.shape, dtype)
    y = be.batch_norm_eval(be.from_numpy(x), be.from_numpy(mean), be.from_numpy(var), g, b,
                           1e-5, relu, res)
    shape = (1, C, 1, 1)
    m64, v64 = mean.astype(np.float64).reshape(shape), var.astype(np.float64).reshape(shape)
    want = ((x - m64) / np.sqrt(v64 + 1e-5) * g64.reshape(shape) + b64.reshape(shape) + r64)
    if relu:
        want = np.maximum(want, 0.0)
    got = be.to_numpy(y)
    assert got.dtype == dtype
    _check_relu_output(got, want, relu, _bn_tol(dtype))


def test_batch_norm_train_tracked_fused_relu_residual(be):
    """The tracked statistics kernel with a residual and relu: the same y as the untracked
    call and the same running buffers and count as without them; running buffers of another
    dtype (the base class's separate updates) pass relu and residual through too."""
    x = rand(*_BN_SHAPE) * 2 + 1
    C = x.shape[1]
    r = rand(*_BN_SHAPE)
    outs = []
    for fused in (False, True):
        for buf_dtype in (np.float32, np.float64):
            rm = be.from_numpy(np.zeros(C, buf_dtype))
            rv = be.from_numpy(np.ones(C, buf_dtype))
            counter = be.from_numpy(np.array([3], np.int64))
            kw = dict(relu=True, residual=be.from_numpy(r)) if fused else {}
            y, *_ = be.batch_norm_train_tracked(be.from_numpy(x), None, None, 1e-5, rm, rv,
                                                0.9, 0.1, 0.1, counter, **kw)
            outs.append([be.to_numpy(a) for a in (y, rm, rv, counter)])
    want_y = np.maximum(ref.batch_norm(x, np.ones(C), np.zeros(C), 1e-5)[0] + r, 0.0)
    y_untracked = be.to_numpy(be.batch_norm_train(be.from_numpy(x), None, None, 1e-5, True,
                                                  be.from_numpy(r))[0])
    for i in (2, 3):
        close(outs[i][0], want_y, 1e-4)
        np.testing.assert_array_equal(outs[i][0], y_untracked)
        for got, want in zip(outs[i][1:], outs[i - 2][1:]):
            np.testing.assert_array_equal(got, want)
        assert outs[i][3][0] == 4


@pytest.mark.parametrize("shape, dtype, affine, want_masked", [
    ((6, 4), np.float32, True, True), ((6, 4), np.float64, False, False),
    (_BN_SHAPE, np.float64, True, True), (_BN_SHAPE, np.float32, False, True),
    (_BN_SHAPE, np.float32, True, False)])
def test_batch_norm_relu_backward(be, shape, dtype, affine, want_masked):
    """Gradients from the fused forward's output y: gy masked by y > 0 (y exactly 0, -0,
    negative or NaN: masked), then the plain batch-norm backward; gm is the masked gy
    exactly, and gx / ggamma / gbeta equal batch_norm_backward's for it exactly."""
    x = (rand(*shape) * 2 + 1).astype(dtype)
    C = shape[1]
    g, _, g64, _ = _affine_params(be, C, dtype, affine)
    yd, mean, _, inv = be.batch_norm_train(be.from_numpy(x), g, None, 1e-5, True,
                                           be.from_numpy(rand(*shape).astype(dtype)))
    y = be.to_numpy(yd)
    flat = y.reshape(-1)
    flat[:4] = (0.0, -0.0, -1.5, np.nan)
    flat[4] = 2.0
    assert (y > 0).any() and (y == 0).any()
    gy = rand(*shape).astype(dtype)
    gm_want = np.where(y > 0, gy, 0).astype(dtype)
    gx, gg, gb, gm = be.batch_norm_relu_backward(be.from_numpy(gy), be.from_numpy(y),
                                                 be.from_numpy(x), g, mean, inv, want_masked)
    rx, rg, rb = ref.batch_norm_grads(x, g64, gm_want, 1e-5)
    tol = _bn_tol(dtype)
    for got, want in ((gx, rx), (gg, rg), (gb, rb)):
        assert be.to_numpy(got).dtype == dtype
        close(be.to_numpy(got), want, tol)
    if want_masked:
        gm = be.to_numpy(gm)
        assert gm.dtype == dtype
        np.testing.assert_array_equal(gm, gm_want)
    else:
        assert gm is None
    plain = be.batch_norm_backward(be.from_numpy(gm_want), be.from_numpy(x), g, mean, inv)
    for got, want in zip((gx, gg, gb), plain):
        np.testing.assert_array_equal(be.to_numpy(got), be.to_numpy(want))


def test_lrn(be):
    x = rand(2, 6, 3, 2).astype(np.float64)
    size, alpha, beta, k = 3, 1e-2, 0.75, 2.0
    y, scale = be.lrn(be.from_numpy(x), size, alpha, beta, k)
    close(be.to_numpy(y), ref.lrn(x, size, alpha, beta, k), 1e-10)
    gy = rand(*x.shape).astype(np.float64)
    gx = be.to_numpy(be.lrn_backward(be.from_numpy(x), y, scale, be.from_numpy(gy), size, alpha, beta, k))
    eps = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num[i] = ((ref.lrn(xp, size, alpha, beta, k) - ref.lrn(xm, size, alpha, beta, k)) * gy).sum() / (2 * eps)
    close(gx, num, 1e-7)
    for size in (2, 4):  # even windows are asymmetric
        y2, _ = be.lrn(be.from_numpy(x), size, alpha, beta, k)
        close(be.to_numpy(y2), ref.lrn(x, size, alpha, beta, k), 1e-10)


def test_dropout_mask(be):
    m1 = be.to_numpy(be.dropout_mask((64, 33), 0.25, 1234, np.float32))
    m2 = be.to_numpy(be.dropout_mask((64, 33), 0.25, 1234, np.float32))
    m3 = be.to_numpy(be.dropout_mask((64, 33), 0.25, 1235, np.float32))
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(m1, m3)
    assert set(np.unique(m1)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((m1 == 0).mean() - 0.25) < 0.04
    assert (be.to_numpy(be.dropout_mask((7,), 1.0, 1, np.float32)) == 0).all()
    assert (be.to_numpy(be.dropout_mask((7,), 0.0, 1, np.float32)) == 1).all()


# --- optimizers -------------------------------------------------------------------------


@pytest.mark.parametrize("momentum,dampening,nesterov,wd", [(0.0, 0.0, False, 0.0), (0.9, 0.0, False, 1e-2),
                                                            (0.9, 0.1, False, 0.0), (0.8, 0.0, True, 5e-3)])
def test_sgd_step(be, momentum, dampening, nesterov, wd):
    p, buf = rand(3, 5).astype(np.float64), None
    dp = be.from_numpy(p)
    dbuf = be.full(p.shape, 0, np.float64) if momentum else None
    for step in range(3):
        g = rand(3, 5).astype(np.float64)
        p, buf = ref.sgd(p, g, buf, 0.1, momentum, dampening, nesterov, wd, step == 0)
        be.sgd_step_(dp, be.from_numpy(g), dbuf, 0.1, momentum, dampening, nesterov, wd, step == 0)
    close(be.to_numpy(dp), p, 1e-12)
    if momentum:
        close(be.to_numpy(dbuf), buf, 1e-12)


@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
def test_adam_step(be, wd, decoupled):
    p = rand(4, 3).astype(np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    dp, dm, dv = be.from_numpy(p), be.from_numpy(m), be.from_numpy(v)
    for t in range(1, 4):
        g = rand(4, 3).astype(np.float64)
        p, m, v = ref.adam(p, g, m, v, t, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
        be.adam_step_(dp, be.from_numpy(g), dm, dv, t, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
    close(be.to_numpy(dp), p, 1e-12)
    close(be.to_numpy(dm), m, 1e-12)
    close(be.to_numpy(dv), v, 1e-12)


def test_adam_float32_matches_reference(be):
    p = rand(50)
    g = rand(50)
    dp = be.from_numpy(p)
    be.adam_step_(dp, be.from_numpy(g), be.full((50,), 0, np.float32), be.full((50,), 0, np.float32),
                  1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)
    want = ref.adam(p.astype(np.float64), g.astype(np.float64), 0, 0, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)[0]
    close(be.to_numpy(dp), want, 1e-6)


def test_sum_of_squares_all_finite(be):
    x = rand(7, 300)
    assert be.sum_of_squares(be.from_numpy(x)) == pytest.approx(float((x.astype(np.float64) ** 2).sum()), rel=1e-6)
    assert be.all_finite(be.from_numpy(x))
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[3, 17] = bad
        assert not be.all_finite(be.from_numpy(y))


# --- memory pool bookkeeping (no GPU involved) ---------------------------------------------


def test_block_pool_reuses_freed_blocks():
    import gc
    import weakref

    class Raw:
        pass

    class Handle:
        pass

    def wrap(raw, size, release):
        h = Handle()
        h.raw = raw
        weakref.finalize(h, release)
        return h

    pool = BlockPool(lambda size: Raw(), wrap)
    a = pool.alloc(1000)
    raw_a = a.raw
    del a
    gc.collect()
    b = pool.alloc(900)  # same size class: the cached block comes back
    assert b.raw is raw_a and pool.driver_allocs == 1
    c = pool.alloc(100000)
    assert c.raw is not raw_a and pool.driver_allocs == 2
    assert pool.stats()["in_use"] == size_class(900) + size_class(100000)
    pool.empty_cache()
    assert pool.stats()["cached"] == 0
    for n in (1, 511, 512, 4097, 10**6, 10**9):
        assert n <= size_class(n) <= max(512, int(n * 1.125) + 1)
