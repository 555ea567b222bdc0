"""Direct NCHW convolutions of one-channel images into six output channels
(minigrad.cpu.conv_direct_rows): LeNet-5's conv1 and its kin.

Checked against float64 references (tests/reference.py): LeNet-5's conv1, an odd number of
output rows (the forward's last row alone), kernel rows wider than TAPS (dW's partial chunk),
output rows of LANES + 1 and 2 * LANES pixels, asymmetric padding, the forward's kept padded
x, a non-contiguous dY, the dispatch conditions, hypothesis shapes, and a LeNet-5 step
through autograd.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import reference
from lenet_step import gradients_with_and_without
from minigrad.cpu import conv, conv_direct_rows, small_gemm

pytestmark = pytest.mark.skipif(small_gemm.LANES != 16,
                                reason="conv.py sends these shapes here only on AVX-512 hosts "
                                       "(the kernels themselves run anywhere)")

ONE = (1, 1)
K = conv_direct_rows.OUTPUTS
TOL = dict(rtol=1e-4, atol=2e-4)


def operands(N, H, W, R, S, ph, pw, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, 1, H, W)).astype(np.float32)
    w = rng.standard_normal((K, 1, R, S)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    gy = rng.standard_normal((N, K, H + 2 * ph - R + 1, W + 2 * pw - S + 1)).astype(np.float32)
    return x, w, b, gy


# N, H, W, R, S, ph, pw: LeNet-5's conv1 (28 rows of 28); 7 output rows (the last one alone)
# of 30; 7-wide kernel rows (a whole and a partial dW chunk) into rows of 20; 1x1 into rows of
# LANES + 1 (one lane of the second vector); 2x2 into rows of 2 * LANES
CASES = [(3, 28, 28, 5, 5, 2, 2), (2, 7, 30, 3, 3, 1, 1), (3, 9, 20, 5, 7, 0, 3),
         (2, 3, 17, 1, 1, 0, 0), (2, 5, 33, 2, 2, 0, 0)]


@pytest.mark.parametrize("case", CASES)
def test_forward_and_weight_gradient_match_the_reference(case):
    N, H, W, R, S, ph, pw = case
    x, w, b, gy = operands(*case)
    xp = conv._padded(x, ph, pw, conv_direct_rows.SLACK)
    Hp, Wp = H + 2 * ph, W + 2 * pw
    y = conv_direct_rows.forward(xp, conv._weights_rsck(w, np.float32), b, N, Hp, Wp, K, R, S)
    assert y.shape == gy.shape and y.flags.c_contiguous
    np.testing.assert_allclose(y, reference.conv2d(x, w, b, ONE, (ph, pw), ONE), **TOL)
    gw = conv_direct_rows.backward(xp, gy, N, Hp, Wp, K, R, S)
    gwr = reference.conv2d_grads(x, w, gy, ONE, (ph, pw), ONE)[1]
    np.testing.assert_allclose(gw, gwr, **TOL)


def test_conv2d_dispatches_here_and_reuses_the_kept_input(monkeypatch):
    calls = []
    real_fwd, real_bwd = conv_direct_rows.forward, conv_direct_rows.backward
    monkeypatch.setattr(conv_direct_rows, "forward", lambda *a: calls.append("f") or real_fwd(*a))
    monkeypatch.setattr(conv_direct_rows, "backward",
                        lambda xp, *a: calls.append(xp) or real_bwd(xp, *a))
    x, w, b, gy = operands(2, 28, 28, 5, 5, 2, 2, seed=3)
    yr = reference.conv2d(x, w, b, ONE, (2, 2), ONE)
    _, gwr, gbr = reference.conv2d_grads(x, w, gy, ONE, (2, 2), ONE)
    gy_cl = np.ascontiguousarray(gy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    y, saved = conv.conv2d_saving(x, w, b, ONE, (2, 2), ONE, True)
    np.testing.assert_allclose(y, yr, **TOL)
    assert saved.x_cl is not None
    for kept in (saved, None):
        for g in (gy, gy_cl):
            gx, gw, gb = conv.conv2d_backward(x, w, g, ONE, (2, 2), ONE, False, True, True,
                                              saved=kept)
            assert gx is None
            np.testing.assert_allclose(gw, gwr, **TOL)
            np.testing.assert_allclose(gb, gbr, **TOL)
    assert calls[0] == "f" and len(calls) == 5
    assert calls[1] is saved.x_cl and calls[2] is saved.x_cl
    assert calls[3] is not saved.x_cl and calls[4] is not saved.x_cl
    # dX is not computed here: the same convolution with need_x takes another path
    gx, gw, _ = conv.conv2d_backward(x, w, gy, ONE, (2, 2), ONE, True, True, False, saved=saved)
    assert len(calls) == 5
    np.testing.assert_allclose(gx, reference.conv2d_grads(x, w, gy, ONE, (2, 2), ONE)[0], **TOL)
    np.testing.assert_allclose(gw, gwr, **TOL)


def test_dispatch_conditions():
    x, w, _, gy = operands(1, 28, 28, 5, 5, 2, 2)
    pad = (2, 2)
    assert conv_direct_rows.forward_applies(x, w, ONE, pad, ONE)
    assert conv_direct_rows.backward_applies(x, w, gy, ONE, pad, ONE, False)
    assert not conv_direct_rows.backward_applies(x, w, gy, ONE, pad, ONE, True)     # dX
    assert not conv_direct_rows.backward_applies(x, w, gy.astype(np.float64), ONE, pad, ONE,
                                                 False)
    rng = np.random.default_rng(0)
    for xo, wo, args in [
            (x.astype(np.float64), w, (ONE, pad, ONE)),                          # float64
            (x, w[:5], (ONE, pad, ONE)),                                         # 5 outputs
            (x, np.concatenate([w, w[:1]]), (ONE, pad, ONE)),                    # 7 outputs
            (np.concatenate([x, x], axis=1),
             rng.standard_normal((K, 2, 5, 5)).astype(np.float32), (ONE, pad, ONE)),  # 2 in
            (x, w, ((2, 2), pad, ONE)),                                          # stride 2
            (x, w, (ONE, pad, (2, 2))),                                          # dilation 2
            (x[:, :, :, :16], w, (ONE, (2, 0), ONE)),                            # rows of 12
            (x[:, :, :, :20], w, (ONE, (2, 0), ONE)),                            # rows of 16
            (np.zeros((1, 1, 28, 37), np.float32), w, (ONE, (2, 2), ONE)),       # rows of 37
            (x[:, :, :3], w, (ONE, (0, 2), ONE))]:                               # no rows
        assert not conv_direct_rows.forward_applies(xo, wo, *args)
    assert conv_direct_rows.forward_applies(x[:, :, :, :21], w, ONE, (2, 0), ONE)   # rows of 17


def test_use_flag_turns_the_path_off(monkeypatch):
    x, w, _, gy = operands(1, 28, 28, 5, 5, 2, 2)
    monkeypatch.setattr(conv_direct_rows, "USE", False)
    assert not conv_direct_rows.forward_applies(x, w, ONE, (2, 2), ONE)
    assert not conv_direct_rows.backward_applies(x, w, gy, ONE, (2, 2), ONE, False)


@settings(max_examples=12, deadline=None)
@given(N=st.integers(1, 3), H=st.integers(1, 12), OW=st.integers(17, 32), R=st.integers(1, 6),
       S=st.integers(1, 8), ph=st.integers(0, 2), pw=st.integers(0, 3),
       seed=st.integers(0, 2 ** 16))
def test_random_shapes_match_the_reference_through_conv2d(N, H, OW, R, S, ph, pw, seed):
    W = OW + S - 1 - 2 * pw
    if W < 1 or H + 2 * ph - R + 1 < 1:
        return
    x, w, b, gy = operands(N, H, W, R, S, ph, pw, seed)
    assert conv_direct_rows.forward_applies(x, w, ONE, (ph, pw), ONE)
    y = conv.conv2d(x, w, b, ONE, (ph, pw), ONE)
    np.testing.assert_allclose(y, reference.conv2d(x, w, b, ONE, (ph, pw), ONE), **TOL)
    _, gw, gb = conv.conv2d_backward(x, w, gy, ONE, (ph, pw), ONE, False, True, True)
    _, gwr, gbr = reference.conv2d_grads(x, w, gy, ONE, (ph, pw), ONE)
    np.testing.assert_allclose(gw, gwr, **TOL)
    np.testing.assert_allclose(gb, gbr, **TOL)


def test_lenet_step_matches_the_other_path(monkeypatch):
    """A LeNet-5 train step (conv1 takes this path) gives the gradients the extended-row
    kernels give."""
    grads = gradients_with_and_without(conv_direct_rows, monkeypatch)
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
