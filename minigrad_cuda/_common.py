"""Launch geometry and small device helpers shared by the CUDA kernel modules."""

import math

import numpy as np
from numba import cuda
from numba.core import config

#: True under Numba's CUDA simulator: launch fewer threads per block (each is a Python thread).
SIM = bool(config.ENABLE_CUDASIM)
#: Threads per block for 1-D elementwise kernels.
BLOCK = 64 if SIM else 256
#: Threads per block for tree reductions (a power of two; shared arrays hold ``RED_MAX``).
RED_BLOCK = 32 if SIM else 256
RED_MAX = 256
#: Upper bound on blocks of a grid-stride 1-D launch.
MAX_GRID = 64 if SIM else 65535 * 8


def grid1d(n, block=None):
    """``(blocks, threads)`` for a grid-stride loop over ``n`` items."""
    block = block or BLOCK
    if n < block:
        block = max(32, (n + 31) // 32 * 32) if n > 0 else 32
    return max(1, min((n + block - 1) // block, MAX_GRID)), block


def red_block(n):
    """Power-of-two threads per block for reducing rows of length ``n``."""
    b = 32
    while b < RED_BLOCK and b < n:
        b *= 2
    return b


def ceil_div(a, b):
    """``ceil(a / b)`` for positive ints."""
    return -(-a // b)


def contiguous_strides(shape):
    """C-order element strides of ``shape``."""
    strides = [1] * len(shape)
    acc = 1
    for d in range(len(shape) - 1, -1, -1):
        strides[d] = acc
        acc *= int(shape[d])
    return tuple(strides)


def collapse(shape, *strides):
    """Drop size-1 dims and merge dims that are contiguous in every stride set.

    Returns ``(shape, strides...)`` as tuples of Python ints with at least one dim;
    the iteration order (C order over ``shape``) is unchanged.
    """
    dims = [(int(n), [int(s[d]) for s in strides]) for d, n in enumerate(shape) if int(n) != 1]
    merged = []
    for n, st in dims:
        if merged:
            pn, pst = merged[-1]
            if all(ps == s * n for ps, s in zip(pst, st)):
                merged[-1] = (pn * n, st)
                continue
        merged.append((n, st))
    if not merged:
        merged = [(1, [0] * len(strides))]
    out_shape = tuple(n for n, _ in merged)
    out_strides = tuple(tuple(st[i] for _, st in merged) for i in range(len(strides)))
    return (out_shape,) + out_strides


def broadcast_strides(shape, out_shape):
    """Element strides that read a C-contiguous array of ``shape`` broadcast to ``out_shape``."""
    lead = len(out_shape) - len(shape)
    base = contiguous_strides(shape)
    out = []
    for d, n in enumerate(out_shape):
        if d < lead:
            out.append(0)
        else:
            m = int(shape[d - lead])
            out.append(0 if m == 1 and n != 1 else base[d - lead])
    return tuple(out)


@cuda.jit(device=True, inline=True)
def offset1(i, shape, st):
    """Element offset of flat C-order index ``i`` of ``shape`` under strides ``st``."""
    off = 0
    for d in range(len(shape) - 1, -1, -1):
        n = shape[d]
        c = i % n
        i = i // n
        off += c * st[d]
    return off


@cuda.jit(device=True, inline=True)
def offset2(i, shape, sa, sb):
    """Two offsets of flat index ``i`` of ``shape`` under strides ``sa`` and ``sb``."""
    oa = 0
    ob = 0
    for d in range(len(shape) - 1, -1, -1):
        n = shape[d]
        c = i % n
        i = i // n
        oa += c * sa[d]
        ob += c * sb[d]
    return oa, ob


@cuda.jit(device=True, inline=True)
def offset3(i, shape, sa, sb, sc):
    """Three offsets of flat index ``i`` of ``shape``."""
    oa = 0
    ob = 0
    oc = 0
    for d in range(len(shape) - 1, -1, -1):
        n = shape[d]
        c = i % n
        i = i // n
        oa += c * sa[d]
        ob += c * sb[d]
        oc += c * sc[d]
    return oa, ob, oc


def np_scalar(value, dtype):
    """``value`` as a NumPy scalar of ``dtype`` (so kernels compute in that type)."""
    return np.dtype(dtype).type(value)


def is_float(dtype):
    """True for floating dtypes."""
    return np.dtype(dtype).kind == "f"


def lowest(dtype):
    """Identity of ``max``: ``-inf`` for floats, the minimum for ints, False for bools."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return dtype.type(-math.inf)
    if dtype.kind == "b":
        return dtype.type(False)
    return np.iinfo(dtype).min


@cuda.jit(device=True, inline=True)
def dmin(a, b):
    """Smaller of two numbers (the builtin ``min`` trips Numba's CUDA typing in some versions)."""
    return a if a < b else b


@cuda.jit(device=True, inline=True)
def dmax(a, b):
    """Larger of two numbers."""
    return a if a > b else b
