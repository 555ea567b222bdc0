"""Winograd conv path (minigrad/cpu/winograd.py: F(2x2, 3x3), F(4x4, 3x3) and the stride-2
variant) against the float64 reference.

The path only runs for 3x3 / stride 1 or 2 / undilated layers with enough channels and tiles;
the tests lower those thresholds so that small shapes (odd sizes, every padding, border
tiles, batches of one) take it, and check that they did.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minigrad as mg
from minigrad.cpu import (conv, conv3x3_rows, conv_direct_cl, conv_direct_rows, small_gemm,
                          winograd)

import reference
from gradcheck import numeric_grad


@pytest.fixture
def force_winograd(monkeypatch):
    """Every 3x3 stride-1 or stride-2 conv with >= 2 channels takes the Winograd path; counts
    the calls.  The few-channel direct kernels, which conv.py tries first, are switched off (with
    them on, a 3 -> 16 channel case went to conv_direct_cl)."""
    monkeypatch.setattr(conv_direct_cl, "USE", False)
    monkeypatch.setattr(conv3x3_rows, "USE", False)
    monkeypatch.setattr(conv_direct_rows, "USE", False)
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 2)
    monkeypatch.setattr(winograd, "MIN_TILES", 1)
    monkeypatch.setattr(conv, "USE_WINOGRAD", True)
    calls = {"forward": 0, "backward": 0}
    fwd, bwd = winograd.forward, winograd.backward

    def counting_fwd(*a):
        calls["forward"] += 1
        return fwd(*a)

    def counting_bwd(*a):
        calls["backward"] += 1
        return bwd(*a)
    monkeypatch.setattr(winograd, "forward", counting_fwd)
    monkeypatch.setattr(winograd, "backward", counting_bwd)
    return calls


def _layouts(a, how):
    """The same values as NCHW ``a`` in another storage: 0 NCHW, 1 channels-last, 2 strided."""
    if how == 1:
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if how == 2:
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    return a


def _tol(dtype, scale=1.0):
    if dtype == np.float32:
        return dict(rtol=1e-4, atol=1e-4 * scale)
    return dict(rtol=1e-10, atol=1e-10 * scale)


@st.composite
def wino_case(draw):
    ph = draw(st.integers(0, 2))
    pw = draw(st.integers(0, 2))
    H = draw(st.integers(max(1, 3 - 2 * ph), 11))
    W = draw(st.integers(max(1, 3 - 2 * pw), 11))
    return dict(N=draw(st.integers(1, 4)), C=draw(st.integers(3, 19)),
                K=draw(st.integers(3, 21)), H=H, W=W, pad=(ph, pw),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                bias=draw(st.booleans()), layout=draw(st.integers(0, 2)),
                whole=draw(st.booleans()), f43=draw(st.booleans()),
                stride=draw(st.sampled_from([1, 2])), seed=draw(st.integers(0, 2 ** 31 - 1)))


# the fixture's counters are compared before/after each example, so sharing it is fine
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=wino_case())
def test_winograd_matches_reference(force_winograd, case):
    """All variants: F(2x2, 3x3), F(4x4, 3x3) and the stride-2 one, each in blocks of tiles per
    thread and for the whole batch at once."""
    names = ("WHOLE_BATCH_RATIO", "USE_F43", "MIN_SIZE_F43", "MIN_TILES_F43_WHOLE")
    saved = [getattr(winograd, n) for n in names]
    for n, v in zip(names, (0.0 if case["whole"] else 1e30, case["f43"], 1, 1)):
        setattr(winograd, n, v)
    try:
        _check_case(force_winograd, case)
    finally:
        for n, v in zip(names, saved):
            setattr(winograd, n, v)


def _check_case(force_winograd, case):
    rng = np.random.default_rng(case["seed"])
    N, C, K, H, W, dt = case["N"], case["C"], case["K"], case["H"], case["W"], case["dtype"]
    x = rng.standard_normal((N, C, H, W)).astype(dt)
    w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(dt)
    b = rng.standard_normal(K).astype(dt) if case["bias"] else None
    s = case["stride"]
    args = ((s, s), case["pad"], (1, 1))
    xv = _layouts(x, case["layout"])
    before = dict(force_winograd)
    y, saved = conv.conv2d(xv, w, b, *args, return_weights=True)
    assert force_winograd["forward"] == before["forward"] + 1
    assert saved.shape == ((25 if s == 2 else 36 if case["f43"] else 16), K, C)
    yr = reference.conv2d(x, w, b, *args)
    assert y.shape == yr.shape and y.dtype == dt
    np.testing.assert_allclose(y, yr, **_tol(dt))

    gy = rng.standard_normal(yr.shape).astype(dt)
    gxr, gwr, gbr = reference.conv2d_grads(x, w, gy, *args)
    gyv = _layouts(gy, (case["layout"] + 1) % 3)
    scale = np.sqrt(N * H * W)
    for need_x, need_w, wf in ((True, True, saved), (True, False, None), (False, True, None)):
        gx, gw, gb = conv.conv2d_backward(xv, w, gyv, *args, need_x, need_w, case["bias"],
                                          wf=wf)
        if need_x:
            assert gx.shape == x.shape
            np.testing.assert_allclose(gx, gxr, **_tol(dt))
        else:
            assert gx is None
        if need_w:
            assert gw.shape == w.shape
            np.testing.assert_allclose(gw, gwr, **_tol(dt, scale))
        else:
            assert gw is None
        if case["bias"]:
            np.testing.assert_allclose(gb, gbr, **_tol(dt, scale))
    assert force_winograd["backward"] == before["backward"] + 3


@pytest.mark.parametrize("stride,shape", [(1, (2, 3, 5, 4)), (2, (2, 3, 7, 6))])
def test_winograd_central_differences(force_winograd, stride, shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    args = ((stride, stride), (1, 0), (1, 1))
    G = rng.standard_normal(conv.conv2d(x, w, b, *args).shape)

    def loss(*_):
        return float((conv.conv2d(x, w, b, *args) * G).sum())
    gx, gw, gb = conv.conv2d_backward(x, w, G, *args, True, True, True)
    np.testing.assert_allclose(gx, numeric_grad(loss, [x], 0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, numeric_grad(loss, [w], 0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, numeric_grad(loss, [b], 0), rtol=1e-6, atol=1e-7)
    assert force_winograd["forward"] > 0 and force_winograd["backward"] == 1


def test_winograd_through_autograd(force_winograd):
    """The Tensor op (which hands the transformed weights from forward to backward)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 8, 6, 7)).astype(np.float32)
    w = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)
    xt = mg.Tensor(x, requires_grad=True)
    wt = mg.Tensor(w, requires_grad=True)
    y = mg.conv2d(xt, wt, padding=1)
    G = rng.standard_normal(y.shape).astype(np.float32)
    (y * mg.Tensor(G)).sum().backward()
    gxr, gwr, _ = reference.conv2d_grads(x, w, G, (1, 1), (1, 1), (1, 1))
    np.testing.assert_allclose(y.numpy(), reference.conv2d(x, w, None, (1, 1), (1, 1), (1, 1)),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(xt.grad.numpy(), gxr, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(wt.grad.numpy(), gwr, rtol=1e-4, atol=1e-3)
    assert force_winograd == {"forward": 1, "backward": 1}


def _layer(seed, C, K, stride):
    """float32 x (8, C, 16, 16), w (K, C, 3, 3) scaled as He, a dY and the (stride, padding,
    dilation) arguments of a ResNet-like 3x3 layer with padding 1."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, C, 16, 16)).astype(np.float32)
    w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    gy = rng.standard_normal((8, K, 16 // stride, 16 // stride)).astype(np.float32)
    return x, w, gy, ((stride, stride), (1, 1), (1, 1))


def _float32_errors(x, w, gy, args):
    """Largest errors of conv2d's y, dX and dW against the float64 reference, relative to the
    reference's largest value, with the module settings as they are."""
    yr = reference.conv2d(x, w, None, *args)
    gxr, gwr, _ = reference.conv2d_grads(x, w, gy, *args)
    y = conv.conv2d(x, w, None, *args)
    gx, gw, _ = conv.conv2d_backward(x, w, gy, *args, True, True, False)
    return [np.abs(a - r).max() / np.abs(r).max() for a, r in ((y, yr), (gx, gxr), (gw, gwr))]


@pytest.mark.parametrize("f43,factor", [(False, 4), (True, 64)])
def test_winograd_float32_error_close_to_im2col(monkeypatch, f43, factor):
    """On a ResNet-like layer at the default thresholds the Winograd path is taken and its
    float32 error stays within 4x that of the im2col path (same inputs) for F(2x2, 3x3), and
    within 64x and 1e-5 of the largest value for F(4x4, 3x3), which multiplies by up to 8
    and divides by 6 and 24."""
    monkeypatch.setattr(winograd, "USE_F43", f43)
    x, w, gy, args = _layer(5, 32, 32, 1)
    assert winograd.applicable(8, 32, 32, 3, 3, 16, 16, (1, 1), (1, 1))
    assert winograd.tile_size(8, 32, 32, 16, 16) == (4 if f43 else 2)
    # the whole-batch kernels take F(4x4, 3x3) from 64 of its tiles, up to 512 channels:
    # ResNet-18's 256-channel layers (8x8) at batch 16 and 32, its 512-channel layers (4x4) at
    # batch 64 and 128; not at 32 tiles (256 channels at batch 8, 512 at batch 32)
    for N, C, H in ((32, 256, 8), (16, 256, 8), (8, 256, 8), (128, 512, 4), (32, 512, 4)):
        assert winograd._whole_layer(N, C, C, H, H)
    for N, C, H in ((32, 256, 8), (16, 256, 8), (128, 512, 4), (64, 512, 4)):
        assert winograd.tile_size(N, C, C, H, H) == (4 if f43 else 2)
    assert winograd.tile_size(8, 256, 256, 8, 8) == 2
    assert winograd.tile_size(32, 512, 512, 4, 4) == 2
    assert winograd.tile_size(64, 1024, 1024, 4, 4) == 2
    _assert_close_to_im2col(monkeypatch, (x, w, gy, args), 1e-5, factor)


def _assert_close_to_im2col(monkeypatch, layer, limit, factor):
    """The Winograd path's float32 errors (y, dX, dW) on layer = (x, w, gy, args) stay below
    ``limit`` of the largest value and within ``factor`` times the im2col path's."""
    errs = {}
    for use in (True, False):
        monkeypatch.setattr(conv, "USE_WINOGRAD", use)
        errs[use] = _float32_errors(*layer)
    for e_wino, e_gemm in zip(errs[True], errs[False]):
        assert e_wino < limit
        assert e_wino <= factor * e_gemm + 1e-7


def test_winograd_f43_whole_512_channels_error(monkeypatch):
    """ResNet-18's 512-channel 3x3 layer (4x4) at batch 64 takes F(4x4, 3x3) in the whole-batch
    kernels; its float32 error stays within 2e-5 of the largest value and 64x the im2col
    path's (1.1e-5 here, 27x; its 64-256-channel layers at batch 8-32 measured 0.6-1.5e-5)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 512, 4, 4)).astype(np.float32)
    w = (rng.standard_normal((512, 512, 3, 3)) / np.sqrt(9 * 512)).astype(np.float32)
    gy = rng.standard_normal((64, 512, 4, 4)).astype(np.float32)
    args = ((1, 1), (1, 1), (1, 1))
    assert winograd.tile_size(64, 512, 512, 4, 4) == 4
    assert conv.conv2d(x, w, None, *args, return_weights=True)[1].shape[0] == 36
    _assert_close_to_im2col(monkeypatch, (x, w, gy, args), 2e-5, 64)


@pytest.mark.parametrize("whole", [False, True])
def test_winograd_stride2_float32_error_close_to_im2col(monkeypatch, whole):
    """A ResNet-like stride-2 layer at the default thresholds takes the 25-position variant,
    whose transforms only add: its float32 error stays within 4x that of the im2col path."""
    monkeypatch.setattr(winograd, "WHOLE_BATCH_RATIO", 0.0 if whole else 1e30)
    x, w, gy, args = _layer(6, 32, 64, 2)
    assert winograd.applicable(8, 32, 64, 3, 3, 8, 8, (2, 2), (1, 1))
    errs = {}
    for use in (True, False):
        monkeypatch.setattr(winograd, "USE_S2", use)
        assert (conv.conv2d(x, w, None, *args, return_weights=True)[1].shape[0] == 25) == use
        errs[use] = _float32_errors(x, w, gy, args)
    for e_wino, e_gemm in zip(errs[True], errs[False]):
        assert e_wino < 1e-6
        assert e_wino <= 4 * e_gemm + 1e-7


@pytest.mark.parametrize("stride,K", [(1, 64), (2, 128)])
def test_winograd_blocked_products_in_small_gemm(monkeypatch, stride, K):
    """With SMALL_GEMM_BLOCKS the blocked forward's products (64 x K by 64 here, under
    small_gemm.preferred's size) run in small_gemm: y stays within float32 rounding of the
    OpenBLAS products' y and of the float64 reference, for F(4x4, 3x3) and the stride-2
    variant."""
    if small_gemm.LANES != 16:
        pytest.skip("small_gemm's AVX-512 tile is not available on this CPU")
    monkeypatch.setattr(winograd, "WHOLE_BATCH_RATIO", 1e30)   # the blocked kernels
    x, w, _, args = _layer(7, 64, K, stride)
    yr = reference.conv2d(x, w, None, *args)
    seen = []
    real = winograd._fwd
    monkeypatch.setattr(winograd, "_fwd", lambda *a: seen.append(a[-1]) or real(*a))
    ys = {}
    for small in (True, False):
        monkeypatch.setattr(winograd, "SMALL_GEMM_BLOCKS", small)
        ys[small] = conv.conv2d(x, w, None, *args)
        assert seen[-1] is small
    scale = np.abs(yr).max()
    assert np.abs(ys[True] - yr).max() < 1e-5 * scale
    np.testing.assert_allclose(ys[True], ys[False], rtol=0, atol=1e-5 * scale)


def test_winograd_small_blocks_rule(monkeypatch):
    """_small_blocks: float32, K a multiple of small_gemm.NR, at least 64 input channels, the
    AVX-512 tile, SMALL_GEMM_BLOCKS on."""
    monkeypatch.setattr(winograd, "SMALL_GEMM_BLOCKS", True)
    wide = small_gemm.LANES == 16
    assert winograd._small_blocks(64, 128, np.float32) == wide
    assert winograd._small_blocks(64, 64, np.float32) == wide
    assert not winograd._small_blocks(32, 128, np.float32)
    assert not winograd._small_blocks(64, 48, np.float32)
    assert not winograd._small_blocks(64, 128, np.float64)
    monkeypatch.setattr(winograd, "SMALL_GEMM_BLOCKS", False)
    assert not winograd._small_blocks(64, 128, np.float32)


@pytest.mark.parametrize("N,C,K,H,R,stride,dil", [
    (64, 16, 16, 8, 3, 3, 1),     # stride 3
    (64, 16, 16, 8, 3, (1, 2), 1),   # unequal strides
    (64, 16, 16, 8, 3, 1, 2),     # dilation
    (64, 16, 16, 8, 5, 1, 1),     # 5x5
    (64, 8, 16, 8, 3, 1, 1),      # too few channels
    (1, 16, 16, 4, 3, 1, 1),      # too few tiles (4 < MIN_TILES)
])
def test_winograd_not_applicable(N, C, K, H, R, stride, dil):
    stride = stride if isinstance(stride, tuple) else (stride, stride)
    OH = (H + 2 - dil * (R - 1) - 1) // stride[0] + 1
    assert not winograd.applicable(N, C, K, R, R, OH, OH, stride, (dil, dil))
    assert winograd.applicable(64, 16, 16, 3, 3, 8, 8, (1, 1), (1, 1))


def test_winograd_stride2_switch(monkeypatch):
    """Stride-2 3x3 layers take the 25-position variant unless USE_S2 is off."""
    assert winograd.applicable(64, 16, 16, 3, 3, 4, 4, (2, 2), (1, 1))
    assert winograd.variant(64, 16, 16, 4, 4, (2, 2)) == 25
    monkeypatch.setattr(winograd, "USE_S2", False)
    assert not winograd.applicable(64, 16, 16, 3, 3, 4, 4, (2, 2), (1, 1))


@pytest.mark.parametrize("N,C,K,OH,whole", [
    (32, 64, 64, 32, False), (128, 64, 64, 32, False),        # layer1: blocked
    (32, 64, 128, 16, False), (128, 64, 128, 16, False),      # layer2's stride-2 conv
    (32, 128, 128, 16, True), (128, 128, 128, 16, False),     # layer2 (change 164 at batch 32)
    (128, 128, 256, 8, True), (32, 256, 256, 8, True),        # layer3
    (128, 256, 512, 4, True), (128, 512, 512, 4, True),       # layer4
])
def test_winograd_whole_batch_plan(N, C, K, OH, whole):
    """ResNet-18's (CIFAR stem) 3x3 layers at batch 32 and 128 run the whole-batch kernels
    where BENCHMARKS_perf.md measured them faster (changes 80 and 164), blocked elsewhere."""
    assert winograd._whole_layer(N, C, K, OH, OH) == whole


def test_winograd_switch_from_environment():
    """MINIGRAD_WINOGRAD=0 turns the path off for a new process; the default is on."""
    code = "from minigrad.cpu import conv, winograd; print(conv.USE_WINOGRAD, winograd.USE_S2)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for value, expect in (("0", "False False"), ("1", "True True")):
        env = dict(os.environ, MINIGRAD_WINOGRAD=value, MINIGRAD_WINOGRAD_S2=value,
                   PYTHONPATH=root)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == expect


@pytest.mark.parametrize("f43,whole,stride", [(False, False, 1), (True, False, 1), (True, True, 1),
                                             (False, False, 2), (False, True, 2)])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_winograd_non_finite_input_never_hidden(force_winograd, monkeypatch, bad, f43, whole,
                                                stride):
    """An Inf/NaN input must make every output it reaches non-finite (as with the im2col
    path); Winograd may spread it to the rest of the output tile, never hide it."""
    monkeypatch.setattr(winograd, "USE_F43", f43)
    monkeypatch.setattr(winograd, "MIN_SIZE_F43", 1)
    monkeypatch.setattr(winograd, "MIN_TILES_F43_WHOLE", 1)
    monkeypatch.setattr(winograd, "WHOLE_BATCH_RATIO", 0.0 if whole else 1e30)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    w = (rng.standard_normal((5, 4, 3, 3)) * 0.3).astype(np.float32)
    x[1, 2, 4, 6] = bad
    x[0, 0, 0, 0] = bad
    args = ((stride, stride), (1, 1), (1, 1))
    monkeypatch.setattr(conv, "USE_WINOGRAD", False)
    y_ref = conv.conv2d(x, w, None, *args)
    monkeypatch.setattr(conv, "USE_WINOGRAD", True)
    y = conv.conv2d(x, w, None, *args)
    assert force_winograd["forward"] >= 1
    bad_ref = ~np.isfinite(y_ref)
    assert bad_ref.any()
    assert (~np.isfinite(y))[bad_ref].all()
    ok = np.isfinite(y)
    np.testing.assert_allclose(y[ok], y_ref[ok], rtol=1e-4, atol=1e-4)
