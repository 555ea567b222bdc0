"""Winograd F(2x2, 3x3) convolution for 3x3, stride-1, undilated layers (CPU).

Each 2x2 block of output pixels ("tile") is computed from the 4x4 input patch under
it.  With the transforms of Lavin & Gray (2015),

    V = B^T d B  (4x4 per input channel),  U = G g G^T  (4x4 per (c, k)),
    Y = A^T M A  with  M[pos] = sum_c V[pos, c] * U[pos, c, k]  (pos = one of 16),

the 36 multiply-adds per 2x2 outputs and (c, k) pair of a direct convolution become
16: the work of the layer is 16 GEMMs (tiles x C) @ (C x K), 2.25x fewer FLOPs.
The backward pass is the exact adjoint of that computation, so it is the gradient
of the (float-rounded) Winograd forward and needs no other transform matrices:

    dM = A dY A^T,  dV[pos] = dM[pos] @ U[pos]^T,  dx += B dV B^T (tiles overlap),
    dU[pos] = V[pos]^T @ dM[pos],  dg = G^T dU G.

Layout: activations are channels-last (N, H, W, C) so that every transform is a
loop over contiguous channels that LLVM vectorises; the output is channels-last
storage like the other GEMM paths of ``minigrad.cpu.conv``.  U is stored (16, K, C)
(contiguous to build) and the GEMMs take it transposed.  Two variants, with single-
threaded BLAS per thread as in the im2col tiles path: *blocked* (blocks of tiles handed
out to the threads, one parallel region per call) for many tiles, and *whole-batch*
(all tiles transformed, then the 16 GEMMs split between the threads by position so that
U is read once, then the output transform: three regions) for the deep layers, where
there are few tiles and U is large.  F(2x2, 3x3) only adds and
halves, so its float32 error stays within a few ulp of a direct convolution's
(tested against a float64 reference).

Non-finite input: an Inf or NaN anywhere in a 4x4 input patch makes the whole 2x2
output tile non-finite (usually NaN), where a direct convolution limits it to the
outputs whose 3x3 window holds it (and may give +-Inf).  It is never hidden, so the
Trainer's non-finite checks still fire at the same layer.  Set MINIGRAD_WINOGRAD=0
(see ``minigrad.cpu.conv``) for the direct pattern.
"""

import threading

import numba
import numpy as np
from numba import njit, prange

from ._jit import pjit
from .blas import gemm_rm
from .kernels import crop_padded


# Every transform below is a sequence of loops with one store and at most four
# loads each: LLVM vectorises such a loop after a runtime overlap check, but gives
# up (no vectorisation at all) on one loop body with 16 output streams.

@njit(cache=True)
def _in_tf(src, base, rs, C, v, vbase, vstride, tbuf):
    """v[pos*vstride + vbase + c] = (B^T d B)[pos] for the 4x4 patch d of channel c at
    src[base + a*rs + b*C + c] (rows of 4*C contiguous numbers)."""
    L = 4 * C
    r0 = src[base:base + L]
    r1 = src[base + rs:base + rs + L]
    r2 = src[base + 2 * rs:base + 2 * rs + L]
    r3 = src[base + 3 * rs:base + 3 * rs + L]
    t0 = tbuf[0:L]
    t1 = tbuf[L:2 * L]
    t2 = tbuf[2 * L:3 * L]
    t3 = tbuf[3 * L:4 * L]
    # rows: t0 = d0 - d2, t1 = d1 + d2, t2 = d2 - d1, t3 = d1 - d3
    for j in range(L):
        t0[j] = r0[j] - r2[j]
    for j in range(L):
        t1[j] = r1[j] + r2[j]
    for j in range(L):
        t2[j] = r2[j] - r1[j]
    for j in range(L):
        t3[j] = r1[j] - r3[j]
    # columns, the same combinations
    for a in range(4):
        ta = tbuf[a * L:(a + 1) * L]
        c0 = ta[0:C]
        c1 = ta[C:2 * C]
        c2 = ta[2 * C:3 * C]
        c3 = ta[3 * C:4 * C]
        o = (4 * a) * vstride + vbase
        d = v[o:o + C]
        for c in range(C):
            d[c] = c0[c] - c2[c]
        d = v[o + vstride:o + vstride + C]
        for c in range(C):
            d[c] = c1[c] + c2[c]
        d = v[o + 2 * vstride:o + 2 * vstride + C]
        for c in range(C):
            d[c] = c2[c] - c1[c]
        d = v[o + 3 * vstride:o + 3 * vstride + C]
        for c in range(C):
            d[c] = c1[c] - c3[c]


@njit(cache=True)
def _tile_origin(tile, tpi, tw):
    """(image, top output row, left output column) of tile number ``tile``: tiles run
    image by image, row by row, tw per row and tpi per image."""
    n = tile // tpi
    rem = tile - n * tpi
    ty = rem // tw
    return n, 2 * ty, 2 * (rem - ty * tw)


@njit(cache=True)
def _input_block(xf, H, W, C, tpi, tw, ph, pw, t0, tb, v, voff, vs, patch, tbuf):
    """Input transform of tiles t0 .. t0+tb-1: row i of matrix pos at v[pos*vs + voff + i*C]."""
    for i in range(tb):
        n, oh, ow = _tile_origin(t0 + i, tpi, tw)
        h0 = oh - ph
        w0 = ow - pw
        if h0 >= 0 and w0 >= 0 and h0 + 4 <= H and w0 + 4 <= W:
            src = xf
            base = ((n * H + h0) * W + w0) * C
            rs = W * C
        else:
            src = patch
            base = 0
            rs = 4 * C
            for a in range(4):
                for b in range(4):
                    h = h0 + a
                    w = w0 + b
                    o = (a * 4 + b) * C
                    if 0 <= h < H and 0 <= w < W:
                        s = ((n * H + h) * W + w) * C
                        for c in range(C):
                            patch[o + c] = xf[s + c]
                    else:
                        for c in range(C):
                            patch[o + c] = 0.0
        _in_tf(src, base, rs, C, v, voff + i * C, vs, tbuf)


@njit(cache=True)
def _gout_tf(src, s, rs, K, m, o, ms, rbuf):
    """m[pos*ms + o + k] = (A dY A^T)[pos] for the 2x2 tile dY of channel k at
    src[s + u*rs + v*K + k] (rows of 2*K contiguous numbers)."""
    L = 2 * K
    y0 = src[s:s + L]
    y1 = src[s + rs:s + rs + L]
    # A = [[1,0],[1,1],[1,-1],[0,-1]]: rows r0 = y0, r1 = y0+y1, r2 = y0-y1, r3 = -y1
    r1 = rbuf[0:L]
    r2 = rbuf[L:2 * L]
    r3 = rbuf[2 * L:3 * L]
    for j in range(L):
        r1[j] = y0[j] + y1[j]
    for j in range(L):
        r2[j] = y0[j] - y1[j]
    for j in range(L):
        r3[j] = -y1[j]
    for a in range(4):
        ra = y0 if a == 0 else rbuf[(a - 1) * L:a * L]
        c0 = ra[0:K]
        c1 = ra[K:2 * K]
        q = (4 * a) * ms + o
        d = m[q:q + K]
        for k in range(K):
            d[k] = c0[k]
        d = m[q + ms:q + ms + K]
        for k in range(K):
            d[k] = c0[k] + c1[k]
        d = m[q + 2 * ms:q + 2 * ms + K]
        for k in range(K):
            d[k] = c0[k] - c1[k]
        d = m[q + 3 * ms:q + 3 * ms + K]
        for k in range(K):
            d[k] = -c1[k]


@njit(cache=True)
def _grad_out_block(gf, OH, OW, K, tpi, tw, t0, tb, m, moff, ms, patch, rbuf):
    """A dY A^T for the 2x2 output-gradient tile of tiles t0 .. t0+tb-1 (zero beyond the
    output's edge): row i of matrix pos at m[pos*ms + moff + i*K]."""
    for i in range(tb):
        n, oh, ow = _tile_origin(t0 + i, tpi, tw)
        s = ((n * OH + oh) * OW + ow) * K
        if oh + 1 < OH and ow + 1 < OW:
            arr = gf
            base = s
            rs = OW * K
        else:
            arr = patch
            base = 0
            rs = 2 * K
            for u in range(2):
                for v in range(2):
                    o = (u * 2 + v) * K
                    if oh + u < OH and ow + v < OW:
                        src = s + (u * OW + v) * K
                        for k in range(K):
                            patch[o + k] = gf[src + k]
                    else:
                        for k in range(K):
                            patch[o + k] = 0.0
        _gout_tf(arr, base, rs, K, m, moff + i * K, ms, rbuf)


@njit(cache=True)
def _out_tf(m, o, ms, K, b, yf, d, rs, right, down, sbuf):
    """The 2x2 output tile Y = A^T M A + b of the tile whose M rows are m[pos*ms + o + k],
    written to yf[d + u*rs + v*K + k] where inside the output (right / down)."""
    # A^T = [[1,1,1,0],[0,1,-1,-1]]: s0[b] = m0b + m1b + m2b, s1[b] = m1b - m2b - m3b
    for bcol in range(4):
        p0 = m[o + bcol * ms:o + bcol * ms + K]
        p1 = m[o + (4 + bcol) * ms:o + (4 + bcol) * ms + K]
        p2 = m[o + (8 + bcol) * ms:o + (8 + bcol) * ms + K]
        p3 = m[o + (12 + bcol) * ms:o + (12 + bcol) * ms + K]
        s0 = sbuf[bcol * K:(bcol + 1) * K]
        for k in range(K):
            s0[k] = p0[k] + p1[k] + p2[k]
        s1 = sbuf[(4 + bcol) * K:(5 + bcol) * K]
        for k in range(K):
            s1[k] = p1[k] - p2[k] - p3[k]
    for u in range(2):
        if u == 1 and not down:
            break
        q0 = sbuf[(4 * u) * K:(4 * u + 1) * K]
        q1 = sbuf[(4 * u + 1) * K:(4 * u + 2) * K]
        q2 = sbuf[(4 * u + 2) * K:(4 * u + 3) * K]
        q3 = sbuf[(4 * u + 3) * K:(4 * u + 4) * K]
        y = yf[d + u * rs:d + u * rs + K]
        for k in range(K):
            y[k] = q0[k] + q1[k] + q2[k] + b[k]
        if right:
            y = yf[d + u * rs + K:d + u * rs + 2 * K]
            for k in range(K):
                y[k] = q1[k] - q2[k] - q3[k] + b[k]


@njit(cache=True)
def _fwd_block(xf, H, W, C, Uf, K, b, ph, pw, OH, OW, tpi, tw, t0, tb, v, m, pbuf, tbuf,
               sbuf, yf):
    """Tiles t0 .. t0+tb-1 of _fwd (one thread's work unit)."""
    _input_block(xf, H, W, C, tpi, tw, ph, pw, t0, tb, v, 0, tb * C, pbuf, tbuf)
    for pos in range(16):
        gemm_rm(False, True, tb, K, C, 1.0, v[pos * tb * C:], C, Uf[pos * K * C:], C,
                0.0, m[pos * tb * K:], K)
    _output_block(m, 0, tb * K, K, b, yf, OH, OW, tpi, tw, t0, tb, sbuf)


@njit(cache=True)
def _output_block(m, moff, ms, K, b, yf, OH, OW, tpi, tw, t0, tb, sbuf):
    """Output transform (plus bias) of tiles t0 .. t0+tb-1 whose M rows are
    m[pos*ms + moff + i*K], into the channels-last output yf."""
    for i in range(tb):
        n, oh, ow = _tile_origin(t0 + i, tpi, tw)
        _out_tf(m, moff + i * K, ms, K, b, yf, ((n * OH + oh) * OW + ow) * K, OW * K,
                ow + 1 < OW, oh + 1 < OH, sbuf)


@njit(parallel=True, cache=True)
def _fwd(x, U, b, ph, pw, OH, OW, TB, nt, y, vbuf, mbuf):
    """y (N, OH, OW, K) = Winograd conv of x (N, H, W, C) with U (16, K, C), plus b (K,)."""
    N, H, W, C = x.shape
    K = U.shape[1]
    tw = (OW + 1) // 2
    tpi = ((OH + 1) // 2) * tw
    ntiles = N * tpi
    nblocks = (ntiles + TB - 1) // TB
    pbuf = np.empty((nt, 16 * C), dtype=x.dtype)
    tbuf = np.empty((nt, 16 * C), dtype=x.dtype)
    sbuf = np.empty((nt, 8 * K), dtype=x.dtype)
    xf = x.reshape(-1)
    Uf = U.reshape(-1)
    yf = y.reshape(-1)
    for bi in prange(nblocks):
        t = numba.get_thread_id()
        t0 = bi * TB
        _fwd_block(xf, H, W, C, Uf, K, b, ph, pw, OH, OW, tpi, tw, t0, min(TB, ntiles - t0),
                   vbuf[t], mbuf[t], pbuf[t], tbuf[t], sbuf[t], yf)


@njit(cache=True)
def _scatter_tf(dv, o, vs, C, gxp, base, rs, fbuf):
    """gxp[base + a*rs + b*C + c] += (B dV B^T)[a, b] for the tile whose dV rows are
    dv[pos*vs + o + c] (the adjoint of _in_tf)."""
    L = 4 * C
    # adjoint of the column pass: f0 = e0, f1 = e1 - e2 + e3, f2 = e1 + e2 - e0, f3 = -e3
    for a in range(4):
        q = o + 4 * a * vs
        e0 = dv[q:q + C]
        e1 = dv[q + vs:q + vs + C]
        e2 = dv[q + 2 * vs:q + 2 * vs + C]
        e3 = dv[q + 3 * vs:q + 3 * vs + C]
        f = fbuf[a * L:a * L + C]
        for c in range(C):
            f[c] = e0[c]
        f = fbuf[a * L + C:a * L + 2 * C]
        for c in range(C):
            f[c] = e1[c] - e2[c] + e3[c]
        f = fbuf[a * L + 2 * C:a * L + 3 * C]
        for c in range(C):
            f[c] = e1[c] + e2[c] - e0[c]
        f = fbuf[a * L + 3 * C:a * L + 4 * C]
        for c in range(C):
            f[c] = -e3[c]
    # adjoint of the row pass: d0 += f0, d1 += f1 - f2 + f3, d2 += f1 + f2 - f0, d3 -= f3
    f0 = fbuf[0:L]
    f1 = fbuf[L:2 * L]
    f2 = fbuf[2 * L:3 * L]
    f3 = fbuf[3 * L:4 * L]
    g = gxp[base:base + L]
    for j in range(L):
        g[j] += f0[j]
    g = gxp[base + rs:base + rs + L]
    for j in range(L):
        g[j] += f1[j] - f2[j] + f3[j]
    g = gxp[base + 2 * rs:base + 2 * rs + L]
    for j in range(L):
        g[j] += f1[j] + f2[j] - f0[j]
    g = gxp[base + 3 * rs:base + 3 * rs + L]
    for j in range(L):
        g[j] -= f3[j]


@njit(cache=True)
def _bwd_group(xf, gf, Uf, H, W, C, K, OH, OW, ph, pw, tw, tpi, Hq, Wq, n_a, n_b, TB,
               need_x, need_w, v, m, dv, gxp, acc, pbuf, qbuf, rbuf, tbuf, gxf, addf):
    """Images n_a .. n_b-1 of _bwd (one thread's work unit)."""
    if need_x:
        for j in range((n_b - n_a) * Hq * Wq * C):
            gxp[j] = 0.0
    for t0 in range(n_a * tpi, n_b * tpi, TB):
        tb = min(TB, n_b * tpi - t0)
        _grad_out_block(gf, OH, OW, K, tpi, tw, t0, tb, m, 0, tb * K, qbuf, rbuf)
        if need_w:
            _input_block(xf, H, W, C, tpi, tw, ph, pw, t0, tb, v, 0, tb * C, pbuf, tbuf)
            for pos in range(16):
                gemm_rm(True, False, K, C, tb, 1.0, m[pos * tb * K:], K, v[pos * tb * C:],
                        C, 1.0, acc[pos * K * C:], C)
        if need_x:
            for pos in range(16):
                gemm_rm(False, False, tb, C, K, 1.0, m[pos * tb * K:], K, Uf[pos * K * C:],
                        C, 0.0, dv[pos * tb * C:], C)
            _scatter_block(dv, 0, tb * C, C, gxp, n_a, Hq, Wq, tpi, tw, t0, tb, tbuf)
    if need_x:
        crop_padded(gxp, n_a, n_b, H, W, C, Hq, Wq, ph, pw, gxf, addf)


@njit(cache=True)
def _scatter_block(dv, voff, vs, C, gxp, n_a, Hq, Wq, tpi, tw, t0, tb, fbuf):
    """Adds B dV B^T of tiles t0 .. t0+tb-1 (dV rows at dv[pos*vs + voff + i*C]) into the
    padded dX buffer gxp (images from n_a, (Hq, Wq, C) each, offset by the padding)."""
    for i in range(tb):
        n, oh, ow = _tile_origin(t0 + i, tpi, tw)
        # the patch's top-left in the padded buffer: (oh - ph) + ph, (ow - pw) + pw
        _scatter_tf(dv, voff + i * C, vs, C, gxp, (((n - n_a) * Hq + oh) * Wq + ow) * C, Wq * C,
                    fbuf)


@njit(parallel=True, cache=True)
def _bwd(x, gy, U, ph, pw, g, TB, nt, need_x, need_w, gx, addf, duacc, vbuf, mbuf, dvbuf,
         gxpbuf):
    """Gradients of _fwd: gx (N, H, W, C) (plus addf, flat, unless it is empty) and
    per-thread duacc (nt, 16*C*K) += dU (zeroed by the caller).  Work unit: g whole images, so that the overlapping dX
    tiles of an image are summed by one thread in its own padded buffer."""
    N, H, W, C = x.shape
    OH = gy.shape[1]
    OW = gy.shape[2]
    K = U.shape[1]
    th = (OH + 1) // 2
    tw = (OW + 1) // 2
    tpi = th * tw
    Hq = 2 * th + 2
    Wq = 2 * tw + 2
    ngroups = (N + g - 1) // g
    pbuf = np.empty((nt, 16 * C), dtype=x.dtype)
    qbuf = np.empty((nt, 4 * K), dtype=x.dtype)
    rbuf = np.empty((nt, 6 * K), dtype=x.dtype)
    tbuf = np.empty((nt, 16 * C), dtype=x.dtype)
    xf = x.reshape(-1)
    gf = gy.reshape(-1)
    Uf = U.reshape(-1)
    gxf = gx.reshape(-1)
    for gi in prange(ngroups):
        t = numba.get_thread_id()
        n_a = gi * g
        _bwd_group(xf, gf, Uf, H, W, C, K, OH, OW, ph, pw, tw, tpi, Hq, Wq, n_a,
                   min(N, n_a + g), TB, need_x, need_w, vbuf[t], mbuf[t], dvbuf[t],
                   gxpbuf[t], duacc[t], pbuf[t], qbuf[t], rbuf[t], tbuf[t], gxf, addf)


@njit(parallel=True, cache=True)
def _fwd_whole(x, U, b, ph, pw, OH, OW, nt, y, V, M):
    """_fwd for few tiles: transform all tiles, then one GEMM per position with the 16
    positions split between the threads (each reads its U[pos] once), then the output
    transform.  Three parallel regions; for deep layers whose U is bigger than V and M."""
    N, H, W, C = x.shape
    K = U.shape[1]
    tw = (OW + 1) // 2
    tpi = ((OH + 1) // 2) * tw
    Q = N * tpi
    pbuf = np.empty((nt, 16 * C), dtype=x.dtype)
    tbuf = np.empty((nt, 16 * C), dtype=x.dtype)
    sbuf = np.empty((nt, 8 * K), dtype=x.dtype)
    xf = x.reshape(-1)
    Uf = U.reshape(-1)
    yf = y.reshape(-1)
    chunk = (Q + nt - 1) // nt
    for j in prange(nt):
        t = numba.get_thread_id()
        t0 = j * chunk
        if t0 < Q:
            _input_block(xf, H, W, C, tpi, tw, ph, pw, t0, min(chunk, Q - t0), V, t0 * C, Q * C,
                         pbuf[t], tbuf[t])
    for pos in prange(16):
        gemm_rm(False, True, Q, K, C, 1.0, V[pos * Q * C:], C, Uf[pos * K * C:], C, 0.0,
                M[pos * Q * K:], K)
    for j in prange(nt):
        t = numba.get_thread_id()
        t0 = j * chunk
        if t0 < Q:
            _output_block(M, t0 * K, Q * K, K, b, yf, OH, OW, tpi, tw, t0, min(chunk, Q - t0),
                          sbuf[t])


@njit(parallel=True, cache=True)
def _bwd_whole(x, gy, U, ph, pw, nt, need_x, need_w, gx, addf, du, V, M, gxpbuf):
    """_bwd for few tiles (see _fwd_whole): du (16*C*K) = dU (no per-thread sums); gx
    includes addf as in _bwd."""
    N, H, W, C = x.shape
    OH = gy.shape[1]
    OW = gy.shape[2]
    K = U.shape[1]
    th = (OH + 1) // 2
    tw = (OW + 1) // 2
    tpi = th * tw
    Hq = 2 * th + 2
    Wq = 2 * tw + 2
    Q = N * tpi
    pbuf = np.empty((nt, 16 * C), dtype=x.dtype)
    qbuf = np.empty((nt, 4 * K), dtype=x.dtype)
    rbuf = np.empty((nt, 6 * K), dtype=x.dtype)
    tbuf = np.empty((nt, 16 * C), dtype=x.dtype)
    xf = x.reshape(-1)
    gf = gy.reshape(-1)
    Uf = U.reshape(-1)
    gxf = gx.reshape(-1)
    chunk = (Q + nt - 1) // nt
    for j in prange(nt):
        t = numba.get_thread_id()
        t0 = j * chunk
        if t0 < Q:
            tb = min(chunk, Q - t0)
            _grad_out_block(gf, OH, OW, K, tpi, tw, t0, tb, M, t0 * K, Q * K, qbuf[t], rbuf[t])
            if need_w:
                _input_block(xf, H, W, C, tpi, tw, ph, pw, t0, tb, V, t0 * C, Q * C, pbuf[t],
                             tbuf[t])
    for pos in prange(16):
        if need_w:
            gemm_rm(True, False, K, C, Q, 1.0, M[pos * Q * K:], K, V[pos * Q * C:], C, 0.0,
                    du[pos * K * C:], C)
        if need_x:   # dV overwrites V[pos], which the dW GEMM above has consumed
            gemm_rm(False, False, Q, C, K, 1.0, M[pos * Q * K:], K, Uf[pos * K * C:], C, 0.0,
                    V[pos * Q * C:], C)
    if need_x:
        for n in prange(N):
            t = numba.get_thread_id()
            gxp = gxpbuf[t]
            for j in range(Hq * Wq * C):
                gxp[j] = 0.0
            _scatter_block(V, n * tpi * C, Q * C, C, gxp, n, Hq, Wq, tpi, tw, n * tpi, tpi,
                           tbuf[t])
            crop_padded(gxp, n, n + 1, H, W, C, Hq, Wq, ph, pw, gxf, addf)


@pjit(size_arg=1)
def _weights_tf(w, U):
    """U (16, K, C) = G g G^T for w (K, C, 3, 3), G = [[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]].

    (K, C) order on both sides: contiguous reads, 16 contiguous write streams; the GEMMs
    take U[pos] transposed."""
    K, C = w.shape[0], w.shape[1]
    for k in prange(K):
        for a in range(4):
            for c in range(C):
                # row a of G g
                if a == 0:
                    t0, t1, t2 = w[k, c, 0, 0], w[k, c, 0, 1], w[k, c, 0, 2]
                elif a == 3:
                    t0, t1, t2 = w[k, c, 2, 0], w[k, c, 2, 1], w[k, c, 2, 2]
                else:
                    sg = 1.0 if a == 1 else -1.0
                    t0 = 0.5 * (w[k, c, 0, 0] + sg * w[k, c, 1, 0] + w[k, c, 2, 0])
                    t1 = 0.5 * (w[k, c, 0, 1] + sg * w[k, c, 1, 1] + w[k, c, 2, 1])
                    t2 = 0.5 * (w[k, c, 0, 2] + sg * w[k, c, 1, 2] + w[k, c, 2, 2])
                U[a * 4 + 0, k, c] = t0
                U[a * 4 + 1, k, c] = 0.5 * (t0 + t1 + t2)
                U[a * 4 + 2, k, c] = 0.5 * (t0 - t1 + t2)
                U[a * 4 + 3, k, c] = t2


@pjit(size_arg=0)
def _weights_grad(duacc, gw):
    """gw (K, C, 3, 3) = G^T dU G, dU (16, K, C) = the sum over duacc's rows (float64)."""
    nt = duacc.shape[0]
    K, C = gw.shape[0], gw.shape[1]
    for k in prange(K):
        du = np.empty((16, C), dtype=np.float64)
        for p in range(16):
            row = du[p]
            src = duacc[0, (p * K + k) * C:(p * K + k + 1) * C]
            for c in range(C):
                row[c] = src[c]
            for j in range(1, nt):
                src = duacc[j, (p * K + k) * C:(p * K + k + 1) * C]
                for c in range(C):
                    row[c] += src[c]
        for c in range(C):
            # t = G^T du (3 x 4): G^T rows [1,.5,.5,0], [0,.5,-.5,0], [0,.5,.5,1]
            for r in range(3):
                if r == 0:
                    t0 = du[0, c] + 0.5 * (du[4, c] + du[8, c])
                    t1 = du[1, c] + 0.5 * (du[5, c] + du[9, c])
                    t2 = du[2, c] + 0.5 * (du[6, c] + du[10, c])
                    t3 = du[3, c] + 0.5 * (du[7, c] + du[11, c])
                elif r == 1:
                    t0 = 0.5 * (du[4, c] - du[8, c])
                    t1 = 0.5 * (du[5, c] - du[9, c])
                    t2 = 0.5 * (du[6, c] - du[10, c])
                    t3 = 0.5 * (du[7, c] - du[11, c])
                else:
                    t0 = 0.5 * (du[4, c] + du[8, c]) + du[12, c]
                    t1 = 0.5 * (du[5, c] + du[9, c]) + du[13, c]
                    t2 = 0.5 * (du[6, c] + du[10, c]) + du[14, c]
                    t3 = 0.5 * (du[7, c] + du[11, c]) + du[15, c]
                gw[k, c, r, 0] = t0 + 0.5 * (t1 + t2)
                gw[k, c, r, 1] = 0.5 * (t1 - t2)
                gw[k, c, r, 2] = 0.5 * (t1 + t2) + t3


# ---------------------------------------------------------------------------
# planning and entry points (called by minigrad.cpu.conv)
# ---------------------------------------------------------------------------

# Smallest channel counts that take this path (below them the GEMMs are too thin)...
MIN_CHANNELS = 16
# ...and the fewest 2x2 output tiles in the batch (with fewer, the 16 transformed
# weight matrices cost more to make than the GEMMs save; at 8 tiles, ResNet-18's
# layer4 at batch 2, both paths take the same time: benchmarks/bench_winograd.py).
MIN_TILES = 8
# The whole-batch kernels run when tiles * (C + K) * WHOLE_BATCH_RATIO <= C * K, i.e. for
# C = K when there are at most 16*C tiles (benchmarks/bench_winograd.py, f+b, batch 32:
# 128->128 at 16x16, 2048 tiles, whole 16.9 ms / blocked 18.3; 64->64 at 32x32, 8192
# tiles, whole 25.6 / blocked 19.2; 512->512 at 4x4, whole 16.7 / blocked 31.1).
WHOLE_BATCH_RATIO = 1 / 32
# Bytes of one thread's transformed tiles (V and M of a block) the tile count aims at.
_BLOCK_BYTES = 1 << 20
_MIN_TB = 128
_MAX_TB = 1024


def applicable(N, C, K, R, S, OH, OW, stride, dilation):
    """True when the layer is 3x3, stride 1, undilated, and big enough for this path."""
    return (R == 3 and S == 3 and stride == (1, 1) and dilation == (1, 1)
            and C >= MIN_CHANNELS and K >= MIN_CHANNELS
            and N * ((OH + 1) // 2) * ((OW + 1) // 2) >= MIN_TILES)


def _tile_count(ntiles, C, K, itemsize, nt):
    """Tiles per block: about _BLOCK_BYTES of transformed data, at least _MIN_TB
    (thinner GEMMs lose speed), at least one block per thread, two when there are
    enough tiles (dynamic scheduling balances them)."""
    tb = _BLOCK_BYTES // max(1, 16 * (C + K) * itemsize)
    tb = max(_MIN_TB, min(_MAX_TB, tb))
    if ntiles >= 2 * nt * _MIN_TB:
        tb = min(tb, -(-ntiles // (2 * nt)))
    else:
        tb = min(tb, -(-ntiles // nt))
    return int(max(1, tb))


def transform_weights(w, dt):
    """U (16, K, C) for weights w (K, C, 3, 3)."""
    K, C = w.shape[0], w.shape[1]
    U = np.empty((16, K, C), dtype=dt)
    _weights_tf(np.ascontiguousarray(w, dtype=dt), U)
    return U


def _whole(ntiles, C, K):
    """Whole-batch variant when the 16 transformed weight matrices outweigh the tiles."""
    return WHOLE_BATCH_RATIO * ntiles * (C + K) <= C * K


class _Scratch(threading.local):
    """Reusable work buffers, one set per calling thread: the transformed tiles of a
    layer are several MB, and a fresh allocation of that size costs more in page faults
    (~0.2 ms per MB here) than the transforms that fill it."""

    def get(self, name, n, dt):
        bufs = self.__dict__.setdefault("bufs", {})
        key = (name, np.dtype(dt).str)
        buf = bufs.get(key)
        if buf is None or buf.size < n:
            buf = bufs[key] = np.empty(max(1, n), dtype=dt)
        return buf[:max(1, n)]


_scratch = _Scratch()


def forward(xcl, U, b, ph, pw, OH, OW, y4):
    """y4 (N, OH, OW, K) from channels-last contiguous xcl (N, H, W, C)."""
    nt = numba.get_num_threads()
    N = xcl.shape[0]
    K, C = U.shape[1], U.shape[2]
    dt = xcl.dtype
    ntiles = N * ((OH + 1) // 2) * ((OW + 1) // 2)
    if _whole(ntiles, C, K):
        _fwd_whole(xcl, U, b, ph, pw, OH, OW, nt, y4, _scratch.get("v", 16 * ntiles * C, dt),
                   _scratch.get("m", 16 * ntiles * K, dt))
        return
    TB = _tile_count(ntiles, C, K, xcl.itemsize, nt)
    _fwd(xcl, U, b, ph, pw, OH, OW, TB, nt, y4,
         _scratch.get("v", nt * 16 * TB * C, dt).reshape(nt, -1),
         _scratch.get("m", nt * 16 * TB * K, dt).reshape(nt, -1))


def backward(xcl, gycl, U, ph, pw, need_x, need_w, gx4, addf):
    """(gw or None); fills gx4 (N, H, W, C) when need_x, with dX plus ``addf`` (a flat
    array in gx4's layout) unless ``addf`` is empty."""
    nt = numba.get_num_threads()
    N, H, W, C = xcl.shape
    OH, OW = gycl.shape[1], gycl.shape[2]
    K = U.shape[1]
    dt = xcl.dtype
    th, tw = (OH + 1) // 2, (OW + 1) // 2
    tpi = th * tw
    Hq, Wq = 2 * th + 2, 2 * tw + 2
    need_x, need_w = bool(need_x), bool(need_w)
    if _whole(N * tpi, C, K):
        Q = N * tpi
        du = _scratch.get("du", 16 * C * K if need_w else 1, dt).reshape(1, -1)
        _bwd_whole(xcl, gycl, U, ph, pw, nt, need_x, need_w, gx4, addf, du.reshape(-1),
                   _scratch.get("v", 16 * Q * C, dt), _scratch.get("m", 16 * Q * K, dt),
                   _scratch.get("gxp", nt * Hq * Wq * C if need_x else nt, dt).reshape(nt, -1))
    else:
        TB = _tile_count(N * tpi, C, K, xcl.itemsize, nt)
        g = max(1, min(-(-TB // tpi), -(-N // (2 * nt))))   # whole images per work unit
        TB = min(TB, g * tpi)
        du = _scratch.get("du", nt * 16 * C * K if need_w else nt, dt).reshape(nt, -1)
        du.fill(0)
        _bwd(xcl, gycl, U, ph, pw, g, TB, nt, need_x, need_w, gx4, addf, du,
             _scratch.get("v", nt * 16 * TB * C if need_w else nt, dt).reshape(nt, -1),
             _scratch.get("m", nt * 16 * TB * K, dt).reshape(nt, -1),
             _scratch.get("dv", nt * 16 * TB * C if need_x else nt, dt).reshape(nt, -1),
             _scratch.get("gxp", nt * g * Hq * Wq * C if need_x else nt, dt).reshape(nt, -1))
    if not need_w:
        return None
    gw = np.empty((K, C, 3, 3), dtype=dt)
    _weights_grad(du, gw)
    return gw
