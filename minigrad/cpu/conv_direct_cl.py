"""Direct stride-1 convolutions of few input channels into a few vectors of output channels,
channels-last: LeNet-5's second layer (6 -> 16 channels, 5x5, 14x14 -> 10x10) and its kin.

As im2col products such a layer is a poor fit for GEMMs: the output is one vector wide
(K = 16) and the reduction R*S*C = 150 long, and the column matrix (rows x 150 floats) is
written and read once per pass; the three products of LeNet-5's conv2 ran at 53-59 GFLOP/s
on both cores (BENCHMARKS_perf.md, change 138).  Here every pass keeps a register tile of
accumulators over a loop of taps, reading x from its zero-padded channels-last copy
(N, Hp, Wp, C) and dY channels-last:

* forward: y[n, oh, ow0 + j, k] for FWD_PIXELS pixels j of an output row and one vector
  of output channels, over the R*S*C taps (conv3x3_rows' register tile with another shape);
* dW: with channels last, the taps (s, c) of one kernel row r are a contiguous run of S*C
  floats of x's padded row (starting at the pixel), so TAPS consecutive taps of the run
  are TAPS consecutive floats.  One sweep over an image's output pixels keeps TAPS vector
  accumulators (over output channels), one dY vector load and TAPS broadcast x values per
  pixel.  A run that is not a multiple of TAPS long ends with a partial chunk whose extra
  taps read the next floats of x (the caller leaves TAPS zero floats after the image batch)
  into accumulators that are never read;
* dX: dY zero-padded by S - 1 columns on each side, so that all pixels of a group share its
  taps: the kernel rows r that reach a dY row, times the kernel columns that reach a dY
  column for at least one pixel of the group; groups of DX_PIXELS
  pixels x C channels of accumulators over output channels (conv3x3_cl's register tile),
  summed over their lanes at the end, written into an NCHW dX.  Its tile is compiled per
  channel count: DX_CHANNELS lists the ones built.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import conv3x3_rows, small_gemm
from .addend import accumulating_dx
from .conv3x3_cl import _splat_at, make_gx_group
from .conv3x3_rows import LANES, _fma, _loop, _pointer, _vec_ptr

FWD_PIXELS = 10     # output pixels per forward tile (one vector of channels each)
TAPS = 15           # dW taps per sweep (LeNet-5's conv2: its 30-tap runs in two)
DX_PIXELS = 4       # dX pixels per tile (x C channels of accumulators)
DX_CHANNELS = (6,)  # input channel counts with a dX tile compiled
MAX_CHANNELS = 8    # input channels of the layers sent here
# output channels of the layers sent here: with 64 or 128 the im2col GEMMs were as fast or
# faster in 3 of 4 shapes (0.70-1.16x; BENCHMARKS_perf.md, change 138)
MAX_OUTPUTS = 32
USE = True          # False: conv.py takes its im2col path instead


def forward_applies(x, w, stride, padding, dilation):
    """True when ``forward`` computes this convolution: float32 x (N, C, H, W) in any layout
    and w (K, C, R, S) with C at most MAX_CHANNELS, K a multiple of LANES up to MAX_OUTPUTS,
    output rows at least FWD_PIXELS wide, stride 1, dilation 1, on an AVX-512 host (LANES 16,
    where these kernels were measured), while ``USE`` is True."""
    if not USE or small_gemm.LANES != 16 or x.ndim != 4 or w.ndim != 4:
        return False
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    ph, pw = padding
    OH, OW = H + 2 * ph - R + 1, W + 2 * pw - S + 1
    return (x.dtype == np.float32 and w.dtype == np.float32 and 1 <= C <= MAX_CHANNELS
            and K % LANES == 0 and 0 < K <= MAX_OUTPUTS and OW >= FWD_PIXELS and OH >= 1
            and N > 0 and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1))


def backward_applies(x, w, gy, stride, padding, dilation, need_x):
    """True when ``backward`` computes the gradients asked for: ``forward_applies``, a float32
    dY of the output's shape, and for dX a channel count in DX_CHANNELS."""
    if not forward_applies(x, w, stride, padding, dilation):
        return False
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    ph, pw = padding
    return (gy.dtype == np.float32 and gy.shape == (N, K, H + 2 * ph - R + 1, W + 2 * pw - S + 1)
            and (not need_x or C in DX_CHANNELS))


def slack_pixels(C):
    """Zero pixels the padded copy of x needs after its last image (dW's partial chunks)."""
    return -(-TAPS // C)


_fwd_tile = conv3x3_rows.make_fwd_group(FWD_PIXELS, 1)


@intrinsic
def _gw_sweep(typingctx, rows, cols, xp, xoff, ldrow, ldpx, gy, gyoff, ldgrow, ldp, acc, accoff):
    """acc[accoff + t*LANES + lane] += sum over h < rows, p < cols of
    gy[gyoff + h*ldgrow + p*ldp + lane] * xp[xoff + h*ldrow + p*ldpx + t] for the TAPS taps t
    (float32)."""
    sig = types.void(types.intp, types.intp, xp, types.intp, types.intp, types.intp, gy,
                     types.intp, types.intp, types.intp, acc, types.intp)

    def codegen(context, builder, signature, args):
        rows, cols, ldrow, ldpx, ldgrow, ldp = args[0], args[1], args[4], args[5], args[8], args[9]
        i64 = ir.IntType(64)
        vt, fma = _fma(builder)
        X = _pointer(context, builder, signature, args, 2, args[3])
        G = _pointer(context, builder, signature, args, 6, args[7])
        A = _pointer(context, builder, signature, args, 10, args[11])
        aptrs = [_vec_ptr(builder, A, ir.Constant(i64, t * LANES), vt) for t in range(TAPS)]
        h, row_accs, close_rows = _loop(builder, rows, [builder.load(q, align=4) for q in aptrs])
        xrow = builder.gep(X, [builder.mul(h, ldrow)])
        grow = builder.gep(G, [builder.mul(h, ldgrow)])
        p, accs, close_cols = _loop(builder, cols, row_accs)
        dy = builder.load(_vec_ptr(builder, grow, builder.mul(p, ldp), vt), align=4)
        xpix = builder.gep(xrow, [builder.mul(p, ldpx)])
        nxt = [builder.call(fma, [dy, _splat_at(builder, xpix, ir.Constant(i64, t), vt), accs[t]])
               for t in range(TAPS)]
        final = close_rows(close_cols(nxt))
        for q, v in zip(aptrs, final):
            builder.store(v, q, align=4)
        return context.get_dummy_value()

    return sig, codegen


_gx_tile_6 = make_gx_group(6, DX_PIXELS)
_gx_pair_6 = make_gx_group(6, 2)
_gx_pixel_6 = make_gx_group(6, 1)


@njit(parallel=True, cache=True)
def _forward(xpf, wt, bb, N, C, Hp, Wp, K, R, S, OH, OW, yf):
    """yf (N, OH, OW, K) flat = the convolution of xpf ((N, Hp, Wp, C) flat, zero-padded) with
    wt (R*S*C, K) flat, plus bb (K,); one output row per work item.  A row's last tile starts
    at OW - FWD_PIXELS (it may recompute pixels of the one before: the same values)."""
    ldrow = Wp * C
    ntaps = R * S * C
    toff = np.empty(ntaps, dtype=np.int64)
    for r in range(R):
        for s in range(S):
            for c in range(C):
                toff[(r * S + s) * C + c] = r * ldrow + s * C + c
    tiles = -(-OW // FWD_PIXELS)
    for nh in prange(N * OH):
        n = nh // OH
        oh = nh - n * OH
        xrow = (n * Hp + oh) * ldrow
        yrow = nh * OW * K
        for v in range(K // LANES):
            for i in range(tiles):
                w0 = min(i * FWD_PIXELS, OW - FWD_PIXELS)
                _fwd_tile(xpf, xrow + w0 * C, toff, ntaps, C, wt, v * LANES, K, bb, v * LANES,
                          yf, yrow + w0 * K + v * LANES)


def forward(xp, wt, bb, N, C, Hp, Wp, K, R, S):
    """Channels-last y (N, OH, OW, K) of a convolution ``forward_applies`` accepts, from xp,
    its zero-padded channels-last input ((N, Hp, Wp, C) flat, optionally followed by slack),
    wt, its (R*S*C, K) weights (flat), and bb (K,) the bias (zeros for none)."""
    OH, OW = Hp - R + 1, Wp - S + 1
    y4 = np.empty((N, OH, OW, K), dtype=np.float32)
    _forward(xp, wt, bb, N, C, Hp, Wp, K, R, S, OH, OW, y4.reshape(-1))
    return y4


@njit(cache=True, inline="always")
def _group_taps(dyo, wo, r_lo, r_hi, w, npx, pw, S, OW, nv, taps_dy, taps_w):
    """Copy into taps_dy / taps_w the taps (r, s, v) of dX pixels w .. w + npx - 1 for kernel
    rows r_lo .. r_hi - 1 and the kernel columns s that reach a dY column of the row for at
    least one of the pixels (the others read only the zero padding); returns their number.
    At LeNet-5's conv2 (rows of 14 pixels, 5 kernel columns) a row's groups skip 10 of its
    70 (pixel, column) products (BENCHMARKS_perf.md, change 148)."""
    s_lo = max(0, w + pw - OW + 1)
    s_hi = min(S - 1, w + npx - 1 + pw)
    count = 0
    for r in range(r_lo, r_hi):
        for s in range(s_lo, s_hi + 1):
            for v in range(nv):
                i = (r * S + s) * nv + v
                taps_dy[count] = dyo[i]
                taps_w[count] = wo[i]
                count += 1
    return count


@njit(parallel=True, cache=True)
def _backward(xpf, N, Hp, Wp, C, gyf, gy_image, gy_origin, gy_row, K, R, S, OH, OW, ph, pw,
              H, W, wt, need_x, need_w, gxf, gwv):
    """Per image (in parallel): dW's per-thread lane sums into gwv[t] ((K // LANES, R,
    chunks, TAPS, LANES) flat) and dX added into gxf ((N, C, H, W) flat).

    gyf: dY channels-last, image n's output pixel (oh, ow) at
    n*gy_image + gy_origin + oh*gy_row + ow*K; with need_x its rows are zero-padded by S - 1
    columns on each side (gy_row = (OW + 2*(S - 1))*K), which dX's taps read."""
    nv = K // LANES
    ldrow = Wp * C
    chunks = -(-(S * C) // TAPS)
    steps = R * S * nv
    dyo = np.empty(steps, dtype=np.int64)
    wo = np.empty(steps, dtype=np.int64)
    for r in range(R):
        for s in range(S):
            for v in range(nv):
                i = (r * S + s) * nv + v
                dyo[i] = (S - 1 - s) * K + v * LANES - r * gy_row
                wo[i] = (r * S + s) * C * K + v * LANES
    plane = H * W
    # dX's pixel groups along a row (DX_PIXELS, then a pair, then single pixels) and, per row h
    # and group, their taps (_group_taps; count -1: no kernel row reaches dY from row h)
    ngroups = W // DX_PIXELS + (W % DX_PIXELS) // 2 + (W % DX_PIXELS) % 2
    gstart = np.empty(ngroups, dtype=np.int64)
    gwidth = np.empty(ngroups, dtype=np.int64)
    w = 0
    for gi in range(ngroups):
        gwidth[gi] = DX_PIXELS if w + DX_PIXELS <= W else (2 if w + 2 <= W else 1)
        gstart[gi] = w
        w += gwidth[gi]
    gdy = np.empty((H if need_x else 0, ngroups, steps), dtype=np.int64)
    gwo = np.empty((H if need_x else 0, ngroups, steps), dtype=np.int64)
    gcount = np.full((H if need_x else 0, ngroups), -1, dtype=np.int64)
    for h in range(H if need_x else 0):
        # dX pixel (h, w) reads dY rows h + ph - r for the kernel rows r that reach one
        r_lo = max(0, h + ph - OH + 1)
        r_hi = min(R, h + ph + 1)
        if r_hi <= r_lo:
            continue
        for gi in range(ngroups):
            gcount[h, gi] = _group_taps(dyo, wo, r_lo, r_hi, gstart[gi], gwidth[gi], pw, S, OW,
                                        nv, gdy[h, gi], gwo[h, gi])
    for n in prange(N):
        if need_w:
            acc = gwv[numba.get_thread_id()]
            for v in range(nv):
                for r in range(R):
                    for ch in range(chunks):
                        _gw_sweep(OH, OW, xpf, (n * Hp + r) * ldrow + ch * TAPS, ldrow, C, gyf,
                                  n * gy_image + gy_origin + v * LANES, gy_row, K, acc,
                                  ((v * R + r) * chunks + ch) * TAPS * LANES)
        if need_x:
            for h in range(H):
                if gcount[h, 0] < 0:
                    continue
                base = n * gy_image + (h + ph) * gy_row + pw * K
                out = (n * C * H + h) * W
                for gi in range(ngroups):
                    w = gstart[gi]
                    npx = gwidth[gi]
                    count = gcount[h, gi]
                    tdy = gdy[h, gi]
                    tw = gwo[h, gi]
                    if npx == DX_PIXELS:
                        _gx_tile_6(count, gyf, base + w * K, tdy, K, wt, tw, K, gxf, out + w,
                                   plane)
                    elif npx == 2:
                        _gx_pair_6(count, gyf, base + w * K, tdy, K, wt, tw, K, gxf, out + w,
                                   plane)
                    else:
                        _gx_pixel_6(count, gyf, base + w * K, tdy, K, wt, tw, K, gxf, out + w,
                                    plane)


@njit(cache=True)
def _gw_from_lanes(gwv, K, C, R, S, gw):
    """gw (K, C, R, S) flat = the sums over threads and lanes of gwv (nt, (K // LANES, R,
    chunks, TAPS, LANES) flat), whose tap q = chunk*TAPS + i is (s, c) = divmod(q, C); the
    taps past S*C are dropped."""
    chunks = -(-(S * C) // TAPS)
    for v in range(K // LANES):
        for r in range(R):
            for q in range(S * C):
                s = q // C
                c = q - s * C
                o = ((v * R + r) * chunks * TAPS + q) * LANES
                for lane in range(LANES):
                    total = np.float32(0.0)
                    for t in range(gwv.shape[0]):
                        total += gwv[t, o + lane]
                    gw[(((v * LANES + lane) * C + c) * R + r) * S + s] = total


def backward(xp, wt, gy_cl, padded, N, C, H, W, K, R, S, ph, pw, need_x, need_w,
             gx_addend=None, addend_writable=False):
    """(gx, gw, folded) for a convolution ``backward_applies`` accepts, from xp, x's
    zero-padded channels-last copy ((N, H + 2*ph, W + 2*pw, C) flat, followed by at least
    ``slack_pixels(C)`` zero pixels), wt, the (R*S*C, K) weights (flat), and gy_cl, dY
    channels-last ((N, OH, OW, K) flat), its rows zero-padded by S - 1 columns on each side
    when ``padded`` (required for dX).  gx NCHW (N, C, H, W) or None, gw (K, C, R, S)
    or None; folded when gx includes gx_addend (an NCHW-contiguous float32 array of x's
    shape, updated in place when ``addend_writable``, else only read)."""
    Hp, Wp = H + 2 * ph, W + 2 * pw
    OH, OW = Hp - R + 1, Wp - S + 1
    if need_x and not padded:
        raise ValueError("conv_direct_cl.backward: dX needs dY's rows zero-padded by S - 1")
    if padded:
        gy_row = (OW + 2 * (S - 1)) * K
        gy_image, gy_origin = OH * gy_row, (S - 1) * K
    else:
        gy_image, gy_row, gy_origin = OH * OW * K, OW * K, 0
    gx, folded = accumulating_dx(gx_addend, addend_writable, (N, C, H, W), gy_cl, xp) \
        if need_x else (np.empty(1, dtype=np.float32), False)
    nt = numba.get_num_threads()
    chunks = -(-(S * C) // TAPS)
    gwv = np.zeros((nt, K * R * chunks * TAPS if need_w else 1), dtype=np.float32)
    _backward(xp, N, Hp, Wp, C, gy_cl, gy_image, gy_origin, gy_row, K, R, S, OH, OW, ph, pw, H,
              W, wt, bool(need_x), bool(need_w), gx.reshape(-1), gwv)
    gw = None
    if need_w:
        gw = np.empty((K, C, R, S), dtype=np.float32)
        _gw_from_lanes(gwv, K, C, R, S, gw.reshape(-1))
    return (gx if need_x else None), gw, folded
