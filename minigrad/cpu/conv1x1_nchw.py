"""Unpadded 1x1 convolutions of NCHW-contiguous input, computed in NCHW (CPU kernels).

For one image, a 1x1 convolution is a single GEMM on its planes:

    forward  Y[n] (K x P)  = W (K x C) @ Xs[n] (C x P)
    dW       gW (K x C)   += dY[n] (K x P) @ Xs[n]^T
    dX       dXs (C x P)   = W^T @ dY[n]        (added at the pixels the stride reads)

where P = OH*OW and Xs[n] = x[n, :, ::sh, ::sw] (x[n] itself, as a (C, H*W) matrix,
for stride 1).  NCHW input and NCHW dY are then used as they are stored: a stride
only asks for a gather of every sh-th row and sw-th column of each plane, and dX for
the matching scatter, both without transposing anything.  (The channels-last GEMM
path had to transpose the sampled pixels into (pixels, C) rows first, and wrote dX
channels-last.)  The output and dX are NCHW-contiguous.

Small images (P under _MIN_COLUMNS, or under _MIN_PREFETCH_COLUMNS while PREFETCH_NEXT is
on) are handled g at a time: their Xs are laid side by side into one (C x g*P) matrix so that
the GEMMs get enough columns; the forward's kept copy of Xs uses that grouped layout
(``group`` records g).

One parallel region per call; each work unit (g images) runs single-threaded BLAS,
as the other GEMM paths do (the caller holds ``conv._single_blas``).
"""

import numba
import numpy as np
from numba import njit, prange

from .blas import gemm_rm
from .gemm_stream import gemm_stream_if as _gemm
from .prefetch import cpu_vendor, stream_in
from .stride2_lanes import add_to_even_8, add_to_even_16, take_even_8, take_even_16

# Fewest GEMM columns (pixels) per work unit: images with fewer output pixels are
# grouped.  Per-image GEMMs of 512x256 by 256x16 ran at 65-74% of the single-thread
# peak against 87-91% for 64 or more columns (BENCHMARKS_perf.md, change 72).
_MIN_COLUMNS = 256
# ...but with PREFETCH_NEXT, images of at least this many output pixels go one per unit, so
# that their GEMMs prefetch the next image: on the Intel Xeon of sessions 36-44, 128->256 at
# 16x16 stride 2 (64 pixels) 1.06-1.11x, 128->128 at 16x16 stride 2 1.13-1.16x and 256->256 at
# 8x8 stride 1 1.16-1.17x faster than in groups of four; 256->512 at 8x8 stride 2 (16 pixels,
# groups of four instead of eight) 0.99x, so smaller images stay grouped (BENCHMARKS_perf.md,
# change 169).
_MIN_PREFETCH_COLUMNS = 64


def group_size(N, P, nt):
    """Images per work unit: one from _MIN_PREFETCH_COLUMNS output pixels while PREFETCH_NEXT
    is on; otherwise enough for _MIN_COLUMNS GEMM columns, while leaving at least two work
    units per thread."""
    if PREFETCH_NEXT and P >= _MIN_PREFETCH_COLUMNS:
        return 1
    g = max(1, -(-_MIN_COLUMNS // max(P, 1)))
    return int(max(1, min(g, N // (2 * nt))))


@njit(cache=True)
def reads_x_in_place(sh, sw, g):
    """True when the kernels use x's own planes as the GEMM operand (stride 1, one image
    per work unit): nothing is gathered, and the forward keeps no sampled copy."""
    return sh == 1 and sw == 1 and g == 1


# Rows of FIXED_ROW_WIDTHS sampled pixels at stride 2 (ResNet's 1x1 stride-2 layers on 32x32,
# 16x16 and 8x8 input) are copied by loops whose length is known when compiled: the same loops
# with a run-time width of 16 ran the gather 2.0-2.5x slower (BENCHMARKS_perf.md, change 129);
# with one of 4, 2.3x (gather) and 1.7x (scatter) slower, and the 256->512 8x8 row 1.036x
# (change 171).
FIXED_ROW_WIDTHS = (16, 8, 4)


@njit(cache=True, inline="always")
def _copy_sampled_row(xf, s, sw, dst, OW, shuffled):
    """dst[:OW] = xf[s::sw][:OW]; ``shuffled`` (pairs_apply: sw 2, OW 16 or 8, the row
    holding 2*OW elements): by stride2_lanes' vector shuffle."""
    if shuffled and OW == 16:
        take_even_16(xf, s, dst, 0)
    elif shuffled:
        take_even_8(xf, s, dst, 0)
    elif sw == 2:   # a constant stride vectorises (2.6x faster on 32x32 planes)
        src = xf[s:s + 2 * OW - 1]
        for ow in range(OW):
            dst[ow] = src[2 * ow]
    else:
        for ow in range(OW):
            dst[ow] = xf[s + ow * sw]


@njit(cache=True, inline="always")
def _gather_rows(x, n_a, n_b, sh, sw, OH, OW, xs, shuffled):
    """The body of _gather, inlined with a constant sw and OW where it can be."""
    N, C, H, W = x.shape
    P = OH * OW
    G = (n_b - n_a) * P
    xf = x.reshape(-1)
    for i in range(n_b - n_a):
        for c in range(C):
            s0 = ((n_a + i) * C + c) * H * W
            o = c * G + i * P
            for oh in range(OH):
                _copy_sampled_row(xf, s0 + oh * sh * W, sw, xs[o + oh * OW:o + (oh + 1) * OW], OW,
                                  shuffled)


def pairs_apply(sw, OW, W):
    """True when the gather and scatter of a sampled row use stride2_lanes' shuffles."""
    return sw == 2 and (OW == 16 or OW == 8) and 2 * OW <= W


pairs_apply_jit = njit(cache=True, inline="always")(pairs_apply)


@njit(cache=True)
def _gather(x, n_a, n_b, sh, sw, OH, OW, xs):
    """xs (C x G) flat, G = (n_b-n_a)*P: columns i*P .. (i+1)*P-1 hold
    x[n_a+i, c, ::sh, ::sw] (its first OH x OW pixels) for each channel c."""
    if pairs_apply_jit(sw, OW, x.shape[3]):
        _gather_rows(x, n_a, n_b, sh, 2, OH, OW, xs, True)
    elif sw == 2 and OW == FIXED_ROW_WIDTHS[0]:
        _gather_rows(x, n_a, n_b, sh, 2, OH, FIXED_ROW_WIDTHS[0], xs, False)
    elif sw == 2 and OW == FIXED_ROW_WIDTHS[1]:
        _gather_rows(x, n_a, n_b, sh, 2, OH, FIXED_ROW_WIDTHS[1], xs, False)
    elif sw == 2 and OW == FIXED_ROW_WIDTHS[2]:
        _gather_rows(x, n_a, n_b, sh, 2, OH, FIXED_ROW_WIDTHS[2], xs, False)
    else:
        _gather_rows(x, n_a, n_b, sh, sw, OH, OW, xs, False)


@njit(cache=True, inline="always")
def _scatter_add_rows(d, G, i, C, OH, OW, sh, sw, H, W, gxf, base, paired):
    """The body of _scatter_add, inlined with a constant sw and OW where it can be;
    ``paired`` as in _scatter_add_row (2: by stride2_lanes' vector shuffle)."""
    P = OH * OW
    for c in range(C):
        s0 = c * G + i * P
        o = base + c * H * W
        for oh in range(OH):
            _scatter_add_row(d[s0 + oh * OW:s0 + (oh + 1) * OW], gxf, o + oh * sh * W, sw, OW, W,
                             paired)


@njit(cache=True)
def _scatter_add(d, G, i, C, OH, OW, sh, sw, H, W, gxf, base):
    """gx[n, c, oh*sh, ow*sw] += d[c, i*P + oh*OW + ow] for one image, whose planes start
    at gxf[base]; d is (C x G) flat, P = OH*OW.  With sw == 2 the pixels between the
    sampled ones in a sampled row may be rewritten unchanged (a -0.0 there becomes +0.0)."""
    if pairs_apply_jit(sw, OW, W):
        _scatter_add_rows(d, G, i, C, OH, OW, sh, 2, H, W, gxf, base, 2)
    elif sw == 2 and OW == FIXED_ROW_WIDTHS[0]:
        _scatter_add_rows(d, G, i, C, OH, FIXED_ROW_WIDTHS[0], sh, 2, H, W, gxf, base, 0)
    elif sw == 2 and OW == FIXED_ROW_WIDTHS[1]:
        _scatter_add_rows(d, G, i, C, OH, FIXED_ROW_WIDTHS[1], sh, 2, H, W, gxf, base, 0)
    elif sw == 2 and OW == FIXED_ROW_WIDTHS[2]:
        _scatter_add_rows(d, G, i, C, OH, FIXED_ROW_WIDTHS[2], sh, 2, H, W, gxf, base, 0)
    else:
        _scatter_add_rows(d, G, i, C, OH, OW, sh, sw, H, W, gxf, base, 1)


@njit(cache=True, inline="always")
def _scatter_add_row(src, gxf, o, sw, OW, W, paired):
    """gxf[o::sw][:OW] += src[:OW] (see _scatter_add).  ``paired`` 1: with sw == 2, add + 0.0
    to the pixels in between too (for a run-time OW; with a fixed one the plain loop ran the
    scatter 1.7x faster: BENCHMARKS_perf.md, change 129); 2: the same by stride2_lanes' vector
    shuffle (pairs_apply must hold)."""
    if paired == 2 and OW == 16:
        add_to_even_16(src, 0, gxf, o)
    elif paired == 2:
        add_to_even_8(src, 0, gxf, o)
    elif sw == 2 and paired == 1 and 2 * OW <= W:
        # Both members of each (even, odd) pair are stored, so LLVM vectorises the
        # pairs as interleaved vectors; with the odd one left alone it does not.  The
        # odd one gets + 0.0 (an identity, except that -0.0 becomes +0.0) because a
        # plain copy-back is folded away, and the stores with it.
        dst = gxf[o:o + 2 * OW]
        for ow in range(OW):
            e = dst[2 * ow] + src[ow]
            f = dst[2 * ow + 1] + 0.0
            dst[2 * ow] = e
            dst[2 * ow + 1] = f
    elif sw == 2:
        dst = gxf[o:o + 2 * OW - 1]
        for ow in range(OW):
            dst[2 * ow] += src[ow]
    else:
        for ow in range(OW):
            gxf[o + ow * sw] += src[ow]


@njit(cache=True)
def _group_rows(a, n_a, n_b, R, P, out):
    """out (R x G) flat = the (R x P) blocks of images n_a .. n_b-1 of a (N, R, P) flat
    array, side by side (G = (n_b-n_a)*P)."""
    G = (n_b - n_a) * P
    for i in range(n_b - n_a):
        src = (n_a + i) * R * P
        for r in range(R):
            # views indexed by p alone: an index like d + p keeps Numba's negative-index
            # check in the loop, which stops LLVM from vectorising it (3-4x slower copies)
            s = a[src + r * P:]
            d = out[r * G + i * P:]
            for p in range(P):
                d[p] = s[p]


# One image per work unit: True fills y's rows with the bias in one sequential pass and has
# the GEMM add into them (faster on the Zen 4 host of change 127, where the GEMM otherwise
# waited on y's lines); False (the default) has the GEMM write y and adds a nonzero bias
# afterwards, while y is in L2.  On the Zen 5 host of session 34, without a bias (as in ResNet's
# downsampling layers), False ran the 64->128 stride-2 row 1.033-1.039x faster (paired);
# with a bias, 1.002-1.011x (BENCHMARKS_perf.md, change 145).
FILL_Y_FIRST = False


@njit(parallel=True, cache=True)
def forward(x, wf, b, sh, sw, OH, OW, g, keep, xs, y, nt, fill_first, prefetch):
    """y (N, K, OH, OW) = 1x1 conv of x (N, C, H, W), both C-contiguous, with wf (K*C,)
    (w as a (K, C) matrix), plus b (K,) (zeros for no bias).  With ``keep``, the sampled input
    is written to xs (N*C*P, grouped g images at a time) for the backward; stride 1
    with g == 1 reads x in place and writes nothing there.  ``fill_first``: FILL_Y_FIRST.
    ``prefetch`` (from ``schedule``): when positive (one image per work unit), the GEMM of
    image n prefetches image n + prefetch's x, the thread's next unit; 0 prefetches nothing.
    Prefetching never changes a value."""
    N, C, H, W = x.shape
    K = b.shape[0]
    P = OH * OW
    ngroups = (N + g - 1) // g
    in_place = reads_x_in_place(sh, sw, g)
    has_b = False
    for k in range(K):
        has_b = has_b or b[k] != 0
    xbuf = np.empty((nt, 0 if (keep or in_place) else C * g * P), dtype=x.dtype)
    ybuf = np.empty((nt, K * g * P if g > 1 else 0), dtype=x.dtype)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for gi in prange(ngroups):
        t = numba.get_thread_id()
        n_a = gi * g
        n_b = min(N, n_a + g)
        G = (n_b - n_a) * P
        if in_place:
            src = xf[n_a * C * P:]
        else:
            src = xs[n_a * C * P:] if keep else xbuf[t]
            _gather(x, n_a, n_b, sh, sw, OH, OW, src)
        if g == 1:
            out = yf[n_a * K * P:n_b * K * P]
            nx = min(n_a + prefetch, N - 1)
            lx = C * H * W if (prefetch > 0 and n_a + prefetch < N) else 0
            if fill_first:
                for k in range(K):
                    bk = b[k]
                    row = out[k * P:(k + 1) * P]
                    for p in range(P):
                        row[p] = bk
            beta = 1.0 if fill_first else 0.0
            _gemm(prefetch > 0, False, False, K, P, C, wf, C, src, P, beta, out, P, xbuf[t], xf,
                  nx * C * H * W, lx, xf, 0, 0)
            if not fill_first:
                for k in range(K if has_b else 0):
                    bk = b[k]
                    row = out[k * P:(k + 1) * P]
                    for p in range(P):
                        row[p] += bk
        else:
            gemm_rm(False, False, K, G, C, 1.0, wf, C, src, G, 0.0, ybuf[t], G)
            yb = ybuf[t]
            for i in range(n_b - n_a):
                for k in range(K):
                    bk = b[k]
                    s = yb[k * G + i * P:]
                    d = yf[((n_a + i) * K + k) * P:]
                    for p in range(P):
                        d[p] = s[p] + bk


# How backward writes dX (its x_mode argument).
DX_WRITE = 0       # gx is a fresh array: gx = dX (+ addf when addf is not empty)
DX_ADD_IN_PLACE = 1   # gx holds the gradient gathered so far: gx += dX at the sampled pixels


# backward's stream_in passes over each work unit's dY and sampled x (or x itself, stride 1)
# before its GEMMs.  NCHW 1x1 stride-2 64->128 row: 1.08-1.10x with them on an AMD Zen 4 host
# (BENCHMARKS_perf.md, change 127) and 1.03x on a Zen 5 (session 30); on the Intel Xeon of
# sessions 36-41 the row ran 1.023-1.027x faster without them (four paired runs, change 166).
STREAM_OPERANDS = cpu_vendor() != "GenuineIntel"

# With one image per work unit, forward's and backward's GEMMs prefetch the memory the thread
# reads next (gemm_stream), the threads taking contiguous runs of images so that the next one
# is known: the NCHW 1x1 stride-2 64->128 kernels 1.14-1.17x faster on the Intel Xeon of
# sessions 36-43 than one image at a time without prefetching (BENCHMARKS_perf.md, change 168).
PREFETCH_NEXT = True
# Runs of images per thread while prefetching (Numba hands out runs, not single images, then):
# 4 runs of 4 images each at batch 32 kept the gain of one run per thread (1.139x against
# 1.135x, paired, and 1.199x against 1.204x after a PyTorch call each) and bound the imbalance
# when another process holds a core for a while to one run.
RUNS_PER_THREAD = 4


def schedule(N, g, nt):
    """(prefetch, chunk) for forward and backward on N images in units of g: with
    PREFETCH_NEXT and one image per unit, the images go out in runs of ceil(N / (nt *
    RUNS_PER_THREAD)) (Numba's chunk size) and each GEMM prefetches the next image of its run
    (prefetch 1); else units go out one at a time (chunk 1, for load balance) and nothing is
    prefetched (0).  Units of several images (small images, grouped) ran no faster with
    prefetching (128->256 at 16x16, stride 2: 1.014x; 256->512 at 8x8: 0.994x; 256->256 at
    8x8, stride 1: 0.986x)."""
    if PREFETCH_NEXT and g == 1:
        return 1, max(1, -(-N // (nt * RUNS_PER_THREAD)))
    return 0, 1

# Elements of dW per work unit when backward sums its per-thread partial sums.
_SUM_BLOCK = 8192


@njit(parallel=True, cache=True)
def backward(x, xs, have_xs, wf, gy, sh, sw, g, need_x, need_w, x_mode, gx, gwacc, gw, addf,
             stream, nt, prefetch):
    """Gradients of ``forward``: gw (K*C,) gets dW (a (K, C) matrix), summed from per-thread
    partial sums in gwacc (nt, K*C), scratch space the caller need not initialise; gx
    (N, C, H, W) C-contiguous gets dX as x_mode says.

    ``gy`` (N, K, OH, OW) C-contiguous.  ``xs``: the forward's kept sampled input when
    ``have_xs`` (grouped by the same g), else it is gathered again from x.  ``stream``:
    STREAM_OPERANDS; ``prefetch`` (from ``schedule``): when positive (one image per work
    unit), the dW GEMM of image n prefetches its dX rows in gx, the dX GEMM image n +
    prefetch's dY and sampled x.  Both only move data into the cache, never change what is
    computed."""
    N, C, H, W = x.shape
    K = gy.shape[1]
    OH, OW = gy.shape[2], gy.shape[3]
    P = OH * OW
    ngroups = (N + g - 1) // g
    in_place = reads_x_in_place(sh, sw, g)
    need_xs = need_w and not have_xs and not in_place
    xbuf = np.empty((nt, C * g * P if need_xs else 0), dtype=x.dtype)
    gbuf = np.empty((nt, K * g * P if g > 1 else 0), dtype=x.dtype)
    dbuf = np.empty((nt, C * g * P if (need_x and not in_place) else 0), dtype=x.dtype)
    bpack = np.empty((nt, C * P if (need_w and g == 1) else 0), dtype=x.dtype)  # packed B
    xf = x.reshape(-1)
    gyf = gy.reshape(-1)
    gxf = gx.reshape(-1)
    HW = H * W
    sink = np.zeros(nt, dtype=x.dtype)    # stream_in's sums, kept so that its loops stay
    started = np.zeros(nt, dtype=np.bool_)   # threads whose gwacc row holds a partial sum
    for gi in prange(ngroups):
        t = numba.get_thread_id()
        n_a = gi * g
        n_b = min(N, n_a + g)
        G = (n_b - n_a) * P
        if g == 1:
            gyg = gyf[n_a * K * P:]
            if stream:
                sink[t] += stream_in(gyf[n_a * K * P:n_b * K * P])
        else:
            gyg = gbuf[t]
            _group_rows(gyf, n_a, n_b, K, P, gyg)
        # the prefetch streams (lengths 0: none): this image's dX rows (the dW GEMM), the next
        # image's dY and sampled x (the dX GEMM, or the dW GEMM without dX)
        pf = prefetch > 0 and g == 1
        nx = min(n_a + prefetch, N - 1)
        more = pf and n_a + prefetch < N
        l_dx = C * HW if (pf and need_x) else 0
        l_dy = K * P if more else 0
        # what the next dW GEMM reads: the kept sampled x, or x itself (gathered again or read
        # in place)
        sampled = xs if have_xs else xf
        per_image = C * P if have_xs else C * HW
        s_x, l_x = (nx * per_image, per_image) if (more and need_w) else (0, 0)
        if need_w:
            if in_place:
                src = xf[n_a * C * P:]
                if stream:
                    sink[t] += stream_in(xf[n_a * C * P:n_b * C * P])
            elif have_xs:
                src = xs[n_a * C * P:]
                if stream:
                    sink[t] += stream_in(xs[n_a * C * P:n_b * C * P])
            else:
                src = xbuf[t]
                _gather(x, n_a, n_b, sh, sw, OH, OW, src)
            beta = 1.0 if started[t] else 0.0
            if need_x:
                _gemm(pf, False, True, K, C, G, gyg, G, src, G, beta, gwacc[t], C, bpack[t], gxf,
                      n_a * C * HW, l_dx, gxf, 0, 0)
            else:
                _gemm(pf, False, True, K, C, G, gyg, G, src, G, beta, gwacc[t], C, bpack[t], gyf,
                      nx * K * P, l_dy, sampled, s_x, l_x)
            started[t] = True
        if not need_x:
            continue
        if in_place:
            out = gxf[n_a * C * HW:]
            beta = 0.0
            if x_mode == DX_ADD_IN_PLACE:
                beta = 1.0
            elif addf.size > 0:
                src = addf[n_a * C * HW:]
                for j in range(C * HW):
                    out[j] = src[j]
                beta = 1.0
            _gemm(pf, True, False, C, P, K, wf, C, gyg, G, beta, out, P, bpack[t], gyf,
                  nx * K * P, l_dy, sampled, s_x, l_x)
            continue
        d = dbuf[t]
        if need_w:
            _gemm(pf, True, False, C, G, K, wf, C, gyg, G, 0.0, d, G, bpack[t], gyf, nx * K * P,
                  l_dy, sampled, s_x, l_x)
        else:
            _gemm(pf, True, False, C, G, K, wf, C, gyg, G, 0.0, d, G, bpack[t], gxf,
                  n_a * C * HW, l_dx, gyf, nx * K * P, l_dy)
        for i in range(n_b - n_a):
            base = (n_a + i) * C * HW
            if x_mode == DX_WRITE:
                dst = gxf[base:]
                if addf.size > 0:
                    src = addf[base:]
                    for j in range(C * HW):
                        dst[j] = src[j]
                else:
                    for j in range(C * HW):
                        dst[j] = 0.0
            _scatter_add(d, G, i, C, OH, OW, sh, sw, H, W, gxf, base)
    if need_w:
        _sum_partials(gwacc, started, gw)


@njit(parallel=True, cache=True)
def _sum_partials(parts, started, out):
    """out = the sum of the rows t of parts (nt, L) with started[t] (zeros if none)."""
    L = out.size
    for bi in prange((L + _SUM_BLOCK - 1) // _SUM_BLOCK):
        j0 = bi * _SUM_BLOCK
        d = out[j0:min(L, j0 + _SUM_BLOCK)]
        first = True
        for t in range(parts.shape[0]):
            if not started[t]:
                continue
            src = parts[t, j0:j0 + d.size]
            if first:
                for j in range(d.size):
                    d[j] = src[j]
                first = False
            else:
                for j in range(d.size):
                    d[j] += src[j]
        if first:
            for j in range(d.size):
                d[j] = 0.0
