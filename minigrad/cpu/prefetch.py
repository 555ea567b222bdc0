"""Software prefetch for Numba kernels: start loading an array's cache line early.

A kernel that streams an operand from memory (a tile of dY read by a GEMM for the first
time) waits on DRAM; issuing prefetches for the next tile's lines from a loop that runs
on cached data first (an im2col copy) overlaps that wait with work.  A prefetch never
faults and never changes a value, only where a line is cached.
"""

import functools

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


def emit_prefetch(builder, ptr, locality=3):
    """LLVM IR in ``builder``: prefetch the line at ``ptr`` (any pointer), to read it;
    ``locality`` 3 keeps it in every cache level, 2 in L2 and below (not L1)."""
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
        "llvm.prefetch." + i8p.intrinsic_name)    # p0i8 (typed) or p0 (opaque pointers)
    # read, the given temporal locality, data cache
    builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0),
                      ir.Constant(i32, locality), ir.Constant(i32, 1)])


@intrinsic
def prefetch(typingctx, arr, i):
    """Prefetch the cache line holding arr[i] (1-D array) into all cache levels, to read it."""
    sig = types.void(arr, types.intp)

    def codegen(context, builder, signature, args):
        a, idx = args
        data = context.make_array(signature.args[0])(context, builder, a).data
        emit_prefetch(builder, builder.gep(data, [idx]))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def prefetch_run(af, start, span):
    """Prefetch the 64-byte lines of af[start:start + span] (1-D array), however af's data is
    aligned: addresses at most a line apart, then the last element.  (NumPy's large arrays
    are usually only 16-byte aligned; assuming line-aligned data missed a line of each run
    and lost most of the gain of change 120 in BENCHMARKS_perf.md.)"""
    per_line = max(1, 64 // af.itemsize)
    for j in range(start, start + span, per_line):
        prefetch(af, j)
    prefetch(af, start + span - 1)


@njit(cache=True, fastmath=True)
def stream_in(a):
    """Read every element of the 1-D float array ``a`` in order and return their sum.

    Brings an operand that sits in memory into L2 as one sequential stream, which the
    hardware prefetchers follow at full speed, before a GEMM reads it in a strided pattern
    (rows a kilobyte or more apart, one panel at a time) and would wait on each line.  The
    caller keeps the sum somewhere (a per-thread sink), or the compiler drops the loop.  On
    the NCHW 1x1 stride-2 64->128 backward, dY and the sampled x read this way before the
    two GEMMs: 1.08-1.11x after PyTorch's call on an AMD Zen 4 host (BENCHMARKS_perf.md,
    change 127); on an Intel Xeon the row ran 1.02-1.03x faster without it (change 166), so
    conv1x1_nchw.STREAM_OPERANDS turns it off on Intel hosts."""
    s = a.dtype.type(0)
    for i in range(a.size):
        s += a[i]
    return s


@functools.lru_cache(maxsize=None)
def cpu_vendor():
    """The host CPU's vendor string as Linux reports it ("GenuineIntel", "AuthenticAMD"), or ""
    where /proc/cpuinfo does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""
