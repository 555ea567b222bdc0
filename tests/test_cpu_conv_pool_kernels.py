"""CPU conv2d / pooling kernels against NumPy float64 references.

References are written independently of the kernels: conv as a sum over
kernel offsets of einsums on the zero-padded input, pooling as explicit loops
over windows.  Gradients are checked against the analytic gradient of
``sum(y * G)`` (exact adjoints computed from the reference) and, on tiny
shapes, against central differences.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigrad.cpu import conv, pool

import reference
from gradcheck import numeric_grad

HSET = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------
# references (float64)
# ---------------------------------------------------------------------------

def conv_out(H, W, R, S, stride, padding, dilation):
    return ((H + 2 * padding[0] - dilation[0] * (R - 1) - 1) // stride[0] + 1,
            (W + 2 * padding[1] - dilation[1] * (S - 1) - 1) // stride[1] + 1)


ref_conv = reference.conv2d
ref_conv_grads = reference.conv2d_grads


def ref_max_pool(x, kernel, stride, padding):
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y = np.empty((N, C, OH, OW))
    gsel = np.zeros((N, C, OH, OW, H, W))   # one-hot of the chosen element
    for oh in range(OH):
        for ow in range(OW):
            h0, w0 = oh * sh - ph, ow * sw - pw
            hs, he = max(h0, 0), min(h0 + kh, H)
            ws, we = max(w0, 0), min(w0 + kw, W)
            win = x[:, :, hs:he, ws:we].reshape(N, C, -1)
            am = win.argmax(axis=2)
            y[:, :, oh, ow] = win.max(axis=2)
            ih, iw = np.unravel_index(am, (he - hs, we - ws))
            for n in range(N):
                for c in range(C):
                    gsel[n, c, oh, ow, hs + ih[n, c], ws + iw[n, c]] = 1
    return y, gsel


def ref_avg_pool(x, kernel, stride, padding, include_pad):
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y = np.empty((N, C, OH, OW))
    wts = np.zeros((OH, OW, H, W))          # y = einsum(wts, x)
    for oh in range(OH):
        for ow in range(OW):
            h0, w0 = oh * sh - ph, ow * sw - pw
            hs, he = max(h0, 0), min(h0 + kh, H)
            ws, we = max(w0, 0), min(w0 + kw, W)
            if include_pad:
                d = (min(h0 + kh, H + ph) - h0) * (min(w0 + kw, W + pw) - w0)
            else:
                d = (he - hs) * (we - ws)
            wts[oh, ow, hs:he, ws:we] = 1.0 / d
    y = np.einsum("abhw,nchw->ncab", wts, x)
    return y, wts


def numgrad(f, a, eps=1e-6):
    """Central differences of the scalar ``f()`` with respect to ``a`` (perturbed in place)."""
    return numeric_grad(lambda *_: f(), [a], 0, eps)


def maybe_noncontig(a, how):
    """Same values as ``a`` but, for how != 0, held in a non-contiguous view."""
    if how == 1:        # transposed storage
        b = np.ascontiguousarray(a.transpose(3, 2, 1, 0)).transpose(3, 2, 1, 0)
    elif how == 2:      # strided slice of a bigger buffer
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        b = big[..., ::2]
    else:
        return a
    assert np.array_equal(a, b)
    return b


def tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------

@st.composite
def conv_case(draw):
    R = draw(st.integers(1, 5))
    S = draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph = draw(st.integers(0, R // 2))
    pw = draw(st.integers(0, S // 2))
    H = draw(st.integers(max(1, dh * (R - 1) + 1 - 2 * ph), 13))
    W = draw(st.integers(max(1, dw * (S - 1) + 1 - 2 * pw), 13))
    N = draw(st.integers(1, 5))
    C = draw(st.integers(1, 6))
    K = draw(st.integers(1, 7))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    bias = draw(st.booleans())
    nc = draw(st.integers(0, 2))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    path = draw(st.sampled_from(["gemm", "direct"]))
    return N, C, H, W, K, R, S, (sh, sw), (ph, pw), (dh, dw), dtype, bias, nc, seed, path


def set_path(path):
    """Force the GEMM (im2col tiles) or the direct (few channels) conv path."""
    old = (conv._DIRECT_MAX_CK, conv._DIRECT_MAX_CK_BWD)
    conv._DIRECT_MAX_CK = conv._DIRECT_MAX_CK_BWD = 10 ** 9 if path == "direct" else 0
    return old


@HSET
@given(conv_case())
def test_conv2d_forward_backward_property(case):
    old = set_path(case[-1])
    try:
        check_conv_case(case[:-1])
    finally:
        conv._DIRECT_MAX_CK, conv._DIRECT_MAX_CK_BWD = old


def check_conv_case(case):
    N, C, H, W, K, R, S, stride, padding, dilation, dtype, bias, nc, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if bias else None
    yr = ref_conv(x, w, b, stride, padding, dilation)
    xv, wv = maybe_noncontig(x, nc), maybe_noncontig(w, (nc + 1) % 3)
    y = conv.conv2d(xv, wv, b, stride, padding, dilation)
    assert y.shape == yr.shape and y.dtype == dtype
    np.testing.assert_allclose(y, yr, **tol(dtype))

    G = rng.standard_normal(yr.shape).astype(dtype)
    gxr, gwr, gbr = ref_conv_grads(x, w, G, stride, padding, dilation)
    Gv = maybe_noncontig(G, nc)
    gx, gw, gb = conv.conv2d_backward(xv, wv, Gv, stride, padding, dilation, True, True, bias)
    np.testing.assert_allclose(gx, gxr, **tol(dtype))
    np.testing.assert_allclose(gw, gwr, **tol(dtype))
    assert gx.shape == x.shape and gw.shape == w.shape
    if bias:
        np.testing.assert_allclose(gb, gbr, **tol(dtype))
    else:
        assert gb is None
    # subsets of gradients
    gx2, gw2, gb2 = conv.conv2d_backward(x, w, G, stride, padding, dilation, True, False, False)
    assert gw2 is None and gb2 is None
    np.testing.assert_allclose(gx2, gxr, **tol(dtype))
    gx3, gw3, gb3 = conv.conv2d_backward(x, w, G, stride, padding, dilation, False, True, True)
    assert gx3 is None
    np.testing.assert_allclose(gw3, gwr, **tol(dtype))
    np.testing.assert_allclose(gb3, gbr, **tol(dtype))


@pytest.mark.parametrize("path", ["gemm", "direct"])
@pytest.mark.parametrize("stride,padding,dilation,R", [
    ((1, 1), (1, 1), (1, 1), 3),
    ((2, 1), (1, 0), (1, 2), 3),
    ((1, 1), (0, 0), (1, 1), 1),
    ((2, 2), (0, 0), (1, 1), 1),
])
def test_conv2d_numerical_gradient(stride, padding, dilation, R, path, monkeypatch):
    monkeypatch.setattr(conv, "_DIRECT_MAX_CK", 10 ** 9 if path == "direct" else 0)
    monkeypatch.setattr(conv, "_DIRECT_MAX_CK_BWD", 10 ** 9 if path == "direct" else 0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 5, 6))
    w = rng.standard_normal((3, 2, R, R))
    b = rng.standard_normal(3)
    G = rng.standard_normal(ref_conv(x, w, b, stride, padding, dilation).shape)
    loss = lambda: float((conv.conv2d(x, w, b, stride, padding, dilation) * G).sum())  # noqa: E731
    gx, gw, gb = conv.conv2d_backward(x, w, G, stride, padding, dilation, True, True, True)
    np.testing.assert_allclose(gx, numgrad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, numgrad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, numgrad(loss, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("N,C,K,H,R,s,p", [
    (3, 3, 16, 12, 3, 1, 1),        # stem-like
    (2, 64, 32, 8, 3, 1, 1),        # many channels: long im2col rows
    (2, 48, 40, 9, 3, 2, 1),        # stride 2, odd size
    (5, 40, 24, 4, 3, 1, 1),        # small planes: several images per tile
    (4, 32, 48, 6, 1, 1, 0),        # pointwise: no im2col
    (3, 32, 48, 7, 1, 2, 0),        # strided 1x1 (downsample)
    (130, 1, 6, 12, 5, 1, 2),       # LeNet conv1-like, many groups
    (1, 6, 16, 14, 5, 1, 0),        # batch 1
    (32, 6, 16, 14, 5, 1, 0),       # LeNet conv2-like: 384-pixel narrow-layer tiles
])
def test_conv2d_layer_shapes(N, C, K, H, R, s, p):
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((N, C, H, H)).astype(dtype)
        w = (rng.standard_normal((K, C, R, R)) / np.sqrt(C * R * R)).astype(dtype)
        b = rng.standard_normal(K).astype(dtype)
        st_, pd, dl = (s, s), (p, p), (1, 1)
        y = conv.conv2d(x, w, b, st_, pd, dl)
        np.testing.assert_allclose(y, ref_conv(x, w, b, st_, pd, dl), **tol(dtype))
        G = rng.standard_normal(y.shape).astype(dtype)
        gx, gw, gb = conv.conv2d_backward(x, w, G, st_, pd, dl, True, True, True)
        gxr, gwr, gbr = ref_conv_grads(x, w, G, st_, pd, dl)
        scale = dict(rtol=2e-4, atol=2e-4 * max(1.0, np.sqrt(N * H * H))) \
            if dtype == np.float32 else tol(dtype)
        np.testing.assert_allclose(gx, gxr, **tol(dtype))
        np.testing.assert_allclose(gw, gwr, **scale)
        np.testing.assert_allclose(gb, gbr, **scale)


def test_narrow_layers_take_smaller_tiles_with_the_same_results(monkeypatch):
    """Few output channels (K <= conv._NARROW_K): tiles of at most _NARROW_TILE_BYTES for the
    column tile and its dX counterpart (LeNet conv2: 384 pixels instead of 512); the
    gradients equal those with the rule switched off and the float64 reference."""
    assert conv._plan(128, 100, 2, 150, 16, 4)[0] == 384
    assert conv._plan(128, 100, 2, 150, 16, 8)[0] == 192
    assert conv._plan(128, 100, 2, 150, 64, 4)[0] == conv._TILE
    # 32 images of 10x10 outputs: 384-pixel tiles (4 images a work unit), 512 with the rule off
    assert conv._plan(32, 100, 2, 150, 16, 4) == (384, 4)
    monkeypatch.setattr(conv, "_NARROW_K", 0)
    assert conv._plan(32, 100, 2, 150, 16, 4) == (512, 6)
    monkeypatch.undo()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((32, 6, 14, 14)).astype(np.float32)
    w = (rng.standard_normal((16, 6, 5, 5)) / np.sqrt(150)).astype(np.float32)
    G = rng.standard_normal((32, 16, 10, 10)).astype(np.float32)
    args = ((1, 1), (0, 0), (1, 1))
    runs = []
    for narrow_k in (conv._NARROW_K, 0):
        monkeypatch.setattr(conv, "_NARROW_K", narrow_k)
        runs.append((conv.conv2d(x, w, None, *args),)
                    + conv.conv2d_backward(x, w, G, *args, True, True, False)[:2])
    gxr, gwr, _ = ref_conv_grads(x, w, G, *args)
    for got, other, want in zip(runs[0], runs[1], (ref_conv(x, w, None, *args), gxr, gwr)):
        np.testing.assert_allclose(got, other, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-3)


def test_conv2d_integer_input_and_no_bias():
    x = np.arange(2 * 1 * 4 * 4).reshape(2, 1, 4, 4)
    w = np.ones((1, 1, 2, 2), np.float32)
    y = conv.conv2d(x, w, None, (1, 1), (0, 0), (1, 1))
    np.testing.assert_allclose(y, ref_conv(x, w, None, (1, 1), (0, 0), (1, 1)))


# ---------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------

@st.composite
def pool_case(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    H = draw(st.integers(max(1, kh - 2 * ph), 11))
    W = draw(st.integers(max(1, kw - 2 * pw), 11))
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    nc = draw(st.integers(0, 2))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return N, C, H, W, (kh, kw), (sh, sw), (ph, pw), dtype, nc, seed


@HSET
@given(pool_case())
def test_max_pool2d_property(case):
    N, C, H, W, kernel, stride, padding, dtype, nc, seed = case
    rng = np.random.default_rng(seed)
    # distinct values: the argmax is unique, so the gradient is well defined
    x = rng.permutation(N * C * H * W).reshape(N, C, H, W).astype(dtype) - 7.5
    yr, gsel = ref_max_pool(x, kernel, stride, padding)
    y, am = pool.max_pool2d(maybe_noncontig(x, nc), kernel, stride, padding)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, yr)
    G = rng.standard_normal(yr.shape).astype(dtype)
    gx = pool.max_pool2d_backward(maybe_noncontig(G, nc), am, x.shape)
    gxr = np.einsum("ncab,ncabhw->nchw", G.astype(np.float64), gsel)
    np.testing.assert_allclose(gx, gxr, **tol(dtype))


@HSET
@given(pool_case(), st.booleans())
def test_avg_pool2d_property(case, include_pad):
    N, C, H, W, kernel, stride, padding, dtype, nc, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    yr, wts = ref_avg_pool(x, kernel, stride, padding, include_pad)
    y = pool.avg_pool2d(maybe_noncontig(x, nc), kernel, stride, padding, include_pad)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, yr, **tol(dtype))
    G = rng.standard_normal(yr.shape).astype(dtype)
    gx = pool.avg_pool2d_backward(maybe_noncontig(G, nc), x.shape, kernel, stride, padding,
                                  include_pad)
    gxr = np.einsum("abhw,ncab->nchw", wts, G.astype(np.float64))
    np.testing.assert_allclose(gx, gxr, **tol(dtype))


def test_pool_numerical_gradient():
    rng = np.random.default_rng(3)
    x = rng.permutation(2 * 2 * 5 * 5).reshape(2, 2, 5, 5).astype(np.float64) / 7
    G = rng.standard_normal(pool.max_pool2d(x, (3, 3), (2, 2), (1, 1))[0].shape)
    f = lambda: float((pool.max_pool2d(x, (3, 3), (2, 2), (1, 1))[0] * G).sum())  # noqa: E731
    _, am = pool.max_pool2d(x, (3, 3), (2, 2), (1, 1))
    np.testing.assert_allclose(pool.max_pool2d_backward(G, am, x.shape), numgrad(f, x),
                               rtol=1e-6, atol=1e-7)
    for inc in (True, False):
        G = rng.standard_normal(pool.avg_pool2d(x, (3, 2), (2, 1), (1, 1), inc).shape)
        f = lambda: float((pool.avg_pool2d(x, (3, 2), (2, 1), (1, 1), inc) * G).sum())  # noqa: E731,B023
        np.testing.assert_allclose(
            pool.avg_pool2d_backward(G, x.shape, (3, 2), (2, 1), (1, 1), inc),
            numgrad(f, x), rtol=1e-6, atol=1e-7)


def test_max_pool2d_padding_is_minus_inf_and_nan_propagates():
    x = -np.ones((1, 1, 2, 2), np.float32) * 5
    y, _ = pool.max_pool2d(x, (2, 2), (1, 1), (1, 1))
    np.testing.assert_array_equal(y, -5 * np.ones((1, 1, 3, 3)))
    x = np.zeros((1, 1, 2, 2), np.float64)
    x[0, 0, 1, 0] = np.nan
    y, am = pool.max_pool2d(x, (2, 2), (2, 2), (0, 0))
    assert np.isnan(y[0, 0, 0, 0])
    gx = pool.max_pool2d_backward(np.ones_like(y), am, x.shape)
    assert gx[0, 0, 1, 0] == 1 and gx.sum() == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_2x2_kernel_both_compilations_match_the_general_kernel(dtype):
    """The 2x2 kernel (column pairs first, then the window's two column winners) in its serial
    and parallel compilations, with ties, NaNs, odd sizes and a plane count that leaves a short
    last work unit, against the general unpadded kernel."""
    rng = np.random.default_rng(12)
    NC, H, W = 8 * pool._PLANES_PER_BLOCK + 3, 9, 13
    x = rng.integers(-3, 3, (NC, H, W)).astype(dtype)     # many ties
    x[rng.random(x.shape) < 0.02] = np.nan
    x[5, 0, :2] = np.nan                                  # two NaNs in one window: the first wins
    x[6, :2, :2] = [[1, 7], [7, 2]]                        # top-right ties bottom-left: top-right
    x[6, :2, 2:4] = [[1, np.nan], [np.nan, 2]]             # the same with NaNs
    x[6, 2:4, :2] = [[-0.0, 0.0], [0.0, 0.0]]              # signed zeros tie: the first
    x[6, 2:4, 2:4] = [[1, 2], [7, 7]]                      # a bottom row tie: bottom-left
    OH, OW = H // 2, W // 2
    y_ref = np.empty((NC, OH, OW), dtype)
    am_ref = np.empty((NC, OH, OW), np.int32)
    pool._max_fwd_nopad(x, 2, 2, 2, 2, y_ref, am_ref)
    for kernel in (pool._max_fwd_2x2.serial, pool._max_fwd_2x2.parallel):
        y = np.empty_like(y_ref)
        am = np.empty_like(am_ref)
        kernel(x, y, am)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(am, am_ref)


def test_avg_pool2d_count_include_pad_matches_torch_convention():
    x = np.ones((1, 1, 3, 3))
    y_inc = pool.avg_pool2d(x, (3, 3), (1, 1), (1, 1), True)
    y_exc = pool.avg_pool2d(x, (3, 3), (1, 1), (1, 1), False)
    assert y_inc[0, 0, 0, 0] == pytest.approx(4 / 9)
    assert y_exc[0, 0, 0, 0] == pytest.approx(1.0)
    assert y_inc[0, 0, 1, 1] == pytest.approx(1.0)
