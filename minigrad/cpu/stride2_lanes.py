"""Every other element of a row, as vector code: the gather and the scatter of a stride-2
convolution's sampled pixels (CPU kernels; Numba intrinsics in LLVM IR).

``take_even_16(src, soff, dst, doff)`` copies src[soff + 2*j] to dst[doff + j] for j < 16:
two vector loads of 16 elements and one shuffle that keeps the even lanes.
``add_to_even_16(src, soff, dst, doff)`` adds src[soff + j] to dst[doff + 2*j] for j < 16:
the 16 values are interleaved with zeros into two vectors, which are added to the 32
elements dst[doff:doff + 32] and stored back, so the odd elements are rewritten unchanged
(except that a -0.0 among them becomes +0.0).  The ``_8`` versions do the same for 8
elements.  Both read and write 2n elements from ``soff`` / ``doff``: the caller keeps
them inside the row (2 * OW <= W).

The plain loops for the same copies ran 1.4-2.2x slower on the NCHW 1x1 stride-2 rows'
shapes (Numba leaves a stride-2 access scalar or builds it from narrow shuffles:
BENCHMARKS_perf.md, change 146).  Any float dtype; the vectors are as wide as n elements
of it (LLVM splits them into the machine's registers).
"""

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def _element_pointer(context, builder, signature, args, i, off):
    """(pointer to element ``off`` of array argument ``i``, its LLVM element type, the
    element's size in bytes)."""
    ary = context.make_array(signature.args[i])(context, builder, args[i])
    dtype = signature.args[i].dtype
    return builder.gep(ary.data, [off]), context.get_data_type(dtype), dtype.bitwidth // 8


def _vector(builder, ptr, offset, vt):
    """Pointer to the vector of type vt that starts ``offset`` elements after ptr."""
    return builder.bitcast(builder.gep(ptr, [ir.Constant(ir.IntType(64), offset)]),
                           vt.as_pointer())


def _lanes(values):
    return ir.Constant(ir.VectorType(ir.IntType(32), len(values)), values)


def _operands(context, builder, signature, args, n):
    """(pointer to src[soff], pointer to dst[doff], the n-element vector type, the element
    size) for an intrinsic called as ``(src, soff, dst, doff)``."""
    S, et, align = _element_pointer(context, builder, signature, args, 0, args[1])
    D, _, _ = _element_pointer(context, builder, signature, args, 2, args[3])
    return S, D, ir.VectorType(et, n), align


def _typed(src, dst):
    """The intrinsics' signature: two arrays of one dtype and their int offsets."""
    if src.dtype != dst.dtype:
        return None
    return types.void(src, types.intp, dst, types.intp)


def make_take_even(n):
    """The intrinsic ``take_even(src, soff, dst, doff)`` for n elements (see the module)."""
    @intrinsic
    def take_even(typingctx, src, soff, dst, doff):
        def codegen(context, builder, signature, args):
            S, D, vt, align = _operands(context, builder, signature, args, n)
            a = builder.load(_vector(builder, S, 0, vt), align=align)
            b = builder.load(_vector(builder, S, n, vt), align=align)
            even = builder.shuffle_vector(a, b, _lanes([2 * j for j in range(n)]))
            builder.store(even, _vector(builder, D, 0, vt), align=align)
            return context.get_dummy_value()

        return _typed(src, dst), codegen

    return take_even


def make_add_to_even(n):
    """The intrinsic ``add_to_even(src, soff, dst, doff)`` for n elements (see the module)."""
    @intrinsic
    def add_to_even(typingctx, src, soff, dst, doff):
        def codegen(context, builder, signature, args):
            S, D, vt, align = _operands(context, builder, signature, args, n)
            v = builder.load(_vector(builder, S, 0, vt), align=align)
            zero = ir.Constant(vt, [0.0] * n)
            # lane 2j of the first vector <- v[j], lane 2j + 1 <- 0 (lane n + j of the pair)
            low = builder.shuffle_vector(v, zero, _lanes(
                [j // 2 if j % 2 == 0 else n + j // 2 for j in range(n)]))
            high = builder.shuffle_vector(v, zero, _lanes(
                [n // 2 + j // 2 if j % 2 == 0 else n + j // 2 for j in range(n)]))
            for part, offset in ((low, 0), (high, n)):
                ptr = _vector(builder, D, offset, vt)
                builder.store(builder.fadd(builder.load(ptr, align=align), part), ptr,
                              align=align)
            return context.get_dummy_value()

        return _typed(src, dst), codegen

    return add_to_even


take_even_16 = make_take_even(16)
take_even_8 = make_take_even(8)
add_to_even_16 = make_add_to_even(16)
add_to_even_8 = make_add_to_even(8)
