"""Reductions over axes: shared-memory tree reductions (rows) and coalesced column sweeps.

After merging dims, the input is ``kept x reduced`` in some interleaving.  When the
innermost dim is reduced ("rows"), each output is reduced by a block of threads that
stride over its elements and combine their partials with a tree in shared memory;
when the innermost dim is kept ("columns"), one thread per output walks the reduced
elements (adjacent threads read adjacent addresses).  Either kernel can split the
reduced range over ``gridDim.y`` into partial results, which are then reduced again,
so a few outputs of a long reduction still fill the GPU.
"""

import functools
import math

from numba import cuda

from ._common import RED_MAX, dmin, offset1

OPS = ("sum", "max", "sumsq", "nonfinite")


@cuda.jit(device=True, inline=True)
def _ident(v):
    return v


@cuda.jit(device=True, inline=True)
def _square(v):
    return v * v


@cuda.jit(device=True, inline=True)
def _nonfinite(v):
    return 1 if (v != v or v == math.inf or v == -math.inf) else 0


@cuda.jit(device=True, inline=True)
def _plus(a, b):
    return a + b


@cuda.jit(device=True, inline=True)
def _nanmax(a, b):
    return a if (a >= b or a != a) else b


_MAP = {"sum": _ident, "max": _ident, "sumsq": _square, "nonfinite": _nonfinite}
_COMBINE = {"sum": _plus, "max": _nanmax, "sumsq": _plus, "nonfinite": _nanmax}


@functools.lru_cache(maxsize=None)
def rows_kernel(op, nb_dtype):
    """Block-per-output tree reduction; ``nb_dtype`` is the accumulator/output type."""
    fmap = _MAP[op]
    comb = _COMBINE[op]

    @cuda.jit(cache=True)
    def kernel(x, out, nout, kshape, kst, rshape, rst, nred, chunk, init):
        sh = cuda.shared.array(RED_MAX, nb_dtype)
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        split = cuda.blockIdx.y
        r0 = split * chunk
        r1 = dmin(nred, r0 + chunk)
        for o in range(cuda.blockIdx.x, nout, cuda.gridDim.x):
            base = offset1(o, kshape, kst)
            acc = init
            for r in range(r0 + t, r1, nt):
                acc = comb(acc, fmap(x[base + offset1(r, rshape, rst)]))
            sh[t] = acc
            cuda.syncthreads()
            s = nt // 2
            while s > 0:
                if t < s:
                    sh[t] = comb(sh[t], sh[t + s])
                cuda.syncthreads()
                s //= 2
            if t == 0:
                out[split * nout + o] = sh[0]
            cuda.syncthreads()

    return kernel


@functools.lru_cache(maxsize=None)
def cols_kernel(op):
    """Thread-per-output reduction for outputs adjacent in memory."""
    fmap = _MAP[op]
    comb = _COMBINE[op]

    @cuda.jit(cache=True)
    def kernel(x, out, nout, kshape, kst, rshape, rst, nred, chunk, init):
        split = cuda.blockIdx.y
        r0 = split * chunk
        r1 = dmin(nred, r0 + chunk)
        for o in range(cuda.grid(1), nout, cuda.gridsize(1)):
            base = offset1(o, kshape, kst)
            acc = init
            for r in range(r0, r1):
                acc = comb(acc, fmap(x[base + offset1(r, rshape, rst)]))
            out[split * nout + o] = acc

    return kernel


__all__ = ["OPS", "rows_kernel", "cols_kernel"]
