"""Writes and adds into strided views on both cores: the gradient of a basic slice.

The gradient of ``x[index]`` (a basic index: slices, integers, ``...``, ``None``) is g placed
at the index in zeros of x's shape, or added there into a gradient already gathered (a
fused QKV projection's three slices).  NumPy's ``out[index] = g`` and ``out[index] += g``
run on one thread, and slowly when g is itself a transposed view (an attention key's
gradient): 0.84 ms for 2M float32 values in the transformer block's step
(BENCHMARKS_perf.md, change 167).  ``update(dst, src, add)`` does the same on Numba's
threads for float arrays of one dtype whose axes merge into at most four.
"""

import numba
import numpy as np
from numba import njit, prange

from .conv import _next_pixel   # the odometer step from row (a, b, c) to the next

# Below this many elements NumPy's one-thread loop is kept (a parallel region's start costs
# more than the loop).
MIN_ELEMENTS = 1 << 16


def merged_axes(shape, *strides):
    """(shape, strides per array) with size-1 axes dropped and neighbouring axes merged
    where every array steps through them as through one axis; axes ordered by the first
    array's strides, largest first (so the last axis is its innermost)."""
    axes = [i for i in range(len(shape)) if shape[i] != 1]
    axes.sort(key=lambda i: -abs(strides[0][i]))
    out_shape = []
    out_strides = [[] for _ in strides]
    for i in axes:
        if out_shape and all(s[-1] == st[i] * shape[i] for s, st in zip(out_strides, strides)):
            out_shape[-1] *= shape[i]
            for s, st in zip(out_strides, strides):
                s[-1] = st[i]
            continue
        out_shape.append(shape[i])
        for s, st in zip(out_strides, strides):
            s.append(st[i])
    return tuple(out_shape), [tuple(s) for s in out_strides]


# Work units per call at least (runs of rows, four per thread where there are more threads;
# the innermost axis is also cut into pieces when there are fewer rows), and the fewest
# elements in a piece.
_MIN_UNITS = 16
_MIN_PIECE = 4096
# Most axes the kernel takes after merging.
_AXES = 4


@njit(parallel=True, cache=True)
def _update_flat(df, ds, sf, ss, shape, blocks, pieces, add):
    """For the 4-D index (a, b, c, e) < shape: df[a*ds[0] + b*ds[1] + c*ds[2] + e*ds[3]] =
    (or +=) the same element of sf by ss (flat arrays, strides in elements, all >= 0).  The
    rows (a, b, c) are cut into ``blocks`` runs and each row's e range into ``pieces``; a
    work unit is one piece of a run."""
    A, B, C, E = shape
    rows = A * B * C
    step = -(-E // pieces)
    per = -(-rows // blocks)
    for u in prange(blocks * pieces):
        blk = u // pieces
        e0 = (u - blk * pieces) * step
        n = min(E, e0 + step) - e0
        r0 = blk * per
        r1 = min(rows, r0 + per)
        if n <= 0 or r1 <= r0:
            continue
        a = r0 // (B * C)
        b = (r0 // C) % B
        c = r0 % C
        for _ in range(r1 - r0):
            o = a * ds[0] + b * ds[1] + c * ds[2] + e0 * ds[3]
            p = a * ss[0] + b * ss[1] + c * ss[2] + e0 * ss[3]
            # the unit-stride cases as slices indexed from 0, so that LLVM vectorises them
            if ds[3] == 1 and ss[3] == 1:
                d = df[o:o + n]
                s = sf[p:p + n]
                if add:
                    for k in range(n):
                        d[k] += s[k]
                else:
                    for k in range(n):
                        d[k] = s[k]
            elif ds[3] == 1 and ss[3] == 0:
                d = df[o:o + n]
                v = sf[p]
                if add:
                    for k in range(n):
                        d[k] += v
                else:
                    for k in range(n):
                        d[k] = v
            else:
                for k in range(n):
                    if add:
                        df[o + k * ds[3]] += sf[p + k * ss[3]]
                    else:
                        df[o + k * ds[3]] = sf[p + k * ss[3]]
            a, b, c = _next_pixel(a, b, c, B, C)


def _flat(a):
    """a's memory from its first element to its last as a 1-D array (strides >= 0)."""
    span = 1 + sum((n - 1) * s for n, s in zip(a.shape, a.strides)) // a.itemsize
    return np.lib.stride_tricks.as_strided(a, (span,), (a.itemsize,), writeable=a.flags.writeable)


def update(dst, src, add):
    """``dst[...] = src`` (``add`` False) or ``dst += src`` (``add`` True) on Numba's threads,
    src broadcast to dst's shape; True when done, False when left to the caller (other
    dtypes, fewer than MIN_ELEMENTS values, negative strides, a dst that repeats elements,
    src overlapping dst, axes that do not merge into four)."""
    if (dst.dtype != src.dtype or dst.dtype not in (np.float32, np.float64)
            or dst.size < MIN_ELEMENTS or not dst.flags.writeable
            or np.may_share_memory(dst, src)):
        return False
    src = np.broadcast_to(src, dst.shape)
    size = dst.itemsize
    if (any(s < 0 or s % size for s in dst.strides + src.strides)
            or any(s == 0 and n > 1 for s, n in zip(dst.strides, dst.shape))):
        return False
    shape, (ds, ss) = merged_axes(dst.shape, dst.strides, src.strides)
    if len(shape) > _AXES:
        return False
    pad = _AXES - len(shape)
    shape = (1,) * pad + shape
    ds = np.array((0,) * pad + ds, dtype=np.int64) // size
    ss = np.array((0,) * pad + ss, dtype=np.int64) // size
    rows = shape[0] * shape[1] * shape[2]
    pieces = max(1, min(shape[3] // _MIN_PIECE, -(-_MIN_UNITS // rows)))
    _update_flat(_flat(dst), ds, _flat(src), ss,
                 np.array(shape, dtype=np.int64),
                 min(rows, max(_MIN_UNITS, 4 * numba.get_num_threads())), pieces, add)
    return True
