"""gemm_stream: small_gemm's tiles with prefetch streams, against gemm_rm and NumPy.

A prefetch never changes a value, so on the shapes gemm_stream computes itself (``usable``)
its result must be bitwise the one gemm_rm gives through small_gemm (the same micro-kernel,
the same order of the reduction), whatever the streams point at; elsewhere it is gemm_rm.
"""

import numpy as np
import pytest
from numba import njit

from minigrad.cpu import small_gemm
from minigrad.cpu.blas import gemm_rm
from minigrad.cpu.gemm_stream import gemm_stream, usable

needs_tiles = pytest.mark.skipif(not small_gemm.SUPPORTED,
                                 reason="small_gemm's tiles are not used on this CPU")


@njit(cache=False)
def _stream(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc, bp, pf1, s1, l1, pf2, s2, l2):
    gemm_stream(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc, bp, pf1, s1, l1, pf2, s2, l2)


@njit(cache=False)
def _plain(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    gemm_rm(ta, tb, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc)


@njit(cache=False)
def _usable(ta, tb, m, n, k, lda):
    return usable(ta, tb, m, n, k, lda)


def _both(m, n, k, ta, tb, beta, dtype=np.float32, streams=None, seed=0):
    """(gemm_stream's C, gemm_rm's C, float64 reference) for one product; ``streams`` (pf1,
    s1, l1, pf2, s2, l2), by default two random arrays read whole."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(m * k).astype(dtype)
    b = rng.standard_normal(k * n).astype(dtype)
    c = rng.standard_normal(m * n).astype(dtype)
    lda, ldb = (m if ta else k), (k if tb else n)
    if streams is None:
        p1, p2 = rng.standard_normal(7000).astype(dtype), rng.standard_normal(300).astype(dtype)
        streams = (p1, 0, p1.size, p2, 0, p2.size)
    p1_before, p2_before = streams[0].copy(), streams[3].copy()
    out = c.copy()
    _stream(ta, tb, m, n, k, a, lda, b, ldb, beta, out, n, np.empty(k * n, dtype), *streams)
    ref = c.copy()
    _plain(ta, tb, m, n, k, a, lda, b, ldb, beta, ref, n)
    opa = a.reshape(k, m).T if ta else a.reshape(m, k)
    opb = b.reshape(n, k).T if tb else b.reshape(k, n)
    exact = opa.astype(np.float64) @ opb + beta * c.reshape(m, n)
    # the streams are only read
    np.testing.assert_array_equal(streams[0], p1_before)
    np.testing.assert_array_equal(streams[3], p2_before)
    return out.reshape(m, n), ref.reshape(m, n), exact


# the NCHW 1x1 stride-2 64->128 layer's three products (forward, dW, dX), the 128->256 layer's,
# and strips that end in each of the short tiles (m = 136: 11 x 12 + 4; 128: 10 x 12 + 8)
SHAPES = [(128, 256, 64, False, False), (128, 64, 256, False, True), (64, 256, 128, True, False),
          (256, 64, 128, False, False), (256, 128, 64, False, True), (128, 64, 256, True, False),
          (136, 64, 128, False, False), (136, 96, 128, True, True)]


@needs_tiles
@pytest.mark.parametrize("m,n,k,ta,tb", SHAPES)
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_same_bits_as_gemm_rm(m, n, k, ta, tb, beta):
    assert _usable(ta, tb, m, n, k, m if ta else k)
    out, ref, exact = _both(m, n, k, ta, tb, beta)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(out, exact, rtol=1e-4, atol=1e-4 * np.sqrt(k))


@needs_tiles
def test_streams_of_any_length_and_place():
    """No stream, one stream only, the second only, a stream far longer than one line a step
    (thinned) and a stream ending at its array's last element: the same bits every time."""
    m, n, k = 128, 256, 64
    big = np.ones(1 << 21, np.float32)
    tail = np.ones(100, np.float32)
    results = []
    for streams in [(tail, 0, 0, tail, 0, 0), (big, 5, big.size - 5, tail, 0, 0),
                    (tail, 0, 0, big, 0, big.size), (tail, 40, 60, tail, 99, 1),
                    (big, 0, 4096, big, 4096, 4096)]:
        out, ref, _ = _both(m, n, k, False, False, 1.0, streams=streams, seed=3)
        np.testing.assert_array_equal(out, ref)
        results.append(out)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("m,n,k,ta,tb,why", [
    (130, 64, 128, False, False, "rows not a multiple of the short tile"),
    (128, 48, 128, False, False, "columns not whole panels"),
    (128, 64, 300, False, False, "reduction past one KC block"),
    (16, 32, 64, False, False, "too small for small_gemm"),
    (128, 64, 128, False, False, "float64"),
])
def test_other_products_are_gemm_rm(m, n, k, ta, tb, why):
    dtype = np.float64 if why == "float64" else np.float32
    if dtype == np.float32:
        assert not _usable(ta, tb, m, n, k, m if ta else k), why
    out, ref, exact = _both(m, n, k, ta, tb, 0.5, dtype=dtype)
    np.testing.assert_array_equal(out, ref)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(out, exact, rtol=tol, atol=tol * np.sqrt(k))


@needs_tiles
def test_small_gemm_switched_off_sends_it_to_openblas():
    prev = small_gemm.enabled()
    try:
        small_gemm.set_enabled(False)
        assert not _usable(False, False, 128, 256, 64, 64)
        out, ref, exact = _both(128, 256, 64, False, False, 0.0)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_allclose(out, exact, rtol=1e-4, atol=1e-3)
    finally:
        small_gemm.set_enabled(prev)
