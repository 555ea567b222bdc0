"""CPU kernels on channels-last storage and every conv GEMM path (tiles, chunked, shifted).

The GEMM conv paths return channels-last storage (an (N, H, W, C) buffer seen as NCHW)
and batch norm / activation gradients keep it; these tests check the values against the
NCHW references for float32 and float64 and for both input layouts.
"""

import numpy as np
import pytest

from minigrad.cpu import conv, conv3x3_rows, kernels, norm, small_gemm
from minigrad.cpu.backend import CPUBackend
from test_cpu_conv_pool_kernels import ref_conv, ref_conv_grads


def deep_layer_paths(monkeypatch):
    """The paths of layers with big weights, for any size: dW by output-channel split over
    the whole batch, (K, R*S*C) weights in the forward."""
    monkeypatch.setattr(conv, "_GW_SPLIT_K_MIN_W", 0)
    monkeypatch.setattr(conv, "_KRSC_WEIGHTS_MIN", 0)


def cl(a):
    """Same values, channels-last storage."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def tol(dt):
    return dict(rtol=1e-4, atol=1e-4) if dt == np.float32 else dict(rtol=1e-10, atol=1e-10)


CASES = [  # N, C, H, W, K, R, S, stride, padding, dilation
    (2, 3, 7, 6, 4, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 5, 9, 8, 7, 3, 2, (1, 1), (1, 0), (2, 1)),
    (3, 4, 7, 7, 5, 3, 3, (2, 2), (1, 1), (1, 1)),
    (3, 4, 6, 6, 5, 1, 1, (1, 1), (0, 0), (1, 1)),
    (3, 4, 7, 7, 5, 1, 1, (2, 2), (0, 0), (1, 1)),
    (2, 3, 8, 9, 4, 3, 3, (2, 1), (1, 1), (1, 2)),
    (3, 3, 9, 8, 4, 5, 5, (1, 1), (0, 0), (1, 1)),   # unpadded, overlapping taps (LeNet conv2)
]


@pytest.mark.parametrize("path,waste,split", [("tiles", 0.0, False), ("tiles", 100.0, False),
                                              ("chunked", 0.0, False), ("tiles", 0.0, True)])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_conv_paths(path, waste, split, case, dtype, layout, monkeypatch):
    monkeypatch.setattr(conv, "_GEMM_PATH", path)
    monkeypatch.setattr(conv, "_SHIFT_MAX_WASTE", waste)
    if split:
        deep_layer_paths(monkeypatch)
    monkeypatch.setattr(conv, "_DIRECT_MAX_CK", 0)
    monkeypatch.setattr(conv, "_DIRECT_MAX_CK_BWD", 0)
    N, C, H, W, K, R, S, st, pd, dl = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    xv = cl(x) if layout == "cl" else x
    x_before = xv.copy()
    y = conv.conv2d(xv, w, b, st, pd, dl)
    yr = ref_conv(x, w, b, st, pd, dl)
    np.testing.assert_allclose(y, yr, **tol(dtype))
    G = rng.standard_normal(yr.shape).astype(dtype)
    Gv = cl(G) if layout == "cl" else G
    gxr, gwr, gbr = ref_conv_grads(x, w, G, st, pd, dl)
    for need_x, need_w in ((True, True), (True, False), (False, True)):
        gx, gw, gb = conv.conv2d_backward(xv, w, Gv, st, pd, dl, need_x, need_w, True)
        np.testing.assert_allclose(gb, gbr, **tol(dtype))
        if need_x:
            np.testing.assert_allclose(gx, gxr, **tol(dtype))
        else:
            assert gx is None
        if need_w:
            np.testing.assert_allclose(gw, gwr, **tol(dtype))
            assert gw.flags.c_contiguous
        else:
            assert gw is None
    # the unpadded channels-last case reads x in place (no copy): it must stay unchanged
    np.testing.assert_array_equal(xv, x_before)


@pytest.mark.parametrize("case", CASES + [(9, 4, 7, 7, 5, 3, 3, (1, 1), (1, 1), (1, 1)),
                                          (9, 4, 7, 7, 5, 1, 1, (2, 2), (0, 0), (1, 1))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_layout", ["nchw", "cl"])
@pytest.mark.parametrize("split", [False, True])
def test_conv_backward_reads_nchw_dy_in_place(case, dtype, x_layout, split, monkeypatch):
    """NCHW dY read as transposed GEMM operands, tile by tile within each image (every
    image size qualifies here), against the references; groups of several small images
    per work unit check that tiles stop at image boundaries."""
    monkeypatch.setattr(conv, "_GY_NCHW_MIN_PIXELS", 1)
    monkeypatch.setattr(conv, "_SHIFT_MAX_WASTE", 0.0)
    monkeypatch.setattr(conv, "_DIRECT_MAX_CK_BWD", 0)
    if split:
        deep_layer_paths(monkeypatch)
    N, C, H, W, K, R, S, st, pd, dl = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, R, S)).astype(dtype)
    xv = cl(x) if x_layout == "cl" else x
    G = rng.standard_normal(ref_conv(x, w, None, st, pd, dl).shape).astype(dtype)
    gxr, gwr, _ = ref_conv_grads(x, w, G, st, pd, dl)
    gx, gw, _ = conv.conv2d_backward(xv, w, G, st, pd, dl, True, True, False)
    np.testing.assert_allclose(gx, gxr, **tol(dtype))
    np.testing.assert_allclose(gw, gwr, **tol(dtype))
    addend = cl(rng.standard_normal(x.shape).astype(dtype))
    gx2, _, _ = conv.conv2d_backward(xv, w, G, st, pd, dl, True, False, False, gx_addend=addend)
    np.testing.assert_allclose(gx2, gxr + addend, **tol(dtype))


@pytest.mark.parametrize("stride", [(2, 2), (2, 3), (3, 1)])
@pytest.mark.parametrize("storage", ["nchw", "strided view", "hw swapped"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("split", [False, True])
def test_strided_1x1_copies_only_the_sampled_pixels(stride, storage, dtype, split, monkeypatch):
    """Strided unpadded 1x1 convs of input not stored channels-last copy x[:, :, ::sh, ::sw]
    and run as stride-1 1x1 convs; the backward reads that kept copy for dW.  (NCHW-contiguous
    input takes the NCHW 1x1 path, tests/test_conv1x1_nchw.py, unless it is turned off.)"""
    monkeypatch.setattr(conv, "USE_NCHW_1X1", False)
    if split:
        monkeypatch.setattr(conv, "_GW_SPLIT_K_MIN_W", 0)
    rng = np.random.default_rng(4)
    N, C, H, W, K = 3, 5, 9, 8, 6
    if storage == "hw swapped":
        x = rng.standard_normal((N, C, W, H)).astype(dtype).transpose(0, 1, 3, 2)
    elif storage == "strided view":
        x = rng.standard_normal((N, C + 2, H, W + 3)).astype(dtype)[:, 1:C + 1, :, 2:W + 2]
    else:
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
    assert conv._sampled_1x1(x, 1, 1, stride, (0, 0))
    w = rng.standard_normal((K, C, 1, 1)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    y, saved = conv.conv2d_saving(x, w, b, stride, (0, 0), (1, 1), True)
    yr = ref_conv(np.ascontiguousarray(x), w, b, stride, (0, 0), (1, 1))
    np.testing.assert_allclose(y, yr, **tol(dtype))
    assert saved.x_cl.shape == (N,) + yr.shape[2:] + (C,)
    G = rng.standard_normal(yr.shape).astype(dtype)
    gxr, gwr, _ = ref_conv_grads(np.ascontiguousarray(x), w, G, stride, (0, 0), (1, 1))
    for kept in (saved, None):
        gx, gw, _ = conv.conv2d_backward(x, w, G, stride, (0, 0), (1, 1), True, True, False,
                                         saved=kept)
        np.testing.assert_allclose(gx, gxr, **tol(dtype))
        np.testing.assert_allclose(gw, gwr, **tol(dtype))


def test_big_weights_use_the_krsc_layout_in_both_passes(monkeypatch):
    """Above _KRSC_WEIGHTS_MIN the forward reads (K, R*S*C) weights transposed and hands
    them to the backward's dX GEMMs, which read that kept array."""
    monkeypatch.setattr(conv, "_KRSC_WEIGHTS_MIN", 0)
    rng = np.random.default_rng(5)
    x = cl(rng.standard_normal((2, 4, 7, 7)).astype(np.float32))
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    y, saved = conv.conv2d_saving(x, w, None, (2, 2), (1, 1), (1, 1), True)
    np.testing.assert_allclose(y, ref_conv(np.ascontiguousarray(x), w, None, (2, 2), (1, 1), (1, 1)),
                               **tol(np.float32))
    assert saved.weights is None
    np.testing.assert_array_equal(saved.weights_krsc, w.transpose(0, 2, 3, 1).ravel())
    G = cl(rng.standard_normal(y.shape).astype(np.float32))
    gxr = ref_conv_grads(np.ascontiguousarray(x), w, np.ascontiguousarray(G), (2, 2), (1, 1),
                         (1, 1))[0]
    gx, _, _ = conv.conv2d_backward(x, w, G, (2, 2), (1, 1), (1, 1), True, False, False, saved=saved)
    np.testing.assert_allclose(gx, gxr, **tol(np.float32))
    saved.weights_krsc = np.zeros_like(saved.weights_krsc)
    gx, _, _ = conv.conv2d_backward(x, w, G, (2, 2), (1, 1), (1, 1), True, False, False, saved=saved)
    assert not gx.any()


def _conv_case(case, layout, seed):
    """(x, w, dY, stride, padding, reference dX, reference dW) for a float32 case
    (N, C, H, W, K, R, S, stride, padding); x and dY channels-last when layout is "cl"."""
    N, C, H, W, K, R, S, st, pd = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, R, S)).astype(np.float32)
    y = conv.conv2d(x, w, None, st, pd, (1, 1))
    G = rng.standard_normal(y.shape).astype(np.float32)
    gxr, gwr, _ = ref_conv_grads(x, w, G, st, pd, (1, 1))
    if layout == "cl":
        x, G = cl(x), cl(G)
    return x, w, G, st, pd, gxr, gwr


def _pad_like_avx2_tile(monkeypatch):
    """The padded-column paths below are taken only where small_gemm.padded_columns pads
    (the AVX2 tile); on a wide-tile host a stand-in pads as that tile does (to 32 columns
    while the switch is on), so the paths are tested on every host small_gemm supports.
    The stem-like cases would otherwise take conv3x3_rows / conv3x3_cl, which are off here."""
    monkeypatch.setattr(conv3x3_rows, "USE", False)
    if small_gemm.NR != 16:
        monkeypatch.setattr(small_gemm, "padded_columns",
                            lambda transa, m, n, k: -(-n // 32) * 32 if small_gemm.enabled() else n)


@pytest.mark.skipif(not small_gemm.SUPPORTED, reason="no small_gemm dispatch on this CPU")
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("case", [(3, 3, 9, 9, 16, 3, 3, (1, 1), (1, 1)),    # stem-like: 27 -> 32
                                  (2, 1, 12, 11, 20, 5, 5, (2, 1), (2, 2))])  # 25 -> 32, strided
def test_dx_gemm_on_zero_padded_columns(case, layout, monkeypatch):
    """float32 dX GEMMs with R*S*C a few columns short of 32 run on zero-padded weights and
    column tiles; col2im skips the padding.  NCHW dY (64+ pixels) is read in place."""
    _pad_like_avx2_tile(monkeypatch)
    x, w, G, st, pd, gxr, gwr = _conv_case(case, layout, 7)
    padded = []
    make = conv._weights_krsc_padded
    monkeypatch.setattr(conv, "_weights_krsc_padded",
                        lambda w, dt, cols: padded.append(cols) or make(w, dt, cols))
    was = small_gemm.enabled()
    try:
        for on in (True, False):
            small_gemm.set_enabled(on)
            gx, gw, _ = conv.conv2d_backward(x, w, G, st, pd, (1, 1), True, True, False)
            np.testing.assert_allclose(gx, gxr, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(gw, gwr, rtol=1e-4, atol=1e-4)
            assert padded == [32]             # only with the switch on
    finally:
        small_gemm.set_enabled(was)


@pytest.mark.skipif(not small_gemm.SUPPORTED, reason="no small_gemm dispatch on this CPU")
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("case", [(3, 3, 9, 9, 16, 3, 3, (1, 1), (1, 1)),    # stem-like: 27 -> 32
                                  (2, 1, 12, 11, 20, 5, 5, (2, 1), (2, 2)),   # 25 -> 32, strided
                                  (5, 3, 16, 16, 8, 3, 3, (1, 1), (1, 1))])   # 5 images, tiles
def test_dw_transposed_on_zero_padded_columns(case, layout, monkeypatch):
    """float32 dW with NCHW dY and R*S*C a few columns short of 32 is summed as
    dW^T = dY @ columns padded to 32 (small_gemm's shape), then cut and transposed; with
    channels-last dY, or the switch off, the (R*S*C, K) layout stays."""
    _pad_like_avx2_tile(monkeypatch)
    x, w, G, st, pd, gxr, gwr = _conv_case(case, layout, 11)
    widths = []
    cut = conv._weights_grad_from_kx
    monkeypatch.setattr(conv, "_weights_grad_from_kx",
                        lambda g, K, C, R, S, ld: widths.append(ld) or cut(g, K, C, R, S, ld))
    was = small_gemm.enabled()
    try:
        for on in (True, False):
            small_gemm.set_enabled(on)
            for need_x in (True, False):
                gx, gw, _ = conv.conv2d_backward(x, w, G, st, pd, (1, 1), need_x, True, False)
                np.testing.assert_allclose(gw, gwr, rtol=1e-4, atol=1e-4)
                if need_x:
                    np.testing.assert_allclose(gx, gxr, rtol=1e-4, atol=1e-4)
        assert widths == ([32, 32] if layout == "nchw" else [])   # only with the switch on
    finally:
        small_gemm.set_enabled(was)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_channels_last_matches_nchw(dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 5, 3, 6)) * 3 + 1).astype(dtype)
    g, b = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    gy = rng.standard_normal(x.shape).astype(dtype)
    ref = norm.batch_norm_train(x, g, b, 1e-5)
    out = norm.batch_norm_train(cl(x), g, b, 1e-5)
    assert norm._is_cl(out[0])
    for a, r in zip(out, ref):
        np.testing.assert_allclose(a, r, **tol(dtype))
    rb = norm.batch_norm_backward(gy, x, g, ref[1], ref[3])
    for gyv in (gy, cl(gy)):
        ob = norm.batch_norm_backward(gyv, cl(x), g, ref[1], ref[3])
        for a, r in zip(ob, rb):
            np.testing.assert_allclose(a, r, **tol(dtype))
    np.testing.assert_allclose(norm.batch_norm_eval(cl(x), ref[1], ref[2], g, b, 1e-5),
                               norm.batch_norm_eval(x, ref[1], ref[2], g, b, 1e-5), **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_channels_last_statistics_by_blocks(dtype):
    """Channels-last statistics come from blocks of norm.SUM_ROWS rows (each read once from
    memory) merged by Chan's update: with 2 channels and 79,600 rows, each thread's 39,800
    rows make 622 blocks, the last one partial.  The mean and variance are float64 NumPy's,
    with the mean far from zero and the blocks' means far apart (a ramp along H), so that
    the merge's cross term matters."""
    rng = np.random.default_rng(9)
    ramp = np.linspace(0.0, 10.0, 200).reshape(1, 1, 200, 1)
    x = (rng.standard_normal((2, 2, 200, 199)) * 0.01 + 1000.0 + ramp).astype(dtype)
    assert (x.size // 2 // 2) % norm.SUM_ROWS
    y, mean, var, invstd = norm.batch_norm_train(cl(x), None, None, 1e-5)
    xd = x.astype(np.float64)
    np.testing.assert_allclose(mean, xd.mean(axis=(0, 2, 3)), rtol=1e-7)
    np.testing.assert_allclose(var, xd.var(axis=(0, 2, 3)), rtol=1e-4)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(xd.var(axis=(0, 2, 3)) + 1e-5), rtol=1e-4)


@pytest.mark.parametrize("op", ["relu", "sigmoid", "tanh"])
def test_activation_grad_channels_last(op):
    rng = np.random.default_rng(2)
    y = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    be = CPUBackend()
    ref = be.activation_grad(op, y, gy)
    for gyv in (gy, cl(gy)):
        np.testing.assert_allclose(be.activation_grad(op, cl(y), gyv), ref, rtol=1e-6, atol=1e-6)


def test_blas_gemm_binding():
    from minigrad.cpu import blas

    assert blas.selftest()


@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (3, 16, 10, 10), (1, 2, 7, 9)])
def test_max_pool_2x2_channels_last_matches_nchw(shape):
    from minigrad.cpu import pool

    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[rng.integers(0, x.size, max(1, x.size // 15))] = np.nan    # first-NaN selection
    flat[rng.integers(0, x.size, max(1, x.size // 8))] = 0.25       # ties: first maximum
    y, am = pool.max_pool2d(x, (2, 2), (2, 2), (0, 0))
    y_cl, am_cl = pool.max_pool2d(cl(x), (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(y_cl, y)
    np.testing.assert_array_equal(am_cl, am)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx = pool.max_pool2d_backward(gy, am, shape)
    np.testing.assert_array_equal(pool.max_pool2d_backward(cl(gy), am, shape), gx)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("shape,scale", [((64, 1000), 1.0), ((33, 10), 40.0), ((3, 5), 1.0)])
def test_softmax_cross_entropy_float32_kernel(shape, scale, eps):
    from minigrad.cpu import loss

    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    y = rng.integers(0, shape[1], shape[0])
    l32, p32 = loss.softmax_cross_entropy(x, y, eps)
    l64, p64 = loss.softmax_cross_entropy(x.astype(np.float64), y, eps)
    assert l32.dtype == np.float32 and p32.dtype == np.float32
    np.testing.assert_allclose(l32, l64, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(p32, p64, rtol=2e-5, atol=1e-9)
    xn = x.copy()
    xn[1, 2] = np.nan
    ln, pn = loss.softmax_cross_entropy(xn, y, eps)
    assert np.isnan(ln[1]) and np.isnan(pn[1]).all() and np.isfinite(ln[0])


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 15, 16, 17, 1000, 1013])
def test_row_max_finds_the_maximum_at_every_position(n):
    from minigrad.cpu import loss

    base = -np.abs(np.random.default_rng(n).standard_normal(n)).astype(np.float32) - 1
    for j in range(n):
        row = base.copy()
        row[j] = 3.0
        assert loss._row_max(row) == 3.0
    assert loss._row_max(base) == base.max()


def test_parallel_add_matches_numpy():
    rng = np.random.default_rng(5)
    a = rng.standard_normal(1 << 17).astype(np.float32)
    b = rng.standard_normal(1 << 17).astype(np.float32)
    b[7] = np.nan
    np.testing.assert_array_equal(CPUBackend().binary("add", a, b), a + b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_channels_last_large(dtype):
    """Residual adds on channels-last storage: the parallel kernel, same values, layout kept."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((3, 16, 40, 40)).astype(dtype)     # 76,800 elements: kernel path
    b = rng.standard_normal(a.shape).astype(dtype)
    be = CPUBackend()
    out = be.binary("add", cl(a), cl(b))
    np.testing.assert_array_equal(out, a + b)
    assert out.dtype == dtype and out.transpose(0, 2, 3, 1).flags.c_contiguous
    mixed = be.binary("add", cl(a), b)          # one NCHW operand: NumPy's add, same values
    np.testing.assert_array_equal(mixed, a + b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_max_pool_2x2_kernels_match_general_kernel(dtype, layout):
    # the unrolled branch-free 2x2 kernels against the general no-padding kernel: first
    # maximum on ties, first NaN in window order (row-major), NaN anywhere in the window
    from minigrad.cpu import pool

    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, 8, 10)).astype(dtype)
    flat = x.reshape(-1)
    flat[rng.integers(0, x.size, x.size // 10)] = np.nan
    flat[rng.integers(0, x.size, x.size // 6)] = 0.5
    x[0, 0, 0, :4] = [np.nan, 9.0, np.nan, 1.0]      # NaN first / larger value first
    x[0, 0, 1, :4] = [9.0, np.nan, 2.0, 3.0]
    x[0, 1, :2, :2] = [[1.0, 1.0], [1.0, 1.0]]        # four-way tie
    x[0, 1, :2, 2:4] = [[-1.0, -2.0], [-3.0, np.nan]]  # NaN last
    N, C, H, W = x.shape
    y_ref = np.empty((N * C, H // 2, W // 2), dtype)
    am_ref = np.empty((N * C, H // 2, W // 2), np.int32)
    pool._max_fwd_nopad(x.reshape(N * C, H, W), 2, 2, 2, 2, y_ref, am_ref)
    y, am = pool.max_pool2d(cl(x) if layout == "cl" else x, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(y.reshape(y_ref.shape), y_ref)
    np.testing.assert_array_equal(am.reshape(am_ref.shape), am_ref)
    assert np.isnan(y[0, 0, 0, 0]) and am[0, 0, 0, 0] == 0
    assert am[0, 1, 0, 0] == 0 and np.isnan(y[0, 1, 0, 1]) and am[0, 1, 0, 1] == W + 3


@pytest.mark.parametrize("shape,pad", [((2, 3, 5, 7), (1, 2)), ((3, 17, 4, 4), (0, 0)),
                                       ((2, 33, 32, 32), (1, 1)), ((1, 16, 6, 5), (2, 0)),
                                       ((2, 70, 16, 16), (2, 1)), ((3, 40, 16, 17), (0, 0))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", ["rows", "planes", "blocks"])
def test_nchw_to_channels_last_padded_copy(shape, pad, dtype, kernel, monkeypatch):
    """The NCHW -> padded channels-last kernels (by row, by 16-channel block of rows, by
    32-channel block of whole planes; the last needs 32 channels) give np.pad, zero border
    and slack included, whatever the buffer held before."""
    monkeypatch.setattr(conv, "USE_TRANSPOSES", False)
    monkeypatch.setattr(conv, "_PLANE_TASK_BYTES", 0 if kernel == "planes" else 1 << 30)
    monkeypatch.setattr(conv, "_CL_BLOCK_MIN_PLANE", 0 if kernel == "blocks" else 1 << 30)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    ph, pw = pad
    want = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (ph, ph), (pw, pw), (0, 0))).reshape(-1)
    got = conv._padded(x, ph, pw, 5)
    np.testing.assert_array_equal(got[:want.size], want)
    np.testing.assert_array_equal(got[want.size:], 0)
    np.testing.assert_array_equal(conv._cl_contig(x), x.transpose(0, 2, 3, 1))
    buf = np.full(want.size + 3, np.nan, dtype)
    Hp, Wp = shape[2] + 2 * ph, shape[3] + 2 * pw
    conv._nchw_to_cl(x, ph, pw, buf, Hp, Wp)
    np.testing.assert_array_equal(buf, np.concatenate([want, np.zeros(3, dtype)]))


@pytest.mark.skipif(not small_gemm.SUPPORTED, reason="no vector width small_gemm supports")
@pytest.mark.parametrize("channels,size,ph", [(1, (4, 4), 2), (2, (8, 8), 0), (3, (2, 8), 1),
                                              (2, (32, 32), 0), (4, (16, 16), 0)])
def test_nchw_to_channels_last_by_register_transposes(channels, size, ph, monkeypatch):
    """The register-transpose kernel (float32, C-contiguous, no column padding, channels and
    plane sizes multiples of LANES) gives np.pad, zero rows and slack included; _nchw_to_cl
    takes it exactly there."""
    L = small_gemm.LANES
    shape = (2, channels * L) + size
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (ph, ph), (0, 0), (0, 0))).reshape(-1)
    taken = []
    kernel = conv._pad_cl_from_nchw_transposed
    monkeypatch.setattr(conv, "_pad_cl_from_nchw_transposed",
                        lambda *a: (taken.append(a[0].shape), kernel(*a)))
    buf = np.full(want.size + 3, np.nan, np.float32)
    conv._nchw_to_cl(x, ph, 0, buf, shape[2] + 2 * ph, shape[3])
    np.testing.assert_array_equal(buf, np.concatenate([want, np.zeros(3, np.float32)]))
    assert taken == [shape]
    # not taken: padded columns, float64, a strided view, channels or planes off the lanes
    for other, pw in ((x, 1), (x.astype(np.float64), 0), (x[:, :, :, ::-1], 0),
                      (x[:, :L - 1].copy(), 0), (x[:, :, :1, :1].copy(), 0)):
        assert not conv._transposes_apply(other, pw)
    assert conv._transposes_apply(x, 0)


@pytest.mark.parametrize("case", CASES)
def test_conv_nchw_input_through_block_kernel(case, monkeypatch):
    """conv2d forward and backward on NCHW input with every plane taken by the block kernel."""
    monkeypatch.setattr(conv, "_PLANE_TASK_BYTES", 0)
    N, C, H, W, K, R, S, stride, padding, dilation = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C, R, S))
    gy_shape = ref_conv(x, w, None, stride, padding, dilation).shape
    gy = rng.standard_normal(gy_shape)
    y = conv.conv2d(x, w, None, stride, padding, dilation)
    np.testing.assert_allclose(y, ref_conv(x, w, None, stride, padding, dilation), **tol(np.float64))
    gx, gw, _ = conv.conv2d_backward(x, w, gy, stride, padding, dilation, True, True, False)
    rgx, rgw, _ = ref_conv_grads(x, w, gy, stride, padding, dilation)
    np.testing.assert_allclose(gx, rgx, **tol(np.float64))
    np.testing.assert_allclose(gw, rgw, **tol(np.float64))


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("conf", [  # C, K, H, R, stride, padding: im2col, 1x1 direct, Winograd
    (4, 5, 7, 3, 2, 1), (6, 5, 6, 1, 1, 0), (16, 16, 8, 3, 1, 1), (4, 6, 8, 1, 2, 0)])
def test_backward_reuses_the_forward_copy_of_x(layout, conf, monkeypatch):
    """conv2d_saving keeps the channels-last copy of x it made (none when x is already in
    that form); conv2d_backward(saved=...) reads it for dW and gets the reference result."""
    from minigrad.cpu import winograd
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 16)
    monkeypatch.setattr(winograd, "MIN_TILES", 1)
    C, K, H, R, s, p = conf
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, C, H, H))
    w = rng.standard_normal((K, C, R, R))
    xv = cl(x) if layout == "cl" else x
    args = ((s, s), (p, p), (1, 1))
    y, saved = conv.conv2d_saving(xv, w, None, *args, True)
    np.testing.assert_allclose(y, ref_conv(x, w, None, *args), **tol(np.float64))
    nchw_1x1 = layout == "nchw" and R == 1   # conv1x1_nchw: keeps the sampled x, no weights
    # conv1x1_cl (channels-last 1x1, few pixels) keeps the strided sample of x
    copied = not nchw_1x1 and (layout == "nchw" or (p > 0 and not (R == 3 and s == 1 and C >= 16))
                               or (R == 1 and s > 1))
    assert (saved.x_cl is not None) == copied
    cl_1x1 = layout == "cl" and R == 1   # the (K, C) layout of 1x1 weights is w's own
    assert (saved.weights is not None) == (not nchw_1x1 and not cl_1x1)
    assert (saved.weights_krsc is not None and np.shares_memory(saved.weights_krsc, w)) == cl_1x1
    assert (saved.x_sampled is not None) == (nchw_1x1 and s > 1)
    gy = rng.standard_normal(y.shape)
    w0 = w.copy()
    gx, gw, _ = conv.conv2d_backward(xv, w, gy, *args, True, True, False, saved=saved)
    np.testing.assert_array_equal(w, w0)   # the weights the passes share are only read
    rgx, rgw, _ = ref_conv_grads(x, w, gy, *args)
    np.testing.assert_allclose(gx, rgx, **tol(np.float64))
    np.testing.assert_allclose(gw, rgw, **tol(np.float64))
    kept = saved.x_cl if saved.x_cl is not None else saved.x_sampled
    if kept is not None:  # the backward really reads the kept copy
        kept[...] = 0
        _, gw0, _ = conv.conv2d_backward(xv, w, gy, *args, False, True, False, saved=saved)
        np.testing.assert_array_equal(gw0, 0)


@pytest.mark.parametrize("rows, cols", [(1, 1), (7, 3), (12800, 16), (3001, 65)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_sums_both_compilations(rows, cols, dtype):
    """kernels.sum_rows (the bias gradient of channels-last dY, the backend's sums over leading
    axes) in its serial and parallel compilations, with row counts that do not split evenly
    between the threads."""
    import numba

    a = np.random.default_rng(rows).standard_normal(rows * cols).astype(dtype)
    ref = a.reshape(rows, cols).astype(np.float64).sum(axis=0)
    for kernel in (kernels.sum_rows.serial, kernels.sum_rows.parallel):
        out = np.empty(cols, dtype)
        kernel(a, rows, cols, out, numba.get_num_threads())
        np.testing.assert_allclose(out, ref, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-4 if dtype == np.float32 else 1e-10)
    gy = a.reshape(1, rows, 1, cols).transpose(0, 3, 1, 2)      # channels-last storage of a
    assert conv.is_channels_last(gy)
    np.testing.assert_allclose(conv._bias_grad_any(gy, np.dtype(dtype)), ref,
                               rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("nt, C, K", [(1, 5, 7), (2, 96, 700), (3, 33, 65), (2, 256, 512)])
def test_sum_transposed_matches_numpy(nt, C, K):
    """_sum_transposed (1x1 weight gradients, 32 x 32 blocks) sums the per-thread (C, K)
    matrices and transposes them, partial blocks included; the two larger cases run the
    parallel compilation."""
    g = np.random.default_rng(5).standard_normal((nt, C, K)).astype(np.float32)
    out = np.full((K, C), np.nan, np.float32)
    conv._sum_transposed(g, out)
    np.testing.assert_allclose(out, g.sum(axis=0).T, rtol=1e-6, atol=1e-6)
