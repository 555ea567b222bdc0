"""Software prefetch for Numba kernels: start loading an array's cache line early.

A kernel that streams an operand from memory (a tile of dY read by a GEMM for the first
time) waits on DRAM; issuing prefetches for the next tile's lines from a loop that runs
on cached data first (an im2col copy) overlaps that wait with work.  A prefetch never
faults and never changes a value, only where a line is cached.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, arr, i):
    """Prefetch the cache line holding arr[i] (1-D array) into all cache levels, to read it."""
    sig = types.void(arr, types.intp)

    def codegen(context, builder, signature, args):
        a, idx = args
        data = context.make_array(signature.args[0])(context, builder, a).data
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch." + i8p.intrinsic_name)    # p0i8 (typed) or p0 (opaque pointers)
        addr = builder.bitcast(builder.gep(data, [idx]), i8p)
        # read, highest temporal locality (keep in every level), data cache
        builder.call(fn, [addr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen
