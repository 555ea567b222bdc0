"""Winograd weight transforms U = G g G^T and their gradients dg = G^T dU G (CPU).

U is stored (positions, K, C): for each output channel k and input channel c, the 3x3 kernel
g = w[k, c] becomes s x s numbers (s = 4, 6 or 5: F(2x2, 3x3), F(4x4, 3x3) and the stride-2
variant; ``minigrad.cpu.winograd`` explains them), each in its own (K, C) plane.  The weights'
gradient reads dU, one (s*s, K, C) array per thread that computed part of it, sums the copies
and applies G^T . G.

Two implementations:

* float32 with C a multiple of LANES on AVX-512 hosts (``_transform_blocks``,
  ``_gradient_blocks``): 16 input channels at a time in vector registers.  The 16 kernels'
  9 taps are read as 16 rows of 9 floats and turned into 9 vectors of 16 channels by a
  register transpose (small_gemm.transpose_registers); G's products, constants compiled in,
  give the s*s vectors of U, each stored to its plane.  The gradient runs the same steps
  backwards and stores each channel's 9 taps with a 9-lane masked store.  Computed in
  float32.
* otherwise (float64, other channel counts, other hosts) the float64 kernels below, one
  vector loop per row of G g over up to _WT6_CHANNELS channels, rounded once at the end.

Measured on ResNet-18's layers (BENCHMARKS_perf.md, change 149).
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import small_gemm
from ._jit import pjit
from .conv3x3_rows import _masked_load, _masked_store, _pointer, _vec_ptr

# The weight transform matrices G (s x 3) of the three variants.
# F(2x2, 3x3) (Lavin & Gray, interpolation points 0, +-1, inf):
G4 = ((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1))
# F(4x4, 3x3) (points 0, +-1, +-2, inf):
G6 = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
# The stride-2 variant (even taps by F(2, 2), the odd tap as it is):
G5 = ((1, 0, 0), (1, 0, 1), (0, 0, 1), (0, 1, 0), (0, 1, 0))
G4_ARRAY, G5_ARRAY, G6_ARRAY = (np.array(G, dtype=np.float64) for G in (G4, G5, G6))

LANES = 16
# False: every dtype and host takes the float64 kernels.
USE_BLOCKS = True


def _g_array(npos):
    """G (float64) of the variant with npos positions."""
    return {16: G4_ARRAY, 25: G5_ARRAY, 36: G6_ARRAY}[npos]


def uses_blocks(dtype, C):
    """True when the float32 block kernels take weights of this dtype with C input channels."""
    return (USE_BLOCKS and small_gemm.LANES == LANES and np.dtype(dtype) == np.float32
            and C % LANES == 0)


def transform(w, U):
    """U (npos, K, C) = G g G^T for w (K, C, 3, 3) of U's dtype, npos = U.shape[0] (16, 25 or
    36) choosing G."""
    npos, K, C = U.shape
    if w.shape != (K, C, 3, 3) or npos not in (16, 25, 36):
        raise ValueError(f"transform: weights {w.shape} do not fit U {U.shape}")
    w = np.ascontiguousarray(w, dtype=U.dtype)
    if uses_blocks(U.dtype, C):
        _transform_blocks(w, U)
    else:
        _weights_tf_g(w, U, _g_array(npos))


def gradient(duacc, gw):
    """gw (K, C, 3, 3) = G^T dU G, dU (npos, K, C) the sum of duacc's rows (nt, npos*K*C),
    npos choosing G."""
    K, C = gw.shape[0], gw.shape[1]
    npos = duacc.shape[1] // max(1, K * C)
    if npos not in (16, 25, 36) or duacc.shape[1] != npos * K * C:
        raise ValueError(f"gradient: dU rows of {duacc.shape[1]} do not fit gw {gw.shape}")
    if uses_blocks(duacc.dtype, C) and gw.dtype == duacc.dtype:
        _gradient_blocks(duacc, gw)
    elif npos == 16:
        _weights_grad(duacc, gw)
    else:
        _weights_grad_g(duacc, gw, _g_array(npos))


# ---------------------------------------------------------------------------
# float32 blocks of LANES input channels
# ---------------------------------------------------------------------------

def _combination(builder, vt, coefs, vecs):
    """sum of c * v over the nonzero constants c (float32 vectors vecs), as multiplies and
    adds (no multiply for 1)."""
    acc = None
    for c, v in zip(coefs, vecs):
        if c == 0:
            continue
        if c == 1:
            term = v
        else:
            term = builder.fmul(v, ir.Constant(vt, [float(np.float32(c))] * LANES))
        acc = term if acc is None else builder.fadd(acc, term)
    return acc if acc is not None else ir.Constant(vt, [0.0] * LANES)


def _make_tf_block(G):
    G = np.asarray(G, dtype=np.float64)
    s = G.shape[0]

    @intrinsic
    def tf_block(typingctx, w, woff, U, uoff, ustride):
        sig = types.void(w, types.intp, U, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            vt = ir.VectorType(ir.FloatType(), LANES)
            W = _pointer(context, builder, signature, args, 0, args[1])
            D = _pointer(context, builder, signature, args, 2, args[3])
            rows = [_masked_load(builder, _vec_ptr(builder, W, ir.Constant(i64, 9 * r), vt),
                                 range(9), vt) for r in range(LANES)]
            taps = small_gemm.transpose_registers(builder, rows)[:9]
            gg = [[_combination(builder, vt, G[a], [taps[i * 3 + j] for i in range(3)])
                   for j in range(3)] for a in range(s)]
            for a in range(s):
                for b in range(s):
                    off = builder.mul(args[4], ir.Constant(i64, a * s + b))
                    builder.store(_combination(builder, vt, G[b], gg[a]),
                                  _vec_ptr(builder, D, off, vt), align=4)
            return context.get_dummy_value()

        return sig, codegen

    tf_block.__doc__ = (
        "U[uoff + p*ustride + l] = (G g_l G^T)[p] for the %d positions p and the LANES "
        "kernels g_l = w[woff + 9*l : woff + 9*l + 9] (float32)." % (s * s))
    return tf_block


def _make_grad_block(G):
    G = np.asarray(G, dtype=np.float64)
    s = G.shape[0]

    @intrinsic
    def grad_block(typingctx, du, duoff, pstride, gw, gwoff, add):
        sig = types.void(du, types.intp, types.intp, gw, types.intp, types.boolean)

        def codegen(context, builder, signature, args):
            i64, i1 = ir.IntType(64), ir.IntType(1)
            vt = ir.VectorType(ir.FloatType(), LANES)
            S = _pointer(context, builder, signature, args, 0, args[1])
            D = _pointer(context, builder, signature, args, 3, args[4])
            du = [builder.load(_vec_ptr(builder, S, builder.mul(args[2], ir.Constant(i64, p)),
                                          vt), align=4) for p in range(s * s)]
            # (G^T dU)[r, b], then (G^T dU G)[r, j]
            t = [[_combination(builder, vt, G[:, r], [du[a * s + b] for a in range(s)])
                  for b in range(s)] for r in range(3)]
            out = [_combination(builder, vt, G[:, j], t[r]) for r in range(3) for j in range(3)]
            zero = ir.Constant(vt, [0.0] * LANES)
            per_channel = small_gemm.transpose_registers(builder, out + [zero] * (LANES - 9))
            mask = ir.Constant(ir.VectorType(i1, LANES), [1] * 9 + [0] * (LANES - 9))
            ptrs = [_vec_ptr(builder, D, ir.Constant(i64, 9 * l), vt) for l in range(LANES)]
            add_flag = args[5] if args[5].type == i1 else builder.trunc(args[5], i1)
            with builder.if_else(add_flag) as (accumulate, overwrite):
                with accumulate:
                    for ptr, v in zip(ptrs, per_channel):
                        old = _masked_load(builder, ptr, range(9), vt)
                        _masked_store(builder, builder.fadd(old, v), ptr, mask)
                with overwrite:
                    for ptr, v in zip(ptrs, per_channel):
                        _masked_store(builder, v, ptr, mask)
            return context.get_dummy_value()

        return sig, codegen

    grad_block.__doc__ = (
        "gw[gwoff + 9*l + 3*r + j] = (or, with add, +=) (G^T dU_l G)[r, j] for the LANES "
        "channels l, with dU_l[p] = du[duoff + p*pstride + l] for the %d positions p "
        "(float32)." % (s * s))
    return grad_block


_tf_block_4, _tf_block_5, _tf_block_6 = (_make_tf_block(G) for G in (G4, G5, G6))
_grad_block_4, _grad_block_5, _grad_block_6 = (_make_grad_block(G) for G in (G4, G5, G6))


@njit(inline="always")
def _tf_block(npos, w, woff, U, uoff, ustride):
    if npos == 16:
        _tf_block_4(w, woff, U, uoff, ustride)
    elif npos == 25:
        _tf_block_5(w, woff, U, uoff, ustride)
    else:
        _tf_block_6(w, woff, U, uoff, ustride)


@njit(inline="always")
def _grad_block(npos, du, duoff, pstride, gw, gwoff, add):
    if npos == 16:
        _grad_block_4(du, duoff, pstride, gw, gwoff, add)
    elif npos == 25:
        _grad_block_5(du, duoff, pstride, gw, gwoff, add)
    else:
        _grad_block_6(du, duoff, pstride, gw, gwoff, add)


@pjit(size_arg=1)
def _transform_blocks(w, U):
    """U (npos, K, C) = G g G^T, float32, C a multiple of LANES; one task per output channel,
    each block's s*s vectors stored straight to their planes.  (Staging a channel's rows and
    copying them out plane by plane ran faster alone, 1.5-3.0x with 25 and 36 positions, but not
    inside a ResNet-18 step, where U is written to memory: BENCHMARKS_perf.md, change 149.)"""
    K, C = w.shape[0], w.shape[1]
    npos = U.shape[0]
    wf = w.reshape(-1)
    Uf = U.reshape(-1)
    for k in prange(K):
        for c0 in range(0, C, LANES):
            _tf_block(npos, wf, (k * C + c0) * 9, Uf, k * C + c0, K * C)


@pjit(size_arg=0)
def _gradient_blocks(duacc, gw):
    """gw (K, C, 3, 3) = G^T dU G, dU (npos, K, C) the sum over duacc's rows, float32, C a
    multiple of LANES; one task per output channel, each copy of dU added in turn."""
    nt = duacc.shape[0]
    K, C = gw.shape[0], gw.shape[1]
    npos = duacc.shape[1] // (K * C)
    gwf = gw.reshape(-1)
    for k in prange(K):
        for c0 in range(0, C, LANES):
            for j in range(nt):
                _grad_block(npos, duacc[j], k * C + c0, K * C, gwf, (k * C + c0) * 9, j > 0)


# ---------------------------------------------------------------------------
# float64 kernels (any dtype, any channel count)
# ---------------------------------------------------------------------------

@njit(inline="always")
def _sum_copies(duacc, off, cn, row):
    """row[:cn] (float64) = the sum over duacc's rows of duacc[:, off:off + cn]."""
    src = duacc[0, off:off + cn]
    for c in range(cn):
        row[c] = src[c]
    for j in range(1, duacc.shape[0]):
        src = duacc[j, off:off + cn]
        for c in range(cn):
            row[c] += src[c]


@pjit(size_arg=0)
def _weights_grad(duacc, gw):
    """gw (K, C, 3, 3) = G^T dU G, dU (16, K, C) = the sum over duacc's rows (float64).

    Channels go 64 at a time: a (16, C) block of float64 for C = 512 puts its 16 rows 4 KB
    apart, in the same L1 sets (6.6-6.8 ms for 512 x 512, BENCHMARKS_perf.md, change 80)."""
    K, C = gw.shape[0], gw.shape[1]
    CB = 64
    for k in prange(K):
        du = np.empty((16, CB), dtype=np.float64)
        for c0 in range(0, C, CB):
            cn = min(CB, C - c0)
            for p in range(16):
                _sum_copies(duacc, (p * K + k) * C + c0, cn, du[p])
            for c in range(cn):
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
                    gw[k, c0 + c, r, 0] = t0 + 0.5 * (t1 + t2)
                    gw[k, c0 + c, r, 1] = 0.5 * (t1 - t2)
                    gw[k, c0 + c, r, 2] = 0.5 * (t1 + t2) + t3


# Input channels per task of the general weight transforms (F(4x4, 3x3), the stride-2
# variant, and F(2x2, 3x3)'s forward transform): whole rows of up to 256 channels, the float64
# blocks (at most 36 x 256) in L2.  Against the per-channel scalar loops these replaced,
# 256 x 256: transform 4.1-4.9 -> 0.9-1.5 ms, gradient (one partial sum) 2.8-4.4 -> 2.1-2.3
# ms; 64-channel tasks made the transform 2.1 ms (BENCHMARKS_perf.md, change 99).  For
# F(2x2, 3x3) this form ran 1.3-1.7x slower than the scalar kernels above on a host with a
# third of the memory speed; on the Zen 5 host its forward transform ran 1.40-1.44x faster
# than F(2x2)'s scalar transform kernel (128 to 512 channels; that kernel is gone) and its
# gradient 0.65-0.80x as fast as _weights_grad, so F(2x2) keeps _weights_grad (change 144).
_WT6_CHANNELS = 256


@njit(cache=True)
def _channel_run(task, nb, CB, C):
    """(k, c0, cn) of task ``task`` of the F(4x4) weight kernels: output channel k, input
    channels c0 .. c0+cn-1 (nb runs of up to CB channels per output channel)."""
    k = task // nb
    c0 = (task - k * nb) * CB
    return k, c0, min(CB, C - c0)


@pjit(size_arg=1)
def _weights_tf_g(w, U, G):
    """U (s*s, K, C) = G g G^T for w (K, C, 3, 3) with a G of s rows (s x 3, float64:
    F(4x4, 3x3)'s or the stride-2 variant's), computed in float64.  Each task takes one
    output channel's run of up to _WT6_CHANNELS input channels and computes every row of
    G g and of U as one vector loop over them."""
    K, C = w.shape[0], w.shape[1]
    sg = G.shape[0]
    CB = min(C, _WT6_CHANNELS)
    nb = (C + CB - 1) // CB
    for task in prange(K * nb):
        k, c0, cn = _channel_run(task, nb, CB, C)
        wb = np.empty((9, CB))
        t = np.empty((3 * sg, CB))       # row a * 3 + j: (G g)[a, j]
        src = w[k]
        for c in range(cn):
            for i in range(3):
                for j in range(3):
                    wb[i * 3 + j, c] = src[c0 + c, i, j]
        for a in range(sg):
            g0, g1, g2 = G[a, 0], G[a, 1], G[a, 2]
            for j in range(3):
                r0, r1, r2, d = wb[j], wb[3 + j], wb[6 + j], t[a * 3 + j]
                for c in range(cn):
                    d[c] = g0 * r0[c] + g1 * r1[c] + g2 * r2[c]
        for a in range(sg):
            t0, t1, t2 = t[a * 3], t[a * 3 + 1], t[a * 3 + 2]
            for b in range(sg):
                h0, h1, h2 = G[b, 0], G[b, 1], G[b, 2]
                d = U[a * sg + b, k, c0:c0 + cn]
                for c in range(cn):
                    d[c] = t0[c] * h0 + t1[c] * h1 + t2[c] * h2


@pjit(size_arg=0)
def _weights_grad_g(duacc, gw, G):
    """gw (K, C, 3, 3) = G^T dU G for a G of s rows, dU (s*s, K, C) = the sum over duacc's
    rows (float64); tasks and vector loops as in _weights_tf_g."""
    K, C = gw.shape[0], gw.shape[1]
    sg = G.shape[0]
    CB = min(C, _WT6_CHANNELS)
    nb = (C + CB - 1) // CB
    for task in prange(K * nb):
        k, c0, cn = _channel_run(task, nb, CB, C)
        du = np.empty((sg * sg, CB))
        t = np.empty((3 * sg, CB))       # row r * s + b: (G^T dU)[r, b]
        o = np.empty((9, CB))            # row r * 3 + j: (G^T dU G)[r, j]
        for p in range(sg * sg):
            _sum_copies(duacc, (p * K + k) * C + c0, cn, du[p])
        # the two contractions stay written out: through a shared helper taking a column
        # of G this kernel ran 8-20% slower (BENCHMARKS_perf.md, change 99)
        for r in range(3):
            for b in range(sg):
                d = t[r * sg + b]
                g = G[0, r]
                s = du[b]
                for c in range(cn):
                    d[c] = g * s[c]
                for a in range(1, sg):
                    g = G[a, r]
                    s = du[a * sg + b]
                    for c in range(cn):
                        d[c] += g * s[c]
        for r in range(3):
            for j in range(3):
                d = o[r * 3 + j]
                h = G[0, j]
                s = t[r * sg]
                for c in range(cn):
                    d[c] = h * s[c]
                for b in range(1, sg):
                    h = G[b, j]
                    s = t[r * sg + b]
                    for c in range(cn):
                        d[c] += h * s[c]
        dst = gw[k]
        for c in range(cn):
            for r in range(3):
                for j in range(3):
                    dst[c0 + c, r, j] = o[r * 3 + j, c]
