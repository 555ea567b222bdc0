"""Backward of few-channel 3x3 "same" convolutions with channels-last dY, vectorised over
output channels.

The shapes are conv3x3_rows' (a network's first layer: 3 -> 64 channels, 3x3, stride 1,
padding 1); here dY is stored channels-last, (N, H, W, K) with K a multiple of LANES, so a
pixel's K values are K // LANES whole vectors.  conv3x3_rows' row kernels would need dY
transposed first, and the transposes, which read dY from memory in bursts, cost more than
they saved (BENCHMARKS_perf.md, change 122).  These kernels read dY in its own order:

* dW[k, c, r, s] = sum over pixels p of dY[p, k] * xpad[p + (r, s), c]: per (image row,
  WIDE_VECTORS vectors of LANES output channels) one pass along the row for each group of
  TAP_GROUP taps keeps WIDE_VECTORS * TAP_GROUP tap sums in vector accumulators (per pixel
  WIDE_VECTORS dY loads and TAP_GROUP broadcast input values feed that many FMAs; 1.10-1.11x
  on the channels-last stem row, BENCHMARKS_perf.md, change 155); vectors left over take one
  sweep each with all 9*C tap sums (one dY load and 9*C broadcasts per pixel); the sums are
  added up per thread and lane afterwards;
* dX[p, c] = sum over taps (r, s) and k of dY[p + (1 - r, 1 - s), k] * W[k, c, r, s]: per
  group of PIXELS pixels, PIXELS x C vector accumulators over (tap, vector of channels), each
  summed over its lanes at the end.  Taps that fall outside the image are left out of the
  group's tap table; pixels at the left and right edges go one at a time with their own table.

Both go down each image's dY rows in one pass: dW's sweep of row h (which reads the row from
memory), then dX's row h - 1, whose dY rows are all cached by then, with the next dY row
prefetched between its pixel groups so that the memory traffic overlaps dX's arithmetic
(1.08-1.12x the backward that ran dW over the whole image first; BENCHMARKS_perf.md, change
123).  Images conv3x3_rows.ROW (32) pixels wide take dX another way: dY's row h, in cache after
dW's sweep, is transposed to (K, ROW) in registers and spread into the three dX rows it
reaches by conv3x3_rows' row kernel, with no lane sums (dX alone 1.70x, dW + dX 1.28x faster;
change 136).  dW alone, all training needs of a first layer, is a kernel of its own
(_backward_dw), so that training compiles no dX code (0.7 s instead of 6.1 s cold).

x is read from its zero-padded channels-last copy (N, H + 2, W + 2, C); dX is written NCHW.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import conv3x3_rows, small_gemm
from .addend import accumulating_dx
from .conv3x3_rows import LANES, MAX_CHANNELS, ROW, _fma, _gx_from_row, _loop, _pointer, _vec_ptr
from .prefetch import prefetch_run
from .small_gemm import _transpose_block

PIXELS = 4          # dX pixels per group
# dX of ROW-wide images (the CIFAR stem's) from transposed dY rows by conv3x3_rows' row
# kernel (_backward_rows): CL stem row 1.156x paired (BENCHMARKS_perf.md, change 136).
# False: the pixel groups, as for other widths.
USE_ROW_DX = True


def applies(x, w, gy, stride, padding, dilation):
    """True when ``backward`` computes this convolution's gradients: float32 x (N, C, H, W)
    and w (K, C, 3, 3), C at most MAX_CHANNELS, K a multiple of LANES, dY dense channels-last
    (and not also NCHW-contiguous), stride 1, padding 1, dilation 1, on an AVX-512 host, while
    conv3x3_rows.USE is True."""
    if not conv3x3_rows.USE or small_gemm.LANES != 16:
        return False
    N, C, H, W = x.shape
    K = w.shape[0]
    return (x.dtype == np.float32 and w.dtype == np.float32 and gy.dtype == np.float32
            and tuple(w.shape[2:]) == (3, 3) and 1 <= C <= MAX_CHANNELS and K % LANES == 0
            and gy.shape == (N, K, H, W) and N * H * W > 0 and not gy.flags.c_contiguous
            and gy.transpose(0, 2, 3, 1).flags.c_contiguous and tuple(stride) == (1, 1)
            and tuple(padding) == (1, 1) and tuple(dilation) == (1, 1))


def _splat_at(builder, base, off, vt):
    v = builder.load(builder.gep(base, [off]))
    return small_gemm._splat(builder, vt, v)


# dW's wide sweeps: WIDE_VECTORS vectors of output channels at once, the 9*C taps TAP_GROUP at
# a time (WIDE_VECTORS * TAP_GROUP accumulators): per pixel WIDE_VECTORS dY loads and
# TAP_GROUP broadcasts feed WIDE_VECTORS * TAP_GROUP FMAs, where the one-vector sweep loads
# as often as it multiplies (1 + 9*C loads for 9*C FMAs), and dY's row is read in order.
WIDE_VECTORS = 4
TAP_GROUP = 6
# False: the one-vector sweeps for every vector (the kernels' ``wide`` argument).
USE_WIDE_DW = True


def _make_gw_sweep(C, vectors, tap_group):
    """dW's sweep along a row for C input channels as an intrinsic (its contract: the
    ``__doc__`` set below): ``vectors`` vectors of output channels, the taps ``tap_group`` at a
    time (one pass along the row per group)."""
    ntaps = 9 * C
    groups = [list(range(t, min(ntaps, t + tap_group))) for t in range(0, ntaps, tap_group)]

    @intrinsic
    def gw_sweep(typingctx, npix, xp, xoff, ldrow, gy, gyoff, ldp, acc, accoff):
        sig = types.void(types.intp, xp, types.intp, types.intp, gy, types.intp, types.intp,
                         acc, types.intp)

        def codegen(context, builder, signature, args):
            npix, ldrow, ldp = args[0], args[3], args[6]
            i64 = ir.IntType(64)
            vt, fma = _fma(builder)
            X = _pointer(context, builder, signature, args, 1, args[2])
            G = _pointer(context, builder, signature, args, 4, args[5])
            A = _pointer(context, builder, signature, args, 7, args[8])
            for taps in groups:   # one pass along the row per group of taps
                aptrs = [_vec_ptr(builder, A, ir.Constant(i64, (v * ntaps + t) * LANES), vt)
                         for v in range(vectors) for t in taps]
                p, accs, close = _loop(builder, npix, [builder.load(q, align=4) for q in aptrs])
                gp = builder.gep(G, [builder.mul(p, ldp)])
                dys = [builder.load(_vec_ptr(builder, gp, ir.Constant(i64, v * LANES), vt),
                                    align=4) for v in range(vectors)]
                xpix = builder.gep(X, [builder.mul(p, ir.Constant(i64, C))])
                nxt = list(accs)
                for j, t in enumerate(taps):
                    rs, c = divmod(t, C)
                    r, s = divmod(rs, 3)
                    row = builder.gep(xpix, [builder.mul(ldrow, ir.Constant(i64, r))])
                    xv = _splat_at(builder, row, ir.Constant(i64, s * C + c), vt)
                    for v in range(vectors):
                        k = v * len(taps) + j
                        nxt[k] = builder.call(fma, [dys[v], xv, nxt[k]])
                for q, val in zip(aptrs, close(nxt)):
                    builder.store(val, q, align=4)
            return context.get_dummy_value()

        return sig, codegen

    gw_sweep.__doc__ = (
        "acc[accoff + (v*%d + t)*LANES + lane] += sum over p < npix of gy[gyoff + p*ldp + "
        "v*LANES + lane] * xp[xoff + p*%d + r*ldrow + s*%d + c] for the %d vector(s) v and the "
        "%d taps t = (r*3 + s)*%d + c." % (ntaps, C, C, vectors, ntaps, C))
    return gw_sweep


def _lane_sums(builder, vecs):
    """The sums of the lanes of each vector in ``vecs`` (at most LANES of them), as scalars:
    pairs of vectors are folded into one at each of log2(LANES) rounds (two shuffles and an
    add per pair), so that after the last round each lane holds one vector's sum."""
    i32 = ir.IntType(32)
    vt = vecs[0].type
    zero = ir.Constant(vt, [0.0] * LANES)
    items = [(v, [i] * LANES) for i, v in enumerate(vecs)]
    items += [(zero, [None] * LANES)] * (LANES - len(items))
    seg = LANES
    while seg > 1:
        half = seg // 2
        folded = []
        for (a, oa), (b, ob) in zip(items[0::2], items[1::2]):
            lo, hi, owners = [], [], []
            for start in range(0, LANES, seg):
                lo += list(range(start, start + half)) + \
                    [LANES + i for i in range(start, start + half)]
                hi += list(range(start + half, start + seg)) + \
                    [LANES + i for i in range(start + half, start + seg)]
                owners += [oa[start]] * half + [ob[start]] * half
            v = builder.fadd(builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, LANES), lo)),
                             builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, LANES), hi)))
            folded.append((v, owners))
        items = folded
        seg = half
    (v, owners), = items
    sums = [None] * len(vecs)
    for lane, o in enumerate(owners):
        if o is not None:
            sums[o] = builder.extract_element(v, ir.Constant(i32, lane))
    return sums


def make_gx_group(C, npx):
    """dX's register tile for C input channels and npx pixels as an intrinsic (its contract:
    the ``__doc__`` set below); npx * C accumulators, summed over their lanes LANES at a
    time."""
    @intrinsic
    def gx_group(typingctx, steps, gy, gyoff, dyo, ldp, wt, wo, ldw, gx, gxoff, ldc):
        sig = types.void(types.intp, gy, types.intp, dyo, types.intp, wt, wo, types.intp, gx,
                         types.intp, types.intp)

        def codegen(context, builder, signature, args):
            steps, ldp, ldw, ldc = args[0], args[4], args[7], args[10]
            i64 = ir.IntType(64)
            vt, fma = _fma(builder)
            zero_off = ir.Constant(i64, 0)
            G = _pointer(context, builder, signature, args, 1, args[2])
            DYO = _pointer(context, builder, signature, args, 3, zero_off)
            Wt = _pointer(context, builder, signature, args, 5, zero_off)
            WO = _pointer(context, builder, signature, args, 6, zero_off)
            GX = _pointer(context, builder, signature, args, 8, args[9])
            zero = ir.Constant(vt, [0.0] * LANES)
            i, accs, close = _loop(builder, steps, [zero] * (npx * C))
            gp = builder.gep(G, [builder.load(builder.gep(DYO, [i]))])
            wp = builder.gep(Wt, [builder.load(builder.gep(WO, [i]))])
            dys = [builder.load(_vec_ptr(builder, gp, builder.mul(ldp, ir.Constant(i64, j)), vt),
                                align=4) for j in range(npx)]
            wvs = [builder.load(_vec_ptr(builder, wp, builder.mul(ldw, ir.Constant(i64, c)), vt),
                                align=4) for c in range(C)]
            nxt = list(accs)
            for j in range(npx):
                for c in range(C):
                    nxt[j * C + c] = builder.call(fma, [dys[j], wvs[c], nxt[j * C + c]])
            final = close(nxt)
            sums = []
            for first in range(0, len(final), LANES):
                sums += _lane_sums(builder, final[first:first + LANES])
            for j in range(npx):
                for c in range(C):
                    ptr = builder.gep(GX, [builder.add(builder.mul(ldc, ir.Constant(i64, c)),
                                                       ir.Constant(i64, j))])
                    builder.store(builder.fadd(builder.load(ptr), sums[j * C + c]), ptr)
            return context.get_dummy_value()

        return sig, codegen

    gx_group.__doc__ = (
        "gx[gxoff + c*ldc + j] += sum over i < steps and lanes of gy[gyoff + dyo[i] + j*ldp + "
        "lane] * wt[wo[i] + c*ldw + lane], for the %d pixel(s) j and %d channel(s) c (dyo, "
        "wo: int64 tables of offsets, one entry per tap and vector of output channels)."
        % (npx, C))
    return gx_group


# one vector with all 9*C tap sums (one dY load and 9*C broadcasts per pixel), and the wide ones
_gw_sweep_1 = _make_gw_sweep(1, 1, 9)
_gw_sweep_2 = _make_gw_sweep(2, 1, 18)
_gw_sweep_3 = _make_gw_sweep(3, 1, 27)
_gw_sweep_wide_1 = _make_gw_sweep(1, WIDE_VECTORS, TAP_GROUP)
_gw_sweep_wide_2 = _make_gw_sweep(2, WIDE_VECTORS, TAP_GROUP)
_gw_sweep_wide_3 = _make_gw_sweep(3, WIDE_VECTORS, TAP_GROUP)
_gx_group_1 = make_gx_group(1, PIXELS)
_gx_group_2 = make_gx_group(2, PIXELS)
_gx_group_3 = make_gx_group(3, PIXELS)
_gx_pixel_1 = make_gx_group(1, 1)
_gx_pixel_2 = make_gx_group(2, 1)
_gx_pixel_3 = make_gx_group(3, 1)


@njit(cache=True, inline="always")
def _gw_row(C, wide, npix, xpf, xoff, ldrow, gyf, gyoff, ldp, acc, accoff):
    """One dW sweep along an image row: over WIDE_VECTORS vectors of output channels when
    ``wide``, else over one (inlined: as a call, 1.11x slower on the stem's dW;
    BENCHMARKS_perf.md, change 135)."""
    if wide and C == 1:
        _gw_sweep_wide_1(npix, xpf, xoff, ldrow, gyf, gyoff, ldp, acc, accoff)
    elif wide and C == 2:
        _gw_sweep_wide_2(npix, xpf, xoff, ldrow, gyf, gyoff, ldp, acc, accoff)
    elif wide:
        _gw_sweep_wide_3(npix, xpf, xoff, ldrow, gyf, gyoff, ldp, acc, accoff)
    elif C == 1:
        _gw_sweep_1(npix, xpf, xoff, ldrow, gyf, gyoff, ldp, acc, accoff)
    elif C == 2:
        _gw_sweep_2(npix, xpf, xoff, ldrow, gyf, gyoff, ldp, acc, accoff)
    else:
        _gw_sweep_3(npix, xpf, xoff, ldrow, gyf, gyoff, ldp, acc, accoff)


@njit(cache=True, inline="always")
def _gx_pixels(C, npx, steps, gyf, gyoff, dyo, ldp, wt, wo, ldw, gxf, gxoff, ldc):
    """A group of npx (PIXELS or 1) pixels; inlined into _gx_row, where npx is a constant at
    each call: as calls (about 11 per image row, each passing four arrays) they made the
    stem's dX 1.085x and its whole backward 1.06x slower (BENCHMARKS_perf.md, change 135)."""
    if npx == PIXELS:
        if C == 1:
            _gx_group_1(steps, gyf, gyoff, dyo, ldp, wt, wo, ldw, gxf, gxoff, ldc)
        elif C == 2:
            _gx_group_2(steps, gyf, gyoff, dyo, ldp, wt, wo, ldw, gxf, gxoff, ldc)
        else:
            _gx_group_3(steps, gyf, gyoff, dyo, ldp, wt, wo, ldw, gxf, gxoff, ldc)
    elif C == 1:
        _gx_pixel_1(steps, gyf, gyoff, dyo, ldp, wt, wo, ldw, gxf, gxoff, ldc)
    elif C == 2:
        _gx_pixel_2(steps, gyf, gyoff, dyo, ldp, wt, wo, ldw, gxf, gxoff, ldc)
    else:
        _gx_pixel_3(steps, gyf, gyoff, dyo, ldp, wt, wo, ldw, gxf, gxoff, ldc)


@njit(cache=True)
def _tap_table(h, H, W, K, C, s_lo, s_hi, dyo, wo):
    """Fill dyo and wo with the (tap, channel vector) steps of dX's row h whose dY row lies in
    the image and whose tap column s is in [s_lo, s_hi); returns the count.  dyo: dY offsets
    from the pixel's own position (channels-last), wo: offsets of (r, s, c=0) rows of the
    (3*3*C, K) weights."""
    n = 0
    for r in range(3):
        if 0 <= h + 1 - r < H:
            for s in range(s_lo, s_hi):
                for v in range(K // LANES):
                    dyo[n] = ((1 - r) * W + (1 - s)) * K + v * LANES
                    wo[n] = (r * 3 + s) * C * K + v * LANES
                    n += 1
    return n


@njit(cache=True)
def _gx_row(n, h, H, W, K, C, gyf, wt, gxf, dyo, wo, ahead):
    """dX's row h of image n added into gxf; ``ahead`` >= 0: the offset of a dY row to
    prefetch, a group's worth of pixels before each group (see _backward)."""
    grow = (n * H + h) * W * K
    xrow = (n * C * H + h) * W
    # pixels 1 .. W-2 see all three tap columns: groups of PIXELS, then singles
    steps = _tap_table(h, H, W, K, C, 0, 3, dyo, wo)
    w = 1
    while w + PIXELS <= W - 1:
        if ahead >= 0:
            prefetch_run(gyf, ahead + (w - 1) * K, PIXELS * K)
        _gx_pixels(C, PIXELS, steps, gyf, grow + w * K, dyo, K, wt, wo, K, gxf, xrow + w, H * W)
        w += PIXELS
    if ahead >= 0 and w < W:
        prefetch_run(gyf, ahead + (w - 1) * K, (W - w + 1) * K)
    while w < W - 1:
        _gx_pixels(C, 1, steps, gyf, grow + w * K, dyo, K, wt, wo, K, gxf, xrow + w, H * W)
        w += 1
    # the edge pixels: tap column s reads dY's column w + 1 - s
    steps = _tap_table(h, H, W, K, C, max(0, 2 - W), 2, dyo, wo)
    _gx_pixels(C, 1, steps, gyf, grow, dyo, K, wt, wo, K, gxf, xrow, H * W)
    if W > 1:
        steps = _tap_table(h, H, W, K, C, 1, 3, dyo, wo)
        _gx_pixels(C, 1, steps, gyf, grow + (W - 1) * K, dyo, K, wt, wo, K, gxf,
                   xrow + W - 1, H * W)


@njit(cache=True, inline="always")
def _gw_image_row(n, h, H, W, K, C, xpf, gyf, acc, wide):
    """dW's sweeps of image n's row h: with ``wide``, one per WIDE_VECTORS vectors of LANES
    output channels, then one per vector left over."""
    ldrow = (W + 2) * C
    xrow = (n * (H + 2) + h) * ldrow
    grow = (n * H + h) * W * K
    nv = K // LANES
    v0 = 0
    if wide:
        while v0 + WIDE_VECTORS <= nv:
            _gw_row(C, True, W, xpf, xrow, ldrow, gyf, grow + v0 * LANES, K, acc,
                    v0 * 9 * C * LANES)
            v0 += WIDE_VECTORS
    for v in range(v0, nv):
        _gw_row(C, False, W, xpf, xrow, ldrow, gyf, grow + v * LANES, K, acc,
                v * 9 * C * LANES)


@njit(parallel=True, cache=True)
def _backward_dw(xpf, gyf, N, C, H, W, K, gwv, wide):
    """dW alone (what training needs of a network's first layer): per image (in parallel),
    the per-thread lane sums into gwv[t] as in _backward.  A kernel of its own, so that
    training compiles none of dX's code."""
    for n in prange(N):
        acc = gwv[numba.get_thread_id()]
        for h in range(H):
            _gw_image_row(n, h, H, W, K, C, xpf, gyf, acc, wide)


@njit(parallel=True, cache=True)
def _backward(xpf, gyf, wt, N, C, H, W, K, need_w, gxf, gwv, wide):
    """Per image (in parallel): dX added into gxf ((N, C, H, W) flat) and, with need_w, dW's
    per-thread lane sums into gwv[t] ((K // LANES, 9*C, LANES) flat).

    One pass down the image's dY rows: dW's sweep of row h, which reads it from memory,
    then dX's row h - 1, whose dY rows are then all cached; during dX's row the next dY row
    is prefetched, so that its memory traffic overlaps dX's arithmetic."""
    nv = K // LANES
    for n in prange(N):
        t = numba.get_thread_id()
        acc = gwv[t]
        dyo = np.empty(9 * nv, dtype=np.int64)
        wo = np.empty(9 * nv, dtype=np.int64)
        for h in range(H + 1):
            if need_w and h < H:
                _gw_image_row(n, h, H, W, K, C, xpf, gyf, acc, wide)
            if h >= 1:
                ahead = (n * H + h + 1) * W * K if h + 1 < H else -1
                _gx_row(n, h - 1, H, W, K, C, gyf, wt, gxf, dyo, wo, ahead)


@njit(cache=True, inline="always")
def _dy_row_planes(gyf, grow, K, planes):
    """planes (K, ROW) flat = dY's image row at gyf[grow:] ((ROW, K) channels-last), by
    LANES x LANES block transposes in registers."""
    for pb in range(ROW // LANES):
        for cb in range(K // LANES):
            _transpose_block(gyf, grow + pb * LANES * K + cb * LANES, K, planes,
                             cb * LANES * ROW + pb * LANES, ROW)


@njit(parallel=True, cache=True)
def _backward_rows(xpf, gyf, wk, N, C, H, K, need_w, gxf, gwv, wide):
    """_backward with dX, for images ROW pixels wide: after dW's sweep of row h, dY's row h
    (then in cache) is transposed to (K, ROW) and spread into the dX rows it reaches by
    conv3x3_rows' row kernel, with wk the (K, C, 3, 3) weights (flat).  A kernel of its own,
    so that _backward_dw and _backward, whichever runs, do not compile it."""
    for n in prange(N):
        acc = gwv[numba.get_thread_id()]
        planes = np.empty(K * ROW, dtype=np.float32)
        for h in range(H):
            if need_w:
                _gw_image_row(n, h, H, ROW, K, C, xpf, gyf, acc, wide)
            _dy_row_planes(gyf, (n * H + h) * ROW * K, K, planes)
            _gx_from_row(C, K, planes, 0, ROW, wk, gxf, (n * C * H + h - 1) * ROW, H * ROW,
                         max(0, 1 - h), min(3, H + 1 - h))


@njit(cache=True)
def _gw_from_lanes(gwv, K, C, gw):
    """gw (K, C, 3, 3) flat = the sum over threads and lanes of gwv (nt, (K // LANES, 9*C,
    LANES) flat), whose taps are t = (r*3 + s)*C + c."""
    for v in range(K // LANES):
        for t in range(9 * C):
            rs = t // C
            c = t - rs * C
            for lane in range(LANES):
                total = np.float32(0.0)
                for th in range(gwv.shape[0]):
                    total += gwv[th, (v * 9 * C + t) * LANES + lane]
                gw[((v * LANES + lane) * C + c) * 9 + rs] = total


def backward(xp, wt, gy, N, C, H, W, K, need_x, need_w, gx_addend=None, addend_writable=False):
    """(gx, gw, folded) for a convolution ``applies`` accepts, from xp, x's zero-padded
    channels-last copy ((N, H + 2, W + 2, C) flat), wt, the (3*3*C, K) weights (flat), and
    gy: gx NCHW (N, C, H, W) or None, gw (K, C, 3, 3) or None; folded when gx includes
    gx_addend (an NCHW-contiguous float32 array of x's shape, updated in place when
    ``addend_writable``, else only read)."""
    gyf = gy.transpose(0, 2, 3, 1).reshape(-1)
    gx, folded = accumulating_dx(gx_addend, addend_writable, (N, C, H, W), gy) if need_x \
        else (np.empty(1, dtype=np.float32), False)
    nt = numba.get_num_threads()
    gwv = np.zeros((nt, K * 9 * C if need_w else 1), dtype=np.float32)
    wide = bool(USE_WIDE_DW)
    if not need_x:
        _backward_dw(xp, gyf, N, C, H, W, K, gwv, wide)
    elif W == ROW and USE_ROW_DX:
        wk = np.ascontiguousarray(wt.reshape(3, 3, C, K).transpose(3, 2, 0, 1)).reshape(-1)
        _backward_rows(xp, gyf, wk, N, C, H, K, bool(need_w), gx.reshape(-1), gwv, wide)
    else:
        _backward(xp, gyf, wt, N, C, H, W, K, bool(need_w), gx.reshape(-1), gwv, wide)
    gw = None
    if need_w:
        gw = np.empty((K, C, 3, 3), dtype=np.float32)
        _gw_from_lanes(gwv, K, C, gw.reshape(-1))
    return (gx if need_x else None), gw, folded
