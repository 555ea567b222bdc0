"""Unpadded 1x1 convolutions with few output pixels as one GEMM per thread
(minigrad.cpu.conv1x1_cl, chosen by conv._whole_1x1).

Checked against float64 NumPy references for channels-last, strided-view and NCHW input,
every stride pattern, shares with no rows (fewer pixels or output channels than threads),
the kept sampled copy, dW or dX alone, the ways dX meets an addend, the path choice, and
through autograd with central differences.  Random shapes and an addend sharing memory with x
run in test_conv1x1_nchw.py, for both layouts.
"""

import numba
import numpy as np
import pytest

import minigrad as mg
from minigrad.cpu import conv
import reference
from conv_checks import check_addend_modes, check_backward_passes
from gradcheck import numeric_grad


def channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def ref_forward(x, w, b, stride):
    return reference.conv2d(x, w, b, stride, (0, 0), (1, 1))


def ref_grads(x, w, gy, stride):
    """(gx, gw) in float64."""
    return reference.conv2d_grads(x, w, gy, stride, (0, 0), (1, 1))[:2]


def tol(dt):
    return dict(rtol=1e-4, atol=1e-4) if dt == np.float32 else dict(rtol=1e-10, atol=1e-10)


# N, C, H, W, K, stride: ResNet-18's last downsampling layer (smaller), stride 1, uneven
# strides, one output pixel (one share empty), one output channel (one dW share empty)
CASES = [(4, 16, 8, 8, 32, (2, 2)), (3, 8, 4, 4, 16, (1, 1)), (2, 5, 7, 9, 6, (2, 3)),
         (1, 3, 1, 1, 4, (1, 1)), (2, 9, 5, 5, 1, (3, 1))]


def layouts(x):
    """x channels-last, as a strided view (neither layout), and NCHW-contiguous."""
    wide = np.zeros(x.shape[:3] + (x.shape[3] + 3,), x.dtype)
    wide[..., :x.shape[3]] = x
    return {"channels-last": channels_last(x), "strided view": wide[..., :x.shape[3]],
            "nchw": x}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["channels-last", "strided view", "nchw"])
def test_forward_and_gradients_match_the_reference(case, dtype, layout, monkeypatch):
    monkeypatch.setattr(conv, "USE_NCHW_1X1", False)   # NCHW input comes here too then
    N, C, H, W, K, stride = case
    rng = np.random.default_rng(7)
    x = layouts(rng.standard_normal((N, C, H, W)).astype(dtype))[layout]
    w = rng.standard_normal((K, C, 1, 1)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    OH, OW = (H - 1) // stride[0] + 1, (W - 1) // stride[1] + 1
    assert conv._whole_1x1(w, (0, 0), N * OH * OW)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for bias in (None, b):
        y, saved = conv.conv2d_saving(x, w, bias, stride, (0, 0), (1, 1), True)
        ref = ref_forward(x64, w64, None if bias is None else bias.astype(np.float64), stride)
        np.testing.assert_allclose(y, ref, **tol(dtype))
        assert conv.is_channels_last(y) and y.dtype == dtype
    # a strided conv keeps its sampled copy; stride 1 on channels-last x reads x itself
    copies = stride != (1, 1) or not conv.is_channels_last(x)
    assert (saved.x_cl is not None) == copies
    gy = rng.standard_normal(y.shape).astype(dtype)
    gxr, gwr = ref_grads(x64, w64, gy.astype(np.float64), stride)
    gx = check_backward_passes(x, w, gy, stride, (0, 0), saved, gxr, gwr, tol(dtype))


@pytest.mark.parametrize("threads", [1, 2])
def test_any_number_of_threads(threads):
    rng = np.random.default_rng(3)
    x = channels_last(rng.standard_normal((3, 6, 6, 6)))
    w = rng.standard_normal((10, 6, 1, 1))
    prev = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        y = conv.conv2d(x, w, None, (2, 2), (0, 0), (1, 1))
        gy = rng.standard_normal(y.shape)
        gx, gw, _ = conv.conv2d_backward(x, w, gy, (2, 2), (0, 0), (1, 1), True, True, False)
    finally:
        numba.set_num_threads(prev)
    np.testing.assert_allclose(y, ref_forward(x, w, None, (2, 2)), rtol=1e-10, atol=1e-10)
    gxr, gwr = ref_grads(x, w, gy, (2, 2))
    np.testing.assert_allclose(gx, gxr, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw, gwr, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride", [(1, 1), (2, 2)])
@pytest.mark.parametrize("addend_layout", ["cl", "nchw", "float64 into float32"])
def test_dx_addend_read_only_written_in_place_or_added_after(stride, addend_layout):
    rng = np.random.default_rng(8)
    x = channels_last(rng.standard_normal((2, 8, 6, 6)).astype(np.float32))
    w = rng.standard_normal((12, 8, 1, 1)).astype(np.float32)
    OH = (6 - 1) // stride[0] + 1
    gy = channels_last(rng.standard_normal((2, 12, OH, OH)).astype(np.float32))
    gxr = ref_grads(x.astype(np.float64), w.astype(np.float64), gy.astype(np.float64), stride)[0]
    addend = rng.standard_normal(x.shape)
    if addend_layout != "float64 into float32":
        addend = addend.astype(np.float32)
    if addend_layout == "cl":
        addend = channels_last(addend)
    # only a channels-last addend of x's dtype is updated in place; the others are only read
    check_addend_modes(x, w, gy, stride, gxr, addend, addend_layout == "cl")


def test_path_choice():
    w = np.zeros((8, 4, 1, 1), np.float32)
    rows = conv._WHOLE_1X1_MAX_ROWS
    assert conv._whole_1x1(w, (0, 0), rows)
    assert not conv._whole_1x1(w, (0, 0), rows + 1)                        # im2col tiles
    assert not conv._whole_1x1(w, (1, 0), 16)                              # padded
    assert not conv._whole_1x1(np.zeros((8, 4, 3, 3), np.float32), (0, 0), 16)
    # NCHW-contiguous input takes the NCHW 1x1 path first
    x = np.zeros((2, 4, 6, 6), np.float32)
    assert conv._nchw_1x1(x, w, (0, 0), np.dtype(np.float32))
    assert not conv.is_channels_last(conv.conv2d(x, w, None, (2, 2), (0, 0), (1, 1)))


def test_same_values_as_the_tiles(monkeypatch):
    rng = np.random.default_rng(12)
    x = channels_last(rng.standard_normal((4, 8, 8, 8)))
    w = rng.standard_normal((6, 8, 1, 1))
    gy = channels_last(rng.standard_normal((4, 6, 4, 4)))

    def run():
        return (conv.conv2d(x, w, None, (2, 2), (0, 0), (1, 1)),) + \
            conv.conv2d_backward(x, w, gy, (2, 2), (0, 0), (1, 1), True, True, False)[:2]
    on = run()
    monkeypatch.setattr(conv, "USE_WHOLE_1X1", False)
    off = run()
    for a, b in zip(on, off):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2, (2, 3)])
def test_autograd_central_differences(stride):
    """Gradients of sum(conv2d(x, w, b) * weight) with channels-last x (which
    gradcheck.check_grad would copy to NCHW) against central differences."""
    rng = np.random.default_rng(10)
    arrays = [rng.standard_normal((3, 4, 7, 6)), rng.standard_normal((5, 4, 1, 1)),
              rng.standard_normal(5)]
    tensors = [mg.tensor(channels_last(arrays[0]), requires_grad=True),
               mg.tensor(arrays[1], requires_grad=True), mg.tensor(arrays[2], requires_grad=True)]
    out = mg.conv2d(*tensors, stride=stride)
    weight = rng.standard_normal(out.shape)
    (out * mg.tensor(weight)).sum().backward()

    def scalar(x, w, b):
        with mg.no_grad():
            y = mg.conv2d(mg.tensor(channels_last(x)), mg.tensor(w), mg.tensor(b), stride=stride)
        return float((y.numpy() * weight).sum())
    for i, t in enumerate(tensors):
        np.testing.assert_allclose(t.grad.numpy(), numeric_grad(scalar, arrays, i),
                                   rtol=1e-5, atol=1e-6)
