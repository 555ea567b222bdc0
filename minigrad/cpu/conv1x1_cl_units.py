"""Strided, unpadded 1x1 convolutions of channels-last input, one image per work unit, with
GEMMs that prefetch what the thread reads next (CPU kernels).

With x stored (N, H, W, C), Xs[n] the (P x C) rows of the P = OH*OW pixels the stride reads
in image n, and W the (K x C) weights:

    forward  Y[n] (P x K)  = Xs[n] @ W^T           y channels-last; Xs[n] kept for dW
    dW       gW (K x C)   += dY[n]^T @ Xs[n]       per-thread partial sums
    dX       dXs (P x C)   = dY[n] @ W             added into gx at the pixels read

As conv1x1_nchw does for NCHW input, the threads take the images in contiguous runs
(``conv1x1_nchw.schedule``), so that each knows its next image, and the GEMMs
(``gemm_stream``) prefetch it while they compute: the forward's GEMM the next image's x, the
backward's dW GEMM this image's rows of gx (which the scatter then adds into), its dX GEMM the
next image's dY and kept Xs.  The im2col tiles path these layers took before cut the batch
into tiles of 512 pixels and prefetched nothing (BENCHMARKS_perf.md, change 170).
"""

import numba
import numpy as np
from numba import njit, prange

from .conv1x1_cl import _gather_rows, _scatter_add_rows
from .conv1x1_nchw import _sum_partials
from .gemm_stream import gemm_stream_if

# Fewest output pixels per image for this path; smaller images stay with the whole-batch GEMMs
# of conv1x1_cl or the im2col tiles.  Paired against the tiles on the Intel Xeon of sessions
# 36-44: 64->128 at 32x32 stride 2 (256 pixels) 1.10x faster; 128->256 at 16x16 stride 2 (64
# pixels) 1.00x, so not taken (BENCHMARKS_perf.md, change 170).
MIN_PIXELS = 256

# How backward writes dX (its x_mode argument).
DX_WRITE = 0          # gx is this call's own: each image's rows are zeroed, or copied from addf
DX_ADD_IN_PLACE = 1   # gx holds the gradient so far: dX is added at the pixels read


@njit(parallel=True, cache=True)
def forward(x, wt, b, has_b, sh, sw, OH, OW, xs, y, prefetch):
    """y (N*P*K,) channels-last = Xs @ W^T (+ b); x (N, H, W, C) C-contiguous, wt (C*K,) the
    (C x K) transposed weights, xs (N*P*C,) receives Xs.  ``prefetch`` (from
    conv1x1_nchw.schedule) 1: image n's GEMM prefetches image n + 1's x; 0: nothing."""
    N, H, W, C = x.shape
    K = b.shape[0]
    P = OH * OW
    HWC = H * W * C
    xf = x.reshape(-1)
    bp = np.empty(1, dtype=x.dtype)   # gemm_stream packs no operand here
    for n in prange(N):
        src = xs[n * P * C:(n + 1) * P * C]
        _gather_rows(xf, n * P, (n + 1) * P, H, W, C, sh, sw, OH, OW, src, n * P)
        out = y[n * P * K:(n + 1) * P * K]
        lx = HWC if (prefetch > 0 and n + prefetch < N) else 0
        gemm_stream_if(prefetch > 0, False, False, P, K, C, src, C, wt, K, 0.0, out, K, bp, xf,
                       min(n + prefetch, N - 1) * HWC, lx, xf, 0, 0)
        if has_b:
            for p in range(P):
                row = out[p * K:(p + 1) * K]
                for k in range(K):
                    row[k] += b[k]


@njit(parallel=True, cache=True)
def backward(x, xs, have_xs, w, gy, sh, sw, OH, OW, need_x, need_w, x_mode, gx, addf, gwacc, gw,
             nt, prefetch):
    """Gradients of ``forward``.  gy (N*P*K,) channels-last dY; w (K*C,) the (K x C) weights;
    xs the forward's Xs when ``have_xs`` (else gathered again from x); gx (N*H*W*C,)
    channels-last dX as ``x_mode`` says (DX_WRITE: each image's rows are first zeroed, or set
    to addf's when addf is not empty); gw (K*C,) dW, summed from the per-thread rows of gwacc
    (nt, K*C), scratch the caller need not initialise.  ``prefetch`` as in forward: the dW
    GEMM prefetches image n's rows of gx, the dX GEMM image n + 1's dY and Xs."""
    N, H, W, C = x.shape
    K = w.size // C
    P = OH * OW
    HWC = H * W * C
    xf = x.reshape(-1)
    xbuf = np.empty((nt, P * C if (need_w and not have_xs) else 0), dtype=x.dtype)
    dbuf = np.empty((nt, P * C if need_x else 0), dtype=x.dtype)
    bp = np.empty(1, dtype=x.dtype)
    started = np.zeros(nt, dtype=np.bool_)
    for n in prange(N):
        t = numba.get_thread_id()
        pf = prefetch > 0
        more = pf and n + prefetch < N
        nx = min(n + prefetch, N - 1)
        dy = gy[n * P * K:(n + 1) * P * K]
        l_dy = P * K if more else 0
        l_xs = P * C if (more and have_xs and need_w) else 0
        if need_w:
            if have_xs:
                src = xs[n * P * C:(n + 1) * P * C]
            else:
                src = xbuf[t]
                _gather_rows(xf, n * P, (n + 1) * P, H, W, C, sh, sw, OH, OW, src, n * P)
            beta = 1.0 if started[t] else 0.0
            if need_x:
                gemm_stream_if(pf, True, False, K, C, P, dy, K, src, C, beta, gwacc[t], C, bp,
                               gx, n * HWC, HWC if pf else 0, gx, 0, 0)
            else:
                gemm_stream_if(pf, True, False, K, C, P, dy, K, src, C, beta, gwacc[t], C, bp,
                               gy, nx * P * K, l_dy, xs, nx * P * C, l_xs)
            started[t] = True
        if not need_x:
            continue
        d = dbuf[t]
        gemm_stream_if(pf, False, False, P, C, K, dy, K, w, C, 0.0, d, C, bp, gy, nx * P * K,
                       l_dy, xs, nx * P * C, l_xs)
        if x_mode == DX_WRITE:
            dst = gx[n * HWC:(n + 1) * HWC]
            if addf.size > 0:
                a = addf[n * HWC:(n + 1) * HWC]
                for j in range(HWC):
                    dst[j] = a[j]
            else:
                for j in range(HWC):
                    dst[j] = 0.0
        _scatter_add_rows(d, n * P, (n + 1) * P, H, W, C, sh, sw, OH, OW, gx, n * P)
    if need_w:
        _sum_partials(gwacc, started, gw)
