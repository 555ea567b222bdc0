"""Small fixed linear maps applied to many channels at once, as vector code (CPU).

The Winograd transforms (``minigrad.cpu.winograd``) map a small grid of channel vectors
(a 4x4 input patch, a 2x2 output-gradient tile, ...) to another grid:

    out[p][q] = sum_a sum_j L[p][a] * in[a][j] * R[q][j]        (out = L in R^T)

with small constant matrices L and R (F(2x2, 3x3)'s hold only -1, 0 and 1), for every
channel c of the vectors.  Written as Numba loops, that is one short loop per row or column
with a runtime overlap check each, or one loop with 16 output streams that LLVM does not
vectorise at all (BENCHMARKS_perf.md, change 79).  ``make(L, R)`` generates it directly as
LLVM IR (a Numba intrinsic): one loop over the channels, 32 bytes at a time, that loads the
whole input grid into vector registers, combines it in two passes (in R^T, then L (in R^T))
and stores the output grid, then a scalar loop over the last channels.  Nothing is written
but the outputs.

Grid addressing, in elements of 1-D C-contiguous arrays of one float dtype:

    in[a][j]   = src[s0 + a*srs + j*scs + c]
    out[p][q]  = dst[d0 + p*drs + q*dcs + c]      for c in 0 .. n-1

Options of ``make``: ``accumulate`` (dst += out instead of dst = out), ``bias`` (out[p][q]
+ bias[c]), ``in_mask`` (in[a][j] is read only where bit a*len(R[0])+j of ``mask`` is set,
and is 0 elsewhere: its address may then lie outside src, which must hold at least n
elements: src[c] is loaded in its place), ``out_mask`` (out[p][q] is
stored only where bit p*len(R)+q of ``mask`` is set).
Every generated function takes the same arguments:
``(n, src, s0, srs, scs, dst, d0, drs, dcs, bias, mask)``; ``bias`` and ``mask`` are read
only when the function was made with those options.
"""

import math
import numbers

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_VECTOR_BYTES = 32   # one AVX2 register; LLVM splits it where vectors are narrower


def _terms(row):
    return [(j, s) for j, s in enumerate(row) if s != 0]


def _combine(builder, values, row, zero):
    """sum_j row[j] * values[j]: adds and subtracts for coefficients +-1, a multiply by the
    constant (rounded to the element type) for the others."""
    acc = None
    for j, s in _terms(row):
        term = values[j]
        if abs(s) != 1:
            term = builder.fmul(_splat_constant(term.type, abs(s)), term)
        if acc is None:
            acc = term if s > 0 else builder.fneg(term)
        elif s > 0:
            acc = builder.fadd(acc, term)
        else:
            acc = builder.fsub(acc, term)
    return zero if acc is None else acc


def _splat_constant(vt, value):
    if isinstance(vt, ir.VectorType):
        return ir.Constant(vt, [float(value)] * vt.count)
    return ir.Constant(vt, float(value))


def _check(L, R):
    L = [list(r) for r in L]
    R = [list(r) for r in R]
    if not L or not R or len({len(r) for r in L}) != 1 or len({len(r) for r in R}) != 1:
        raise ValueError(f"L and R must be non-empty rectangular matrices, got {L} and {R}")
    if not all(isinstance(v, numbers.Real) and math.isfinite(v) for r in L + R for v in r):
        raise ValueError(f"L and R must hold finite numbers, got {L} and {R}")
    return L, R


def make(L, R, accumulate=False, bias=False, in_mask=False, out_mask=False):
    """The intrinsic computing out = L in R^T over n channels (see the module docstring)."""
    L, R = _check(L, R)
    if in_mask and out_mask:
        raise ValueError("one mask argument: in_mask and out_mask cannot both be set")
    in_rows, in_cols = len(L[0]), len(R[0])
    out_cols = len(R)

    def body(builder, et, width, c, ptrs, bias_ptr, mask, sink):
        """The map for channels c .. c+width-1 (width 1: scalars)."""
        vt = et if width == 1 else ir.VectorType(et, width)
        size = _size(et)   # the alignment assumed: one element

        def addr(base, off):
            p = builder.gep(base, [builder.add(off, c)])
            return p if width == 1 else builder.bitcast(p, vt.as_pointer())

        src, s0, srs, scs, dst, d0, drs, dcs = ptrs
        zero = ir.Constant(vt, 0.0) if width == 1 else ir.Constant(vt, [0.0] * width)

        def bit_set(i):
            bit = builder.and_(builder.lshr(mask, ir.Constant(mask.type, i)),
                               ir.Constant(mask.type, 1))
            return builder.icmp_unsigned("!=", bit, ir.Constant(mask.type, 0))

        def load_in(a, j):
            off = builder.add(s0, builder.add(builder.mul(srs, ir.Constant(srs.type, a)),
                                              builder.mul(scs, ir.Constant(scs.type, j))))
            if not in_mask:
                return builder.load(addr(src, off), align=size)
            ok = bit_set(a * in_cols + j)
            # a masked-out input is read from src[c] (always there) and replaced by 0
            val = builder.load(addr(src, builder.select(ok, off, ir.Constant(off.type, 0))),
                               align=size)
            return builder.select(ok, val, zero)

        grid = [[load_in(a, j) for j in range(in_cols)] for a in range(in_rows)]
        half = [[_combine(builder, grid[a], R[q], zero) for q in range(out_cols)]
                for a in range(in_rows)]
        b = builder.load(addr(bias_ptr, ir.Constant(c.type, 0)), align=size) if bias \
            else None
        for p, lrow in enumerate(L):
            for q in range(out_cols):
                v = _combine(builder, [half[a][q] for a in range(in_rows)], lrow, zero)
                if b is not None:
                    v = builder.fadd(v, b)
                ptr = addr(dst, builder.add(d0, builder.add(
                    builder.mul(drs, ir.Constant(drs.type, p)),
                    builder.mul(dcs, ir.Constant(dcs.type, q)))))
                if accumulate:
                    v = builder.fadd(builder.load(ptr, align=size), v)
                if out_mask:
                    ptr = builder.select(bit_set(p * out_cols + q), ptr,
                                         builder.bitcast(sink, ptr.type))
                builder.store(v, ptr, align=size)

    @intrinsic
    def transform(typingctx, n, src, s0, srs, scs, dst, d0, drs, dcs, bias_arr, mask):
        arrays = (src, dst, bias_arr)
        if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                   for a in arrays):
            return None
        if src.dtype not in (types.float32, types.float64) or \
                any(a.dtype != src.dtype for a in arrays):
            return None
        ints = (n, s0, srs, scs, d0, drs, dcs, mask)
        if not all(isinstance(t, types.Integer) for t in ints):
            return None
        sig = types.void(types.intp, src, types.intp, types.intp, types.intp, dst, types.intp,
                         types.intp, types.intp, bias_arr, types.intp)

        def codegen(context, builder, signature, args):
            n, src, s0, srs, scs, dst, d0, drs, dcs, bias_arr, mask = args
            et = context.get_value_type(signature.args[1].dtype)
            width = _VECTOR_BYTES // _size(et)

            def data(i, arr):
                return context.make_array(signature.args[i])(context, builder, arr).data

            ptrs = (data(1, src), s0, srs, scs, data(5, dst), d0, drs, dcs)
            bias_ptr = data(9, bias_arr)
            i64 = n.type
            fn = builder.function
            with builder.goto_entry_block():
                sink = builder.alloca(ir.VectorType(et, width))
            nvec = builder.sub(n, builder.srem(n, ir.Constant(i64, width)))
            pre = builder.block
            vhead = fn.append_basic_block("tf.vhead")
            vbody = fn.append_basic_block("tf.vbody")
            shead = fn.append_basic_block("tf.shead")
            sbody = fn.append_basic_block("tf.sbody")
            done = fn.append_basic_block("tf.done")
            builder.branch(vhead)

            builder.position_at_end(vhead)
            c = builder.phi(i64)
            c.add_incoming(ir.Constant(i64, 0), pre)
            builder.cbranch(builder.icmp_signed("<", c, nvec), vbody, shead)
            builder.position_at_end(vbody)
            body(builder, et, width, c, ptrs, bias_ptr, mask, sink)
            c.add_incoming(builder.add(c, ir.Constant(i64, width)), builder.block)
            builder.branch(vhead)

            builder.position_at_end(shead)
            cs = builder.phi(i64)
            cs.add_incoming(c, vhead)
            builder.cbranch(builder.icmp_signed("<", cs, n), sbody, done)
            builder.position_at_end(sbody)
            body(builder, et, 1, cs, ptrs, bias_ptr, mask, sink)
            cs.add_incoming(builder.add(cs, ir.Constant(i64, 1)), builder.block)
            builder.branch(shead)

            builder.position_at_end(done)
            return context.get_dummy_value()

        return sig, codegen

    return transform


def _size(et):
    """Bytes of a float LLVM type (4 or 8)."""
    return 4 if isinstance(et, ir.FloatType) else 8
