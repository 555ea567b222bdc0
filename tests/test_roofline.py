"""benchmarks/roofline.py: the FLOP and byte counts behind the per-layer bounds."""

import numpy as np
import pytest

from benchmarks import roofline

def test_stem_traffic_counts_every_tensor_once_per_pass():
    t = roofline.conv_traffic(32, 3, 64, 32, 3, 1, channels_last=False)
    x, y, w = 32 * 3 * 32 * 32 * 4, 32 * 64 * 32 * 32 * 4, 64 * 3 * 9 * 4
    assert t["flops"] == 3 * 2 * 32 * 64 * 3 * 9 * 32 * 32
    # forward reads x and w; backward reads dY, x, x.grad, w and dW
    assert t["read"] == (x + w) + (y + x + x + w + w)
    assert t["write"] == y + x + w


@pytest.mark.parametrize("channels_last, fraction", [(False, 0.5), (True, 0.25)])
def test_strided_1x1_reads_only_the_lines_its_stride_reaches(channels_last, fraction):
    t = roofline.conv_traffic(32, 64, 128, 32, 1, 2, channels_last)
    x, y, w = 32 * 64 * 32 * 32 * 4, 32 * 128 * 16 * 16 * 4, 128 * 64 * 4
    lines = x * fraction
    assert t["flops"] == 3 * 2 * 32 * 128 * 64 * 16 * 16
    assert t["read"] == pytest.approx((lines + w) + (y + 2 * lines + 2 * w))
    assert t["write"] == pytest.approx(y + lines + w)


def test_few_channels_channels_last_cannot_skip_lines():
    # 8 channels of float32 are 32 bytes: two sampled pixels share each 64-byte line
    t = roofline.conv_traffic(2, 8, 16, 8, 1, 2, channels_last=True)
    x = 2 * 8 * 8 * 8 * 4
    y, w = 2 * 16 * 4 * 4 * 4, 16 * 8 * 4
    assert t["write"] == pytest.approx(y + x / 2 + w)


def test_bounds_overlapped_and_serial():
    traffic = {"flops": 2e9, "read": 1e9, "write": 0.0}
    bw = {"read": 1e9, "write": 1e9, "copy": 2e9}
    over, serial = roofline.bounds(traffic, 1e9, bw)   # compute 2 s, memory 1 s
    assert over == 1.0 and serial == pytest.approx(2 / 3)
    over, serial = roofline.bounds({"flops": 1e9, "read": 2e9, "write": 2e9}, 1e9, bw)
    assert over == pytest.approx(0.5) and serial == pytest.approx(1 / 3)   # memory 2 s


def test_bandwidth_kernels_touch_every_element():
    a = np.full(1001, 2.0, np.float32)
    assert roofline._read(a, 2) == pytest.approx(2002.0)
    roofline._write(a, 2)
    b = np.zeros_like(a)
    roofline._copy(a, b, 2)
    assert (a == 1.0).all() and (b == 1.0).all()


def test_gemm_shapes_of_the_im2col_products():
    assert roofline.gemm_shapes(32, 3, 64, 32, 3, 1) == (32 * 32 * 32, 27, 64)       # the stem
    assert roofline.gemm_shapes(32, 64, 128, 32, 1, 2) == (32 * 16 * 16, 64, 128)    # 1x1 stride 2
    assert roofline.gemm_shapes(32, 256, 512, 8, 3, 2) == (32 * 4 * 4, 2304, 512)


def test_measure_gemms_times_three_products():
    times = roofline.measure_gemms(64, 27, 16, repeat=2)
    assert len(times) == 3 and all(t > 0 for t in times)
