"""Direct channels-last convolutions of few input channels (minigrad.cpu.conv_direct_cl):
LeNet-5's conv2 and its kin.

Checked against float64 references (tests/reference.py): LeNet-5's conv2, tap runs that are
and are not multiples of TAPS (dW's partial chunks), two vectors of output channels,
padding, output rows that end in a partial forward tile, dX rows that end in a pair and a
single pixel, each way dX meets an addend, the forward's kept padded x, the dispatch
conditions, hypothesis shapes, and a LeNet-5 step through autograd.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import reference
from lenet_step import gradients_with_and_without
from minigrad.cpu import conv, conv_direct_cl, small_gemm

pytestmark = pytest.mark.skipif(small_gemm.LANES != 16,
                                reason="conv.py sends these shapes here only on AVX-512 hosts "
                                       "(the kernels themselves run anywhere)")

ONE = (1, 1)
TOL = dict(rtol=1e-4, atol=2e-4)


def operands(N, C, H, W, K, R, S, ph, pw, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, R, S)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    gy = rng.standard_normal((N, K, H + 2 * ph - R + 1, W + 2 * pw - S + 1)).astype(np.float32)
    return x, w, b, gy


def kernel_grads(x, w, gy, ph, pw, need_x, need_w, addend=None, writable=False):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    xp = conv._padded(x, ph, pw, conv_direct_cl.slack_pixels(C))
    wt = conv._weights_rsck(w, np.float32)
    gyb = conv._padded(gy, 0, S - 1, 0) if need_x else conv._cl_contig(gy).reshape(-1)
    return conv_direct_cl.backward(xp, wt, gyb, need_x, N, C, H, W, K, R, S, ph, pw, need_x,
                                   need_w, addend, writable)


# N, C, H, W, K, R, S, ph, pw: LeNet-5's conv2 (30-tap runs: two whole chunks); 3x5 taps
# with padding and 32 outputs (30-tap runs, dX rows of 13: tiles, a pair, no single); 6x6
# taps (36: a partial chunk), rows of 15 (a partial forward tile; dX: tiles, a pair, a
# single); 1x1 (6 taps: one partial chunk); 3x3 with one input channel (dW only)
CASES = [(3, 6, 14, 14, 16, 5, 5, 0, 0), (2, 6, 12, 13, 32, 3, 5, 1, 2),
         (2, 6, 9, 15, 16, 6, 6, 2, 3), (1, 6, 3, 10, 16, 1, 1, 0, 0),
         (2, 1, 12, 12, 16, 3, 3, 1, 1)]


@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_match_the_reference(case):
    N, C, H, W, K, R, S, ph, pw = case
    x, w, b, gy = operands(*case)
    yr = reference.conv2d(x, w, b, ONE, (ph, pw), ONE)
    gxr, gwr = reference.conv2d_grads(x, w, gy, ONE, (ph, pw), ONE)[:2]
    xp = conv._padded(x, ph, pw, conv_direct_cl.slack_pixels(C))
    wt = conv._weights_rsck(w, np.float32)
    y = conv_direct_cl.forward(xp, wt, b, N, C, H + 2 * ph, W + 2 * pw, K, R, S)
    np.testing.assert_allclose(y.transpose(0, 3, 1, 2), yr, **TOL)
    modes = ((True, True), (True, False), (False, True)) if C in conv_direct_cl.DX_CHANNELS \
        else ((False, True),)
    for need_x, need_w in modes:
        gx, gw, folded = kernel_grads(x, w, gy, ph, pw, need_x, need_w)
        assert not folded
        if need_x:
            assert gx.shape == x.shape and gx.flags.c_contiguous
            np.testing.assert_allclose(gx, gxr, **TOL)
        else:
            assert gx is None
        if need_w:
            np.testing.assert_allclose(gw, gwr, **TOL)
        else:
            assert gw is None


def test_dx_needs_padded_dy_rows():
    x, w, _, gy = operands(1, 6, 12, 12, 16, 3, 3, 0, 0)
    N, C, H, W = x.shape
    xp = conv._padded(x, 0, 0, conv_direct_cl.slack_pixels(C))
    with pytest.raises(ValueError, match="S - 1"):
        conv_direct_cl.backward(xp, conv._weights_rsck(w, np.float32),
                                conv._cl_contig(gy).reshape(-1), False, N, C, H, W, 16, 3, 3,
                                0, 0, True, True)


def test_addend_is_read_or_updated_in_place_as_allowed():
    x, w, _, gy = operands(2, 6, 14, 14, 16, 5, 5, 0, 0, seed=1)
    gxr = reference.conv2d_grads(x, w, gy, ONE, (0, 0), ONE)[0]
    addend = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    kept = addend.copy()
    gx, _, folded = kernel_grads(x, w, gy, 0, 0, True, False, addend, False)
    assert folded and gx is not addend
    np.testing.assert_allclose(gx, gxr + kept, **TOL)
    np.testing.assert_array_equal(addend, kept)
    gx, _, folded = kernel_grads(x, w, gy, 0, 0, True, False, addend, True)
    assert folded and gx is addend
    np.testing.assert_allclose(addend, gxr + kept, **TOL)


def channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def test_conv2d_dispatches_here_and_reuses_the_kept_input(monkeypatch):
    calls = []
    real_fwd, real_bwd = conv_direct_cl.forward, conv_direct_cl.backward
    monkeypatch.setattr(conv_direct_cl, "forward", lambda *a: calls.append("f") or real_fwd(*a))
    monkeypatch.setattr(conv_direct_cl, "backward", lambda *a: calls.append("b") or real_bwd(*a))
    x, w, b, gy = operands(2, 6, 14, 14, 16, 5, 5, 0, 0, seed=3)
    yr = reference.conv2d(x, w, b, ONE, (0, 0), ONE)
    gxr, gwr = reference.conv2d_grads(x, w, gy, ONE, (0, 0), ONE)[:2]
    for xin in (x, channels_last(x)):
        for gyin in (gy, channels_last(gy)):
            y, saved = conv.conv2d_saving(xin, w, b, ONE, (0, 0), ONE, True)
            assert saved.x_cl is not None
            np.testing.assert_allclose(y, yr, **TOL)
            for kept in (saved, None):
                gx, gw, gb = conv.conv2d_backward(xin, w, gyin, ONE, (0, 0), ONE, True, True,
                                                  True, saved=kept)
                np.testing.assert_allclose(gx, gxr, **TOL)
                np.testing.assert_allclose(gw, gwr, **TOL)
                np.testing.assert_allclose(gb, gy.astype(np.float64).sum(axis=(0, 2, 3)), **TOL)
    assert calls.count("f") == 4 and calls.count("b") == 8


def test_dispatch_conditions():
    x, w, _, gy = operands(1, 6, 14, 14, 16, 5, 5, 0, 0)
    assert conv_direct_cl.forward_applies(x, w, ONE, (0, 0), ONE)
    assert conv_direct_cl.backward_applies(x, w, gy, ONE, (0, 0), ONE, True)
    x4, w4, _, gy4 = operands(1, 4, 14, 14, 16, 5, 5, 0, 0)
    # dW of any channel count; dX only for those in DX_CHANNELS
    assert conv_direct_cl.backward_applies(x4, w4, gy4, ONE, (0, 0), ONE, False)
    assert not conv_direct_cl.backward_applies(x4, w4, gy4, ONE, (0, 0), ONE, True)
    rng = np.random.default_rng(0)
    for xo, wo, args in [
            (x.astype(np.float64), w, (ONE, (0, 0), ONE)),                       # float64
            (x, w[:8], (ONE, (0, 0), ONE)),                                      # 8 outputs
            (x, np.concatenate([w, w, w]), (ONE, (0, 0), ONE)),                  # 48 outputs
            (rng.standard_normal((1, 9, 14, 14)).astype(np.float32),
             rng.standard_normal((16, 9, 5, 5)).astype(np.float32), (ONE, (0, 0), ONE)),
            (x, w, ((2, 2), (0, 0), ONE)),                                       # stride 2
            (x, w, (ONE, (0, 0), (2, 2))),                                       # dilation 2
            (x[:, :, :, :13], w, (ONE, (0, 0), ONE))]:                           # rows of 9
        assert not conv_direct_cl.forward_applies(xo, wo, *args)


def test_use_flag_turns_the_path_off(monkeypatch):
    x, w, _, gy = operands(1, 6, 14, 14, 16, 5, 5, 0, 0)
    monkeypatch.setattr(conv_direct_cl, "USE", False)
    assert not conv_direct_cl.forward_applies(x, w, ONE, (0, 0), ONE)
    assert not conv_direct_cl.backward_applies(x, w, gy, ONE, (0, 0), ONE, True)


@settings(max_examples=12, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 8), H=st.integers(1, 12), W=st.integers(10, 24),
       vectors=st.integers(1, 2), R=st.integers(1, 5), S=st.integers(1, 5),
       pad=st.integers(0, 2), seed=st.integers(0, 2 ** 16))
def test_random_shapes_match_the_reference_through_conv2d(N, C, H, W, vectors, R, S, pad, seed):
    if W + 2 * pad - S + 1 < conv_direct_cl.FWD_PIXELS or H + 2 * pad - R + 1 < 1:
        return
    x, w, b, gy = operands(N, C, H, W, 16 * vectors, R, S, pad, pad, seed)
    assert conv_direct_cl.forward_applies(x, w, ONE, (pad, pad), ONE)
    y = conv.conv2d(x, w, b, ONE, (pad, pad), ONE)
    np.testing.assert_allclose(y, reference.conv2d(x, w, b, ONE, (pad, pad), ONE), **TOL)
    need_x = C in conv_direct_cl.DX_CHANNELS
    gx, gw, _ = conv.conv2d_backward(x, w, gy, ONE, (pad, pad), ONE, need_x, True, False)
    gxr, gwr = reference.conv2d_grads(x, w, gy, ONE, (pad, pad), ONE)[:2]
    np.testing.assert_allclose(gw, gwr, **TOL)
    if need_x:
        np.testing.assert_allclose(gx, gxr, **TOL)


def test_lenet_step_matches_the_im2col_path(monkeypatch):
    """A LeNet-5 train step (conv2 takes this path) gives the gradients the im2col path gives."""
    grads = gradients_with_and_without(conv_direct_cl, monkeypatch)
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
