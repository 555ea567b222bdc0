"""Unpadded 1x1 convolutions of NCHW-contiguous input (minigrad.cpu.conv1x1_nchw).

They run as per-image GEMMs on the planes, with the sampled pixels gathered without a
transpose; output and dX are NCHW-contiguous.  Checked against float64 NumPy references
for every stride pattern, grouped small images, the kept sampled copy, the three ways dX
meets an addend, and through autograd with central differences.  The random-shape and
addend-sharing-x tests also run channels-last input (conv1x1_cl's path; its own tests are in
test_conv1x1_cl.py).
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigrad as mg
from minigrad.cpu import conv, conv1x1_nchw
from conv_checks import check_addend_modes, check_backward_passes
from gradcheck import check_grad


def ref_forward(x, w, b, stride, OH, OW):
    xs = x[:, :, ::stride[0], ::stride[1]][:, :, :OH, :OW]
    y = np.einsum("nchw,kc->nkhw", xs, w[:, :, 0, 0])
    return y if b is None else y + b[None, :, None, None]


def ref_grads(x, w, gy, stride):
    OH, OW = gy.shape[2:]
    xs = x[:, :, ::stride[0], ::stride[1]][:, :, :OH, :OW]
    gw = np.einsum("nkhw,nchw->kc", gy, xs)[:, :, None, None]
    gx = np.zeros(x.shape)
    gx[:, :, ::stride[0], ::stride[1]][:, :, :OH, :OW] = np.einsum("nkhw,kc->nchw", gy, w[:, :, 0, 0])
    return gx, gw


def tol(dt):
    return dict(rtol=1e-4, atol=1e-4) if dt == np.float32 else dict(rtol=1e-10, atol=1e-10)


# N, C, H, W, K, stride: one image per work unit, grouped small images (group_size > 1),
# stride 1 read in place, stride 1 grouped, uneven strides, a last group that is short
CASES = [(3, 5, 9, 8, 6, (2, 2)), (16, 8, 4, 4, 8, (1, 1)), (2, 3, 8, 8, 4, (1, 1)),
         (8, 16, 4, 4, 32, (2, 3)), (9, 4, 3, 5, 5, (3, 1)), (17, 8, 2, 3, 8, (2, 2)),
         (4, 6, 7, 9, 5, (1, 2))]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [False, True, "one channel"])
@pytest.mark.parametrize("fill_first", [False, True])
def test_forward_and_gradients_match_the_reference(case, dtype, bias, fill_first, monkeypatch):
    monkeypatch.setattr(conv1x1_nchw, "FILL_Y_FIRST", fill_first)
    N, C, H, W, K, stride = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, 1, 1)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if bias else None
    if bias == "one channel":   # a bias that is zero but for its last channel is still added
        b[:-1] = 0
    assert conv._nchw_1x1(x, w, (0, 0), np.dtype(dtype))
    y, saved = conv.conv2d_saving(x, w, b, stride, (0, 0), (1, 1), True)
    OH, OW = (H - 1) // stride[0] + 1, (W - 1) // stride[1] + 1
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    np.testing.assert_allclose(y, ref_forward(x64, w64, None if b is None else b.astype(np.float64),
                                              stride, OH, OW), **tol(dtype))
    assert y.flags.c_contiguous and y.dtype == dtype
    in_place = stride == (1, 1) and saved.sampled_group <= 1
    assert (saved.x_sampled is None) == in_place   # stride 1, one image per unit: x itself
    gy = rng.standard_normal(y.shape).astype(dtype)
    gxr, gwr = ref_grads(x64, w64, gy.astype(np.float64), stride)
    gx = check_backward_passes(x, w, gy, stride, (0, 0), saved, gxr, gwr, tol(dtype))
    assert gx.flags.c_contiguous


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("addend_layout", ["nchw", "cl", "float64 into float32"])
def test_dx_addend_read_only_written_in_place_or_added_after(case, addend_layout):
    N, C, H, W, K, stride = case
    rng = np.random.default_rng(8)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, 1, 1)).astype(np.float32)
    OH, OW = (H - 1) // stride[0] + 1, (W - 1) // stride[1] + 1
    gy = rng.standard_normal((N, K, OH, OW)).astype(np.float32)
    gxr = ref_grads(x.astype(np.float64), w.astype(np.float64), gy.astype(np.float64), stride)[0]
    addend = rng.standard_normal(x.shape)
    if addend_layout != "float64 into float32":
        addend = addend.astype(np.float32)
    if addend_layout == "cl":
        addend = np.ascontiguousarray(addend.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    # only an NCHW addend of x's dtype is updated in place; the others are only read
    check_addend_modes(x, w, gy, stride, gxr, addend, addend_layout == "nchw")


@pytest.mark.parametrize("layout", ["nchw", "channels-last"])   # channels-last: conv1x1_cl
def test_addend_sharing_memory_with_x_or_gy_is_not_written(layout):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 6, 6))
    if layout == "channels-last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    w = rng.standard_normal((4, 4, 1, 1))
    gy = rng.standard_normal((2, 4, 3, 3))
    gxr = ref_grads(x, w, gy, (2, 2))[0]
    kept = x.copy()
    gx, _, _ = conv.conv2d_backward(x, w, gy, (2, 2), (0, 0), (1, 1), True, False, False,
                                    gx_addend=x, addend_writable=True)
    assert not np.shares_memory(gx, x)
    np.testing.assert_array_equal(x, kept)
    np.testing.assert_allclose(gx, gxr + kept, rtol=1e-10, atol=1e-10)


def test_layouts_that_take_other_paths():
    x = np.zeros((2, 4, 6, 6), np.float32)
    w = np.zeros((3, 4, 1, 1), np.float32)
    f32 = np.dtype(np.float32)
    assert conv._nchw_1x1(x, w, (0, 0), f32)
    assert not conv._nchw_1x1(x, w, (1, 1), f32)                          # padded
    assert not conv._nchw_1x1(x, np.zeros((3, 4, 3, 3), np.float32), (0, 0), f32)
    assert not conv._nchw_1x1(x[:, :, :, :5], w, (0, 0), f32)             # not contiguous
    xcl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert not conv._nchw_1x1(xcl, w, (0, 0), f32)                         # channels-last
    assert not conv._nchw_1x1(x[:, :1], w[:2, :1], (0, 0), f32)            # direct kernels


def test_group_size(monkeypatch):
    assert conv1x1_nchw.group_size(32, 256, 2) == 1
    assert conv1x1_nchw.group_size(32, 64, 2) == 1        # prefetching: one image per unit
    assert conv1x1_nchw.group_size(32, 32, 2) == 8
    assert conv1x1_nchw.group_size(32, 16, 2) == 8        # two work units per thread at least
    assert conv1x1_nchw.group_size(3, 1, 2) == 1
    monkeypatch.setattr(conv1x1_nchw, "PREFETCH_NEXT", False)
    assert conv1x1_nchw.group_size(32, 64, 2) == 4
    assert conv1x1_nchw.group_size(32, 256, 2) == 1


@pytest.mark.parametrize("layout", ["nchw", "channels-last"])   # channels-last: conv1x1_cl
@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 6), C=st.integers(1, 9), K=st.integers(1, 9), H=st.integers(1, 9),
       W=st.integers(1, 9), sh=st.integers(1, 3), sw=st.integers(1, 3), seed=st.integers(0, 99))
def test_random_shapes(layout, N, C, K, H, W, sh, sw, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    if layout == "channels-last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    w = rng.standard_normal((K, C, 1, 1))
    y, saved = conv.conv2d_saving(x, w, None, (sh, sw), (0, 0), (1, 1), True)
    OH, OW = (H - 1) // sh + 1, (W - 1) // sw + 1
    np.testing.assert_allclose(y, ref_forward(x, w, None, (sh, sw), OH, OW), rtol=1e-10, atol=1e-10)
    gy = rng.standard_normal(y.shape)
    gxr, gwr = ref_grads(x, w, gy, (sh, sw))
    gx, gw, _ = conv.conv2d_backward(x, w, gy, (sh, sw), (0, 0), (1, 1), True, True, False,
                                     saved=saved)
    np.testing.assert_allclose(gx, gxr, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw, gwr, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("N", [1, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradient_summed_over_threads_in_blocks(N, dtype):
    """dW is summed from per-thread partial sums in blocks of _SUM_BLOCK elements: 90 x 100
    weights span two blocks, the second short; with one image, a thread has no partial sum."""
    rng = np.random.default_rng(12)
    K, C = 90, 100
    assert conv1x1_nchw._SUM_BLOCK < K * C < 2 * conv1x1_nchw._SUM_BLOCK
    x = rng.standard_normal((N, C, 4, 4)).astype(dtype)
    w = rng.standard_normal((K, C, 1, 1)).astype(dtype)
    y, saved = conv.conv2d_saving(x, w, None, (2, 2), (0, 0), (1, 1), True)
    gy = rng.standard_normal(y.shape).astype(dtype)
    for x_needed in (True, False):
        gx, gw, _ = conv.conv2d_backward(x, w, gy, (2, 2), (0, 0), (1, 1), x_needed, True, False,
                                         saved=saved)
        gxr, gwr = ref_grads(x.astype(np.float64), w.astype(np.float64), gy.astype(np.float64),
                             (2, 2))
        np.testing.assert_allclose(gw, gwr, **tol(dtype))
        if x_needed:
            np.testing.assert_allclose(gx, gxr, **tol(dtype))


@pytest.mark.parametrize("stride", [1, 2, (2, 3)])
def test_autograd_central_differences(stride):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 4, 7, 6))
    w = rng.standard_normal((5, 4, 1, 1))
    b = rng.standard_normal(5)
    check_grad(lambda a, c, d: mg.conv2d(a, c, d, stride=stride), [x, w, b])


def test_leaf_gradient_accumulates_in_place_over_calls():
    """Two backward passes into an NCHW leaf: the second adds into the first's storage."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 8, 8, 8)).astype(np.float32)
    w = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)
    xm, wm = mg.tensor(x, requires_grad=True), mg.tensor(w, requires_grad=True)
    gy = rng.standard_normal((4, 16, 4, 4)).astype(np.float32)
    mg.conv2d(xm, wm, stride=2).backward(mg.tensor(gy))
    storage = xm.grad.numpy()
    mg.conv2d(xm, wm, stride=2).backward(mg.tensor(gy))
    gxr, gwr = ref_grads(x.astype(np.float64), w.astype(np.float64), gy.astype(np.float64), (2, 2))
    np.testing.assert_allclose(xm.grad.numpy(), 2 * gxr, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(wm.grad.numpy(), 2 * gwr, rtol=1e-4, atol=1e-3)
    assert np.shares_memory(xm.grad.numpy(), storage)


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3]])   # stride 2, in place, grouped
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_operands_changes_no_value(case, dtype, monkeypatch):
    """STREAM_OPERANDS (reading dY and the sampled x once before the GEMMs, chosen by the host's
    CPU vendor) only moves data into the cache: both settings give bitwise the same gradients."""
    N, C, H, W, K, stride = case
    rng = np.random.default_rng(13)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, 1, 1)).astype(dtype)
    y, saved = conv.conv2d_saving(x, w, None, stride, (0, 0), (1, 1), True)
    gy = rng.standard_normal(y.shape).astype(dtype)
    grads = []
    for stream in (False, True):
        monkeypatch.setattr(conv1x1_nchw, "STREAM_OPERANDS", stream)
        grads.append(conv.conv2d_backward(x, w, gy, stride, (0, 0), (1, 1), True, True, False,
                                          saved=saved)[:2])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
    gxr, gwr = ref_grads(x.astype(np.float64), w.astype(np.float64), gy.astype(np.float64), stride)
    np.testing.assert_allclose(grads[0][0], gxr, **tol(dtype))
    np.testing.assert_allclose(grads[0][1], gwr, **tol(dtype))


# Shapes on which the GEMMs are gemm_stream's own (one image per unit, products small_gemm
# takes): a stride-2 layer as ResNet-18's first downsampling one, stride 1 read in place, and
# 64-pixel images, grouped four at a time without prefetching (so only equal to rounding).
PREFETCH_CASES = [(5, 64, 32, 32, 128, (2, 2)), (4, 64, 16, 16, 128, (1, 1)),
                  (16, 128, 16, 16, 128, (2, 2))]


@pytest.mark.parametrize("case", PREFETCH_CASES)
@pytest.mark.parametrize("need", ["both", "x only", "w only"])
@pytest.mark.parametrize("into_grad", [False, True])
def test_prefetching_changes_no_value(case, need, into_grad, monkeypatch):
    """PREFETCH_NEXT (each thread a run of images, each GEMM prefetching the memory it reads
    next) against one image at a time without it: y and dX bitwise the same where the
    images are one per unit either way, dW (summed over threads in another grouping) to
    float32 rounding; all against the float64 reference."""
    N, C, H, W, K, stride = case
    regrouped = (H // stride[0]) * (W // stride[1]) < conv1x1_nchw._MIN_COLUMNS
    same = np.testing.assert_allclose if regrouped else np.testing.assert_array_equal
    close = dict(rtol=1e-5, atol=1e-5) if regrouped else {}
    rng = np.random.default_rng(17)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, 1, 1)).astype(np.float32)
    need_x, need_w = need != "w only", need != "x only"
    results = []
    for on in (False, True):
        monkeypatch.setattr(conv1x1_nchw, "PREFETCH_NEXT", on)
        y, saved = conv.conv2d_saving(x, w, None, stride, (0, 0), (1, 1), True)
        gy = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
        addend = np.full(x.shape, 0.25, np.float32) if into_grad else None
        gx, gw = conv.conv2d_backward(x, w, gy, stride, (0, 0), (1, 1), need_x, need_w, False,
                                      saved=saved, gx_addend=addend,
                                      addend_writable=into_grad)[:2]
        results.append((y, gx, gw))
    (y0, gx0, gw0), (y1, gx1, gw1) = results
    same(y0, y1, **close)
    gxr, gwr = ref_grads(x.astype(np.float64), w.astype(np.float64), gy.astype(np.float64),
                         stride)
    np.testing.assert_allclose(y1, ref_forward(x.astype(np.float64), w.astype(np.float64), None,
                                               stride, *y1.shape[2:]), **tol(np.float32))
    if need_x:
        same(gx0, gx1, **close)
        np.testing.assert_allclose(gx1, gxr + (0.25 if into_grad else 0), **tol(np.float32))
    else:
        assert gx0 is None and gx1 is None
    if need_w:
        np.testing.assert_allclose(gw1, gw0, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(gw1, gwr, rtol=1e-4, atol=2e-3)
    else:
        assert gw0 is None and gw1 is None


def test_schedule(monkeypatch):
    """Runs of images with a known next one only for one image per work unit."""
    assert conv1x1_nchw.schedule(32, 1, 2) == (1, 32 // (2 * conv1x1_nchw.RUNS_PER_THREAD))
    assert conv1x1_nchw.schedule(3, 1, 2) == (1, 1)
    monkeypatch.setattr(conv1x1_nchw, "RUNS_PER_THREAD", 1)
    assert conv1x1_nchw.schedule(33, 1, 2) == (1, 17)
    assert conv1x1_nchw.schedule(32, 4, 2) == (0, 1)
    monkeypatch.setattr(conv1x1_nchw, "PREFETCH_NEXT", False)
    assert conv1x1_nchw.schedule(32, 1, 2) == (0, 1)


def test_switch_off_gives_the_same_values(monkeypatch):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 8, 8, 8))
    w = rng.standard_normal((6, 8, 1, 1))
    gy = rng.standard_normal((4, 6, 4, 4))
    on = conv.conv2d(x, w, None, (2, 2), (0, 0), (1, 1)), \
        conv.conv2d_backward(x, w, gy, (2, 2), (0, 0), (1, 1), True, True, False)[:2]
    monkeypatch.setattr(conv, "USE_NCHW_1X1", False)
    off = conv.conv2d(x, w, None, (2, 2), (0, 0), (1, 1)), \
        conv.conv2d_backward(x, w, gy, (2, 2), (0, 0), (1, 1), True, True, False)[:2]
    np.testing.assert_allclose(on[0], off[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(on[1], off[1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert on[0].flags.c_contiguous and not off[0].flags.c_contiguous


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride,W", [((2, 2), 32), ((2, 2), 31), ((2, 2), 16), ((2, 2), 15),
                                      ((2, 2), 8), ((2, 2), 7), ((1, 2), 32), ((3, 2), 16),
                                      ((2, 2), 95), ((2, 3), 48), ((3, 1), 16)])
def test_gather_and_scatter_match_numpy(dtype, stride, W):
    """The stride gather and the dX scatter give NumPy's strided views, for a unit of one
    image and of two, with x's data not 64-byte aligned.  Widths 32 and 16 (16 and 8 sampled
    pixels) at column stride 2 take the vector shuffles (stride2_lanes), 31, 15, 8 and 7 the
    fixed-width copies (conv1x1_nchw.FIXED_ROW_WIDTHS), odd widths the scatter's
    single-element stores; the rest the general loops."""
    sh, sw = stride
    N, C, H = 2, 5, 12
    rng = np.random.default_rng(3)
    count = N * C * H * W
    x = rng.standard_normal(count + 1).astype(dtype)[1:].reshape(N, C, H, W)  # unaligned
    OH, OW = (H - 1) // sh + 1, (W - 1) // sw + 1
    assert (sw == 2 and OW in conv1x1_nchw.FIXED_ROW_WIDTHS) == (W in (32, 31, 16, 15, 8, 7)
                                                                and sw == 2)
    assert conv1x1_nchw.pairs_apply(sw, OW, W) == (W in (32, 16) and sw == 2)   # any row stride
    P = OH * OW
    sampled = x[:, :, ::sh, ::sw]
    for n_a, n_b in ((0, 2), (1, 2)):
        xs = np.full(C * (n_b - n_a) * P + 7, np.nan, dtype)
        conv1x1_nchw._gather(x, n_a, n_b, sh, sw, OH, OW, xs)
        want = sampled[n_a:n_b].transpose(1, 0, 2, 3).reshape(C, -1)
        np.testing.assert_array_equal(xs[:-7].reshape(C, -1), want)
        assert np.isnan(xs[-7:]).all()
    d = rng.standard_normal(2 * C * P).astype(dtype)
    for i in (0, 1):
        gx = rng.standard_normal(x.shape).astype(dtype)
        want = gx.copy()
        want[1, :, ::sh, ::sw] += d.reshape(C, 2, OH, OW)[:, i]
        conv1x1_nchw._scatter_add(d, 2 * P, i, C, OH, OW, sh, sw, H, W, gx.reshape(-1), C * H * W)
        np.testing.assert_array_equal(gx, want)
