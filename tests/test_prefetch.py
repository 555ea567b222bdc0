"""Software prefetch (minigrad.cpu.prefetch): it compiles to prefetch instructions and never
changes a value."""

import numpy as np
import pytest
from numba import njit

from minigrad.cpu import conv
from minigrad.cpu.prefetch import prefetch, prefetch_run
from test_cpu_layouts import cl


@njit(cache=False)
def _touch(a, start, n):
    for i in range(start, start + n, 16):
        prefetch(a, i)
    return a.sum()


def test_prefetch_span_compiles_to_prefetch_instructions():
    a = np.arange(100, dtype=np.float32)
    assert _touch(a, 0, 100) == a.sum()
    asm = _touch.inspect_asm(_touch.signatures[0])
    assert "prefetch" in asm


def test_prefetch_leaves_values_alone():
    a = np.arange(1000, dtype=np.float64)
    before = a.copy()
    assert _touch(a, 0, 1000) == before.sum()
    np.testing.assert_array_equal(a, before)


@pytest.mark.parametrize("need_x", [False, True])
def test_backward_with_dy_prefetch_is_bitwise_the_same(need_x, monkeypatch):
    """The im2col backward prefetches each next channels-last dY tile (stem-sized tiles):
    the gradients are bit for bit those computed without it."""
    rng = np.random.default_rng(3)
    x = cl(rng.standard_normal((3, 3, 24, 24)).astype(np.float32))
    w = rng.standard_normal((64, 3, 3, 3)).astype(np.float32)
    gy = cl(rng.standard_normal((3, 64, 24, 24)).astype(np.float32))
    out = {}
    for limit in (128 << 10, 0):
        monkeypatch.setattr(conv, "_PREFETCH_DY_MAX_BYTES", limit)
        gx, gw, _ = conv.conv2d_backward(x, w, gy, (1, 1), (1, 1), (1, 1), need_x, True, False)
        out[limit] = (gx, gw)
    np.testing.assert_array_equal(out[0][1], out[128 << 10][1])
    if need_x:
        np.testing.assert_array_equal(out[0][0], out[128 << 10][0])


@njit(cache=False)
def _run_then_sum(a, start, span):
    prefetch_run(a, start, span)
    return a.sum()


def test_prefetch_run_leaves_values_alone():
    a = np.arange(200, dtype=np.float32)
    assert _run_then_sum(a, 3, 31) == np.arange(200, dtype=np.float32).sum()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stream_in_sums_and_leaves_values_alone(dtype):
    """stream_in reads every element (its sum is theirs) and writes none; an empty view sums
    to zero."""
    from minigrad.cpu.prefetch import stream_in
    a = np.arange(1, 1001, dtype=dtype)
    before = a.copy()
    assert stream_in(a) == 500500
    assert stream_in(a[10:20]) == sum(range(11, 21))
    assert stream_in(a[:0]) == 0
    np.testing.assert_array_equal(a, before)
