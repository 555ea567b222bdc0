"""Backward of 3x3 "same" convolutions of few-channel NCHW images, row by row in registers.

A network's first layer (ResNet-18's CIFAR stem, VGG on CIFAR: 3 -> 64 channels, 3x3, stride 1,
padding 1, 32x32 images) is a poor fit for GEMMs: as im2col products its reduction (or its
output) is only C*3*3 = 27 wide.  With x and dY both NCHW, each image row of 32 floats is
exactly ``ROW_VECTORS`` vectors, and both gradients can be computed from whole rows held in
vector registers, the three horizontal taps made by shifting a row's vectors by one lane
(zeros shifted in at the image edges):

* dW[k, c, r, s] = sum over (h, w) of dY[k, h, w] * x[c, h + r - 1, w + s - 1]: per (image,
  input channel, tap row, block of KB output channels) one sweep down the rows keeps KB x 3
  vector accumulators, summed over lanes at the end;
* dX[c, h, w] = sum over (k, r, s) of dY[k, h + 1 - r, w + 1 - s] * W[k, c, r, s]: per (image,
  output row, tap row) one sweep over the K channels keeps the C x ROW_VECTORS vectors of
  dX's row.

The inner loops are LLVM IR (Numba intrinsics, as in small_gemm), because LLVM keeps no
register tile of accumulators when it compiles plain Numba loops.  Measured against the
im2col path on the NCHW stem bench row: BENCHMARKS_perf.md, change 122.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import small_gemm

LANES = 16 if small_gemm.LANES == 16 else 8   # float32 lanes per vector in the IR
ROW = 32                                      # image width these kernels handle
ROW_VECTORS = ROW // LANES
KB = 8                                        # output channels per dW sweep
MAX_CHANNELS = 3                              # input channels dX keeps in registers
USE = True                                    # False: conv.py takes its im2col path instead


def applies(x, w, gy, stride, padding, dilation):
    """True when these kernels compute this backward: float32 x (N, C, H, 32) and dY NCHW
    (C-contiguous, not also channels-last), w (K, C, 3, 3) with K a multiple of KB and C at
    most MAX_CHANNELS, stride 1, padding 1, dilation 1, on a host whose vectors small_gemm
    uses
    for AVX-512 (the host these kernels were measured on), while ``USE`` is True."""
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


def _masked_load(builder, ptr, lanes_on, vt):
    """Load a vector from ptr with only the lanes in ``lanes_on`` read (the others 0 and not
    touched in memory, so they may lie outside the array)."""
    mt = ir.VectorType(ir.IntType(1), LANES)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vt, [vt.as_pointer(), ir.IntType(32), mt, vt]),
        "llvm.masked.load.v%df32.p0v%df32" % (LANES, LANES))
    mask = ir.Constant(mt, [1 if i in lanes_on else 0 for i in range(LANES)])
    return builder.call(fn, [ptr, ir.Constant(ir.IntType(32), 4), mask,
                             ir.Constant(vt, [0.0] * LANES)])


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
        rows, xa, xoff, gya, gyoff, ldk, acca, accoff = args
        f32, i64 = ir.FloatType(), ir.IntType(64)
        vt = ir.VectorType(f32, LANES)

        def data(i, arr):
            return context.make_array(signature.args[i])(context, builder, arr).data

        X = builder.gep(data(1, xa), [xoff])
        G = builder.gep(data(3, gya), [gyoff])
        A = builder.gep(data(6, acca), [accoff])
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]),
                                             "llvm.fma.v%df32" % LANES)
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


def _make_gx_sweep(C):
    @intrinsic
    def gx_sweep(typingctx, K, gy, gyoff, ldk, w, woff, gx, gxoff, ldc):
        sig = types.void(types.intp, gy, types.intp, types.intp, w, types.intp, gx,
                         types.intp, types.intp)

        def codegen(context, builder, signature, args):
            K, gya, gyoff, ldk, wa, woff, gxa, gxoff, ldc = args
            f32, i64 = ir.FloatType(), ir.IntType(64)
            vt = ir.VectorType(f32, LANES)

            def data(i, arr):
                return context.make_array(signature.args[i])(context, builder, arr).data

            G = builder.gep(data(1, gya), [gyoff])
            Wt = builder.gep(data(4, wa), [woff])
            GX = builder.gep(data(6, gxa), [gxoff])
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), "llvm.fma.v%df32" % LANES)
            optrs = [_vec_ptr(builder, GX, builder.add(builder.mul(ldc, ir.Constant(i64, c)),
                                                       ir.Constant(i64, j * LANES)), vt)
                     for c in range(C) for j in range(ROW_VECTORS)]
            init = [builder.load(p, align=4) for p in optrs]
            k, accs, close = _loop(builder, K, init)
            grow = builder.gep(G, [builder.mul(k, ldk)])
            taps = _row_taps(builder, grow, vt)
            wk = builder.gep(Wt, [builder.mul(k, ir.Constant(i64, C * 9))])
            nxt = list(accs)
            for c in range(C):
                for s in range(3):
                    # dX[w] takes dY[w + 1 - s]: the tap shifted by d = 1 - s
                    wv = small_gemm._splat(builder, vt, builder.load(
                        builder.gep(wk, [ir.Constant(i64, c * 9 + s)])))
                    for j in range(ROW_VECTORS):
                        q = c * ROW_VECTORS + j
                        nxt[q] = builder.call(fma, [taps[2 - s][j], wv, nxt[q]])
            final = close(nxt)
            for p, v in zip(optrs, final):
                builder.store(v, p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    gx_sweep.__doc__ = (
        "For the %d input channel(s) c of dX's row at gx[gxoff + c*ldc] (ROW floats each): "
        "add sum over k < K and s of dY's row at gy[gyoff + k*ldk], shifted by 1 - s, times "
        "w[woff + k*%d + c*9 + s] (w (K, C, 3, 3) flat, woff = the tap row r times 3)."
        % (C, C * 9))
    return gx_sweep


def _make_gx_spread(C):
    @intrinsic
    def gx_spread(typingctx, K, gy, gyoff, ldk, w, gx, gxoff, ldc):
        sig = types.void(types.intp, gy, types.intp, types.intp, w, gx, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            K, gya, gyoff, ldk, wa, gxa, gxoff, ldc = args
            f32, i64 = ir.FloatType(), ir.IntType(64)
            vt = ir.VectorType(f32, LANES)

            def data(i, arr):
                return context.make_array(signature.args[i])(context, builder, arr).data

            G = builder.gep(data(1, gya), [gyoff])
            Wt = data(4, wa)
            GX = builder.gep(data(5, gxa), [gxoff])
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), "llvm.fma.v%df32" % LANES)
            # dX rows r = 0, 1, 2 (the dY row's h - 1, h, h + 1) of each channel c
            optrs = [_vec_ptr(builder, GX, builder.add(builder.mul(ldc, ir.Constant(i64, c)),
                                                       ir.Constant(i64, r * ROW + j * LANES)), vt)
                     for r in range(3) for c in range(C) for j in range(ROW_VECTORS)]
            init = [builder.load(p, align=4) for p in optrs]
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
            for p, v in zip(optrs, final):
                builder.store(v, p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    gx_spread.__doc__ = (
        "Add one dY row's share to three dX rows: for the %d input channel(s) c and r in "
        "0..2, dX's row at gx[gxoff + c*ldc + r*ROW] += sum over k < K and s of dY's row at "
        "gy[gyoff + k*ldk], shifted by 1 - s, times w[k*%d + c*9 + r*3 + s] (w (K, C, 3, 3) "
        "flat)." % (C, C * 9))
    return gx_spread


_gx_sweep_1 = _make_gx_sweep(1)
_gx_sweep_2 = _make_gx_sweep(2)
_gx_sweep_3 = _make_gx_sweep(3)
_gx_spread_1 = _make_gx_spread(1)
_gx_spread_2 = _make_gx_spread(2)
_gx_spread_3 = _make_gx_spread(3)


@njit(cache=True)
def _gx_row(C, K, gyf, gyoff, ldk, wf, woff, gxf, gxoff, ldc):
    if C == 1:
        _gx_sweep_1(K, gyf, gyoff, ldk, wf, woff, gxf, gxoff, ldc)
    elif C == 2:
        _gx_sweep_2(K, gyf, gyoff, ldk, wf, woff, gxf, gxoff, ldc)
    else:
        _gx_sweep_3(K, gyf, gyoff, ldk, wf, woff, gxf, gxoff, ldc)


@njit(cache=True)
def _gx_from_row(C, K, gyf, gyoff, ldk, wf, gxf, gxoff, ldc):
    if C == 1:
        _gx_spread_1(K, gyf, gyoff, ldk, wf, gxf, gxoff, ldc)
    elif C == 2:
        _gx_spread_2(K, gyf, gyoff, ldk, wf, gxf, gxoff, ldc)
    else:
        _gx_spread_3(K, gyf, gyoff, ldk, wf, gxf, gxoff, ldc)


@njit(parallel=True, cache=True)
def _backward(xf, gyf, wf, N, C, H, K, need_x, need_w, gxf, gwv):
    """Per image (in parallel): dW's lane partial sums into the running thread's gwv[t]
    ((K // KB, C, 3, KB, 3, LANES) flat) and dX added into gxf (N, C, H, ROW) flat."""
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
                if 0 < hh < H - 1:
                    _gx_from_row(C, K, gyf, gimg + hh * ROW, P, wf, gxf,
                                 ximg + (hh - 1) * ROW, P)
                else:
                    # an edge row of dY: only the dX rows inside the image
                    for r in range(3):
                        h = hh + r - 1
                        if 0 <= h < H:
                            _gx_row(C, K, gyf, gimg + hh * ROW, P, wf, r * 3, gxf,
                                    ximg + h * ROW, P)


def backward(x, w, gy, need_x, need_w, gx_addend=None, addend_writable=False):
    """(gx, gw, folded) for a convolution ``applies`` accepts: gx NCHW (N, C, H, ROW) or
    None, gw (K, C, 3, 3) or None; folded when gx includes gx_addend (an NCHW-contiguous
    float32 array of x's shape, then updated in place when ``addend_writable``, else only
    read)."""
    from .addend import nchw_foldable, writable_in_place
    N, C, H, W = x.shape
    K = w.shape[0]
    xf = np.ascontiguousarray(x).reshape(-1)
    gyf = gy.reshape(-1)
    wf = np.ascontiguousarray(w).reshape(-1)
    folded = bool(need_x) and nchw_foldable(gx_addend, x.shape, np.float32)
    if not need_x:
        gx = np.empty((1, 1, 1, ROW), dtype=np.float32)
    elif folded and writable_in_place(gx_addend, addend_writable, x, gy, w):
        gx = gx_addend
    elif folded:
        gx = gx_addend.copy()
    else:
        gx = np.zeros(x.shape, dtype=np.float32)
    nt = numba.get_num_threads()
    gwv = np.zeros((nt, K * C * 9 * LANES if need_w else 1), dtype=np.float32)
    _backward(xf, gyf, wf, N, C, H, K, bool(need_x), bool(need_w), gx.reshape(-1), gwv)
    gw = None
    if need_w:
        part = gwv.sum(axis=0).reshape(K // KB, C, 3, KB, 3, LANES).sum(axis=5)
        gw = np.ascontiguousarray(part.transpose(0, 3, 1, 2, 4)).reshape(K, C, 3, 3)
    return (gx if need_x else None), gw, folded
