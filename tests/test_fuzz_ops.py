"""Fuzzing every core op with odd shapes, strides and values (NaN, Inf, huge, tiny, empty).

Each case must either match the NumPy reference (NaN where NumPy gives NaN) or raise a clear
ValueError/TypeError/IndexError — never crash inside a kernel or return a silently wrong value.
"""

import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg

special = st.sampled_from([np.nan, np.inf, -np.inf, 1e38, -1e38, 1e-38, 0.0, -0.0, 1.0, -2.5])
values = st.one_of(st.floats(-1e6, 1e6, width=32), special)


@st.composite
def arrays(draw, min_dims=1, max_dims=4, min_side=0):
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=4))
    a = draw(hnp.arrays(np.float32, shape, elements=values))
    if draw(st.booleans()) and a.ndim >= 2:
        a = np.swapaxes(a, 0, -1)  # non-contiguous
    return a


def same(got, ref):
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-30, equal_nan=True)


UNARY = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "relu": lambda x: np.maximum(x, 0),
         "tanh": np.tanh, "sigmoid": lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))}


@given(a=arrays(min_side=0), name=st.sampled_from(sorted(UNARY)))
def test_unary_fuzz(a, name):
    with np.errstate(all="ignore"):
        ref = UNARY[name](a)
    same(getattr(mg, name)(mg.tensor(a)).numpy(), np.asarray(ref, dtype=np.float32))


@given(a=arrays(min_side=0), b=arrays(min_side=0), op=st.sampled_from(["add", "sub", "mul", "div"]))
def test_binary_fuzz(a, b, op):
    fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[op]
    tfn = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
           "div": lambda x, y: x / y}[op]
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        try:
            tfn(mg.tensor(a), mg.tensor(b))
        except ValueError as err:
            assert "broadcast" in str(err)
            return
        raise AssertionError(f"shapes {a.shape} and {b.shape} should not broadcast")
    with np.errstate(all="ignore"):
        ref = fn(a, b)
    got = tfn(mg.tensor(a), mg.tensor(b)).numpy()
    assert got.shape == shape
    same(got, ref)


@given(a=arrays(min_side=0), data=st.data())
def test_reductions_fuzz(a, data):
    axis = data.draw(st.none() | st.integers(0, a.ndim - 1))
    with np.errstate(all="ignore"):
        same(mg.tensor(a).sum(axis).numpy(), np.sum(a, axis))
        empty = a.size == 0 if axis is None else a.shape[axis] == 0
        if empty:
            for fn in (lambda t: t.max(axis), lambda t: t.mean(axis)):
                try:
                    fn(mg.tensor(a))
                except ValueError as err:
                    assert "empty" in str(err)
                else:
                    raise AssertionError("reduction over an empty axis must raise")
        else:
            same(mg.tensor(a).max(axis).numpy(), np.max(a, axis))
            same(mg.tensor(a).mean(axis).numpy(), np.mean(a, axis, dtype=np.float64).astype(np.float32))


@given(a=arrays(min_dims=2, max_dims=2, min_side=0), b=arrays(min_dims=2, max_dims=2, min_side=0))
def test_matmul_fuzz(a, b):
    if a.shape[1] != b.shape[0]:
        try:
            mg.tensor(a) @ mg.tensor(b)
        except ValueError as err:
            assert str(a.shape) in str(err) and str(b.shape) in str(err)
            return
        raise AssertionError("mismatched matmul must raise")
    finite = np.isfinite(a).all() and np.isfinite(b).all() and np.abs(a).max(initial=0) < 1e6 \
        and np.abs(b).max(initial=0) < 1e6
    got = (mg.tensor(a) @ mg.tensor(b)).numpy()
    assert got.shape == (a.shape[0], b.shape[1])
    if finite:
        np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-3, atol=1e-2 * max(1, a.shape[1]))


@given(x=arrays(min_dims=4, max_dims=4, min_side=1), k=st.integers(1, 3), stride=st.integers(1, 3))
def test_conv_pool_fuzz(x, k, stride):
    c = x.shape[1]
    w = np.ones((2, c, k, k), dtype=np.float32)
    fits = k <= x.shape[2] and k <= x.shape[3]
    for fn in (lambda t: mg.conv2d(t, mg.tensor(w), stride=stride), lambda t: mg.max_pool2d(t, k, stride),
               lambda t: mg.avg_pool2d(t, k, stride)):
        try:
            out = fn(mg.tensor(x)).numpy()
        except ValueError as err:
            assert not fits and "larger than the padded input" in str(err)
            continue
        assert fits
        assert out.shape[2] == (x.shape[2] - k) // stride + 1
        if np.isfinite(x).all() and np.abs(x).max() < 1e30:
            assert np.isfinite(out).all()
        if np.isnan(x).all():
            assert np.isnan(out).all()


@given(x=arrays(min_dims=2, max_dims=3, min_side=1))
def test_log_softmax_fuzz(x):
    out = mg.log_softmax(mg.tensor(x), -1).numpy()
    finite_rows = np.isfinite(x).all(-1)
    assert np.isfinite(out[finite_rows]).all()
    assert (out[finite_rows] <= 1e-6).all()
