"""3x3 "same" convolutions of few-channel images: the backward from whole NCHW rows in
registers, and the forward as pixel groups in registers.

A network's first layer (ResNet-18's CIFAR stem, VGG on CIFAR: 3 -> 64 channels, 3x3, stride 1,
padding 1, 32x32 images) is a poor fit for GEMMs: as im2col products its reduction (or its
output) is only C*3*3 = 27 wide.  In NCHW, an image row of 32 floats is exactly
``ROW_VECTORS`` vectors, and both gradients can be computed from whole rows held in vector
registers, each of the three horizontal taps a row loaded one float to the left or right
(masked at the row's ends, where the padding's zeros come in):

* dW[k, c, r, s] = sum over (h, w) of dY[k, h, w] * x[c, h + r - 1, w + s - 1]: per (image,
  block of KB output channels, input channel, tap row) one sweep down the rows keeps KB x 3
  vector accumulators, summed over lanes at the end;
* dX[c, h - 1 + r, w] += sum over (k, s) of dY[k, h, w + 1 - s] * W[k, c, r, s]: per (image,
  row h of dY) one sweep over the K channels keeps the three dX rows it reaches (3 x C x
  ROW_VECTORS vectors); at dY's first and last rows the dX row outside the image is masked
  out of the loads and stores.

This backward reads x in any layout (an NCHW copy is made when needed: a few hundred KB) and
dY NCHW-contiguous; conv3x3_cl takes channels-last dY.  The forward writes channels-last
output (what the rest of a ResNet reads): groups of FWD_PIXELS pixels x FWD_CHANNELS output
channels in registers over a loop of the 3*3*C taps.  The inner loops are LLVM IR (Numba
intrinsics, as in small_gemm), because LLVM keeps no register tile of accumulators when it
compiles plain Numba loops.  Measured against the im2col path on the stem's bench rows:
BENCHMARKS_perf.md, change 122.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import small_gemm
from .addend import accumulating_dx

LANES = 16 if small_gemm.LANES == 16 else 8   # float32 lanes per vector in the IR
ROW = 32                                      # image width these kernels handle
ROW_VECTORS = ROW // LANES
KB = 8                                        # output channels per dW sweep
MAX_CHANNELS = 3                              # input channels dX keeps in registers
USE = True                                    # False: conv.py takes its im2col path instead


def applies(x, w, gy, stride, padding, dilation):
    """True when ``backward`` computes this convolution's gradients: float32 x (N, C, H, 32) in
    any layout, w (K, C, 3, 3) with K a multiple of KB and C at most MAX_CHANNELS, dY
    NCHW-contiguous, stride 1, padding 1, dilation 1, on an AVX-512 host (the vectors
    small_gemm uses there; the host these kernels were measured on), while ``USE`` is True.
    (Channels-last dY goes to conv3x3_cl.)"""
    if not USE or small_gemm.LANES != 16:
        return False
    N, C, H, W = x.shape
    K = w.shape[0]
    return (x.dtype == np.float32 and gy.dtype == np.float32 and w.dtype == np.float32
            and tuple(w.shape[2:]) == (3, 3) and W == ROW and 1 <= C <= MAX_CHANNELS
            and K % KB == 0 and N * H > 0 and gy.shape == (N, K, H, W)
            and gy.flags.c_contiguous and tuple(stride) == (1, 1)
            and tuple(padding) == (1, 1) and tuple(dilation) == (1, 1))


def _vec_ptr(builder, base, off, vt):
    return builder.bitcast(builder.gep(base, [off]), vt.as_pointer())


def _pointer(context, builder, signature, args, i, off):
    """Pointer to element ``off`` of the intrinsic's array argument ``i``."""
    data = context.make_array(signature.args[i])(context, builder, args[i]).data
    return builder.gep(data, [off])


def _fma(builder):
    """(vector type, llvm.fma declaration) for LANES float32 lanes."""
    vt = ir.VectorType(ir.FloatType(), LANES)
    return vt, cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vt, [vt, vt, vt]), "llvm.fma.v%df32" % LANES)


def _masked_load(builder, ptr, lanes_on, vt):
    """Load a float32 vector of type vt from ptr with only the lanes in ``lanes_on`` read (the
    others 0 and not touched in memory, so they may lie outside the array); ``lanes_on`` a
    collection of lane numbers, or an i1 vector computed at run time."""
    n = vt.count
    mt = ir.VectorType(ir.IntType(1), n)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vt, [vt.as_pointer(), ir.IntType(32), mt, vt]),
        "llvm.masked.load.v%df32.p0v%df32" % (n, n))
    mask = lanes_on if isinstance(lanes_on, ir.Value) else \
        ir.Constant(mt, [1 if i in lanes_on else 0 for i in range(n)])
    return builder.call(fn, [ptr, ir.Constant(ir.IntType(32), 4), mask,
                             ir.Constant(vt, [0.0] * n)])


def _masked_store(builder, value, ptr, mask):
    """Store the lanes of ``value`` that the i1 vector ``mask`` selects (others untouched)."""
    vt = value.type
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), ir.IntType(32),
                                                        mask.type]),
        "llvm.masked.store.v%df32.p0v%df32" % (vt.count, vt.count))
    builder.call(fn, [value, ptr, ir.Constant(ir.IntType(32), 4), mask])


def _row_taps(builder, row, vt):
    """The row of ROW floats at pointer ``row`` loaded for the three taps: taps[d + 1][j]
    holds row[w + d] for the lanes w of vector j, d in (-1, 0, 1), zero outside the row.
    Unaligned loads, masked at the row's two ends (a shuffle per tap instead ran 1.3x
    slower in cache: the shuffles compete with the FMAs)."""
    i64 = ir.IntType(64)
    taps = ([], [], [])
    for d in (-1, 0, 1):
        for j in range(ROW_VECTORS):
            ptr = _vec_ptr(builder, row, ir.Constant(i64, j * LANES + d), vt)
            if j * LANES + d < 0:
                v = _masked_load(builder, ptr, range(1, LANES), vt)
            elif j * LANES + d + LANES > ROW:
                v = _masked_load(builder, ptr, range(LANES - 1), vt)
            else:
                v = builder.load(ptr, align=4)
            taps[d + 1].append(v)
    return taps


def _loop(builder, count, init):
    """Open a counted loop with vector phis starting at ``init``; returns (index, phis,
    close) where close(values) ends the body with the phis' next values and leaves the
    builder after the loop, returning the phis (their values at the exit)."""
    i64 = ir.IntType(64)
    entry, fn = builder.block, builder.function
    head = fn.append_basic_block("rows.head")
    body = fn.append_basic_block("rows.body")
    done = fn.append_basic_block("rows.done")
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(i64)
    i.add_incoming(ir.Constant(i64, 0), entry)
    phis = []
    for v in init:
        phi = builder.phi(v.type)
        phi.add_incoming(v, entry)
        phis.append(phi)
    builder.cbranch(builder.icmp_signed("<", i, count), body, done)
    builder.position_at_end(body)

    def close(values):
        tail = builder.block
        i.add_incoming(builder.add(i, ir.Constant(i64, 1)), tail)
        for phi, v in zip(phis, values):
            phi.add_incoming(v, tail)
        builder.branch(head)
        builder.position_at_end(done)
        return phis

    return i, phis, close


@intrinsic
def _gw_sweep(typingctx, rows, x, xoff, gy, gyoff, ldk, acc, accoff):
    """For h in range(rows) and the KB output channels k of a block, and s in 0..2:
    acc[accoff + (k*3 + s)*LANES + lane] += lane's share of
    sum_h dY[k, h, :] * x[h, : shifted by s - 1], with x's row h at x[xoff + h*ROW] and dY's
    at gy[gyoff + k*ldk + h*ROW] (float32, rows of ROW)."""
    sig = types.void(types.intp, x, types.intp, gy, types.intp, types.intp, acc, types.intp)

    def codegen(context, builder, signature, args):
        rows, ldk = args[0], args[5]
        i64 = ir.IntType(64)
        vt, fma = _fma(builder)
        X = _pointer(context, builder, signature, args, 1, args[2])
        G = _pointer(context, builder, signature, args, 3, args[4])
        A = _pointer(context, builder, signature, args, 6, args[7])
        aptrs = [_vec_ptr(builder, A, ir.Constant(i64, q * LANES), vt) for q in range(KB * 3)]
        init = [builder.load(p, align=4) for p in aptrs]
        grow = [builder.gep(G, [builder.mul(ldk, ir.Constant(i64, k))]) for k in range(KB)]
        h, accs, close = _loop(builder, rows, init)
        off = builder.mul(h, ir.Constant(i64, ROW))
        taps = _row_taps(builder, builder.gep(X, [off]), vt)
        nxt = list(accs)
        for j in range(ROW_VECTORS):
            for k in range(KB):
                dy = builder.load(_vec_ptr(builder, grow[k],
                                           builder.add(off, ir.Constant(i64, j * LANES)), vt),
                                  align=4)
                for s in range(3):
                    q = k * 3 + s
                    nxt[q] = builder.call(fma, [dy, taps[s][j], nxt[q]])
        final = close(nxt)
        for p, v in zip(aptrs, final):
            builder.store(v, p, align=4)
        return context.get_dummy_value()

    return sig, codegen


def _make_gx_spread(C):
    @intrinsic
    def gx_spread(typingctx, K, gy, gyoff, ldk, w, gx, gxoff, ldc, rlo, rhi):
        sig = types.void(types.intp, gy, types.intp, types.intp, w, gx, types.intp, types.intp,
                         types.intp, types.intp)

        def codegen(context, builder, signature, args):
            K, ldk, ldc, rlo, rhi = args[0], args[3], args[7], args[8], args[9]
            i64 = ir.IntType(64)
            vt, fma = _fma(builder)
            G = _pointer(context, builder, signature, args, 1, args[2])
            Wt = _pointer(context, builder, signature, args, 4, ir.Constant(i64, 0))
            GX = _pointer(context, builder, signature, args, 5, args[6])
            # dX rows r = 0, 1, 2 (the dY row's h - 1, h, h + 1) of each channel c; rows
            # outside [rlo, rhi) are neither read nor written
            masks = []
            for r in range(3):
                on = builder.and_(builder.icmp_signed("<=", rlo, ir.Constant(i64, r)),
                                  builder.icmp_signed(">", rhi, ir.Constant(i64, r)))
                masks.append(small_gemm._splat(builder, ir.VectorType(ir.IntType(1), LANES), on))
            optrs = [_vec_ptr(builder, GX, builder.add(builder.mul(ldc, ir.Constant(i64, c)),
                                                       ir.Constant(i64, r * ROW + j * LANES)), vt)
                     for r in range(3) for c in range(C) for j in range(ROW_VECTORS)]
            init = [_masked_load(builder, p, masks[q // (C * ROW_VECTORS)], vt)
                    for q, p in enumerate(optrs)]
            k, accs, close = _loop(builder, K, init)
            taps = _row_taps(builder, builder.gep(G, [builder.mul(k, ldk)]), vt)
            wk = builder.gep(Wt, [builder.mul(k, ir.Constant(i64, C * 9))])
            nxt = list(accs)
            for r in range(3):
                for c in range(C):
                    for s in range(3):
                        # dX[h + r - 1, w] takes dY[h, w + 1 - s] * W[k, c, r, s]
                        wv = small_gemm._splat(builder, vt, builder.load(
                            builder.gep(wk, [ir.Constant(i64, c * 9 + r * 3 + s)])))
                        for j in range(ROW_VECTORS):
                            q = (r * C + c) * ROW_VECTORS + j
                            nxt[q] = builder.call(fma, [taps[2 - s][j], wv, nxt[q]])
            final = close(nxt)
            for q, (p, v) in enumerate(zip(optrs, final)):
                _masked_store(builder, v, p, masks[q // (C * ROW_VECTORS)])
            return context.get_dummy_value()

        return sig, codegen

    gx_spread.__doc__ = (
        "Add one dY row's share to the dX rows it reaches: for the %d input channel(s) c and "
        "r in [rlo, rhi) of 0..2, dX's row at gx[gxoff + c*ldc + r*ROW] += sum over k < K and "
        "s of dY's row at gy[gyoff + k*ldk], shifted by 1 - s, times w[k*%d + c*9 + r*3 + s] "
        "(w (K, C, 3, 3) flat); the other rows are not touched." % (C, C * 9))
    return gx_spread


_gx_spread_1 = _make_gx_spread(1)
_gx_spread_2 = _make_gx_spread(2)
_gx_spread_3 = _make_gx_spread(3)


@njit(cache=True)
def _gx_from_row(C, K, gyf, gyoff, ldk, wf, gxf, gxoff, ldc, rlo, rhi):
    if C == 1:
        _gx_spread_1(K, gyf, gyoff, ldk, wf, gxf, gxoff, ldc, rlo, rhi)
    elif C == 2:
        _gx_spread_2(K, gyf, gyoff, ldk, wf, gxf, gxoff, ldc, rlo, rhi)
    else:
        _gx_spread_3(K, gyf, gyoff, ldk, wf, gxf, gxoff, ldc, rlo, rhi)


@njit(parallel=True, cache=True)
def _backward(xf, gyf, wf, N, C, H, K, need_x, need_w, gxf, gwv):
    """Per image (in parallel): dW's lane partial sums into the running thread's gwv[t]
    ((K // KB, C, 3, KB, 3, LANES) flat) and dX added into gxf (N, C, H, ROW) flat, from
    x (xf) and dY (gyf), both NCHW."""
    P = H * ROW
    for n in prange(N):
        t = numba.get_thread_id()
        acc = gwv[t]
        ximg = n * C * P
        gimg = n * K * P
        if need_w:
            for kb in range(K // KB):
                for c in range(C):
                    for r in range(3):
                        # x's row h + r - 1 must lie in the image: h in [h0, h1)
                        h0 = max(0, 1 - r)
                        h1 = min(H, H + 1 - r)
                        if h1 > h0:
                            _gw_sweep(h1 - h0, xf, ximg + c * P + (h0 + r - 1) * ROW, gyf,
                                      gimg + kb * KB * P + h0 * ROW, P, acc,
                                      ((kb * C + c) * 3 + r) * KB * 3 * LANES)
        if need_x:
            for hh in range(H):
                # dY's row hh reaches dX rows hh - 1 + r, r in 0..2, those inside the image
                _gx_from_row(C, K, gyf, gimg + hh * ROW, P, wf, gxf, ximg + (hh - 1) * ROW, P,
                             max(0, 1 - hh), min(3, H + 1 - hh))


# ---------------------------------------------------------------------------
# Forward, channels-last output: FWD_PIXELS consecutive pixels of a row by FWD_CHANNELS
# output channels in FWD_PIXELS x FWD_CHANNELS // LANES vector accumulators, over the
# 3 x 3 x C taps: per tap, the weights' FWD_CHANNELS // LANES vectors and one broadcast
# input value per pixel.

FWD_PIXELS = 4
FWD_CHANNELS = 4 * LANES


def forward_applies(x, w, stride, padding, dilation):
    """True when ``forward`` computes this convolution: float32 x (N, C, H, W) in any layout
    with W a multiple of FWD_PIXELS, w (K, C, 3, 3) float32 with C at most MAX_CHANNELS and K
    a multiple of FWD_CHANNELS, stride 1, padding 1, dilation 1, on an AVX-512 host, while
    ``USE`` is True."""
    if not USE or small_gemm.LANES != 16:
        return False
    N, C, H, W = x.shape
    K = w.shape[0]
    return (x.dtype == np.float32 and w.dtype == np.float32 and tuple(w.shape[2:]) == (3, 3)
            and 1 <= C <= MAX_CHANNELS and K % FWD_CHANNELS == 0 and W % FWD_PIXELS == 0
            and N * H * W > 0 and tuple(stride) == (1, 1) and tuple(padding) == (1, 1)
            and tuple(dilation) == (1, 1))


def make_fwd_group(npx, nv):
    """The forward's register tile as an intrinsic: ``group(xp, xoff, toff, ntaps, pstride,
    wt, woff, ldw, b, boff, y, yoff)`` sets y[yoff + j*ldw + v] = b[boff + v] + sum over taps
    t < ntaps of xp[xoff + toff[t] + j*pstride] * wt[woff + t*ldw + v], for the npx pixels j
    and nv*LANES channels v (float32; toff int64: each tap's offset in xp)."""
    @intrinsic
    def group(typingctx, xp, xoff, toff, ntaps, pstride, wt, woff, ldw, b, boff, y, yoff):
        sig = types.void(xp, types.intp, toff, types.intp, types.intp, wt, types.intp,
                         types.intp, b, types.intp, y, types.intp)
        return sig, _fwd_group_codegen(npx, nv)

    return group


def _fwd_group_codegen(npx, nv):
    def codegen(context, builder, signature, args):
        ntaps, pstride, ldw = args[3], args[4], args[7]
        i64 = ir.IntType(64)
        vt, fma = _fma(builder)
        X = _pointer(context, builder, signature, args, 0, args[1])
        T = _pointer(context, builder, signature, args, 2, ir.Constant(i64, 0))
        Wt = _pointer(context, builder, signature, args, 5, args[6])
        B = _pointer(context, builder, signature, args, 8, args[9])
        Y = _pointer(context, builder, signature, args, 10, args[11])
        bias = [builder.load(_vec_ptr(builder, B, ir.Constant(i64, v * LANES), vt), align=4)
                for v in range(nv)]
        t, accs, close = _loop(builder, ntaps, [bias[v] for _ in range(npx)
                                                for v in range(nv)])
        xt = builder.gep(X, [builder.load(builder.gep(T, [t]))])
        wrow = builder.gep(Wt, [builder.mul(t, ldw)])
        wv = [builder.load(_vec_ptr(builder, wrow, ir.Constant(i64, v * LANES), vt), align=4)
              for v in range(nv)]
        nxt = list(accs)
        for j in range(npx):
            xv = small_gemm._splat(builder, vt, builder.load(
                builder.gep(xt, [builder.mul(pstride, ir.Constant(i64, j))])))
            for v in range(nv):
                nxt[j * nv + v] = builder.call(fma, [xv, wv[v], nxt[j * nv + v]])
        final = close(nxt)
        for j in range(npx):
            for v in range(nv):
                ptr = _vec_ptr(builder, Y, builder.add(builder.mul(ldw, ir.Constant(i64, j)),
                                                       ir.Constant(i64, v * LANES)), vt)
                builder.store(final[j * nv + v], ptr, align=4)
        return context.get_dummy_value()

    return codegen


_fwd_group = make_fwd_group(FWD_PIXELS, FWD_CHANNELS // LANES)


@njit(parallel=True, cache=True)
def _forward(xpf, wt, bb, N, C, H, W, K, yf):
    """yf (N, H, W, K) flat = the convolution of xpf ((N, H + 2, W + 2, C) flat, zero-padded)
    with wt (3*3*C, K) flat, plus bb (K,); one image row per work item."""
    Wp = W + 2
    ldrow = Wp * C
    toff = np.empty(9 * C, dtype=np.int64)
    for r in range(3):
        for s in range(3):
            for c in range(C):
                toff[(r * 3 + s) * C + c] = r * ldrow + s * C + c
    for nh in prange(N * H):
        n = nh // H
        h = nh - n * H
        xrow = (n * (H + 2) + h) * ldrow
        yrow = nh * W * K
        for k0 in range(0, K, FWD_CHANNELS):
            for w0 in range(0, W, FWD_PIXELS):
                _fwd_group(xpf, xrow + w0 * C, toff, 9 * C, C, wt, k0, K, bb, k0, yf,
                           yrow + w0 * K + k0)


def forward(xp, wt, bb, N, C, H, W, K):
    """Channels-last y (N, H, W, K) of a convolution ``forward_applies`` accepts, from xp, its
    zero-padded channels-last input ((N, H + 2, W + 2, C), flat), wt, its (3*3*C, K) weights
    (flat) and bb (K,) the bias (zeros for none)."""
    y4 = np.empty((N, H, W, K), dtype=np.float32)
    _forward(xp, wt, bb, N, C, H, W, K, y4.reshape(-1))
    return y4


def backward(x, w, gy, need_x, need_w, gx_addend=None, addend_writable=False):
    """(gx, gw, folded) for a convolution ``applies`` accepts: gx NCHW (N, C, H, ROW) or
    None, gw (K, C, 3, 3) or None; folded when gx includes gx_addend (an NCHW-contiguous
    float32 array of x's shape, then updated in place when ``addend_writable``, else only
    read)."""
    N, C, H, W = x.shape
    K = w.shape[0]
    xf = np.ascontiguousarray(x).reshape(-1)
    gyf = gy.reshape(-1)
    wf = np.ascontiguousarray(w).reshape(-1)
    gx, folded = accumulating_dx(gx_addend, addend_writable, x.shape, x, gy, w) if need_x \
        else (np.empty(1, dtype=np.float32), False)
    nt = numba.get_num_threads()
    gwv = np.zeros((nt, K * C * 9 * LANES if need_w else 1), dtype=np.float32)
    _backward(xf, gyf, wf, N, C, H, K, bool(need_x), bool(need_w), gx.reshape(-1), gwv)
    gw = None
    if need_w:
        gw = np.empty((K, C, 3, 3), dtype=np.float32)
        _gw_from_lanes(gwv, K, C, gw)
    return (gx if need_x else None), gw, folded


@njit(cache=True)
def _gw_from_lanes(gwv, K, C, gw):
    """gw (K, C, 3, 3) = the sums over threads and lanes of gwv (nt, (K // KB, C, 3, KB, 3,
    LANES) flat), _backward's per-thread dW accumulators: one pass, where NumPy's sums over
    threads and lanes and the transposing copy took three (NCHW stem row: 0.05 ms)."""
    nt = gwv.shape[0]
    for kb in range(K // KB):
        for c in range(C):
            for r in range(3):
                for kk in range(KB):
                    for s in range(3):
                        o = ((((kb * C + c) * 3 + r) * KB + kk) * 3 + s) * LANES
                        total = np.float32(0.0)
                        for t in range(nt):
                            lanes = gwv[t, o:o + LANES]
                            for lane in range(LANES):
                                total += lanes[lane]
                        gw[kb * KB + kk, c, r, s] = total
