"""Backward of few-channel 3x3 "same" convolutions with channels-last dY
(minigrad.cpu.conv3x3_cl), vectorised over output channels.

Checked against float64 references for 1-3 input channels, widths from 1 (edge pixels only)
to 32 (groups of pixels, single interior pixels and both edges), 1-32 rows, 16-64 output
channels, x in both layouts, each way dX meets an addend, the forward's kept padded input,
the dispatch conditions, and through autograd in the bench row's layout.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigrad as mg
from minigrad.cpu import conv, conv3x3_cl, conv3x3_rows, small_gemm
from test_conv3x3_rows import ONE, TOL, channels_last, operands, ref_grads

pytestmark = pytest.mark.skipif(small_gemm.LANES != 16,
                                reason="conv.py sends these shapes here only on AVX-512 hosts "
                                       "(the kernels themselves run anywhere)")


def grads(x, w, gy, need_x, need_w, addend=None, writable=False):
    N, C, H, W = x.shape
    xp = conv._padded(x, 1, 1, 0)
    wt = conv._weights_rsck(w, np.float32)
    return conv3x3_cl.backward(xp, wt, gy, N, C, H, W, w.shape[0], need_x, need_w, addend,
                               writable)


# N, C, H, W, K: the stem; one pixel; two pixels (edges only); 7 wide (a group of 4, one
# single interior pixel, two edges); 10 wide with 48 channels; 3 wide (one interior single);
# 32 wide (dX by conv3x3_rows' row kernel) with one row, and with 2 channels and 48 outputs;
# dW's wide sweeps (64 outputs and more) with 1 and 2 channels, and with a vector left over
CASES = [(2, 3, 32, 32, 64), (1, 1, 1, 1, 16), (3, 2, 2, 2, 32), (2, 3, 5, 7, 16),
         (2, 1, 3, 10, 48), (1, 3, 4, 3, 16), (1, 1, 1, 32, 16), (2, 2, 3, 32, 48),
         (1, 1, 2, 5, 64), (2, 2, 3, 9, 64), (1, 3, 3, 32, 80), (1, 2, 2, 6, 128)]


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_the_reference(case):
    N, C, H, W, K = case
    x, w, gy = operands(N, C, H, K, W=W)
    gxr, gwr = ref_grads(x, w, gy)
    gyc = channels_last(gy)
    for need_x, need_w in ((True, True), (True, False), (False, True)):
        gx, gw, folded = grads(x, w, gyc, need_x, need_w)
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


@pytest.mark.parametrize("case", [(2, 3, 32, 32, 64), (1, 1, 3, 7, 80), (1, 2, 2, 32, 128)])
def test_wide_and_one_vector_dw_sweeps_agree(case, monkeypatch):
    """dW's wide sweeps (USE_WIDE_DW) and the one-vector sweeps add the same products in the
    same order into each tap's sum: equal results, through each of the three kernels."""
    N, C, H, W, K = case
    x, w, gy = operands(N, C, H, K, W=W)
    gyc = channels_last(gy)
    for need_x in (False, True):
        out = {}
        for wide in (True, False):
            monkeypatch.setattr(conv3x3_cl, "USE_WIDE_DW", wide)
            out[wide] = grads(x, w, gyc, need_x, True)[1]
        np.testing.assert_array_equal(out[True], out[False])
    monkeypatch.setattr(conv3x3_cl, "USE_ROW_DX", False)
    if W == 32:
        monkeypatch.setattr(conv3x3_cl, "USE_WIDE_DW", True)
        np.testing.assert_array_equal(grads(x, w, gyc, True, True)[1], out[False])


@pytest.mark.parametrize("W", [12, 32])     # 32: dX by the row kernel
def test_addend_is_read_or_updated_in_place_as_allowed(W):
    x, w, gy = operands(2, 3, 6, 16, seed=1, W=W)
    gxr, _ = ref_grads(x, w, gy)
    gyc = channels_last(gy)
    addend = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    kept = addend.copy()
    gx, _, folded = grads(x, w, gyc, True, False, addend, False)
    assert folded and gx is not addend
    np.testing.assert_allclose(gx, gxr + kept, **TOL)
    np.testing.assert_array_equal(addend, kept)
    gx, _, folded = grads(x, w, gyc, True, False, addend, True)
    assert folded and gx is addend
    np.testing.assert_allclose(addend, gxr + kept, **TOL)


def test_both_dx_paths_agree_on_32_wide_images(monkeypatch):
    """32-wide images take dX by transposed dY rows and conv3x3_rows' row kernel; the pixel
    groups compute the same sums (in another order)."""
    x, w, gy = operands(2, 3, 5, 32, seed=3)
    gyc = channels_last(gy)
    by_rows, _, _ = grads(x, w, gyc, True, False)
    monkeypatch.setattr(conv3x3_cl, "USE_ROW_DX", False)
    by_groups, _, _ = grads(x, w, gyc, True, False)
    np.testing.assert_allclose(by_rows, by_groups, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_rows, ref_grads(x, w, gy)[0], **TOL)


def test_backward_dispatches_here_only_for_channels_last_dy(monkeypatch):
    calls = []
    real = conv3x3_cl.backward
    monkeypatch.setattr(conv3x3_cl, "backward", lambda *a: calls.append(1) or real(*a))
    x, w, gy = operands(2, 3, 4, 64, W=8)
    gxr, gwr = ref_grads(x, w, gy)
    for xin in (x, channels_last(x)):
        # with the forward's kept padded copy of x, and without
        _, saved = conv.conv2d_saving(xin, w, None, ONE, ONE, ONE, True)
        for kept in (saved, None):
            gx, gw, gb = conv.conv2d_backward(xin, w, channels_last(gy), ONE, ONE, ONE, True,
                                              True, True, saved=kept)
            np.testing.assert_allclose(gx, gxr, **TOL)
            np.testing.assert_allclose(gw, gwr, **TOL)
            np.testing.assert_allclose(gb, gy.astype(np.float64).sum(axis=(0, 2, 3)), **TOL)
    assert len(calls) == 4
    gyc = channels_last(gy)
    assert conv3x3_cl.applies(x, w, gyc, ONE, ONE, ONE)
    for xo, wo, gyo, args in [
            (x, w, gy, (ONE, ONE, ONE)),                                  # NCHW dY
            (x, w[:8], channels_last(gy[:, :8]), (ONE, ONE, ONE)),        # 8 output channels
            (x.astype(np.float64), w, gyc, (ONE, ONE, ONE)),              # float64
            (x, w, gyc[:, :, :2, :4], ((2, 2), ONE, ONE)),                # stride 2
            (x, w, gyc[:, :, 1:-1, 1:-1], (ONE, (0, 0), ONE))]:           # no padding
        assert not conv3x3_cl.applies(xo, wo, gyo, *args)
    monkeypatch.setattr(conv3x3_rows, "USE", False)
    assert not conv3x3_cl.applies(x, w, gyc, ONE, ONE, ONE)


@settings(max_examples=12, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 3), H=st.integers(1, 6), W=st.integers(2, 20),
       vectors=st.integers(1, 6), seed=st.integers(0, 2 ** 16))
def test_random_shapes_match_the_reference_through_conv2d_backward(N, C, H, W, vectors, seed):
    x, w, gy = operands(N, C, H, 16 * vectors, seed, W=W)
    gyc = channels_last(gy)
    assert conv3x3_cl.applies(x, w, gyc, ONE, ONE, ONE)
    gxr, gwr = ref_grads(x, w, gy)
    gx, gw, _ = conv.conv2d_backward(x, w, gyc, ONE, ONE, ONE, True, True, False)
    np.testing.assert_allclose(gx, gxr, **TOL)
    np.testing.assert_allclose(gw, gwr, **TOL)


def test_channels_last_bench_row_through_autograd():
    """The channels-last bench row's pattern: x a channels-last leaf, dY channels-last,
    backward twice."""
    x, w, gy = operands(2, 3, 8, 64, seed=5)
    gxr, gwr = ref_grads(x, w, gy)
    xm, wm = mg.tensor(channels_last(x), requires_grad=True), mg.tensor(w, requires_grad=True)
    for times in (1, 2):
        mg.conv2d(xm, wm, padding=1).backward(mg.tensor(channels_last(gy)))
        np.testing.assert_allclose(xm.grad.numpy(), times * gxr, **TOL)
        np.testing.assert_allclose(wm.grad.numpy(), times * gwr, rtol=1e-4, atol=2e-4)
