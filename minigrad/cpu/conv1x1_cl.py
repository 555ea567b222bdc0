"""Unpadded 1x1 convolutions with few output pixels, each pass one GEMM per thread.

With x stored (N, H, W, C) and Xs its (Q, C) matrix of the pixels the stride reads
(Q = N*OH*OW; x's own rows for stride 1, a gathered copy otherwise), and W the (K, C)
matrix of the weights:

    forward  Y (Q x K)   = Xs @ W^T (+ b)      rows of Q split between the threads
    dW       gW (K x C)  = dY^T @ Xs           rows of K (output channels) split
    dX       dXs (Q x C) = dY @ W              rows of Q split; added at the pixels read

Each thread runs one single-threaded product on its share (``blas.gemm_rm_whole``: small_gemm's
wide tile on the shapes its rule prefers, here dW and dX; else OpenBLAS).  With few
pixels (up to ``conv._WHOLE_1X1_MAX_ROWS``) the im2col path cut the same products into tiles
of 128-256 pixels: every tile re-packed the weights, and dW summed short products (a
reduction over one tile's pixels) into per-thread copies of dW; the whole shares ran those
layers 1.1-1.2x faster (BENCHMARKS_perf.md, change 101).  With many pixels the tiles win:
their dW and dX read each dY tile from cache.  OpenBLAS's own threads would not do: after each Numba
parallel region the OpenMP workers spin for a while, and a multi-threaded OpenBLAS call then
competes with them for the two cores (3-7x slower products, measured).
"""

from numba import njit, prange

from .blas import gemm_rm_whole


@njit(cache=True, inline="always")
def _share(total, t, parts):
    """[start, end) of part t when ``total`` rows are split into ``parts`` near-equal parts."""
    return total * t // parts, total * (t + 1) // parts


@njit(cache=True)
def _gather_rows(xf, q0, q1, H, W, C, sh, sw, OH, OW, xs, base):
    """xs[q - base] = x[n, oh*sh, ow*sw, :] for q in [q0, q1), q = (n*OH + oh)*OW + ow; xf is
    x (N, H, W, C) flat, xs (rows x C) flat (conv1x1_cl_units gathers one image, base n*OH*OW,
    into a buffer of its own)."""
    for q in range(q0, q1):
        n = q // (OH * OW)
        p = q - n * OH * OW
        oh = p // OW
        ow = p - oh * OW
        src = xf[((n * H + oh * sh) * W + ow * sw) * C:]
        d = xs[(q - base) * C:(q - base + 1) * C]
        for c in range(C):
            d[c] = src[c]


@njit(cache=True)
def _scatter_add_rows(dxs, q0, q1, H, W, C, sh, sw, OH, OW, gxf, base):
    """gx[n, oh*sh, ow*sw, :] += dxs[q - base] for q in [q0, q1) (the adjoint of
    _gather_rows)."""
    for q in range(q0, q1):
        n = q // (OH * OW)
        p = q - n * OH * OW
        oh = p // OW
        ow = p - oh * OW
        src = dxs[(q - base) * C:(q - base + 1) * C]
        d = gxf[((n * H + oh * sh) * W + ow * sw) * C:]
        for c in range(C):
            d[c] += src[c]


@njit(parallel=True, cache=True)
def forward(x, sh, sw, OH, OW, gathered, xs, w, b, has_b, y, parts):
    """y (Q x K, flat) = Xs @ w^T (+ b), w the (K x C) weights (flat).  With ``gathered``
    each part first copies its rows of Xs from channels-last x (N, H, W, C) into xs (Q x C,
    flat, kept for the backward); otherwise xs already holds Xs (x's rows, stride 1)."""
    N, H, W, C = x.shape
    K = b.shape[0]
    Q = N * OH * OW
    xf = x.reshape(-1)
    for t in prange(parts):
        q0, q1 = _share(Q, t, parts)
        if gathered:
            _gather_rows(xf, q0, q1, H, W, C, sh, sw, OH, OW, xs, 0)
        gemm_rm_whole(False, True, q1 - q0, K, C, 1.0, xs[q0 * C:], C, w, C, 0.0, y[q0 * K:],
                      K)
        if has_b:
            for q in range(q0, q1):
                row = y[q * K:(q + 1) * K]
                for k in range(K):
                    row[k] += b[k]


@njit(parallel=True, cache=True)
def backward(xs, w, gy, sh, sw, OH, OW, need_x, need_w, accumulate, gw, gx, dxs, parts):
    """gw (K x C, flat) = gy^T @ xs when ``need_w``; with ``need_x``, dX = gy @ w goes to
    channels-last gx (N, H, W, C): stride 1 straight into its rows (added when
    ``accumulate``), otherwise through dxs (Q x C scratch) and added at the sampled pixels
    (gx must then hold zeros or the gradient so far).  gy (Q x K), xs (Q x C), w (K x C),
    all flat."""
    H, W, C = gx.shape[1], gx.shape[2], gx.shape[3]
    K = w.size // C
    Q = gy.size // K
    gxf = gx.reshape(-1)
    direct = sh == 1 and sw == 1
    for t in prange(parts):
        if need_w:
            k0, k1 = _share(K, t, parts)
            gemm_rm_whole(True, False, k1 - k0, C, Q, 1.0, gy[k0:], K, xs, C, 0.0, gw[k0 * C:],
                          C)
        if need_x:
            q0, q1 = _share(Q, t, parts)
            if direct:
                gemm_rm_whole(False, False, q1 - q0, C, K, 1.0, gy[q0 * K:], K, w, C,
                              1.0 if accumulate else 0.0, gxf[q0 * C:], C)
            else:
                gemm_rm_whole(False, False, q1 - q0, C, K, 1.0, gy[q0 * K:], K, w, C, 0.0,
                              dxs[q0 * C:], C)
                _scatter_add_rows(dxs, q0, q1, H, W, C, sh, sw, OH, OW, gxf, 0)

