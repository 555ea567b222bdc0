"""Winograd convolution for 3x3 undilated layers (CPU): F(2x2, 3x3) and F(4x4, 3x3) for
stride 1, and a 25-position variant for stride 2.

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

F(4x4, 3x3) is the same scheme with 4x4 output tiles from 6x6 input patches (36
positions, interpolation points 0, +-1, +-2): 2.25 transformed numbers per output pixel
instead of 4, so 1.78x fewer GEMM FLOPs again.  Its transforms multiply by 2, 4, 5 and 8
and its weight transform divides by 6 and 24, so its float32 error is larger (3-4e-6 of
the largest output against 2e-7 on a 32-channel layer; 0.6-1.5e-5 against 3-6e-7 for the
im2col path on ResNet-18's 64- to 512-channel layers).  It runs where the blocked variant
would (below) on outputs of at least MIN_SIZE_F43 pixels a side, and in the whole-batch
kernels on layers with at least MIN_TILES_F43_WHOLE of its tiles and at most
MAX_CHANNELS_F43_WHOLE channels;
``tile_size`` says which a layer gets, and the size of U (16 or 36 positions) tells the
kernels.  MINIGRAD_WINOGRAD_F43=0 turns it off.

Stride 2 (25 positions): a stride-2 3-tap filter is its even taps (g0, g2) applied to the
even inputs plus its odd tap g1 applied to the odd ones.  F(2, 2) on the even phase and the
odd phase as it is give 5 products per 2 outputs instead of 6, so each 2x2 output tile is
computed from the 5x5 input patch under it (patches 4 apart) with 25 positions instead of 36
multiply-adds per (c, k) pair: 1.44x fewer.  Its transforms (``_BT5``, ``_AT5`` and
``winograd_weights.G5``) only add, so its float32 error is that of F(2x2, 3x3).  The
kernels below serve all three variants; the size of U (16, 36 or 25 positions) tells them
which.  MINIGRAD_WINOGRAD_S2=0 sends stride-2 layers back to the im2col path.

Layout: activations are channels-last (N, H, W, C) so that every transform is one
vector loop over contiguous channels (``channel_tf``); the output is channels-last
storage like the other GEMM paths of ``minigrad.cpu.conv``.  U is stored (positions, K, C)
(contiguous to build) and the GEMMs take it transposed.  Two ways to run, with single-
threaded BLAS per thread as in the im2col tiles path: *blocked* (blocks of tiles handed
out to the threads, one parallel region per call) for many tiles, and *whole-batch*
(all tiles transformed, then the 16 GEMMs split between the threads by position so that
U is read once, then the output transform: three regions) for the deep layers, where
there are few tiles and U is large.  F(2x2, 3x3) only adds and
halves, so its float32 error stays within a few ulp of a direct convolution's
(tested against a float64 reference).

Non-finite input: an Inf or NaN anywhere in an input patch makes the whole output
tile non-finite (usually NaN), where a direct convolution limits it to the
outputs whose 3x3 window holds it (and may give +-Inf).  It is never hidden, so the
Trainer's non-finite checks still fire at the same layer.  Set MINIGRAD_WINOGRAD=0
(see ``minigrad.cpu.conv``) for the direct pattern.
"""

import os
import threading

import numba
import numpy as np
from numba import njit, prange

from . import channel_tf, small_gemm, winograd_weights
from .blas import gemm_rm, gemm_rm_select
from .kernels import crop_padded
from .prefetch import cpu_vendor


def _transforms(BT, AT):
    """The six channel transforms of a variant with input transform BT and output transform
    AT (channel_tf: vector code, out = L in R^T over a grid of channel vectors, applied to all
    channels of a tile at once): V = B^T d B, the same for patches at the image's edge (masked
    inputs), Y = A^T M A + b, dM = A dY A^T, the same at the edge, and dx += B dV B^T."""
    B = tuple(zip(*BT))
    A = tuple(zip(*AT))
    return (channel_tf.make(BT, BT), channel_tf.make(BT, BT, in_mask=True),
            channel_tf.make(AT, AT, bias=True, out_mask=True), channel_tf.make(A, A),
            channel_tf.make(A, A, in_mask=True), channel_tf.make(B, B, accumulate=True))


# F(2x2, 3x3): 4x4 input patches, 2x2 outputs.
_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_B = tuple(zip(*_BT))
_AT = ((1, 1, 1, 0), (0, 1, -1, -1))
_A = tuple(zip(*_AT))
(_input_tf, _input_tf_edge, _output_tf, _grad_out_tf, _grad_out_tf_edge,
 _scatter_tf) = _transforms(_BT, _AT)

# F(4x4, 3x3) (Lavin & Gray, interpolation points 0, +-1, +-2): 6x6 input patches, 4x4 outputs.
# The weight transforms G of all three variants are in winograd_weights.
_BT6 = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
        (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_AT4 = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
(_input_tf6, _input_tf6_edge, _output_tf4, _grad_out_tf6, _grad_out_tf6_edge,
 _scatter_tf6) = _transforms(_BT6, _AT4)

# Stride 2, 2x2 output tiles from 5x5 input patches (25 positions).  A stride-2 3-tap filter
# splits into its even taps (g0, g2) on the even inputs and its odd tap g1 on the odd ones;
# F(2, 2) on the even phase (points 0, 1, inf) and the odd phase as it is give, per pair of
# outputs y0 = d0 g0 + d1 g1 + d2 g2 and y1 = d2 g0 + d3 g1 + d4 g2, the five products
# (d0 - d2) g0, d2 (g0 + g2), (d4 - d2) g2, d1 g1, d3 g1: 25 multiply-adds per 2x2 outputs
# and (c, k) pair instead of 36 (1.44x fewer), with transforms that only add.
_BT5 = ((1, 0, -1, 0, 0), (0, 0, 1, 0, 0), (0, 0, -1, 0, 1), (0, 1, 0, 0, 0), (0, 0, 0, 1, 0))
_AT5 = ((1, 1, 0, 1, 0), (0, 1, 1, 0, 1))
(_input_tf5, _input_tf5_edge, _output_tf5, _grad_out_tf5, _grad_out_tf5_edge,
 _scatter_tf5) = _transforms(_BT5, _AT5)


# The 16 (25, 36) matrices of a block, one per position, lie this many elements apart: the
# size of one, rounded up to 4 KB plus 3 cache lines.  With a multiple of 4 KB (e.g. 128 tiles
# x 64 channels of float32), the transforms' 16 load or store streams all fall into the same
# L1 cache sets and evict each other (measured: BENCHMARKS_perf.md, change 79).
@njit(cache=True)
def _pos_stride(n, itemsize):
    """Elements between consecutive position matrices of n elements each."""
    page = 4096 // itemsize
    return (n + page - 1) // page * page + 3 * (64 // itemsize)


@njit(cache=True)
def _tile_of(npos):
    """Output tile size of the variant with npos transformed positions: 2 for F(2x2, 3x3)
    (16) and its stride-2 form (25), 4 for F(4x4, 3x3) (36)."""
    return 4 if npos == 36 else 2


@njit(cache=True)
def _side_of(npos):
    """Side of the variant's input patch and of its grid of positions: 4, 5 or 6."""
    return 5 if npos == 25 else (6 if npos == 36 else 4)


@njit(cache=True)
def _step_of(npos):
    """Convolution stride of the variant: 2 for the 25-position one, else 1."""
    return 2 if npos == 25 else 1


@njit(cache=True)
def _padded_extent(tiles, size, pad, npos):
    """Rows (or columns) of the padded dX buffer of one image: every input patch of
    ``tiles`` tile rows (or columns), and the image with its leading padding."""
    ts = _tile_of(npos)
    st = _step_of(npos)
    return max(st * ts * tiles + _side_of(npos) - st * ts, size + pad)


@njit(cache=True)
def _tile_origin(tile, tpi, tw, ts):
    """(image, top output row, left output column) of tile number ``tile``: ts x ts output
    tiles run image by image, row by row, tw per row and tpi per image."""
    n = tile // tpi
    rem = tile - n * tpi
    ty = rem // tw
    return n, ts * ty, ts * (rem - ty * tw)


@njit(cache=True, inline="always")
def _inside_mask(r0, nr, rows, c0, nc, cols):
    """Bit a*nc + j set where pixel (r0 + a, c0 + j) of an nr x nc patch lies inside a
    rows x cols image."""
    m = 0
    for a in range(nr):
        if 0 <= r0 + a < rows:
            for j in range(nc):
                if 0 <= c0 + j < cols:
                    m |= 1 << (a * nc + j)
    return m


@njit(cache=True)
def _input_block(xf, H, W, C, tpi, tw, ph, pw, t0, tb, v, voff, vs, npos):
    """Input transform of tiles t0 .. t0+tb-1 of the npos-position variant: row i of matrix
    pos at v[pos*vs + voff + i*C] (pixels of the input patch outside the image count as 0)."""
    ts = _tile_of(npos)
    p = _side_of(npos)
    st = _step_of(npos)
    for i in range(tb):
        n, oh, ow = _tile_origin(t0 + i, tpi, tw, ts)
        h0 = st * oh - ph
        w0 = st * ow - pw
        base = ((n * H + h0) * W + w0) * C
        o = voff + i * C
        inside = h0 >= 0 and w0 >= 0 and h0 + p <= H and w0 + p <= W
        mask = 0 if inside else _inside_mask(h0, p, H, w0, p, W)
        if npos == 16:
            if inside:
                _input_tf(C, xf, base, W * C, C, v, o, p * vs, vs, xf, 0)
            else:
                _input_tf_edge(C, xf, base, W * C, C, v, o, p * vs, vs, xf, mask)
        elif npos == 25:
            if inside:
                _input_tf5(C, xf, base, W * C, C, v, o, p * vs, vs, xf, 0)
            else:
                _input_tf5_edge(C, xf, base, W * C, C, v, o, p * vs, vs, xf, mask)
        elif inside:
            _input_tf6(C, xf, base, W * C, C, v, o, p * vs, vs, xf, 0)
        else:
            _input_tf6_edge(C, xf, base, W * C, C, v, o, p * vs, vs, xf, mask)


@njit(cache=True)
def _grad_out_block(gf, OH, OW, K, tpi, tw, t0, tb, m, moff, ms, npos):
    """A dY A^T for the output-gradient tile of tiles t0 .. t0+tb-1 of the npos-position
    variant (zero beyond the output's edge): row i of matrix pos at m[pos*ms + moff + i*K]."""
    ts = _tile_of(npos)
    p = _side_of(npos)
    for i in range(tb):
        n, oh, ow = _tile_origin(t0 + i, tpi, tw, ts)
        s = ((n * OH + oh) * OW + ow) * K
        o = moff + i * K
        inside = oh + ts <= OH and ow + ts <= OW
        mask = 0 if inside else _inside_mask(oh, ts, OH, ow, ts, OW)
        if npos == 16:
            if inside:
                _grad_out_tf(K, gf, s, OW * K, K, m, o, p * ms, ms, gf, 0)
            else:
                _grad_out_tf_edge(K, gf, s, OW * K, K, m, o, p * ms, ms, gf, mask)
        elif npos == 25:
            if inside:
                _grad_out_tf5(K, gf, s, OW * K, K, m, o, p * ms, ms, gf, 0)
            else:
                _grad_out_tf5_edge(K, gf, s, OW * K, K, m, o, p * ms, ms, gf, mask)
        elif inside:
            _grad_out_tf6(K, gf, s, OW * K, K, m, o, p * ms, ms, gf, 0)
        else:
            _grad_out_tf6_edge(K, gf, s, OW * K, K, m, o, p * ms, ms, gf, mask)


@njit(cache=True)
def _fwd_block(xf, H, W, C, Uf, K, b, ph, pw, OH, OW, tpi, tw, t0, tb, v, m, yf, npos, small):
    """Tiles t0 .. t0+tb-1 of _fwd (one thread's work unit); ``small``: _small_blocks."""
    vs = _pos_stride(tb * C, v.itemsize)
    ms = _pos_stride(tb * K, m.itemsize)
    _input_block(xf, H, W, C, tpi, tw, ph, pw, t0, tb, v, 0, vs, npos)
    for pos in range(npos):
        if small:
            gemm_rm_select(True, False, True, tb, K, C, 1.0, v[pos * vs:], C, Uf[pos * K * C:],
                           C, 0.0, m[pos * ms:], K)
        else:
            gemm_rm(False, True, tb, K, C, 1.0, v[pos * vs:], C, Uf[pos * K * C:], C,
                    0.0, m[pos * ms:], K)
    _output_block(m, 0, ms, K, b, yf, OH, OW, tpi, tw, t0, tb, npos)


@njit(cache=True)
def _output_block(m, moff, ms, K, b, yf, OH, OW, tpi, tw, t0, tb, npos):
    """Output transform (plus bias) of tiles t0 .. t0+tb-1 of the npos-position variant whose
    M rows are m[pos*ms + moff + i*K], into the channels-last output yf (the pixels of each
    output tile that lie inside it)."""
    ts = _tile_of(npos)
    p = _side_of(npos)
    for i in range(tb):
        n, oh, ow = _tile_origin(t0 + i, tpi, tw, ts)
        mask = _inside_mask(oh, ts, OH, ow, ts, OW)
        d = ((n * OH + oh) * OW + ow) * K
        if npos == 16:
            _output_tf(K, m, moff + i * K, p * ms, ms, yf, d, OW * K, K, b, mask)
        elif npos == 25:
            _output_tf5(K, m, moff + i * K, p * ms, ms, yf, d, OW * K, K, b, mask)
        else:
            _output_tf4(K, m, moff + i * K, p * ms, ms, yf, d, OW * K, K, b, mask)


@njit(parallel=True, cache=True)
def _fwd(x, U, b, ph, pw, OH, OW, TB, nt, y, vbuf, mbuf, small):
    """y (N, OH, OW, K) = Winograd conv of x (N, H, W, C) with U (npos, K, C), plus b (K,): the
    variant by U's size (16: F(2x2, 3x3), 36: F(4x4, 3x3), 25: its stride-2 form); ``small``:
    the products run in small_gemm (_small_blocks)."""
    N, H, W, C = x.shape
    npos, K = U.shape[0], U.shape[1]
    ts = _tile_of(npos)
    tw = (OW + ts - 1) // ts
    tpi = ((OH + ts - 1) // ts) * tw
    ntiles = N * tpi
    nblocks = (ntiles + TB - 1) // TB
    xf = x.reshape(-1)
    Uf = U.reshape(-1)
    yf = y.reshape(-1)
    for bi in prange(nblocks):
        t = numba.get_thread_id()
        t0 = bi * TB
        _fwd_block(xf, H, W, C, Uf, K, b, ph, pw, OH, OW, tpi, tw, t0, min(TB, ntiles - t0),
                   vbuf[t], mbuf[t], yf, npos, small)


@njit(cache=True)
def _bwd_group(xf, gf, Uf, H, W, C, K, OH, OW, ph, pw, tw, tpi, Hq, Wq, n_a, n_b, TB,
               need_x, need_w, v, m, dv, gxp, acc, gxf, addf, npos):
    """Images n_a .. n_b-1 of _bwd (one thread's work unit)."""
    if need_x:
        for j in range((n_b - n_a) * Hq * Wq * C):
            gxp[j] = 0.0
    for t0 in range(n_a * tpi, n_b * tpi, TB):
        tb = min(TB, n_b * tpi - t0)
        vs = _pos_stride(tb * C, v.itemsize)
        ms = _pos_stride(tb * K, m.itemsize)
        _grad_out_block(gf, OH, OW, K, tpi, tw, t0, tb, m, 0, ms, npos)
        if need_w:
            _input_block(xf, H, W, C, tpi, tw, ph, pw, t0, tb, v, 0, vs, npos)
            for pos in range(npos):
                gemm_rm(True, False, K, C, tb, 1.0, m[pos * ms:], K, v[pos * vs:],
                        C, 1.0, acc[pos * K * C:], C)
        if need_x:
            for pos in range(npos):
                gemm_rm(False, False, tb, C, K, 1.0, m[pos * ms:], K, Uf[pos * K * C:],
                        C, 0.0, dv[pos * vs:], C)
            _scatter_block(dv, 0, vs, C, gxp, n_a, Hq, Wq, tpi, tw, t0, tb, npos)
    if need_x:
        crop_padded(gxp, n_a, n_b, H, W, C, Hq, Wq, ph, pw, gxf, addf)


@njit(cache=True)
def _scatter_block(dv, voff, vs, C, gxp, n_a, Hq, Wq, tpi, tw, t0, tb, npos):
    """Adds B dV B^T of tiles t0 .. t0+tb-1 of the npos-position variant (dV rows at
    dv[pos*vs + voff + i*C]) into the padded dX buffer gxp (images from n_a, (Hq, Wq, C)
    each, offset by the padding)."""
    ts = _tile_of(npos)
    p = _side_of(npos)
    st = _step_of(npos)
    for i in range(tb):
        n, oh, ow = _tile_origin(t0 + i, tpi, tw, ts)
        # the patch's top-left in the padded buffer: (st*oh - ph) + ph, (st*ow - pw) + pw
        d = (((n - n_a) * Hq + st * oh) * Wq + st * ow) * C
        if npos == 16:
            _scatter_tf(C, dv, voff + i * C, p * vs, vs, gxp, d, Wq * C, C, dv, 0)
        elif npos == 25:
            _scatter_tf5(C, dv, voff + i * C, p * vs, vs, gxp, d, Wq * C, C, dv, 0)
        else:
            _scatter_tf6(C, dv, voff + i * C, p * vs, vs, gxp, d, Wq * C, C, dv, 0)


@njit(parallel=True, cache=True)
def _bwd(x, gy, U, ph, pw, g, TB, nt, need_x, need_w, gx, addf, duacc, vbuf, mbuf, dvbuf,
         gxpbuf):
    """Gradients of _fwd: gx (N, H, W, C) (plus addf, flat, unless it is empty) and
    per-thread duacc (nt, npos*C*K) += dU (zeroed by the caller).  Work unit: g whole images,
    so that the overlapping dX tiles of an image are summed by one thread in its own padded
    buffer."""
    N, H, W, C = x.shape
    OH = gy.shape[1]
    OW = gy.shape[2]
    npos, K = U.shape[0], U.shape[1]
    ts = _tile_of(npos)
    th = (OH + ts - 1) // ts
    tw = (OW + ts - 1) // ts
    tpi = th * tw
    Hq = _padded_extent(th, H, ph, npos)
    Wq = _padded_extent(tw, W, pw, npos)
    ngroups = (N + g - 1) // g
    xf = x.reshape(-1)
    gf = gy.reshape(-1)
    Uf = U.reshape(-1)
    gxf = gx.reshape(-1)
    for gi in prange(ngroups):
        t = numba.get_thread_id()
        n_a = gi * g
        _bwd_group(xf, gf, Uf, H, W, C, K, OH, OW, ph, pw, tw, tpi, Hq, Wq, n_a,
                   min(N, n_a + g), TB, need_x, need_w, vbuf[t], mbuf[t], dvbuf[t],
                   gxpbuf[t], duacc[t], gxf, addf, npos)


@njit(parallel=True, cache=True)
def _fwd_whole(x, U, b, ph, pw, OH, OW, nt, y, V, M):
    """_fwd for few tiles: transform all tiles, then one GEMM per position with the 16 (25,
    36) positions split between the threads (each reads its U[pos] once), then the output
    transform.  Three parallel regions; for deep layers whose U is bigger than V and M."""
    N, H, W, C = x.shape
    npos = U.shape[0]
    K = U.shape[1]
    ts = _tile_of(npos)
    tw = (OW + ts - 1) // ts
    tpi = ((OH + ts - 1) // ts) * tw
    Q = N * tpi
    xf = x.reshape(-1)
    Uf = U.reshape(-1)
    yf = y.reshape(-1)
    vs = _pos_stride(Q * C, V.itemsize)
    ms = _pos_stride(Q * K, M.itemsize)
    chunk = (Q + nt - 1) // nt
    for j in prange(nt):
        t0 = j * chunk
        if t0 < Q:
            _input_block(xf, H, W, C, tpi, tw, ph, pw, t0, min(chunk, Q - t0), V, t0 * C, vs,
                         npos)
    for pos in prange(npos):
        gemm_rm(False, True, Q, K, C, 1.0, V[pos * vs:], C, Uf[pos * K * C:], C, 0.0,
                M[pos * ms:], K)
    for j in prange(nt):
        t0 = j * chunk
        if t0 < Q:
            _output_block(M, t0 * K, ms, K, b, yf, OH, OW, tpi, tw, t0, min(chunk, Q - t0),
                          npos)


@njit(parallel=True, cache=True)
def _bwd_whole(x, gy, U, ph, pw, nt, need_x, need_w, gx, addf, du, V, M, gxpbuf):
    """_bwd for few tiles (see _fwd_whole): du (npos*C*K) = dU (no per-thread sums); gx
    includes addf as in _bwd."""
    N, H, W, C = x.shape
    OH = gy.shape[1]
    OW = gy.shape[2]
    npos = U.shape[0]
    K = U.shape[1]
    ts = _tile_of(npos)
    th = (OH + ts - 1) // ts
    tw = (OW + ts - 1) // ts
    tpi = th * tw
    Hq = _padded_extent(th, H, ph, npos)
    Wq = _padded_extent(tw, W, pw, npos)
    Q = N * tpi
    xf = x.reshape(-1)
    gf = gy.reshape(-1)
    Uf = U.reshape(-1)
    gxf = gx.reshape(-1)
    vs = _pos_stride(Q * C, V.itemsize)
    ms = _pos_stride(Q * K, M.itemsize)
    chunk = (Q + nt - 1) // nt
    for j in prange(nt):
        t = numba.get_thread_id()
        t0 = j * chunk
        if t0 < Q:
            tb = min(chunk, Q - t0)
            _grad_out_block(gf, OH, OW, K, tpi, tw, t0, tb, M, t0 * K, ms, npos)
            if need_w:
                _input_block(xf, H, W, C, tpi, tw, ph, pw, t0, tb, V, t0 * C, vs, npos)
    for pos in prange(npos):
        if need_w:
            gemm_rm(True, False, K, C, Q, 1.0, M[pos * ms:], K, V[pos * vs:], C, 0.0,
                    du[pos * K * C:], C)
        if need_x:   # dV overwrites V[pos], which the dW GEMM above has consumed
            gemm_rm(False, False, Q, C, K, 1.0, M[pos * ms:], K, Uf[pos * K * C:], C, 0.0,
                    V[pos * vs:], C)
    if need_x:
        for n in prange(N):
            t = numba.get_thread_id()
            gxp = gxpbuf[t]
            for j in range(Hq * Wq * C):
                gxp[j] = 0.0
            _scatter_block(V, n * tpi * C, vs, C, gxp, n, Hq, Wq, tpi, tw, n * tpi, tpi, npos)
            crop_padded(gxp, n, n + 1, H, W, C, Hq, Wq, ph, pw, gxf, addf)


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
# C = K when there are at most 16*C tiles.  History (BENCHMARKS_perf.md): change 80 (AMD Zen 3,
# before F(4x4, 3x3)) lowered it from 1/32 to 1/16 when the blocked kernels won on 128->128 at
# 16x16, batch 32 (f+b blocked over whole 0.90).  With both variants on F(4x4, 3x3) the whole
# batch won that layer on the Intel host of session 40: 1.152x (60 pairs, quartiles
# 1.099-1.215), so it is back at 1/32 (change 164).  The stride-2 variant kept the same
# effective ratio: whole-batch there lost 0.922x on 64->128 at 32x32, batch 32.
WHOLE_BATCH_RATIO = 1 / 32
# Bytes of one thread's transformed tiles (V and M of a block) the tile count aims at.
_BLOCK_BYTES = 1 << 20
_MIN_TB = 128
_MAX_TB = 1024
# F(4x4, 3x3) (36 positions, 4x4 output tiles: 1.78x fewer multiply-adds than F(2x2, 3x3),
# 2.25 instead of 4 transformed numbers per output pixel) for the layers that would run the
# blocked kernels, with outputs of at least MIN_SIZE_F43 pixels a side.  Its float32 error
# is larger (3-4e-6 of the largest output against 2e-7 on a 32-channel layer, up to 1.5e-5 on
# ResNet-18's layers: it multiplies by 2, 4, 5 and 8 and its weight transform divides by 6
# and 24).  MINIGRAD_WINOGRAD_F43=0 keeps F(2x2, 3x3).
USE_F43 = os.environ.get("MINIGRAD_WINOGRAD_F43", "1") != "0"
MIN_SIZE_F43 = 16
# The whole-batch kernels take F(4x4, 3x3) when there are at least MIN_TILES_F43_WHOLE of its
# 4x4 tiles and at most MAX_CHANNELS_F43_WHOLE channels in and out: its U is 2.25x bigger than
# F(2x2, 3x3)'s and is made (and its gradient reduced) on every step, which only many tiles
# pay for.  F(2x2) time over F(4x4) time, f+b, channels-last, paired: with change 149's weight
# kernels (BENCHMARKS_perf.md, change 150) 512->512 at 4x4 with 32 / 64 / 128 tiles 0.88 / 1.15
# / 1.36-1.38x, 256->256 at 8x8 with 32 / 64 tiles 1.00 / 1.14x; with the float64 weight kernels
# before it (change 84) 256->256 with 32 / 64 / 128 / 256 / 512 tiles 0.63 / 0.83 / 1.24 / 1.29 /
# 1.57x and 512->512 at 128 tiles 0.97-1.02x.  Wider layers were not measured.
MIN_TILES_F43_WHOLE = 64
MAX_CHANNELS_F43_WHOLE = 512
# Its blocks hold 64 tiles or more: f+b of 64->64 at 32x32, batch 32, with 32 / 64 / 128 /
# 256 tiles: 31.7 / 27.1 / 31.2 / 34.4 ms (128->128 at 16x16: 35.5 / 32.9 / 32.1 / 31.9).
_MIN_TB_F43 = 64
# The blocked forward's products (tb x K by C, tb = 64 tiles for 64-channel input) fall below
# small_gemm.preferred's 2^20 multiply-adds, measured on the AMD Zen 4 host of change 117,
# so they ran in single-threaded OpenBLAS.  On the Intel Xeon of sessions 36-45 small_gemm's
# tile ran 64 x 128 by 64 at 122 against 102 GFLOP/s (one thread, in cache) and the blocked
# forwards of 64->64 at 32x32 (F(4x4, 3x3)) and 64->128 at 32x32 stride 2 1.21-1.32x faster at
# batch 32 and 128 (BENCHMARKS_perf.md, change 172).  True: those products run in small_gemm
# where _small_blocks says so.
SMALL_GEMM_BLOCKS = cpu_vendor() == "GenuineIntel"


def _small_blocks(C, K, dt):
    """True when the blocked forward's products run in small_gemm: SMALL_GEMM_BLOCKS, float32,
    and small_gemm's AVX-512 tile (where this was measured) taking K columns by C channels
    (small_gemm.wide_tile_fits: preferred's rule without its size floor)."""
    return (SMALL_GEMM_BLOCKS and np.dtype(dt) == np.float32
            and small_gemm.wide_tile_fits(K, C))


# 3x3 stride-2 layers take the 25-position variant (1.44x fewer multiply-adds than im2col).
# MINIGRAD_WINOGRAD_S2=0 sends them back to the im2col path.
USE_S2 = os.environ.get("MINIGRAD_WINOGRAD_S2", "1") != "0"
# Its blocks hold 64 tiles or more (about _BLOCK_BYTES for 64->128): the 64->128 stride-2 row
# (batch 32, channels-last) ran 1.07-1.10x faster than with 128-tile blocks, 1.11x with 96.
_MIN_TB_S2 = 64


def applicable(N, C, K, R, S, OH, OW, stride, dilation):
    """True when the layer is 3x3, stride 1 (or 2, see USE_S2), undilated, and big enough
    for this path."""
    return (R == 3 and S == 3 and (stride == (1, 1) or (USE_S2 and stride == (2, 2)))
            and dilation == (1, 1) and C >= MIN_CHANNELS and K >= MIN_CHANNELS
            and N * ((OH + 1) // 2) * ((OW + 1) // 2) >= MIN_TILES)


def _tile_count(ntiles, C, K, itemsize, nt, npos=16):
    """Tiles per block: about _BLOCK_BYTES of transformed data, at least _MIN_TB
    (thinner GEMMs lose speed), at least one block per thread, two when there are
    enough tiles (dynamic scheduling balances them)."""
    min_tb = _MIN_TB_F43 if npos == 36 else (_MIN_TB_S2 if npos == 25 else _MIN_TB)
    tb = _BLOCK_BYTES // max(1, npos * (C + K) * itemsize)
    tb = max(min_tb, min(_MAX_TB, tb))
    if ntiles >= 2 * nt * min_tb:
        tb = min(tb, -(-ntiles // (2 * nt)))
    else:
        tb = min(tb, -(-ntiles // nt))
    return int(max(1, tb))


def tile_size(N, C, K, OH, OW):
    """Output tile size of the Winograd variant a layer runs: 4 for F(4x4, 3x3) (see
    USE_F43), else 2."""
    if not USE_F43:
        return 2
    if _whole_layer(N, C, K, OH, OW):
        big = N * ((OH + 3) // 4) * ((OW + 3) // 4) >= MIN_TILES_F43_WHOLE
        return 4 if big and max(C, K) <= MAX_CHANNELS_F43_WHOLE else 2
    return 4 if min(OH, OW) >= MIN_SIZE_F43 else 2


def positions(ts):
    """Transformed positions per tile (16 or 36) of the stride-1 variant with output tiles
    ts x ts."""
    return (ts + 2) * (ts + 2)


def variant(N, C, K, OH, OW, stride):
    """Transformed positions per tile of the variant an applicable layer runs: 25 for
    stride 2, else 16 (F(2x2, 3x3)) or 36 (F(4x4, 3x3)) by tile_size."""
    return 25 if stride == (2, 2) else positions(tile_size(N, C, K, OH, OW))


def transform_weights(w, dt, npos=16):
    """U (npos, K, C) for weights w (K, C, 3, 3) in the npos-position variant."""
    K, C = w.shape[0], w.shape[1]
    U = np.empty((npos, K, C), dtype=dt)
    winograd_weights.transform(w, U)
    return U


def _whole_layer(N, C, K, OH, OW):
    """True when the layer runs the whole-batch kernels: the transformed weight matrices
    outweigh the tiles (WHOLE_BATCH_RATIO), tiles counted as 2x2 output tiles whatever the
    tile size (so that tile_size, forward and backward agree).  All variants share the ratio.
    Measured for the stride-2 one, channels-last, batch 128, whole-batch against blocked:
    128->256 at 16x16 1.29x faster (2048 tiles: whole), 64->128 at 32x32 0.80x (8192:
    blocked); batch 32, 64->128 at 32x32 (2048 tiles: blocked) whole-batch 0.922x (session
    40)."""
    ntiles = N * ((OH + 1) // 2) * ((OW + 1) // 2)
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


def _positions(name, copies, n, dt, npos=16):
    """Scratch for ``copies`` sets (one per thread, or one for the whole batch) of the npos
    position matrices of n elements each, _pos_stride apart: a (copies, npos * stride) array."""
    stride = _pos_stride(n, np.dtype(dt).itemsize)
    return _scratch.get(name, copies * npos * stride, dt).reshape(copies, -1)


def forward(xcl, U, b, ph, pw, OH, OW, y4):
    """y4 (N, OH, OW, K) from channels-last contiguous xcl (N, H, W, C); U from
    transform_weights (its size says the variant)."""
    nt = numba.get_num_threads()
    N = xcl.shape[0]
    npos, K, C = U.shape
    ts = _tile_of(npos)
    dt = xcl.dtype
    ntiles = N * ((OH + ts - 1) // ts) * ((OW + ts - 1) // ts)
    if _whole_layer(N, C, K, OH, OW):
        _fwd_whole(xcl, U, b, ph, pw, OH, OW, nt, y4,
                   _positions("v", 1, ntiles * C, dt, npos)[0],
                   _positions("m", 1, ntiles * K, dt, npos)[0])
        return
    TB = _tile_count(ntiles, C, K, xcl.itemsize, nt, npos)
    _fwd(xcl, U, b, ph, pw, OH, OW, TB, nt, y4,
         _positions("v", nt, TB * C, dt, npos), _positions("m", nt, TB * K, dt, npos),
         _small_blocks(C, K, dt))


def backward(xcl, gycl, U, ph, pw, need_x, need_w, gx4, addf):
    """(gw or None); fills gx4 (N, H, W, C) when need_x, with dX plus ``addf`` (a flat
    array in gx4's layout) unless ``addf`` is empty."""
    nt = numba.get_num_threads()
    N, H, W, C = xcl.shape
    OH, OW = gycl.shape[1], gycl.shape[2]
    npos, K = U.shape[0], U.shape[1]
    ts = _tile_of(npos)
    dt = xcl.dtype
    th, tw = (OH + ts - 1) // ts, (OW + ts - 1) // ts
    tpi = th * tw
    Hq, Wq = _padded_extent(th, H, ph, npos), _padded_extent(tw, W, pw, npos)
    need_x, need_w = bool(need_x), bool(need_w)
    if _whole_layer(N, C, K, OH, OW):
        Q = N * tpi
        du = _scratch.get("du", npos * C * K if need_w else 1, dt).reshape(1, -1)
        _bwd_whole(xcl, gycl, U, ph, pw, nt, need_x, need_w, gx4, addf, du.reshape(-1),
                   _positions("v", 1, Q * C, dt, npos)[0], _positions("m", 1, Q * K, dt, npos)[0],
                   _scratch.get("gxp", nt * Hq * Wq * C if need_x else nt, dt).reshape(nt, -1))
    else:
        TB = _tile_count(N * tpi, C, K, xcl.itemsize, nt, npos)
        g = max(1, min(-(-TB // tpi), -(-N // (2 * nt))))   # whole images per work unit
        TB = min(TB, g * tpi)
        du = _scratch.get("du", nt * npos * C * K if need_w else nt, dt).reshape(nt, -1)
        du.fill(0)
        _bwd(xcl, gycl, U, ph, pw, g, TB, nt, need_x, need_w, gx4, addf, du,
             _positions("v", nt, TB * C if need_w else 0, dt, npos),
             _positions("m", nt, TB * K, dt, npos),
             _positions("dv", nt, TB * C if need_x else 0, dt, npos),
             _scratch.get("gxp", nt * g * Hq * Wq * C if need_x else nt, dt).reshape(nt, -1))
    if not need_w:
        return None
    gw = np.empty((K, C, 3, 3), dtype=dt)
    winograd_weights.gradient(du, gw)
    return gw
