"""Direct stride-1 convolutions of one-channel images into a few output channels, with
output rows of 17 to 32 pixels, in NCHW: LeNet-5's first layer (1 -> 6 channels, 5x5,
padding 2, 28x28 images).

With one input channel the zero-padded copy of x is the same array in NCHW and in
channels-last, and an output row of OW pixels is two vectors (the second one masked to
OW - 16 lanes).  Both passes keep a register tile of such row vectors:

* forward: y[n, k, oh, :] for ``FWD_ROWS`` output rows and every output channel k, over
  the R*S taps: per tap, two unaligned vector loads of each padded x row (shifted by the
  tap), one broadcast weight per channel and 2*K FMAs per row.  The lanes past OW read
  padding or the next row and are never stored;
* dW: dW[k, 0, r, s] = sum over rows h and pixels w of dY[k, h, w] * xp[h + r, w + s].
  For a kernel row r, a chunk of ``TAPS`` consecutive taps s and a group of ``GROUP``
  output channels, a sweep down an image's rows keeps GROUP x TAPS vector accumulators
  (summed over their lanes at the end); the second vector of dY and of x is loaded masked,
  so lanes past OW add exact zeros.  A chunk that runs past S reads x further along the
  row into accumulators that are never read (``SLACK`` zero floats after the image batch
  keep those reads inside the array).

dX is not computed here (a first layer's input is data); a convolution that needs it
takes another path.  The inner loops are LLVM IR (Numba intrinsics), as in conv3x3_rows:
LLVM keeps no register tile of accumulators when it compiles plain Numba loops.  Measured
against the extended-row kernels in conv.py: BENCHMARKS_perf.md, change 139.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import small_gemm
from .conv3x3_rows import LANES, _fma, _loop, _masked_load, _masked_store, _pointer, _vec_ptr

OUTPUTS = 6         # output channels of the forward's tile (LeNet-5's conv1)
FWD_ROWS = 2        # output rows per forward tile
GROUP = 3           # output channels per dW sweep
TAPS = 5            # kernel columns per dW sweep
SLACK = 4 * LANES   # zero floats the padded x needs after its last image
USE = True          # False: conv.py takes its other paths instead


def output_size(x, w, padding):
    """(OH, OW) of a stride-1, dilation-1 convolution of x (N, C, H, W) by w (K, C, R, S)."""
    return (x.shape[2] + 2 * padding[0] - w.shape[2] + 1,
            x.shape[3] + 2 * padding[1] - w.shape[3] + 1)


def forward_applies(x, w, stride, padding, dilation):
    """True when ``forward`` computes this convolution: float32 x (N, 1, H, W) in any layout,
    float32 w (OUTPUTS, 1, R, S), output rows of LANES + 1 to 2 * LANES pixels, at least
    one output row, stride 1, dilation 1, on an AVX-512 host (LANES 16, where these kernels
    were measured), while ``USE`` is True."""
    if not USE or small_gemm.LANES != 16 or x.ndim != 4 or w.ndim != 4:
        return False
    OH, OW = output_size(x, w, padding)
    return (x.dtype == np.float32 and w.dtype == np.float32 and x.shape[1] == 1
            and w.shape[0] == OUTPUTS and w.shape[1] == 1 and LANES < OW <= 2 * LANES
            and OH >= 1 and x.shape[0] > 0 and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1))


def backward_applies(x, w, gy, stride, padding, dilation, need_x):
    """True when ``backward`` computes the gradients asked for: dW only (not ``need_x``), for
    a convolution ``forward_applies`` accepts, with a float32 dY of the output's shape."""
    if need_x or not forward_applies(x, w, stride, padding, dilation):
        return False
    return gy.dtype == np.float32 and gy.shape == (x.shape[0], w.shape[0]) + output_size(
        x, w, padding)


def _lane_mask(builder, count):
    """i1 vector: lane j on when j < count (an i64 value)."""
    it = ir.VectorType(ir.IntType(64), LANES)
    lanes = ir.Constant(it, list(range(LANES)))
    return builder.icmp_signed("<", lanes, small_gemm._splat(builder, it, count))


def make_fwd_tile(rows, K):
    """The forward's register tile as an intrinsic: ``tile(xp, xoff, toff, ntaps, ldx, wt, b,
    y, yoff, ldk, ldy, rem)`` sets, for the ``rows`` rows i and K channels k,
    y[yoff + k*ldk + i*ldy + j] = b[k] + sum over taps t < ntaps of
    xp[xoff + toff[t] + i*ldx + j] * wt[t*K + k] for pixels j < LANES + rem (float32; toff
    int64, each tap's offset in xp; 0 < rem <= LANES)."""
    @intrinsic
    def tile(typingctx, xp, xoff, toff, ntaps, ldx, wt, b, y, yoff, ldk, ldy, rem):
        sig = types.void(xp, types.intp, toff, types.intp, types.intp, wt, b, y, types.intp,
                         types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            ntaps, ldx, ldk, ldy, rem = args[3], args[4], args[9], args[10], args[11]
            i64 = ir.IntType(64)
            vt, fma = _fma(builder)
            X = _pointer(context, builder, signature, args, 0, args[1])
            T = _pointer(context, builder, signature, args, 2, ir.Constant(i64, 0))
            Wt = _pointer(context, builder, signature, args, 5, ir.Constant(i64, 0))
            B = _pointer(context, builder, signature, args, 6, ir.Constant(i64, 0))
            Y = _pointer(context, builder, signature, args, 7, args[8])
            bias = [small_gemm._splat(builder, vt, builder.load(builder.gep(B, [ir.Constant(
                i64, k)]))) for k in range(K)]
            t, accs, close = _loop(builder, ntaps, [bias[k] for i in range(rows)
                                                    for k in range(K) for v in range(2)])
            xt = builder.gep(X, [builder.load(builder.gep(T, [t]))])
            xv = [[builder.load(_vec_ptr(builder, xt, builder.add(
                builder.mul(ldx, ir.Constant(i64, i)), ir.Constant(i64, v * LANES)), vt),
                align=4) for v in range(2)] for i in range(rows)]
            wrow = builder.gep(Wt, [builder.mul(t, ir.Constant(i64, K))])
            wk = [small_gemm._splat(builder, vt, builder.load(builder.gep(
                wrow, [ir.Constant(i64, k)]))) for k in range(K)]
            nxt = list(accs)
            for i in range(rows):
                for k in range(K):
                    for v in range(2):
                        q = (i * K + k) * 2 + v
                        nxt[q] = builder.call(fma, [xv[i][v], wk[k], nxt[q]])
            final = close(nxt)
            mask = _lane_mask(builder, rem)
            for i in range(rows):
                for k in range(K):
                    row = builder.gep(Y, [builder.add(builder.mul(ldk, ir.Constant(i64, k)),
                                                      builder.mul(ldy, ir.Constant(i64, i)))])
                    builder.store(final[(i * K + k) * 2], _vec_ptr(
                        builder, row, ir.Constant(i64, 0), vt), align=4)
                    _masked_store(builder, final[(i * K + k) * 2 + 1],
                                  _vec_ptr(builder, row, ir.Constant(i64, LANES), vt), mask)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_fwd_tile = make_fwd_tile(FWD_ROWS, OUTPUTS)
_fwd_row = make_fwd_tile(1, OUTPUTS)


@njit(parallel=True, cache=True)
def _forward(xpf, wt, bb, N, Hp, Wp, K, R, S, OH, OW, yf):
    """yf (N, K, OH, OW) flat = the convolution of xpf ((N, Hp, Wp) flat, zero-padded, then
    SLACK floats) with wt (R*S, K) flat, plus bb (K,); FWD_ROWS output rows per work item
    (the last one of an odd OH alone)."""
    ntaps = R * S
    toff = np.empty(ntaps, dtype=np.int64)
    for r in range(R):
        for s in range(S):
            toff[r * S + s] = r * Wp + s
    groups = -(-OH // FWD_ROWS)
    for ng in prange(N * groups):
        n = ng // groups
        oh = (ng - n * groups) * FWD_ROWS
        xrow = (n * Hp + oh) * Wp
        yrow = (n * K * OH + oh) * OW
        if oh + FWD_ROWS <= OH:
            _fwd_tile(xpf, xrow, toff, ntaps, Wp, wt, bb, yf, yrow, OH * OW, OW, OW - LANES)
        else:
            for i in range(OH - oh):
                _fwd_row(xpf, xrow + i * Wp, toff, ntaps, Wp, wt, bb, yf, yrow + i * OW,
                         OH * OW, OW, OW - LANES)


def forward(xp, wt, bb, N, Hp, Wp, K, R, S):
    """NCHW y (N, K, OH, OW) of a convolution ``forward_applies`` accepts, from xp, its
    zero-padded input ((N, Hp, Wp) flat, then SLACK zero floats), wt, its (R*S, K) weights
    (flat), and bb (K,) the bias (zeros for none)."""
    OH, OW = Hp - R + 1, Wp - S + 1
    y = np.empty((N, K, OH, OW), dtype=np.float32)
    _forward(xp, wt, bb, N, Hp, Wp, K, R, S, OH, OW, y.reshape(-1))
    return y


@intrinsic
def _gw_sweep(typingctx, rows, xp, xoff, ldx, gy, gyoff, ldk, ldg, acc, accoff, rem):
    """acc[accoff + (k*TAPS + s)*LANES + lane] += sum over h < rows of the lane's share of
    sum_j gy[gyoff + k*ldk + h*ldg + j] * xp[xoff + h*ldx + s + j], over pixels
    j < LANES + rem, for the GROUP channels k and TAPS taps s (float32)."""
    sig = types.void(types.intp, xp, types.intp, types.intp, gy, types.intp, types.intp,
                     types.intp, acc, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        rows, ldx, ldk, ldg, rem = args[0], args[3], args[6], args[7], args[10]
        i64 = ir.IntType(64)
        vt, fma = _fma(builder)
        X = _pointer(context, builder, signature, args, 1, args[2])
        G = _pointer(context, builder, signature, args, 4, args[5])
        A = _pointer(context, builder, signature, args, 8, args[9])
        mask = _lane_mask(builder, rem)
        aptrs = [_vec_ptr(builder, A, ir.Constant(i64, q * LANES), vt)
                 for q in range(GROUP * TAPS)]
        h, accs, close = _loop(builder, rows, [builder.load(q, align=4) for q in aptrs])
        xrow = builder.gep(X, [builder.mul(h, ldx)])
        grow = builder.gep(G, [builder.mul(h, ldg)])
        nxt = list(accs)
        for v in range(2):
            def load(base, off):
                ptr = _vec_ptr(builder, base, builder.add(off, ir.Constant(i64, v * LANES)), vt)
                return builder.load(ptr, align=4) if v == 0 else \
                    _masked_load(builder, ptr, mask, vt)
            dy = [load(grow, builder.mul(ldk, ir.Constant(i64, k))) for k in range(GROUP)]
            for s in range(TAPS):
                xs = load(xrow, ir.Constant(i64, s))
                for k in range(GROUP):
                    q = k * TAPS + s
                    nxt[q] = builder.call(fma, [dy[k], xs, nxt[q]])
        final = close(nxt)
        for q, v in zip(aptrs, final):
            builder.store(v, q, align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(parallel=True, cache=True)
def _backward(xpf, gyf, N, Hp, Wp, K, R, S, OH, OW, gwv):
    """Per image (in parallel): dW's per-thread lane sums into gwv[t] ((K // GROUP, R,
    chunks, GROUP, TAPS, LANES) flat) from x's padded copy xpf and NCHW dY gyf."""
    chunks = -(-S // TAPS)
    block = GROUP * TAPS * LANES
    for n in prange(N):
        acc = gwv[numba.get_thread_id()]
        for g in range(K // GROUP):
            for r in range(R):
                for ch in range(chunks):
                    _gw_sweep(OH, xpf, (n * Hp + r) * Wp + ch * TAPS, Wp, gyf,
                              (n * K + g * GROUP) * OH * OW, OH * OW, OW, acc,
                              ((g * R + r) * chunks + ch) * block, OW - LANES)


@njit(cache=True)
def _gw_from_lanes(gwv, K, R, S, gw):
    """gw (K, 1, R, S) flat = the sums over threads and lanes of gwv (see _backward); the
    taps past S are dropped."""
    chunks = -(-S // TAPS)
    for k in range(K):
        g = k // GROUP
        kl = k - g * GROUP
        for r in range(R):
            for s in range(S):
                ch = s // TAPS
                o = ((((g * R + r) * chunks + ch) * GROUP + kl) * TAPS + s - ch * TAPS) * LANES
                total = np.float32(0.0)
                for t in range(gwv.shape[0]):
                    for lane in range(LANES):
                        total += gwv[t, o + lane]
                gw[(k * R + r) * S + s] = total


def backward(xp, gy, N, Hp, Wp, K, R, S):
    """dW (K, 1, R, S) of a convolution ``backward_applies`` accepts, from xp, x's zero-padded
    copy ((N, Hp, Wp) flat, then SLACK zero floats), and dY (N, K, OH, OW)."""
    OH, OW = Hp - R + 1, Wp - S + 1
    gyc = np.ascontiguousarray(gy, dtype=np.float32).reshape(-1)
    nt = numba.get_num_threads()
    chunks = -(-S // TAPS)
    gwv = np.zeros((nt, K * R * chunks * TAPS * LANES), dtype=np.float32)
    _backward(xp, gyc, N, Hp, Wp, K, R, S, OH, OW, gwv)
    gw = np.empty((K, 1, R, S), dtype=np.float32)
    _gw_from_lanes(gwv, K, R, S, gw.reshape(-1))
    return gw
