"""conv1x1_cl_units: strided 1x1 convolutions of channels-last input, one image per work unit,
against a float64 NumPy reference; prefetching changes no value."""

import numpy as np
import pytest

from minigrad.cpu import conv, conv1x1_cl_units, conv1x1_nchw


def channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def reference(x, w, b, gy, stride):
    """(y, dX, dW, db) in float64 for an unpadded 1x1 convolution."""
    x, w, gy = (a.astype(np.float64) for a in (x, w, gy))
    xs = x[:, :, ::stride[0], ::stride[1]]
    y = np.einsum("nchw,kc->nkhw", xs, w[:, :, 0, 0])
    if b is not None:
        y = y + b.astype(np.float64)[None, :, None, None]
    gx = np.zeros(x.shape)
    gx[:, :, ::stride[0], ::stride[1]] = np.einsum("nkhw,kc->nchw", gy, w[:, :, 0, 0])
    gw = np.einsum("nkhw,nchw->kc", gy, xs)[:, :, None, None]
    return y, gx, gw, gy.sum(axis=(0, 2, 3))


def tol(dt):
    return dict(rtol=1e-4, atol=1e-3) if dt == np.float32 else dict(rtol=1e-10, atol=1e-9)


# N, C, H, W, K, stride: a stride-2 layer as ResNet-18's first downsampling one (GEMMs small_gemm
# takes, so they prefetch), small channel counts (OpenBLAS GEMMs), uneven strides and sizes
CASES = [(5, 64, 32, 32, 128, (2, 2)), (6, 5, 32, 33, 7, (2, 2)), (3, 4, 46, 61, 3, (3, 2))]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("addend", [None, "channels-last, writable", "channels-last", "nchw"])
def test_matches_the_reference(case, dtype, bias, addend):
    N, C, H, W, K, stride = case
    rng = np.random.default_rng(3)
    x = channels_last(rng.standard_normal((N, C, H, W)).astype(dtype))
    w = rng.standard_normal((K, C, 1, 1)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if bias else None
    OH, OW = (H - 1) // stride[0] + 1, (W - 1) // stride[1] + 1
    assert conv._cl_units_1x1(x, w, stride, (0, 0), OH * OW, np.dtype(dtype))
    y, saved = conv.conv2d_saving(x, w, b, stride, (0, 0), (1, 1), True)
    assert conv.is_channels_last(y) and y.dtype == dtype and saved.sampled_group == 0
    gy = channels_last(rng.standard_normal(y.shape).astype(dtype))
    yr, gxr, gwr, gbr = reference(x, w, b, gy, stride)
    np.testing.assert_allclose(y, yr, **tol(dtype))
    if addend == "nchw":
        add = np.full(x.shape, 0.5, dtype)
    else:
        add = None if addend is None else channels_last(np.full(x.shape, 0.5, dtype))
    kept = None if add is None else add.copy()
    writable = addend == "channels-last, writable"
    gx, gw, gb = conv.conv2d_backward(x, w, gy, stride, (0, 0), (1, 1), True, True, True,
                                      saved=saved, gx_addend=add, addend_writable=writable)
    np.testing.assert_allclose(gx, gxr + (0 if add is None else 0.5), **tol(dtype))
    np.testing.assert_allclose(gw, gwr, **tol(dtype))
    np.testing.assert_allclose(gb, gbr, **tol(dtype))
    if add is not None and not writable:
        np.testing.assert_array_equal(add, kept)          # a read-only addend is left alone
    if writable:
        assert np.shares_memory(gx, add)                  # added in place


@pytest.mark.parametrize("need", ["x only", "w only"])
@pytest.mark.parametrize("saved_x", [True, False])
def test_one_gradient_and_no_kept_rows(need, saved_x):
    N, C, H, W, K, stride = CASES[0]
    rng = np.random.default_rng(4)
    x = channels_last(rng.standard_normal((N, C, H, W)).astype(np.float32))
    w = rng.standard_normal((K, C, 1, 1)).astype(np.float32)
    y, saved = conv.conv2d_saving(x, w, None, stride, (0, 0), (1, 1), saved_x)
    assert (saved.x_sampled is not None) == saved_x
    gy = channels_last(rng.standard_normal(y.shape).astype(np.float32))
    _, gxr, gwr, _ = reference(x, w, None, gy, stride)
    need_x, need_w = need == "x only", need == "w only"
    gx, gw, _ = conv.conv2d_backward(x, w, gy, stride, (0, 0), (1, 1), need_x, need_w, False,
                                     saved=saved)
    if need_x:
        assert gw is None
        np.testing.assert_allclose(gx, gxr, **tol(np.float32))
    else:
        assert gx is None
        np.testing.assert_allclose(gw, gwr, **tol(np.float32))


@pytest.mark.parametrize("need", ["both", "x only", "w only"])
def test_prefetching_changes_no_value(need, monkeypatch):
    """Runs of images with their GEMMs prefetching (PREFETCH_NEXT) against one image at a time
    without: y and dX bitwise the same, dW (summed over threads in other groupings) to
    float32 rounding."""
    N, C, H, W, K, stride = CASES[0]
    rng = np.random.default_rng(6)
    x = channels_last(rng.standard_normal((N, C, H, W)).astype(np.float32))
    w = rng.standard_normal((K, C, 1, 1)).astype(np.float32)
    gy = channels_last(rng.standard_normal((N, K, H // 2, W // 2)).astype(np.float32))
    need_x, need_w = need != "w only", need != "x only"
    results = []
    for on in (False, True):
        monkeypatch.setattr(conv1x1_nchw, "PREFETCH_NEXT", on)
        assert conv1x1_nchw.schedule(N, 1, 2)[0] == int(on)
        y, saved = conv.conv2d_saving(x, w, None, stride, (0, 0), (1, 1), True)
        results.append((y,) + conv.conv2d_backward(x, w, gy, stride, (0, 0), (1, 1), need_x,
                                                   need_w, False, saved=saved)[:2])
    (y0, gx0, gw0), (y1, gx1, gw1) = results
    np.testing.assert_array_equal(y0, y1)
    if need_x:
        np.testing.assert_array_equal(gx0, gx1)
    if need_w:
        np.testing.assert_allclose(gw0, gw1, rtol=1e-5, atol=1e-4)


def test_which_convolutions_it_takes(monkeypatch):
    f32 = np.dtype(np.float32)
    x = channels_last(np.zeros((5, 8, 32, 32), np.float32))
    w = np.zeros((16, 8, 1, 1), np.float32)
    assert conv._cl_units_1x1(x, w, (2, 2), (0, 0), 256, f32)
    assert not conv._cl_units_1x1(x, w, (1, 1), (0, 0), 1024, f32)              # no stride
    assert not conv._cl_units_1x1(x, w, (2, 2), (1, 1), 256, f32)               # padding
    assert not conv._cl_units_1x1(np.zeros((5, 8, 32, 32), np.float32), w, (2, 2), (0, 0),
                                  256, f32)                                       # NCHW
    assert not conv._cl_units_1x1(x, np.zeros((16, 8, 3, 3), np.float32), (2, 2), (0, 0), 256,
                                  f32)                                            # not 1x1
    small = channels_last(np.zeros((32, 8, 16, 16), np.float32))
    assert not conv._cl_units_1x1(small, w, (2, 2), (0, 0), 64, f32)           # few pixels
    one = channels_last(np.zeros((1, 8, 32, 32), np.float32))
    assert not conv._cl_units_1x1(one, w, (2, 2), (0, 0), 256, f32)            # whole-batch GEMMs
    monkeypatch.setattr(conv, "USE_CL_UNITS_1X1", False)
    assert not conv._cl_units_1x1(x, w, (2, 2), (0, 0), 256, f32)
    assert conv1x1_cl_units.MIN_PIXELS == 256
