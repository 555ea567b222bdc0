"""3x3 "same" convolutions of few-channel images (minigrad.cpu.conv3x3_rows): the backward
from whole NCHW rows of 32 floats in registers, and the forward as pixel groups.

Checked against float64 references (tests/reference.py) for every channel count the kernels
take, images of 1 to 32 rows (dY's edge rows take the per-tap path), x in both layouts, each
way dX meets an addend, the conditions under which conv.conv2d / conv.conv2d_backward pick
them (each missing one falls back), hypothesis shapes, and through autograd.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigrad as mg
import reference
from minigrad.cpu import conv, conv3x3_rows, small_gemm
from gradcheck import check_grad

pytestmark = pytest.mark.skipif(small_gemm.LANES != 16,
                                reason="conv.py sends these shapes here only on AVX-512 hosts "
                                       "(the kernels themselves run anywhere)")

ONE = (1, 1)
TOL = dict(rtol=1e-4, atol=1e-4)


def ref_grads(x, w, gy):
    """float64 (gx, gw) of a stride-1, padding-1 3x3 convolution."""
    return reference.conv2d_grads(x, w, gy, ONE, ONE, ONE)[:2]


def operands(N, C, H, K, seed=0, W=32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((N, K, H, W)).astype(np.float32)
    return x, w, gy


def channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


# N, C, H, K: the CIFAR stem, one row, two rows (edges only), odd heights, more images
CASES = [(2, 3, 32, 64), (1, 1, 1, 8), (3, 2, 2, 16), (2, 3, 5, 8), (5, 1, 3, 16), (4, 2, 7, 24)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("x_layout", ["nchw", "cl"])
def test_gradients_match_the_reference(case, x_layout):
    x, w, gy = operands(*case)
    gxr, gwr = ref_grads(x, w, gy)
    if x_layout == "cl":
        x = channels_last(x)
    assert conv3x3_rows.applies(x, w, gy, ONE, ONE, ONE)
    for need_x, need_w in ((True, True), (True, False), (False, True)):
        gx, gw, folded = conv3x3_rows.backward(x, w, gy, need_x, need_w)
        assert not folded
        if need_x:
            assert gx.shape == x.shape and gx.dtype == np.float32 and gx.flags.c_contiguous
            np.testing.assert_allclose(gx, gxr, **TOL)
        else:
            assert gx is None
        if need_w:
            assert gw.shape == w.shape and gw.dtype == np.float32
            np.testing.assert_allclose(gw, gwr, **TOL)
        else:
            assert gw is None


def test_addend_is_read_or_updated_in_place_as_allowed():
    x, w, gy = operands(2, 3, 6, 8, seed=1)
    gxr, _ = ref_grads(x, w, gy)
    addend = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    kept = addend.copy()
    gx, _, folded = conv3x3_rows.backward(x, w, gy, True, False, addend, False)
    assert folded and gx is not addend
    np.testing.assert_allclose(gx, gxr + kept, **TOL)
    np.testing.assert_array_equal(addend, kept)
    gx, _, folded = conv3x3_rows.backward(x, w, gy, True, False, addend, True)
    assert folded and gx is addend
    np.testing.assert_allclose(addend, gxr + kept, **TOL)
    # an addend in another layout is not folded
    gx, _, folded = conv3x3_rows.backward(x, w, gy, True, False, channels_last(kept), True)
    assert not folded
    np.testing.assert_allclose(gx, gxr, **TOL)


def test_backward_dispatches_here_only_for_the_shapes_it_computes(monkeypatch):
    calls = []
    real = conv3x3_rows.backward
    monkeypatch.setattr(conv3x3_rows, "backward", lambda *a: calls.append(1) or real(*a))
    x, w, gy = operands(2, 3, 4, 16)
    gxr, gwr = ref_grads(x, w, gy)
    gx, gw, gb = conv.conv2d_backward(x, w, gy, ONE, ONE, ONE, True, True, True)
    assert len(calls) == 1
    np.testing.assert_allclose(gx, gxr, **TOL)
    np.testing.assert_allclose(gw, gwr, **TOL)
    np.testing.assert_allclose(gb, gy.astype(np.float64).sum(axis=(0, 2, 3)), **TOL)
    x4, w4, gy4 = operands(2, 4, 4, 16)
    for xo, wo, gyo, stride, padding, dilation in [
            (x.astype(np.float64), w, gy, 1, 1, 1),               # float64
            (x4, w4, gy4, 1, 1, 1),                               # 4 input channels
            (x[..., :31], w, gy[..., :31], 1, 1, 1),              # 31 wide
            (x, w[:12], gy[:, :12], 1, 1, 1),                     # K not a multiple of 8
            (x, w, channels_last(gy), 1, 1, 1),                   # channels-last dY
            (x, w, gy[:, :, ::-1], 1, 1, 1),                      # dY in neither layout
            (x, w, gy[:, :, :2, :16], 2, 1, 1),                   # stride 2
            (x, w, gy[:, :, 1:-1, 1:-1], 1, 0, 1),                # no padding
            (x, w, gy[:, :, 1:-1, 1:-1], 1, 1, 2)]:               # dilation 2
        assert not conv3x3_rows.applies(xo, wo, gyo, (stride,) * 2, (padding,) * 2,
                                        (dilation,) * 2)
    monkeypatch.setattr(conv3x3_rows, "USE", False)
    assert not conv3x3_rows.applies(x, w, gy, ONE, ONE, ONE)
    conv.conv2d_backward(x, w, gy, ONE, ONE, ONE, True, True, True)
    assert len(calls) == 1


@settings(max_examples=12, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 3), H=st.integers(1, 9),
       blocks=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_random_shapes_match_the_reference_through_conv2d_backward(N, C, H, blocks, seed):
    x, w, gy = operands(N, C, H, 8 * blocks, seed)
    assert conv3x3_rows.applies(x, w, gy, ONE, ONE, ONE)
    gxr, gwr = ref_grads(x, w, gy)
    gx, gw, _ = conv.conv2d_backward(x, w, gy, ONE, ONE, ONE, True, True, False)
    np.testing.assert_allclose(gx, gxr, **TOL)
    np.testing.assert_allclose(gw, gwr, **TOL)


def test_autograd_float32_matches_the_float64_path_checked_by_central_differences():
    """float32 takes these kernels, float64 the im2col path; the float64 gradients are first
    checked against central differences."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 3, 32))
    w = rng.standard_normal((64, 2, 3, 3)) * 0.5
    grads64, probe = check_grad(lambda a, b: mg.conv2d(a, b, padding=1), [x, w])
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    assert conv3x3_rows.applies(x32, w32, probe.astype(np.float32), ONE, ONE, ONE)
    assert conv3x3_rows.forward_applies(x32, w32, ONE, ONE, ONE)
    xm, wm = mg.tensor(x32, requires_grad=True), mg.tensor(w32, requires_grad=True)
    (mg.conv2d(xm, wm, padding=1) * mg.tensor(probe.astype(np.float32))).sum().backward()
    np.testing.assert_allclose(xm.grad.numpy(), grads64[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(wm.grad.numpy(), grads64[1], rtol=1e-4, atol=1e-4)


def test_bench_rows_leaf_gradient_accumulates_in_place():
    """The bench row's pattern: x a leaf, backward twice; the second adds into .grad."""
    x, w, gy = operands(2, 3, 8, 16, seed=5)
    gxr, gwr = ref_grads(x, w, gy)
    xm, wm = mg.tensor(x, requires_grad=True), mg.tensor(w, requires_grad=True)
    mg.conv2d(xm, wm, padding=1).backward(mg.tensor(gy))
    np.testing.assert_allclose(xm.grad.numpy(), gxr, **TOL)
    mg.conv2d(xm, wm, padding=1).backward(mg.tensor(gy))
    np.testing.assert_allclose(xm.grad.numpy(), 2 * gxr, **TOL)
    np.testing.assert_allclose(wm.grad.numpy(), 2 * gwr, rtol=1e-4, atol=2e-4)


# N, C, H, W, K: the CIFAR stem, one pixel group, more output channels, narrow and odd sizes
FORWARD_CASES = [(2, 3, 32, 32, 64), (1, 1, 1, 4, 64), (3, 2, 5, 8, 128), (2, 3, 7, 28, 64),
                 (1, 3, 2, 12, 192)]


@pytest.mark.parametrize("case", FORWARD_CASES)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("bias", [False, True])
def test_forward_matches_the_reference(case, layout, bias):
    N, C, H, W, K = case
    rng = np.random.default_rng(6)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32) if bias else None
    xin = channels_last(x) if layout == "cl" else x
    assert conv3x3_rows.forward_applies(xin, w, ONE, ONE, ONE)
    y, saved = conv.conv2d_saving(xin, w, b, ONE, ONE, ONE, True)
    assert y.shape == (N, K, H, W) and y.dtype == np.float32
    assert conv.is_channels_last(y)
    np.testing.assert_allclose(y, reference.conv2d(x, w, b, ONE, ONE, ONE), **TOL)
    # every backward path takes the weights and padded input the forward kept
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gxr, gwr = ref_grads(x, w, gy)
    for gyl in (gy, channels_last(gy)):
        gx, gw, _ = conv.conv2d_backward(xin, w, gyl, ONE, ONE, ONE, True, True, False,
                                         saved=saved)
        np.testing.assert_allclose(gx, gxr, **TOL)
        np.testing.assert_allclose(gw, gwr, **TOL)


def test_forward_dispatches_here_only_for_the_shapes_it_computes(monkeypatch):
    calls = []
    real = conv3x3_rows.forward
    monkeypatch.setattr(conv3x3_rows, "forward", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    w = rng.standard_normal((64, 3, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(conv.conv2d(x, w, None, ONE, ONE, ONE),
                               reference.conv2d(x, w, None, ONE, ONE, ONE), **TOL)
    assert len(calls) == 1
    x4 = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
    w4 = rng.standard_normal((64, 4, 3, 3)).astype(np.float32)
    for xo, wo, stride, padding, dilation in [
            (x.astype(np.float64), w, 1, 1, 1),         # float64
            (x4, w4, 1, 1, 1),                          # 4 input channels
            (x[..., :6], w, 1, 1, 1),                   # width not a multiple of 4
            (x, w[:32], 1, 1, 1),                       # 32 output channels
            (x, w, 2, 1, 1), (x, w, 1, 0, 1), (x, w, 1, 2, 2)]:
        assert not conv3x3_rows.forward_applies(xo, wo, (stride,) * 2, (padding,) * 2,
                                                (dilation,) * 2)
        s, p, d = (stride,) * 2, (padding,) * 2, (dilation,) * 2
        np.testing.assert_allclose(conv.conv2d(xo, wo, None, s, p, d),
                                   reference.conv2d(xo, wo, None, s, p, d), **TOL)
    assert len(calls) == 1
    monkeypatch.setattr(conv3x3_rows, "USE", False)
    conv.conv2d(x, w, None, ONE, ONE, ONE)
    assert len(calls) == 1
