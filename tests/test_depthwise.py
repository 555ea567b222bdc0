"""Depthwise convolution (groups equal to the input channels): the CPU kernels against the
float64 reference with a block-diagonal weight, central-difference gradients, and dispatch."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigrad as mg
import reference
from gradcheck import check_grad
from minigrad.cpu import depthwise
from minigrad.ops.conv import DepthwiseConv2d


def _full_weight(w, c):
    """(K, C, R, S) weight of the ungrouped convolution equal to depthwise w (K, 1, R, S)."""
    k = w.shape[0]
    m = k // c
    full = np.zeros((k, c) + w.shape[2:])
    for o in range(k):
        full[o, o // m] = w[o, 0]
    return full


def _depthwise_of(full_grad, c, m):
    """The (K, 1, R, S) depthwise part of an ungrouped weight gradient."""
    return np.stack([full_grad[o, o // m] for o in range(c * m)])[:, None]


def _check_kernels(rng, x, w, b, conf):
    """depthwise.conv2d and its backward against the float64 reference; returns (gy, gx, gw)."""
    c, m = x.shape[1], w.shape[0] // x.shape[1]
    full = _full_weight(w, c)
    y = depthwise.conv2d(x, w, b, *conf)
    np.testing.assert_allclose(y, reference.conv2d(x, full, b, *conf), rtol=1e-12, atol=1e-12)
    gy = rng.standard_normal(y.shape)
    gx, gw, gb = depthwise.conv2d_backward(x, w, gy, *conf, True, True, True)
    rx, rw, rb = reference.conv2d_grads(x, full, gy, *conf)
    np.testing.assert_allclose(gx, rx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, _depthwise_of(rw, c, m), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gb, rb, rtol=1e-12, atol=1e-12)
    return gy, gx, gw


def _case(rng, n, c, m, h, w_, ks):
    x = rng.standard_normal((n, c, h, w_))
    w = rng.standard_normal((c * m, 1, ks, ks))
    b = rng.standard_normal(c * m)
    return x, w, b


@settings(deadline=None, max_examples=40)
@given(n=st.integers(1, 2), c=st.integers(1, 4), m=st.integers(1, 3), h=st.integers(4, 9),
       ks=st.integers(1, 3), stride=st.integers(1, 3), padding=st.integers(0, 2),
       dilation=st.integers(1, 2), seed=st.integers(0, 100))
def test_kernels_match_reference(n, c, m, h, ks, stride, padding, dilation, seed):
    if dilation * (ks - 1) + 1 > h + 2 * padding:
        return
    rng = np.random.default_rng(seed)
    x, w, b = _case(rng, n, c, m, h, h + 1, ks)
    conf = ((stride, stride), (padding, padding), (dilation, dilation))
    gy, gx, gw = _check_kernels(rng, x, w, b, conf)
    only_x = depthwise.conv2d_backward(x, w, gy, *conf, True, False, False)
    only_w = depthwise.conv2d_backward(x, w, gy, *conf, False, True, False)
    assert only_x[1] is None and only_x[2] is None and only_w[0] is None
    np.testing.assert_array_equal(only_x[0], gx)
    np.testing.assert_array_equal(only_w[1], gw)


@pytest.mark.parametrize("h, w_", [(7, 7), (8, 9), (5, 12)])
@pytest.mark.parametrize("padding, dilation", [(0, 1), (1, 1), (2, 1), (2, 2)])
def test_strided_3x3_sweeps_match_reference(h, w_, padding, dilation):
    """Stride 2 with a 3x3 filter has its own sweeps (dX through dY spread to the input's
    pixels); odd and even sizes, padding and dilation move where rows end."""
    rng = np.random.default_rng(h * w_ + padding)
    for m in (1, 2):
        x, w, b = _case(rng, 2, 3, m, h, w_, 3)
        _check_kernels(rng, x, w, b, ((2, 2), (padding, padding), (dilation, dilation)))


@pytest.mark.parametrize("stride, padding, dilation, m", [(1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1)])
def test_conv2d_groups_dispatches_and_gradchecks(stride, padding, dilation, m):
    rng = np.random.default_rng(stride + 3 * m)
    x, w, b = _case(rng, 2, 3, m, 6, 5, 3)
    conf = dict(stride=stride, padding=padding, dilation=dilation, groups=3)
    y = mg.conv2d(mg.tensor(x, requires_grad=True), mg.tensor(w), mg.tensor(b), **conf)
    assert isinstance(y._ctx, DepthwiseConv2d)
    check_grad(lambda *t: mg.conv2d(*t, **conf), [x, w, b], seed=stride, atol=1e-6, rtol=1e-5)
    check_grad(lambda *t: mg.conv2d(*t, **conf), [x, w], seed=stride, atol=1e-6, rtol=1e-5)


def test_float32_channels_last_input_and_module():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 10, 10)).astype(np.float32)
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)   # NCHW view
    layer = mg.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8)
    xt = mg.tensor(x_cl, requires_grad=True)
    y = layer(xt)
    w, b = layer.weight.numpy(), layer.bias.numpy()
    ref = reference.conv2d(x, _full_weight(w, 8), b, (2, 2), (1, 1), (1, 1))
    assert y.dtype == mg.float32 and y.shape == ref.shape
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-5)
    gy = rng.standard_normal(ref.shape).astype(np.float32)
    y.backward(mg.tensor(gy))
    rx, rw, rb = reference.conv2d_grads(x, _full_weight(w, 8), gy, (2, 2), (1, 1), (1, 1))
    np.testing.assert_allclose(xt.grad.numpy(), rx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.weight.grad.numpy(), _depthwise_of(rw, 8, 2),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.bias.grad.numpy(), rb, rtol=1e-4, atol=1e-4)
