"""small_gemm: the float32 micro-kernel GEMM against a float64 NumPy product.

sgemm runs wherever Numba does (the FMA intrinsic falls back to a library call without
hardware FMA); whether blas.gemm_rm dispatches to it depends on the CPU (small_gemm.SUPPORTED) and on the switch (small_gemm.set_enabled).
The tile (12 x 32 with AVX-512, 6 x 16 otherwise) is fixed per host, so a run tests the one
its host uses; the dispatch-rule tests name the tile they check.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import njit

from minigrad.cpu import small_gemm
from minigrad.cpu.blas import gemm_rm


def _operands(rng, m, n, k, transa, transb, pad):
    """Random A, B, C stored with ``pad`` extra columns per row (leading dimensions above
    the minimum) and one leading element (views that do not start at offset 0)."""
    ar, ac = (k, m) if transa else (m, k)
    br, bc = (n, k) if transb else (k, n)
    a = rng.standard_normal(1 + ar * (ac + pad)).astype(np.float32)
    b = rng.standard_normal(1 + br * (bc + pad)).astype(np.float32)
    c = rng.standard_normal(1 + m * (n + pad)).astype(np.float32)
    A = a[1:].reshape(ar, ac + pad)[:, :ac]
    B = b[1:].reshape(br, bc + pad)[:, :bc]
    C = c[1:].reshape(m, n + pad)[:, :n]
    return a, b, c, A, B, C, ac + pad, bc + pad, n + pad


def _check(m, n, k, transa, transb, beta, pad, seed):
    rng = np.random.default_rng(seed)
    a, b, c, A, B, C, lda, ldb, ldc = _operands(rng, m, n, k, transa, transb, pad)
    opa = (A.T if transa else A).astype(np.float64)
    opb = (B.T if transb else B).astype(np.float64)
    expected = opa @ opb + (beta * C.astype(np.float64) if beta != 0 else 0.0)
    if beta == 0:
        C[...] = np.nan                      # beta 0: C must not be read
    guard = c[0], c[1:].reshape(m, n + pad)[:, n:].copy()
    small_gemm.sgemm(transa, transb, m, n, k, a[1:], lda, b[1:], ldb, beta, c[1:], ldc)
    scale = max(1.0, float(np.abs(expected).max()) if expected.size else 1.0)
    np.testing.assert_allclose(C, expected, rtol=0, atol=1e-5 * scale * max(1.0, np.sqrt(k)))
    # nothing outside C's rows and columns is written
    assert c[0] == guard[0]
    np.testing.assert_array_equal(c[1:].reshape(m, n + pad)[:, n:], guard[1])


@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(0, 70),
       transa=st.booleans(), transb=st.booleans(), beta=st.sampled_from([0.0, 1.0, 0.5]),
       pad=st.integers(0, 3), seed=st.integers(0, 2 ** 16))
def test_sgemm_matches_numpy(m, n, k, transa, transb, beta, pad, seed):
    _check(m, n, k, transa, transb, beta, pad, seed)


@pytest.mark.parametrize("m,n,k,transa,transb", [
    (512, 64, 27, False, False),       # stem forward tile
    (27, 64, 600, True, False),        # weight gradient, reduction split in KC blocks
    (150, 16, 512, True, True),        # LeNet conv2 weight gradient, dY NCHW
    (13, 300, 20, False, False),       # more columns than the AVX2 tile's packed block (NC)
    (5, 2100, 20, False, False),       # ... and than the wide tile's
    (7, 33, 257, False, True),         # edges in every dimension, two KC blocks
    (512, 128, 576, False, False),     # a 3x3 stride-2 forward tile (B read in place)
    (576, 128, 512, True, False),      # its weight gradient
    (100, 72, 70, True, False),        # rows and columns short of whole tiles
    (40, 64, 37, False, True),         # B transposed: packed, whole panels of either tile
    (12, 96, 300, True, True),         # ... two KC blocks (256 + 44), A transposed too
    (64, 256, 128, True, False),       # m = 64: a 4-row edge strip read in place (NCHW 1x1 dX)
    (128, 256, 64, False, False),      # m = 128: an 8-row edge strip
    (68, 40, 20, False, False),        # 8 edge rows, and a column panel short of NR
    (70, 64, 9, True, False),          # 10 edge rows: padded to a whole tile
])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_sgemm_blocked_shapes(m, n, k, transa, transb, beta):
    _check(m, n, k, transa, transb, beta, pad=2, seed=m + n + k)


@pytest.mark.parametrize("m,n,k,transb", [
    (254, 128, 300, False),   # two MC blocks (240 + 14 rows: a 2-row edge strip), two KC blocks
    (500, 70, 40, False),     # three MC blocks; a column panel short of NR
    (12, 32, 5, False),       # one whole strip
    (13, 33, 257, True),      # edges everywhere, B packed too
    (241, 64, 600, True),     # one row past an MC block, three KC blocks
])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_sgemm_packed_transposed_a(m, n, k, transb, beta):
    """PACK_A (a transposed A copied into strips first) gives sgemm's unpacked bits: the same
    micro-kernel sums in the same order; both match float64."""
    rng = np.random.default_rng(m * n + k)
    a, b, c, A, B, C, lda, ldb, ldc = _operands(rng, m, n, k, True, transb, 3)
    expected = A.T.astype(np.float64) @ (B.T if transb else B) + beta * C.astype(np.float64)
    results = []
    for pack in (False, True):
        out = c.copy()
        small_gemm.sgemm(True, transb, m, n, k, a[1:], lda, b[1:], ldb, beta, out[1:], ldc,
                         pack_a=pack)
        results.append(out)
    np.testing.assert_array_equal(results[0], results[1])
    got = results[1][1:].reshape(m, n + 3)[:, :n]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max() * 4)
    assert results[1][0] == c[0]                      # nothing before C is written


def test_packs_a_rule():
    """Whole products pack a transposed A only with rows >= PACK_A_MIN_LD apart and at least
    PACK_A_MIN_N columns; never an untransposed one."""
    ld, n = small_gemm.PACK_A_MIN_LD, small_gemm.PACK_A_MIN_N
    assert small_gemm.packs_a(True, n, ld)
    assert not small_gemm.packs_a(True, n - 1, ld)
    assert not small_gemm.packs_a(True, n, ld - 1)
    assert not small_gemm.packs_a(False, n, ld)


@njit(cache=False)   # cache_stamp covers minigrad/cpu only: a cached copy here could go stale
def _via_gemm_rm(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    gemm_rm(transa, transb, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc)


@pytest.mark.parametrize("m,n,k,transa,transb", [
    (64, 16, 150, False, False), (150, 16, 64, True, False), (64, 64, 27, False, False),
    (64, 27, 64, False, True),
])
def test_gemm_rm_float32_on_preferred_and_other_shapes(m, n, k, transa, transb):
    rng = np.random.default_rng(3)
    a, b, c, A, B, C, lda, ldb, ldc = _operands(rng, m, n, k, transa, transb, 1)
    expected = (A.T if transa else A).astype(np.float64) @ (B.T if transb else B) + C
    _via_gemm_rm(transa, transb, m, n, k, a[1:], lda, b[1:], ldb, 1.0, c[1:], ldc)
    np.testing.assert_allclose(C, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


@pytest.mark.skipif(small_gemm.NR != 16, reason="the AVX2 tile's rule")
def test_preferred_shapes_avx2_tile():
    pref = small_gemm.preferred
    assert pref(False, False, 512, 64, 27)          # short reduction
    assert pref(False, False, 512, 16, 150)         # 16 columns
    assert pref(True, False, 27, 64, 512)           # small weight gradient
    assert pref(True, True, 150, 16, 512)           # ... with dY read transposed, 16 columns
    assert not pref(False, False, 512, 8, 64)       # fewer than 16 columns
    assert not pref(False, False, 512, 128, 576)    # big tiles: OpenBLAS
    assert not pref(True, False, 576, 128, 512)
    assert not pref(True, False, 64, 128, 512)      # 1.37x alone, 0.97x inside the 1x1 row
    assert not pref(False, True, 512, 27, 64)
    assert pref(False, False, 512, 32, 64)          # 32 columns, reduction up to 128
    assert pref(True, False, 512, 32, 128)          # ... A transposed (NCHW dY)
    assert not pref(False, False, 512, 32, 129)
    assert not pref(False, False, 512, 48, 64)      # 48 columns: only with k <= 32
    assert not pref(False, False, 512, 27, 64)      # not a multiple of 16


@pytest.mark.skipif(small_gemm.NR != 32, reason="the wide (AVX-512) tile's rule")
def test_preferred_shapes_wide_tile():
    pref = small_gemm.preferred
    assert pref(False, False, 512, 128, 576)        # 3x3 stride-2 forward tile
    assert pref(True, False, 576, 128, 512)         # ... its weight gradient
    assert pref(False, False, 512, 576, 128)        # ... its dX (B read in place)
    assert not pref(False, False, 512, 1152, 256)   # 128->256's dX: B's blocks over 512 KB
    assert pref(False, False, 128, 256, 64)         # NCHW 1x1 forward, one image
    assert pref(True, False, 64, 256, 128)          # ... its dX
    assert pref(False, False, 512, 32, 64)          # the stem's dX on columns padded to 32
    assert not pref(False, False, 512, 64, 27)      # 27-step reduction: OpenBLAS
    assert not pref(True, False, 27, 64, 512)       # 27 rows and a 27-step reduction ...
    assert not pref(False, False, 384, 16, 150)     # 16 columns (LeNet's conv2)
    assert pref(False, True, 512, 128, 576)         # B transposed (packed by block transposes)
    assert pref(False, True, 128, 64, 256)          # NCHW 1x1 weight gradient, one image
    assert not pref(False, True, 512, 48, 128)      # ... but not 48 columns
    assert not pref(False, True, 512, 1024, 1024)   # ... nor packed blocks over 512 KB
    assert not pref(False, False, 128, 64, 64)      # 2^19 multiply-adds: too small
    assert pref(False, False, 512, 512, 1152)       # B's 256-row blocks: 512 KB
    assert not pref(False, False, 512, 1024, 1024)  # ... 1 MB: OpenBLAS
    assert pref(False, False, 64, 2048, 64)         # 2048 columns, 64 rows of B: 512 KB
    assert not pref(False, False, 512, 48, 64)      # not whole 32-column panels


def test_whole_product_rule():
    """gemm_threads and conv1x1_cl take small_gemm only on the wide tile, by its rule."""
    for shape in [(False, False, 256, 384, 320), (True, False, 160, 384, 512),
                  (False, True, 256, 128, 256), (False, False, 64, 64, 64)]:
        expected = bool(small_gemm.preferred(*shape)) if small_gemm.NR == 32 else False
        assert bool(small_gemm.preferred_whole(*shape)) == expected
    assert small_gemm.preferred_whole(False, False, 256, 384, 320) == (small_gemm.NR == 32)


def test_padded_columns():
    """27 columns (the stem's dX) become 32 where the AVX2 tile takes the padded shape."""
    was = small_gemm.enabled()
    wide = small_gemm.NR == 32
    try:
        small_gemm.set_enabled(True)
        on = small_gemm.enabled()
        assert small_gemm.padded_columns(False, 512, 32, 64) == 32      # already whole
        if wide:    # the wide tile never pads
            assert small_gemm.padded_columns(False, 512, 27, 64) == 27
            assert small_gemm.padded_columns(True, 512, 27, 64) == 27
            assert small_gemm.padded_columns(False, 512, 100, 64) == 100
        else:
            assert small_gemm.padded_columns(False, 512, 27, 64) == (32 if on else 27)
            assert small_gemm.padded_columns(True, 512, 27, 64) == (32 if on else 27)
            assert small_gemm.padded_columns(False, 512, 25, 16) == (32 if on else 25)
            assert small_gemm.padded_columns(False, 512, 27, 200) == 27     # k too long
            assert small_gemm.padded_columns(False, 512, 100, 64) == 100    # 112: OpenBLAS
        small_gemm.set_enabled(False)
        assert small_gemm.padded_columns(False, 512, 27, 64) == 27
    finally:
        small_gemm.set_enabled(was)


@pytest.mark.parametrize("jw,kc", [(32, 64), (32, 27), (20, 48), (15, 16), (16, 15), (1, 70),
                                   (32, 1)])
def test_pack_b_transposed_matches_numpy(jw, kc):
    """B transposed is packed _VW x _VW block by block (in registers) plus scalar edges; each
    packed panel must hold B's columns as rows, zeros past the last column, bit for bit."""
    nr, ldb, k0, j0 = small_gemm.NR, 75, 3, 2
    rng = np.random.default_rng(jw * 100 + kc)
    b = rng.standard_normal((j0 + jw + 1) * ldb).astype(np.float32)
    bp = np.full(kc * nr * 2, np.nan, np.float32)
    small_gemm._pack_b(True, b, ldb, k0, kc, j0, jw, bp)
    expected = np.zeros((kc, nr), np.float32)
    expected[:, :jw] = b.reshape(-1, ldb)[j0:j0 + jw, k0:k0 + kc].T
    np.testing.assert_array_equal(bp[:kc * nr].reshape(kc, nr), expected)
    assert np.isnan(bp[kc * nr:]).all()            # nothing past the panel is written


def _untransposed_and_sgemm(seed, m, n, k):
    """Random float32 A (m x k) and B (k x n) of a ``preferred`` shape, and sgemm's A @ B."""
    assert small_gemm.preferred(False, False, m, n, k)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    ours = np.zeros((m, n), np.float32)
    small_gemm.sgemm(False, False, m, n, k, a.reshape(-1), k, b.reshape(-1), n, 0.0,
                     ours.reshape(-1), n)
    return a, b, ours


@pytest.mark.skipif(not small_gemm.SUPPORTED, reason="gemm_rm never calls small_gemm on this CPU")
def test_switch_decides_at_run_time_which_gemm_runs():
    m, n, k = (64, 16, 150) if small_gemm.NR == 16 else (128, 64, 300)
    a, b, ours = _untransposed_and_sgemm(4, m, n, k)
    reference = a.astype(np.float64) @ b
    was = small_gemm.enabled()
    try:
        for on in (True, False, True):
            assert small_gemm.set_enabled(on) == on
            c = np.full((m, n), np.nan, np.float32)
            _via_gemm_rm(False, False, m, n, k, a.reshape(-1), k, b.reshape(-1), n, 0.0,
                         c.reshape(-1), n)
            np.testing.assert_allclose(c, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
            # OpenBLAS sums in another order: some float32 results differ in the last bits
            assert np.array_equal(c, ours) == on
    finally:
        small_gemm.set_enabled(was)


@pytest.mark.skipif(small_gemm.NR != 32 or not small_gemm.SUPPORTED,
                    reason="the wide tile's dispatch (AVX-512 hosts)")
def test_rows_4kb_apart_go_to_openblas():
    """A preferred shape whose untransposed A has rows 4 KB apart runs in OpenBLAS (its
    float32 bits), the same A with 4160-byte rows in small_gemm (sgemm's bits)."""
    assert small_gemm.a_rows_alias(False, 1024) and small_gemm.a_rows_alias(False, 2048)
    assert not small_gemm.a_rows_alias(False, 1040) and not small_gemm.a_rows_alias(True, 1024)
    m, n, k = 64, 64, 1024
    a, b, ours = _untransposed_and_sgemm(11, m, n, k)
    padded = np.zeros((m, k + 16), np.float32)
    padded[:, :k] = a
    results = {}
    was = small_gemm.enabled()
    try:
        for on in (False, True):
            small_gemm.set_enabled(on)
            for lda, src in ((k, a), (k + 16, padded)):
                c = np.full((m, n), np.nan, np.float32)
                _via_gemm_rm(False, False, m, n, k, src.reshape(-1), lda, b.reshape(-1), n,
                             0.0, c.reshape(-1), n)
                results[on, lda] = c
    finally:
        small_gemm.set_enabled(was)
    openblas = results[False, k]
    assert np.array_equal(results[False, k + 16], openblas)
    assert not np.array_equal(ours, openblas)       # the two kernels' bits differ here
    assert np.array_equal(results[True, k], openblas)
    assert np.array_equal(results[True, k + 16], ours)


def test_sgemm_rejects_bad_operands():
    """The Python entry checks what the compiled code cannot: dtype, layout, sizes, writability."""
    a = np.zeros(12, np.float32)
    b = np.zeros(12, np.float32)
    c = np.zeros(9, np.float32)
    small_gemm.sgemm(False, False, 3, 3, 4, a, 4, b, 3, 0.0, c, 3)
    with pytest.raises(TypeError, match="a must be a contiguous 1-D float32"):
        small_gemm.sgemm(False, False, 3, 3, 4, a.astype(np.float64), 4, b, 3, 0.0, c, 3)
    with pytest.raises(TypeError, match="c must be"):
        small_gemm.sgemm(False, False, 3, 3, 4, a, 4, b, 3, 0.0, c.reshape(3, 3), 3)
    with pytest.raises(ValueError, match="b holds 12 elements.*need 15"):
        small_gemm.sgemm(False, False, 3, 3, 4, a, 4, b, 4, 0.0, c, 3)
    c.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        small_gemm.sgemm(False, False, 3, 3, 4, a, 4, b, 3, 0.0, c, 3)


def _conv_pair(layout, C, K, k, stride, size, seed):
    """x, w, dY of a batch-2 convolution, x and dY stored NCHW or channels-last."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, C, size, size)).astype(np.float32)
    w = (rng.standard_normal((K, C, k, k)) / np.sqrt(C * k * k)).astype(np.float32)
    out = (size + 2 * (k // 2) - k) // stride + 1
    gy = rng.standard_normal((2, K, out, out)).astype(np.float32)
    if layout == "cl":
        x, gy = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) for a in (x, gy))
    return x, w, gy


@pytest.mark.skipif(small_gemm.NR != 32 or not small_gemm.SUPPORTED,
                    reason="the wide tile's dispatch (AVX-512 hosts)")
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("C, K, k, stride, size", [
    (64, 64, 3, 2, 16),      # im2col tiles (stride-2 Winograd off): forward 128 x 64 x 576
    (128, 320, 1, 2, 16),    # 1x1 stride 2 (conv1x1_cl / conv1x1_nchw): dX sums over 320
    (320, 320, 3, 1, 8),     # Winograd: dX products sum over 320
])
def test_wide_tile_inside_the_conv_paths(monkeypatch, layout, C, K, k, stride, size):
    """Convolutions whose GEMMs the wide tile's rule takes: the same results, within float32
    rounding of a float64 reference, with small_gemm on and off; on, the forward's or the
    backward's values differ from OpenBLAS's in the last bits, which shows that small_gemm
    ran.  (Each case has a product summing over more than KC = 256 terms: small_gemm adds
    its 256-term blocks into C, OpenBLAS blocks the sum otherwise; over at most 256 terms
    both sum in the same order and agree bit for bit.)"""
    from minigrad.cpu import conv, winograd
    from reference import conv2d as ref_conv2d, conv2d_grads as ref_grads

    monkeypatch.setattr(winograd, "USE_S2", False)
    x, w, gy = _conv_pair(layout, C, K, k, stride, size, seed=C + K + k)
    args = ((stride, stride), (k // 2, k // 2), (1, 1))
    y_ref = ref_conv2d(x, w, None, *args)
    gx_ref, gw_ref, _ = ref_grads(x, w, gy, *args)
    out = {}
    was = small_gemm.enabled()
    try:
        for on in (False, True):
            small_gemm.set_enabled(on)
            y = np.array(conv.conv2d(x, w, None, *args))
            gx, gw, _ = conv.conv2d_backward(x, w, gy, *args, True, True, False)
            for got, ref in ((y, y_ref), (gx, gx_ref), (gw, gw_ref)):
                np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * max(1.0, np.abs(ref).max()))
            out[on] = (y, np.array(gx), gw)
    finally:
        small_gemm.set_enabled(was)
    assert any(not np.array_equal(a, b) for a, b in zip(out[False], out[True]))


@pytest.mark.skipif(small_gemm.NR != 32 or not small_gemm.SUPPORTED,
                    reason="the wide tile's dispatch (AVX-512 hosts)")
def test_wide_tile_inside_linear_backward():
    """A Linear layer big enough for kernels.gemm_threads: its dX (dY @ W) and dW (dY^T @ x)
    are products the wide tile takes; gradients match float64 with small_gemm on and off."""
    import minigrad as mg
    import minigrad.nn.functional as F

    rng = np.random.default_rng(9)
    x = rng.standard_normal((512, 384)).astype(np.float32)
    w = (rng.standard_normal((320, 384)) / 20).astype(np.float32)   # dX sums over 320
    g = rng.standard_normal((512, 320)).astype(np.float32)
    grads = {}
    was = small_gemm.enabled()
    try:
        for on in (False, True):
            small_gemm.set_enabled(on)
            xt, wt = mg.tensor(x, requires_grad=True), mg.tensor(w, requires_grad=True)
            F.linear(xt, wt).backward(mg.tensor(g))
            grads[on] = (xt.grad.numpy(), wt.grad.numpy())
    finally:
        small_gemm.set_enabled(was)
    gx_ref = g.astype(np.float64) @ w
    gw_ref = g.astype(np.float64).T @ x
    for on in (False, True):
        np.testing.assert_allclose(grads[on][0], gx_ref, rtol=0, atol=2e-5 * np.abs(gx_ref).max())
        np.testing.assert_allclose(grads[on][1], gw_ref, rtol=0, atol=2e-5 * np.abs(gw_ref).max())
    assert any(not np.array_equal(a, b) for a, b in zip(grads[False], grads[True]))
