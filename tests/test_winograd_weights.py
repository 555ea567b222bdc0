"""Winograd weight transforms U = G g G^T and their gradients (minigrad/cpu/winograd_weights.py)
against float64 einsums, for the three variants' G: the float64 kernels and the float32 blocks
of 16 input channels (AVX-512 hosts)."""

import numpy as np
import pytest

from minigrad.cpu import small_gemm, winograd_weights as ww

VARIANTS = {16: ww.G4_ARRAY, 25: ww.G5_ARRAY, 36: ww.G6_ARRAY}
needs_blocks = pytest.mark.skipif(small_gemm.LANES != ww.LANES,
                                  reason="the float32 blocks run on AVX-512 hosts only")


def _reference_u(w, G):
    s = G.shape[0]
    K, C = w.shape[:2]
    return np.einsum("ai,kcij,bj->abkc", G, w.astype(np.float64), G).reshape(s * s, K, C)


def _reference_gw(du, G, K, C):
    s = G.shape[0]
    dsum = du.astype(np.float64).sum(axis=0).reshape(s, s, K, C)
    return np.einsum("ai,abkc,bj->kcij", G, dsum, G)


def _close(a, ref, rtol):
    """a matches ref to rtol of ref's largest magnitude, everywhere (NaN fails)."""
    scale = np.abs(ref).max()
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, ref, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("G", [ww.G6_ARRAY, ww.G5_ARRAY], ids=["f43", "s2"])
@pytest.mark.parametrize("K, C, nt", [(3, 5, 1), (40, 300, 2), (24, 256, 1)])
def test_float64_kernels_match_einsum(K, C, nt, G):
    """_weights_tf_g (U = G g G^T) and _weights_grad_g (dg = G^T (sum of dU) G) against float64
    einsums, for F(4x4, 3x3)'s G and the stride-2 variant's, one and two tasks per output
    channel (300 channels: 256 and a partial run), serial and parallel compilations."""
    rng = np.random.default_rng(7)
    s = G.shape[0]
    w = rng.standard_normal((K, C, 3, 3)).astype(np.float32)
    U = np.full((s * s, K, C), np.nan, np.float32)
    ww._weights_tf_g(w, U, G)
    np.testing.assert_allclose(U, _reference_u(w, G), rtol=1e-6, atol=1e-6)
    du = rng.standard_normal((nt, s * s * K * C)).astype(np.float32)
    gw = np.full((K, C, 3, 3), np.nan, np.float32)
    ww._weights_grad_g(du, gw, G)
    np.testing.assert_allclose(gw, _reference_gw(du, G, K, C), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nt", [1, 2])
def test_float64_f22_gradient_matches_einsum(nt):
    """_weights_grad (F(2x2, 3x3)'s G, channels in runs of 64: 150 = 64 + 64 + 22)."""
    rng = np.random.default_rng(8)
    K, C = 5, 150
    du = rng.standard_normal((nt, 16 * K * C)).astype(np.float32)
    gw = np.full((K, C, 3, 3), np.nan, np.float32)
    ww._weights_grad(du, gw)
    np.testing.assert_allclose(gw, _reference_gw(du, ww.G4_ARRAY, K, C), rtol=1e-5, atol=1e-5)


@needs_blocks
@pytest.mark.parametrize("npos", [16, 25, 36])
@pytest.mark.parametrize("K, C", [(1, 16), (3, 48), (40, 256)])
@pytest.mark.parametrize("compiled", ["serial", "parallel"])
def test_transform_blocks_match_einsum(npos, K, C, compiled):
    """_transform_blocks writes every element of U (NaN-filled) as G g G^T; the whole U array
    sits between NaN guards that must stay untouched."""
    rng = np.random.default_rng(npos + K + C)
    G = VARIANTS[npos]
    w = rng.standard_normal((K, C, 3, 3)).astype(np.float32)
    buf = np.full(npos * K * C + 64, np.nan, np.float32)
    U = buf[32:32 + npos * K * C].reshape(npos, K, C)
    getattr(ww._transform_blocks, compiled)(w, U)
    _close(U, _reference_u(w, G), 2e-7)
    assert np.isnan(buf[:32]).all() and np.isnan(buf[-32:]).all()


@needs_blocks
@pytest.mark.parametrize("npos", [16, 25, 36])
@pytest.mark.parametrize("K, C, nt", [(1, 16, 1), (3, 48, 2), (24, 256, 3)])
@pytest.mark.parametrize("compiled", ["serial", "parallel"])
def test_gradient_blocks_match_einsum(npos, K, C, nt, compiled):
    """_gradient_blocks sums nt copies of dU and writes each channel's 9 taps by masked stores:
    every element of gw (NaN-filled) is G^T dU G, and nothing past gw is written (the last
    channel's store would reach 7 floats further without the mask)."""
    rng = np.random.default_rng(npos * nt + C)
    G = VARIANTS[npos]
    du = rng.standard_normal((nt, npos * K * C)).astype(np.float32)
    buf = np.full(K * C * 9 + 32, np.nan, np.float32)
    gw = buf[:K * C * 9].reshape(K, C, 3, 3)
    getattr(ww._gradient_blocks, compiled)(du, gw)
    _close(gw, _reference_gw(du, G, K, C), 5e-7)
    assert np.isnan(buf[K * C * 9:]).all()


@pytest.mark.parametrize("npos", [16, 25, 36])
@pytest.mark.parametrize("dtype, C", [(np.float32, 32), (np.float32, 20), (np.float64, 32)])
def test_entry_points_any_dtype_and_channels(npos, dtype, C):
    """transform and gradient give G g G^T and G^T dU G whichever kernels take the call (the
    float32 blocks for 32 channels on AVX-512 hosts, the float64 kernels otherwise)."""
    rng = np.random.default_rng(3)
    G = VARIANTS[npos]
    K = 6
    w = rng.standard_normal((K, C, 3, 3)).astype(dtype)
    U = np.full((npos, K, C), np.nan, dtype)
    ww.transform(w, U)
    tol = 2e-7 if dtype == np.float32 else 1e-14
    _close(U, _reference_u(w, G), tol)
    du = rng.standard_normal((2, npos * K * C)).astype(dtype)
    gw = np.full((K, C, 3, 3), np.nan, dtype)
    ww.gradient(du, gw)
    _close(gw, _reference_gw(du, G, K, C), 5e-7 if dtype == np.float32 else 1e-14)


def test_uses_blocks_rule():
    """The blocks take float32 with a multiple of 16 channels on AVX-512 hosts, while
    USE_BLOCKS is on; nothing else."""
    on_host = small_gemm.LANES == ww.LANES
    assert ww.uses_blocks(np.float32, 64) == on_host
    assert not ww.uses_blocks(np.float32, 24)
    assert not ww.uses_blocks(np.float64, 64)


def test_uses_blocks_switch(monkeypatch):
    monkeypatch.setattr(ww, "USE_BLOCKS", False)
    assert not ww.uses_blocks(np.float32, 64)


def test_mismatched_shapes_name_them():
    with pytest.raises(ValueError, match=r"\(4, 3, 3, 3\).*\(16, 4, 5\)"):
        ww.transform(np.zeros((4, 3, 3, 3), np.float32), np.zeros((16, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"100.*\(4, 5, 3, 3\)"):
        ww.gradient(np.zeros((1, 100), np.float32), np.zeros((4, 5, 3, 3), np.float32))
