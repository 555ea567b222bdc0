"""float32 GEMM for the shapes where OpenBLAS is slow: an FMA micro-kernel in LLVM IR.

LLVM does not keep a register tile of accumulators when it compiles plain Numba loops, so
the micro-kernel here is written as LLVM IR (a Numba intrinsic): an MR x NR tile of C held
in vector registers, one FMA per vector and reduction step, the tile of C read and written
once.  Its size follows the host's vectors (``LANES`` float32 lanes):

* AVX-512 (``LANES`` 16): a 12 x 32 tile in 24 of the 32 zmm registers.  On an AMD Zen 4
  host it ran single-threaded in-cache products 1.1-1.3x faster than OpenBLAS's AVX-512
  kernels when B is not transposed, there are at least 32 columns and a reduction of at least
  64 (the 3x3 stride-2 convolutions' tiles, the 1x1 stride-2 ones, Winograd's backward
  products), because it reads B in place where OpenBLAS packs it for every call; it lost
  with 16 columns or a 27-step reduction (BENCHMARKS_perf.md, change 117).  B transposed is
  packed by _VW x _VW block transposes in registers; with the scalar packing copy it had
  lost to OpenBLAS, with the block transposes it ran 1.1-1.5x faster on an AMD Zen 5 host
  (change 132), which also confirmed the rest of the rule.  ``python -m
  benchmarks.bench_small_gemm --grid`` checks the rule on another CPU.
* AVX2 with FMA (``LANES`` 8): a 6 x 16 tile in twelve ymm registers; it beat OpenBLAS's
  Haswell kernels on skinny shapes on a Zen 3 host: a short reduction (the stem's 27 = 3 x 3 x
  3), 16 output columns (LeNet's conv2), small weight gradients summed over 512 pixels read
  transposed (BENCHMARKS_perf.md, change 78).

When m is not a multiple of the tile's rows, the last rows run a shorter version of the same
micro-kernel (``EDGE_MR``: 4 or 8 rows on the wide tile, 2 or 4 on the AVX2 one).

``sgemm(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc)`` has the row-major interface
of ``blas.gemm_rm`` (alpha 1); ``preferred(transa, transb, m, n, k)`` says whether it beats
OpenBLAS on that shape for this host's tile, and ``gemm_rm`` then calls it.  That happens only
on hosts with one of the two instruction sets (``SUPPORTED``) with Numba compiling for the
host CPU, and while the switch is on: ``set_enabled(False)``, or ``MINIGRAD_SMALL_GEMM=0`` in
the environment, sends every GEMM to OpenBLAS.  Compiled kernels read the switch when they
run, so it needs no cache clearing.  (Numba's cache keeps code per host CPU, so the tile
compiled in is always the one this host picks.)
"""

import ctypes
import os

import llvmlite.binding as _llvm
import numba
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .prefetch import emit_prefetch


def _host_lanes():
    """float32 lanes of the FMA vectors the micro-kernel uses on this host: 16 with AVX-512,
    8 with AVX2 and FMA, 0 where small_gemm is not used (another instruction set, or Numba
    compiling for a CPU other than the host)."""
    if numba.config.CPU_NAME not in (None, "host"):
        return 0
    try:
        feats = _llvm.get_host_cpu_features()
    except RuntimeError:
        return 0
    if not feats.get("fma"):
        return 0
    if feats.get("avx512f"):
        return 16
    return 8 if feats.get("avx2") else 0


LANES = _host_lanes()
SUPPORTED = LANES > 0
# floats per vector; where small_gemm is not used, sgemm (called directly, as the tests do)
# still runs the AVX2 tile on whatever vectors LLVM has
_VW = 16 if LANES == 16 else 8
NR = 2 * _VW                      # columns of the C tile: two vectors
MR = 12 if _VW == 16 else 6       # rows of the C tile
KC = 256          # reduction steps per pass over C
# Columns of B per packed block.  B untransposed with a whole number of NR-column panels is
# read in place up to NC columns, else packed on every call: with the wide tile and 256
# columns here, 512-column products (packed) ran at 0.47-0.93x OpenBLAS's speed, read in place
# at 1.07-1.15x (one thread, in cache).
NC = 2048 if _VW == 16 else 256
# Largest block of B (KC rows, float32 elements) that preferred() sends to the wide tile.
_WIDE_MAX_B_BLOCK = 1 << 17

# The switch: a C int that compiled kernels read through a symbol, so flipping it needs
# no recompilation and leaves Numba's cache valid.
_SWITCH_SYMBOL = "minigrad_small_gemm_on"
_switch = ctypes.c_int32(0)
_llvm.add_symbol(_SWITCH_SYMBOL, ctypes.addressof(_switch))


def set_enabled(on):
    """Turn the dispatch of preferred shapes to sgemm on or off (process-wide); returns the
    new state, which stays False on CPUs that are not SUPPORTED."""
    _switch.value = 1 if (on and SUPPORTED) else 0
    return bool(_switch.value)


def enabled():
    """True while gemm_rm sends preferred float32 shapes to sgemm."""
    return bool(_switch.value)


def _switch_reader(symbol):
    """An intrinsic that reads the C int ``symbol`` when the compiled code runs (True when
    nonzero), so flipping it needs no recompilation."""
    @intrinsic
    def read(typingctx):
        def codegen(context, builder, signature, args):
            flag = builder.module.globals.get(symbol)
            if flag is None:
                flag = ir.GlobalVariable(builder.module, ir.IntType(32), symbol)
            return builder.icmp_signed("!=", builder.load(flag), ir.Constant(ir.IntType(32), 0))
        return types.boolean(), codegen
    return read


switch_on = _switch_reader(_SWITCH_SYMBOL)
switch_on.__doc__ = "The switch's current value in jitted code (read at run time, not compiled in)."

_PACK_A_SYMBOL = "minigrad_small_gemm_pack_a"
_pack_a = ctypes.c_int32(1)
_llvm.add_symbol(_PACK_A_SYMBOL, ctypes.addressof(_pack_a))
pack_a_on = _switch_reader(_PACK_A_SYMBOL)


def set_pack_a(on):
    """Turn PACK_A (a transposed A packed before the product, where the caller asks for it)
    on or off, process-wide and at run time, for paired timing; on by default.  Returns the
    new state."""
    _pack_a.value = 1 if on else 0
    return bool(_pack_a.value)


def _splat(builder, vt, x):
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vt.count), [0] * vt.count)
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), mask)


def _make_micro_kernel(mr):
    """The micro-kernel intrinsic for tiles of mr rows (its code: _micro_kernel_codegen)."""
    @intrinsic
    def kernel(typingctx, kc, a, aoff, ars, acs, b, boff, brs, c, coff, ldc, beta):
        sig = types.void(types.intp, a, types.intp, types.intp, types.intp, b, types.intp,
                         types.intp, c, types.intp, types.intp, types.float32)
        return sig, _micro_kernel_codegen(mr)
    return kernel


def _make_stream_kernel(mr):
    """The micro-kernel of mr rows that also prefetches a side stream: its last three
    arguments (pf, pfoff, pfstep) ask for one prefetch a reduction step, of pf[pfoff +
    p*pfstep] at step p (see _micro_kernel_codegen)."""
    @intrinsic
    def kernel(typingctx, kc, a, aoff, ars, acs, b, boff, brs, c, coff, ldc, beta, pf, pfoff,
               pfstep):
        sig = types.void(types.intp, a, types.intp, types.intp, types.intp, b, types.intp,
                         types.intp, c, types.intp, types.intp, types.float32, pf, types.intp,
                         types.intp)
        return sig, _micro_kernel_codegen(mr, stream=True)
    return kernel


def _micro_kernel_codegen(rows, stream=False):
    """Code generator of a rows x NR micro-kernel: C[i, j] = beta * C[i, j] + sum_p A[i, p] *
    B[p, j] (C not read when beta is 0), with A[i, p] = a[aoff + i*ars + p*acs],
    B[p, j] = b[boff + p*brs + j] and C[i, j] = c[coff + i*ldc + j]; all three float32,
    kc >= 0 steps.  With ``stream``, step p also prefetches pf[pfoff + p*pfstep] into L2
    (three more arguments): memory the caller reads next arrives while the tile computes."""
    def codegen(context, builder, signature, args):
        kc, a, aoff, ars, acs, b, boff, brs, c, coff, ldc, beta = args[:12]
        f32, i64 = ir.FloatType(), ir.IntType(64)
        vt = ir.VectorType(f32, _VW)
        nv = NR // _VW

        def data(i, arr):
            return context.make_array(signature.args[i])(context, builder, arr).data

        A = builder.gep(data(1, a), [aoff])
        B = builder.gep(data(5, b), [boff])
        C = builder.gep(data(8, c), [coff])
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]),
                                             "llvm.fma.v%df32" % _VW)
        arow = [builder.gep(A, [builder.mul(ars, ir.Constant(i64, i))]) for i in range(rows)]
        entry, fn = builder.block, builder.function
        head = fn.append_basic_block("mk.head")
        body = fn.append_basic_block("mk.body")
        done = fn.append_basic_block("mk.done")
        builder.branch(head)

        builder.position_at_end(head)
        p = builder.phi(i64)
        p.add_incoming(ir.Constant(i64, 0), entry)
        acc = []
        for _ in range(rows * nv):
            phi = builder.phi(vt)
            phi.add_incoming(ir.Constant(vt, [0.0] * _VW), entry)
            acc.append(phi)
        builder.cbranch(builder.icmp_signed("<", p, kc), body, done)

        builder.position_at_end(body)
        if stream:
            _prefetch_step(context, builder, signature, args, p)
        brow = builder.gep(B, [builder.mul(p, brs)])
        bv = [builder.load(builder.bitcast(builder.gep(brow, [ir.Constant(i64, j * _VW)]),
                                           vt.as_pointer()), align=4) for j in range(nv)]
        pa = builder.mul(p, acs)
        nxt = []
        for i in range(rows):
            av = _splat(builder, vt, builder.load(builder.gep(arow[i], [pa])))
            nxt.extend(builder.call(fma, [av, bv[j], acc[i * nv + j]]) for j in range(nv))
        tail = builder.block
        p.add_incoming(builder.add(p, ir.Constant(i64, 1)), tail)
        for phi, v in zip(acc, nxt):
            phi.add_incoming(v, tail)
        builder.branch(head)

        builder.position_at_end(done)
        bsplat = _splat(builder, vt, beta)
        ptrs = [builder.bitcast(builder.gep(C, [builder.add(builder.mul(ldc, ir.Constant(i64, i)),
                                                            ir.Constant(i64, j * _VW))]),
                                vt.as_pointer())
                for i in range(rows) for j in range(nv)]
        with builder.if_else(builder.fcmp_ordered("==", beta, ir.Constant(f32, 0.0))) as \
                (overwrite, update):
            with overwrite:
                for ptr, v in zip(ptrs, acc):
                    builder.store(v, ptr, align=4)
            with update:
                for ptr, v in zip(ptrs, acc):
                    old = builder.load(ptr, align=4)
                    builder.store(builder.call(fma, [bsplat, old, v]), ptr, align=4)
        return context.get_dummy_value()

    return codegen


def _prefetch_step(context, builder, signature, args, p):
    """Emit a prefetch of pf[pfoff + p*pfstep] (the stream kernel's last three arguments)
    into L2 (locality 2: not L1, which holds the tile's operands)."""
    pf, pfoff, pfstep = args[12:15]
    data = context.make_array(signature.args[12])(context, builder, pf).data
    emit_prefetch(builder, builder.gep(data, [builder.add(pfoff, builder.mul(p, pfstep))]),
                  locality=2)


# The MR-row micro-kernel, and two shorter ones for the last rows of A when m is not a
# multiple of MR (m = 64, 128 or 256 leave 4 or 8 rows on the wide tile): without them
# those rows ran a whole MR-row tile on zero padding, through a scalar copy-out
# (BENCHMARKS_perf.md, change 128).
EDGE_MR = (MR // 3, 2 * MR // 3)
_micro_kernel = _make_micro_kernel(MR)
_micro_kernel_e0 = _make_micro_kernel(EDGE_MR[0])
_micro_kernel_e1 = _make_micro_kernel(EDGE_MR[1])
_stream_kernel = _make_stream_kernel(MR)
_stream_kernel_e0 = _make_stream_kernel(EDGE_MR[0])
_stream_kernel_e1 = _make_stream_kernel(EDGE_MR[1])


@njit(inline="always")
def _tile(mr, kc, a, aoff, ars, acs, b, boff, brs, c, coff, ldc, beta):
    """The micro-kernel of mr rows (MR or one of EDGE_MR) on one tile."""
    if mr == MR:
        _micro_kernel(kc, a, aoff, ars, acs, b, boff, brs, c, coff, ldc, beta)
    elif mr == EDGE_MR[1]:
        _micro_kernel_e1(kc, a, aoff, ars, acs, b, boff, brs, c, coff, ldc, beta)
    else:
        _micro_kernel_e0(kc, a, aoff, ars, acs, b, boff, brs, c, coff, ldc, beta)


@njit(inline="always")
def tile_stream(mr, kc, a, aoff, ars, acs, b, boff, brs, c, coff, ldc, beta, pf, pfoff, pfstep):
    """_tile's micro-kernel that also prefetches pf[pfoff + p*pfstep] at each step p (for
    gemm_stream's drivers; mr is MR or one of EDGE_MR)."""
    if mr == MR:
        _stream_kernel(kc, a, aoff, ars, acs, b, boff, brs, c, coff, ldc, beta, pf, pfoff, pfstep)
    elif mr == EDGE_MR[1]:
        _stream_kernel_e1(kc, a, aoff, ars, acs, b, boff, brs, c, coff, ldc, beta, pf, pfoff,
                          pfstep)
    else:
        _stream_kernel_e0(kc, a, aoff, ars, acs, b, boff, brs, c, coff, ldc, beta, pf, pfoff,
                          pfstep)


@njit(inline="always")
def _tile_rows(r):
    """Rows of the micro-kernel that computes a strip of r <= MR rows of C."""
    if r <= EDGE_MR[0]:
        return EDGE_MR[0]
    if r <= EDGE_MR[1]:
        return EDGE_MR[1]
    return MR


def transpose_registers(builder, rows):
    """The transpose of a square block held as len(rows) vectors of as many lanes (a power of
    two), row r's lane q becoming vector q's lane r: log2(len(rows)) rounds of two-vector
    shuffles, each swapping the off-diagonal h x h blocks of every 2h x 2h block."""
    n = len(rows)
    i32 = ir.IntType(32)
    h = n // 2
    while h:
        lo = ir.Constant(ir.VectorType(i32, n), [j if not j & h else n + j - h for j in range(n)])
        hi = ir.Constant(ir.VectorType(i32, n), [j + h if not j & h else n + j for j in range(n)])
        nxt = list(rows)
        for i in range(n):
            if not i & h:
                nxt[i] = builder.shuffle_vector(rows[i], rows[i + h], lo)
                nxt[i + h] = builder.shuffle_vector(rows[i], rows[i + h], hi)
        rows = nxt
        h //= 2
    return rows


@intrinsic
def _transpose_block(typingctx, src, soff, sld, dst, doff, dld):
    """dst[doff + q*dld + r] = src[soff + r*sld + q] for r, q < _VW (float32 arrays): one
    _VW x _VW block transposed in registers, _VW vector loads and stores and log2(_VW)
    rounds of two-vector shuffles, where the scalar copy moved one element at a time."""
    sig = types.void(src, types.intp, types.intp, dst, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        s_arr, soff_v, sld_v, d_arr, doff_v, dld_v = args
        i64 = ir.IntType(64)
        vt = ir.VectorType(ir.FloatType(), _VW)
        S = builder.gep(context.make_array(signature.args[0])(context, builder, s_arr).data,
                        [soff_v])
        D = builder.gep(context.make_array(signature.args[3])(context, builder, d_arr).data,
                        [doff_v])

        def at(base, ld, r):
            ptr = builder.gep(base, [builder.mul(ld, ir.Constant(i64, r))])
            return builder.bitcast(ptr, vt.as_pointer())

        rows = transpose_registers(builder, [builder.load(at(S, sld_v, r), align=4)
                                             for r in range(_VW)])
        for q in range(_VW):
            builder.store(rows[q], at(D, dld_v, q), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def _pack_b(transb, b, ldb, k0, kc, j0, nb, bp):
    """bp <- B[k0:k0+kc, j0:j0+nb] as panels of NR columns (kc x NR each, zero-padded)."""
    for jp in range((nb + NR - 1) // NR):
        base = jp * kc * NR
        jw = min(NR, nb - jp * NR)
        if transb:
            jv = jw // _VW * _VW
            kv = kc // _VW * _VW
            for jj in range(0, jv, _VW):
                for p in range(0, kv, _VW):
                    _transpose_block(b, (j0 + jp * NR + jj) * ldb + k0 + p, ldb, bp,
                                     base + p * NR + jj, NR)
            for jj in range(jw):
                src = (j0 + jp * NR + jj) * ldb + k0
                for p in range(kv if jj < jv else 0, kc):
                    bp[base + p * NR + jj] = b[src + p]
        else:
            for p in range(kc):
                src = (k0 + p) * ldb + j0 + jp * NR
                for jj in range(jw):
                    bp[base + p * NR + jj] = b[src + jj]
        for p in range(kc):
            for jj in range(jw, NR):
                bp[base + p * NR + jj] = 0.0


# A transposed (A[i, p] at a[p*lda + i]) is read in place one MR-row strip at a time: each
# reduction step's MR values lie lda elements after the last step's, so a strip of KC steps
# spans KC*lda*4 bytes (768 KB for a Linear layer's weight gradient with 768 outputs), one TLB
# page per step and, for lda a multiple of 256, a few L1 sets.  PACK_A (the transa code the
# callers pass) has sgemm copy blocks of MC rows of op(A) into contiguous strips first,
# reading a's rows in order.  Chosen by the caller (``packs_a``, for whole products only):
# one thread, Intel Xeon with AVX-512 (BENCHMARKS_perf.md, change 159), 1024 x 256 by 2048
# ran 1.23x faster, 768 x 256 by 2048 1.08x, 1152 x 128 by 512 1.08x; 128 x 256 by 2048
# (lda 128) 0.94x and 576 x 64 by 512 (two column panels) 0.72x.  Inside the im2col tiles and
# Winograd products, where A comes from cache, it was neutral or lost (the 128->256 3x3
# stride-2 conv row 0.96x), so they do not ask for it.
PACK_A = 2
MC = 240
PACK_A_MIN_LD = 256
PACK_A_MIN_N = 4 * NR


@njit(inline="always")
def packs_a(transa, n, lda):
    """True when a whole product (blas.gemm_rm_whole) with A transposed is run on a packed
    copy of A (see PACK_A): A's rows at least PACK_A_MIN_LD elements apart, at least
    PACK_A_MIN_N columns to reuse each strip over."""
    return transa and lda >= PACK_A_MIN_LD and n >= PACK_A_MIN_N


@njit(inline="always")
def _pack_a_t(a, lda, k0, kc, ib, mb, apt):
    """apt <- rows ib .. ib+mb-1 of op(A) = a's transpose over reduction steps k0 .. k0+kc-1,
    as strips of MR rows (the last one _tile_rows wide, zero-padded): strip s at s*MR*kc,
    step p's values at p*width.  Reads a's rows (reduction steps) in order."""
    full = mb // MR
    for p in range(kc):
        src = a[(k0 + p) * lda + ib:]
        for s in range(full):
            dst = apt[s * MR * kc + p * MR:]
            row = src[s * MR:]
            for ii in range(MR):
                dst[ii] = row[ii]
    if full * MR < mb:
        r = mb - full * MR
        w = _tile_rows(r)
        for p in range(kc):
            src = a[(k0 + p) * lda + ib + full * MR:]
            dst = apt[full * MR * kc + p * w:]
            for ii in range(w):
                dst[ii] = src[ii] if ii < r else 0.0


@njit(inline="always")
def _sgemm_views(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc, packa):
    """sgemm on 1-D float32 views; inlined (at Numba IR level) into the one compiled entry
    point, _sgemm_c, so that its code is compiled and optimised once.  ``packa`` (given only
    with transa): op(A) is packed into strips first (PACK_A)."""
    if transa:
        ars, acs = 1, lda
    else:
        ars, acs = lda, 1
    kcmax = min(k, KC)
    packb = transb or n % NR != 0 or n > NC
    bp = np.empty(kcmax * ((min(n, NC) + NR - 1) // NR) * NR if packb else 1, np.float32)
    ap = np.empty(kcmax * MR, np.float32)
    apt = np.empty(kcmax * (min(m, MC) + MR) if packa else 1, np.float32)
    edge = np.empty(MR * NR, np.float32)
    if k == 0:
        for i in range(m):
            for j in range(n):
                c[i * ldc + j] = 0.0 if beta == 0 else beta * c[i * ldc + j]
        return
    for k0 in range(0, k, KC):
        kc = min(KC, k - k0)
        bet = np.float32(beta) if k0 == 0 else np.float32(1.0)
        for jb in range(0, n, NC):
            nb = min(NC, n - jb)
            if packb:
                _pack_b(transb, b, ldb, k0, kc, jb, nb, bp)
            for ib in range(0, m, MC if packa else m):
                mb = min(MC, m - ib) if packa else m - ib
                if packa:
                    _pack_a_t(a, lda, k0, kc, ib, mb, apt)
                for i0 in range(ib, ib + mb, MR):
                    r = min(MR, m - i0)
                    mr = _tile_rows(r)
                    if packa:
                        asrc, aoff, sr, sc = apt, (i0 - ib) * kc, 1, mr
                    elif r == mr:
                        asrc, aoff, sr, sc = a, i0 * ars + k0 * acs, ars, acs
                    else:
                        # the last rows, zero-padded to the next tile height
                        for p in range(kc):
                            for ii in range(mr):
                                i = i0 + ii
                                ap[p * mr + ii] = a[i * ars + (k0 + p) * acs] if i < m else 0.0
                        asrc, aoff, sr, sc = ap, 0, 1, mr
                    for jp in range((nb + NR - 1) // NR):
                        j0 = jb + jp * NR
                        if packb:
                            bsrc, boff, brs = bp, jp * kc * NR, NR
                        else:
                            bsrc, boff, brs = b, k0 * ldb + j0, ldb
                        if r == mr and j0 + NR <= n:
                            _tile(mr, kc, asrc, aoff, sr, sc, bsrc, boff, brs, c, i0 * ldc + j0,
                                  ldc, bet)
                        else:
                            _tile(mr, kc, asrc, aoff, sr, sc, bsrc, boff, brs, edge, 0, NR,
                                  np.float32(0.0))
                            for ii in range(r):
                                for jj in range(min(NR, n - j0)):
                                    o = (i0 + ii) * ldc + j0 + jj
                                    if bet == 0:
                                        c[o] = edge[ii * NR + jj]
                                    else:
                                        c[o] = bet * c[o] + edge[ii * NR + jj]


@njit(cache=True)
def wide_tile_fits(n, k):
    """True when the wide (AVX-512) tile is available and takes an n-column product with a
    reduction of k as ``preferred`` asks, size aside: whole 32-column panels, a reduction of at
    least 64, B's blocks of KC rows at most 512 KB."""
    return _VW == 16 and n % NR == 0 and k >= 64 and n * min(k, KC) <= _WIDE_MAX_B_BLOCK


@njit(cache=True)
def preferred(transa, transb, m, n, k):
    """True for the shapes on which sgemm beat single-threaded OpenBLAS on this host's tile.

    Wide (AVX-512) tile: a whole number of 32-column panels, a reduction of at least 64, at
    least 2^20 multiply-adds, and B's blocks of KC rows at most 512 KB (B is read in place, or
    packed when transposed, once per 12 rows of A, so a block must stay in L2).  In cache, one
    thread, Zen 4: 1.1-1.3x, A transposed up to 1.8x; smaller products lost; a 1024^3 product
    split between two threads ran 0.67x with B's 1 MB blocks (BENCHMARKS_perf.md, change 117).
    B transposed, Zen 5: mostly 1.1-1.5x on the grid's shapes under the same rule, from 0.96x
    (1024 x 512 by 576) up; 16 columns 0.3-0.7x (change 132).

    AVX2 tile (benchmarks/bench_small_gemm.py; BENCHMARKS_perf.md, changes 78 and 93):
    weight gradients with a small output (A transposed), 16-column products, reductions of
    at most 32, and 32-column products with reductions of at most 128 or at most 64 rows
    (the stem's transposed weight gradient, 64 x 32 summed over 512 pixels: change 96)."""
    if _VW == 16:
        return wide_tile_fits(n, k) and m * n * k >= (1 << 20)
    if transb:
        return transa and n <= NR
    if transa and m * n <= 4096:
        return True
    if n % NR != 0:
        return False
    if transa:
        return n == 2 * NR and k <= 128
    return n <= NR or k <= 32 or (n == 2 * NR and (k <= 128 or m <= 64))


@njit(inline="always")
def a_rows_alias(transa, lda):
    """True when sgemm would read an untransposed A whose rows lie a multiple of 4 KB apart:
    the tile's MR rows then share one set of the 8-way L1 (MR > 8 on the wide tile) and
    evict each other, so OpenBLAS, which packs A, takes those products.  One thread, in
    cache, Zen 4: 1024 x 256 x 1024 ran at 0.72-0.96x OpenBLAS with 4 KB rows, 1.02-1.12x
    with rows 4160 bytes apart; 512 x 128 x 2048 0.71-0.72x against 1.03-1.20x.  Packing A
    in sgemm instead (scalar copies of each 12-row strip) cost more than it saved: 1024 x
    256 x 1024 still 0.72-0.92x, and 0.85-0.97x where A did not alias (change 118 of
    BENCHMARKS_perf.md)."""
    return MR > 8 and not transa and lda % 1024 == 0


@njit(cache=True)
def preferred_whole(transa, transb, m, n, k):
    """``preferred`` for products outside the im2col tiles (the per-thread shares of
    kernels.gemm_threads and conv1x1_cl): the wide tile's rule, which was measured on a grid of
    whole products; False for the AVX2 tile, whose rule was measured on tile shapes only."""
    return _VW == 16 and preferred(transa, transb, m, n, k)


def batched_preferred(transa, transb, m, n, k):
    """True for the products of batched matmuls (kernels.batched_gemm) that sgemm ran faster
    than single-threaded OpenBLAS (BENCHMARKS_perf.md, change 103; one thread, 4-64
    products): B untransposed with 16k columns, a reduction of at most 512, and at most 128
    columns (1.1-1.7x: 128x128 by 64, 197x197 by 64, 512x512 by 64, 64^3, 32^3) or, with A
    untransposed, a reduction of at most 64 (1.04-1.09x: 512x64 by 512, 1024x64 by 1024).
    It lost on 256^3 and 384^3 (0.81-0.88x), on 197 columns (0.52x) and mostly with B
    transposed (0.92-1.0x).  That was the AVX2 tile; the wide tile takes ``preferred``'s rule.
    """
    if _VW == 16:
        return bool(preferred(bool(transa), bool(transb), m, n, k))
    return (not transb and n % NR == 0 and k <= 512
            and (n <= 8 * NR or (k <= 64 and not transa)))


def padded_columns(transa, m, n, k):
    """Columns for an (m x n, reduction k) GEMM with B untransposed whose B can be padded
    with zero columns: n rounded up to a multiple of NR when that shape is ``preferred`` and
    sgemm is on (the stem's dX: 27 -> 32 columns, AVX2 tile), else n.  The wide tile pads
    nothing: the stem's padded GEMMs in it ran its row no faster than OpenBLAS on 27 columns
    (paired, both padded: 0.91x NCHW, 0.97x channels-last; dX alone: 1.01x / 0.97x;
    BENCHMARKS_perf.md, change 117)."""
    if not enabled() or n % NR == 0 or _VW == 16:
        return n
    p = -(-n // NR) * NR
    return p if preferred(bool(transa), False, m, p, k) else n


# Kernels call sgemm through one compiled C entry point, as they call OpenBLAS: inlined into
# each of the ~30 GEMM call sites it raised the empty-cache compile of the CPU kernel set
# from 181-189 s to 233 s.  The entry point is the only compilation of the GEMM: with a
# separate njit sgemm, linked into it and optimised again, a cold import of this module took
# 3.8-4.8 s instead of 3.0-4.1 s, and a warm one 0.68-0.74 s instead of 0.49-0.69 s
# (BENCHMARKS_perf.md, change 83).
_SYMBOL = "minigrad_small_sgemm"
_F32P = types.CPointer(types.float32)
_C_SIG = types.void(types.int32, types.int32, types.int64, types.int64, types.int64, _F32P,
                    types.int64, _F32P, types.int64, types.float32, _F32P, types.int64)


@njit(cache=True, inline="always")
def _extents(transa, transb, m, n, k, lda, ldb, ldc):
    """Elements each operand's view must hold: (A, B, C), 0 where nothing is read."""
    if m == 0 or n == 0:
        return 0, 0, 0
    asize = ((k - 1) * lda + m if transa else (m - 1) * lda + k) if k > 0 else 0
    bsize = ((n - 1) * ldb + k if transb else (k - 1) * ldb + n) if k > 0 else 0
    return asize, bsize, (m - 1) * ldc + n


def _sgemm_c(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    ta, tb = transa != 0, transb != 0
    packa = transa == PACK_A and pack_a_on()
    if m == 0 or n == 0:
        return
    asize, bsize, csize = _extents(ta, tb, m, n, k, lda, ldb, ldc)
    _sgemm_views(ta, tb, m, n, k, carray(a, max(asize, 1)), lda, carray(b, max(bsize, 1)), ldb,
                 beta, carray(c, csize), ldc, packa)


_compiled = None


def _entry():
    """The compiled entry point (a Numba cfunc, cached on disk), compiled on first need."""
    global _compiled
    if _compiled is None:
        _compiled = cfunc(_C_SIG, cache=True)(_sgemm_c)
    return _compiled


def sgemm(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc, pack_a=False):
    """Row-major C[m, n] = op(A) @ op(B) + beta * C on 1-D float32 arrays (as blas.gemm_rm
    with alpha 1): each array starts at its matrix's top-left element, lda/ldb/ldc are row
    strides in elements; C is not read when beta is 0.  Single-threaded.  ``pack_a``: with
    transa, copy A into contiguous strips first (PACK_A).  Jitted kernels
    reach the same code through blas.gemm_rm; this is the entry for Python callers."""
    m, n, k, lda, ldb, ldc = (int(v) for v in (m, n, k, lda, ldb, ldc))
    if min(m, n, k) < 0:
        raise ValueError(f"sgemm: negative size m={m}, n={n}, k={k}")
    need = _extents(bool(transa), bool(transb), m, n, k, lda, ldb, ldc)
    for name, arr, size in zip("abc", (a, b, c), need):
        if not (isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.ndim == 1
                and arr.flags.c_contiguous):
            raise TypeError(f"sgemm: {name} must be a contiguous 1-D float32 array, got "
                            f"{getattr(arr, 'dtype', type(arr))} of shape {np.shape(arr)}")
        if arr.size < size:
            raise ValueError(f"sgemm: {name} holds {arr.size} elements; m={m}, n={n}, k={k} "
                             f"with its leading dimension need {size}")
    if not c.flags.writeable:
        raise ValueError("sgemm: c is read-only")
    if m == 0 or n == 0:
        return
    f32p = ctypes.POINTER(ctypes.c_float)
    code = PACK_A if (pack_a and transa) else int(bool(transa))
    _entry().ctypes(code, int(bool(transb)), m, n, k, a.ctypes.data_as(f32p), lda,
                    b.ctypes.data_as(f32p), ldb, float(beta), c.ctypes.data_as(f32p), ldc)


if SUPPORTED:
    _llvm.add_symbol(_SYMBOL, _entry().address)
    set_enabled(os.environ.get("MINIGRAD_SMALL_GEMM", "1") != "0")

# sgemm as an external function for jitted callers (blas.gemm_rm); only when SUPPORTED.
sgemm_entry = types.ExternalFunction(
    _SYMBOL, types.void(types.int32, types.int32, types.int64, types.int64, types.int64,
                        types.voidptr, types.int64, types.voidptr, types.int64, types.float32,
                        types.voidptr, types.int64))
