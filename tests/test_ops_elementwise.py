"""Elementwise ops: forward vs NumPy float64, gradients vs central differences and formulas."""

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg
from gradcheck import check_grad

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4)


def _rand(shape, seed, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape)


BINARY = {
    "add": (lambda a, b: a + b, lambda a, b, g: (g, g)),
    "sub": (lambda a, b: a - b, lambda a, b, g: (g, -g)),
    "mul": (lambda a, b: a * b, lambda a, b, g: (g * b, g * a)),
    "div": (lambda a, b: a / b, lambda a, b, g: (g / b, -g * a / b**2)),
}


def _unbroadcast(g, shape):
    while g.ndim > len(shape):
        g = g.sum(0)
    for i, n in enumerate(shape):
        if n == 1 and g.shape[i] != 1:
            g = g.sum(i, keepdims=True)
    return g


@pytest.mark.parametrize("name", sorted(BINARY))
@given(shapes=pairs, seed=st.integers(0, 100))
def test_binary_broadcasting(name, shapes, seed):
    fwd, grad = BINARY[name]
    sa, sb = shapes.input_shapes
    a = _rand(sa, seed)
    b = _rand(sb, seed + 1, 0.5, 2.0)
    out = fwd(mg.tensor(a), mg.tensor(b)).numpy()
    np.testing.assert_allclose(out, fwd(a, b), rtol=1e-12)
    (ga, gb), w = check_grad(fwd, [a, b], seed)
    ra, rb = grad(a, b, w)
    np.testing.assert_allclose(ga, _unbroadcast(np.broadcast_to(ra, np.broadcast_shapes(sa, sb)), sa), rtol=1e-9)
    np.testing.assert_allclose(gb, _unbroadcast(np.broadcast_to(rb, np.broadcast_shapes(sa, sb)), sb), rtol=1e-9)


UNARY = {
    "exp": (np.exp, lambda x: np.exp(x), (-2, 2)),
    "log": (np.log, lambda x: 1 / x, (0.2, 3)),
    "sqrt": (np.sqrt, lambda x: 0.5 / np.sqrt(x), (0.2, 3)),
    "relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float), (-2, 2)),
    "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2, (-3, 3)),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2, (-2, 2)),
    "neg": (np.negative, lambda x: -np.ones_like(x), (-2, 2)),
    "erf": (np.vectorize(math.erf, otypes=[float]), lambda x: 2 / np.sqrt(np.pi) * np.exp(-x * x),
            (-3, 3)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(shape=shapes, seed=st.integers(0, 100))
def test_unary(name, shape, seed):
    ref, dref, (lo, hi) = UNARY[name]
    x = _rand(shape, seed, lo, hi)
    if name == "relu":
        x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink for the numerical gradient
    op = (lambda t: -t) if name == "neg" else getattr(mg, name)
    np.testing.assert_allclose(op(mg.tensor(x)).numpy(), ref(x), rtol=1e-12, atol=1e-15)
    (g,), w = check_grad(op, [x], seed)
    np.testing.assert_allclose(g, w * dref(x), rtol=1e-9, atol=1e-12)


def test_unary_float32_default_and_stable_sigmoid():
    x = mg.tensor([-1000.0, 0.0, 1000.0])
    assert x.dtype == mg.float32
    np.testing.assert_allclose(mg.sigmoid(x).numpy(), [0.0, 0.5, 1.0])


@given(seed=st.integers(0, 100), p=st.sampled_from([2, 3, 0.5, -1.5]))
def test_pow_scalar_and_tensor(seed, p):
    x = _rand((3, 2), seed, 0.5, 2.0)
    np.testing.assert_allclose((mg.tensor(x) ** p).numpy(), x ** p, rtol=1e-12)
    (g,), w = check_grad(lambda t: t ** p, [x], seed)
    np.testing.assert_allclose(g, w * p * x ** (p - 1), rtol=1e-9)
    y = _rand((2,), seed + 1, 0.5, 2.0)
    check_grad(lambda a, b: a ** b, [x, y], seed)
    check_grad(lambda t: 2.0 ** t, [x], seed)


def test_scalar_ops_and_reverse():
    x = np.array([[1.0, -2.0], [3.0, 0.5]])
    for fn in (lambda t: 3 - t, lambda t: 2 / t, lambda t: t / 4, lambda t: t * 1.5 + 2,
               lambda t: 1 + t, lambda t: t - 1):
        np.testing.assert_allclose(fn(mg.tensor(x)).numpy(), fn(x), rtol=1e-12)
        check_grad(fn, [x])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["nchw", "channels-last", "strided"])
def test_large_tensor_times_number_equals_numpy_bitwise(dtype, layout):
    """Big float tensors times a number take the CPU backend's two-thread kernel (dense
    storage in either order) or NumPy (a strided view): the same bits as NumPy either way,
    in both operand orders, for -0.0, NaN, infinities, an int and a number that overflows
    float32; the result keeps x's storage order; the gradient is g times the number."""
    from minigrad.cpu.backend import CPUBackend

    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 16, 32, 32)).astype(dtype)
    x.reshape(-1)[:4] = [0.0, -0.0, np.nan, np.inf]
    if layout == "channels-last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    elif layout == "strided":
        x = x[:, ::2]
    be = CPUBackend()
    with np.errstate(all="ignore"):
        for s in (0.125, -3, -0.0, float("nan"), float("inf"), 1e300, 2 ** 60):
            ref = x * s
            for reverse in (False, True):
                out = be.scalar("mul", x, s, reverse=reverse)
                assert out.dtype == ref.dtype == dtype
                np.testing.assert_array_equal(out, ref)
    if layout == "channels-last":
        assert be.scalar("mul", x, 0.5).transpose(0, 2, 3, 1).flags.c_contiguous
    t = mg.tensor(np.ascontiguousarray(x), requires_grad=True)
    (t * 0.25).backward(mg.tensor(np.ones(x.shape, dtype)))
    np.testing.assert_array_equal(t.grad.numpy(), np.full(x.shape, 0.25, dtype))


@pytest.mark.parametrize("scalar", [np.float64(0.5), np.float32(0.5), np.int64(3), 0.5])
def test_numpy_scalars_keep_the_tensor_dtype(scalar):
    """NumPy scalars act as Python numbers, as in PyTorch: float32 * np.float64(0.5) stays
    float32 (NumPy 2's own rules would make it float64), both operand orders, every op."""
    x = np.array([0.5, 1.5, 2.0], np.float32)
    t = mg.tensor(x, requires_grad=True)
    s = float(scalar)
    outs = [t + scalar, scalar + t, t - scalar, scalar - t, t * scalar, scalar * t,
            t / scalar, scalar / t, t ** scalar, scalar ** t,
            mg.maximum(t, scalar), mg.minimum(scalar, t)]
    refs = [x + s, s + x, x - s, s - x, x * s, s * x, x / s, s / x, x ** s, s ** x,
            np.maximum(x, s), np.minimum(s, x)]
    for out, ref in zip(outs, refs):
        assert out.dtype == np.float32
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)
    (t * scalar).sum().backward()
    assert t.grad.dtype == np.float32
    np.testing.assert_allclose(t.grad.numpy(), np.full(3, s), rtol=1e-7)
    ints = mg.tensor(np.array([1, 2], np.int64)) * scalar
    assert ints.dtype == (np.float32 if isinstance(scalar, (float, np.floating)) else np.int64)
    np.testing.assert_allclose(ints.numpy(), np.array([1, 2]) * s)


def test_maximum_minimum_and_ties():
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([3.0, 2.0, 1.0])
    ta, tb = mg.tensor(a, requires_grad=True), mg.tensor(b, requires_grad=True)
    mg.maximum(ta, tb).sum().backward()
    np.testing.assert_allclose(ta.grad.numpy(), [0, 0.5, 1])
    np.testing.assert_allclose(tb.grad.numpy(), [1, 0.5, 0])
    check_grad(mg.minimum, [a + 0.1, b])
    np.testing.assert_allclose(mg.maximum(mg.tensor(a), 2.0).numpy(), np.maximum(a, 2.0))


def test_comparisons_have_no_grad():
    a = mg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    for out, ref in ((a > 2, [0, 0, 1]), (a <= 2, [1, 1, 0]), (a == 2, [0, 1, 0]),
                     (a != 2, [1, 0, 1]), (2 < a, [0, 0, 1]), (a >= mg.tensor([3.0, 1, 1]), [0, 1, 1])):
        np.testing.assert_array_equal(out.numpy(), ref)
        assert not out.requires_grad


def test_leaky_relu():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    want = np.where(x > 0, x, 0.2 * x)
    np.testing.assert_allclose(mg.nn.functional.leaky_relu(mg.tensor(x), 0.2).numpy(), want)
    check_grad(lambda t: mg.nn.functional.leaky_relu(t, 0.2), [x[x != 0]])
    t = mg.tensor(x, requires_grad=True)
    mg.nn.LeakyReLU(0.2)(t).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), [0.2, 0.2, 0.2, 1.0, 1.0])   # PyTorch's slope at 0
    assert repr(mg.nn.LeakyReLU()) == "LeakyReLU(negative_slope=0.01)"
    assert mg.nn.LeakyReLU()(mg.ones(2)).dtype == mg.float32


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    x = np.linspace(-4, 4, 17)
    if approximate == "none":
        want = x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    else:
        want = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    F = mg.nn.functional
    np.testing.assert_allclose(F.gelu(mg.tensor(x), approximate).numpy(), want, rtol=1e-12,
                               atol=1e-15)
    check_grad(lambda t: F.gelu(t, approximate), [x])
    m = mg.nn.GELU(approximate)
    assert m(mg.ones(3)).dtype == mg.float32
    assert repr(m) == ("GELU()" if approximate == "none" else "GELU(approximate='tanh')")
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(mg.tensor(x), "erf")


def test_where_and_clamp():
    x = np.array([-2.0, 0.5, 3.0])
    check_grad(lambda t: mg.clamp(t, -1.0, 1.0), [x])
    np.testing.assert_allclose(mg.clamp(mg.tensor(x), -1.0, 1.0).numpy(), np.clip(x, -1, 1))
    cond = mg.tensor(x > 0)
    check_grad(lambda a, b: mg.where(cond, a, b), [x, np.array([1.0, 2.0, 3.0])])


def test_non_contiguous_inputs():
    base = np.random.default_rng(0).standard_normal((4, 6))
    xt = base.T
    sl = base[::2, 1::2]
    for arr in (xt, sl):
        check_grad(lambda t: mg.tanh(t) * t, [arr])
    t = mg.tensor(base)
    np.testing.assert_allclose((t.T * 2).numpy(), base.T * 2)
    np.testing.assert_allclose(mg.relu(t[::2, 1::2]).numpy(), np.maximum(sl, 0))
