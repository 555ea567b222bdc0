"""Elementwise, copy and indexing kernels (grid-stride 1-D loops; broadcasting via stride tuples).

Every storage array is C-contiguous and is passed flattened to 1-D; a broadcast
operand is read through an element-stride tuple with 0 on broadcast dims, after
``_common.collapse`` has merged every dim it can (usually to 1 or 2 dims).
Kernels are built per op by small factories (one compiled kernel per op, dtype
and tuple length) so each op is a straight-line device function.
"""

import functools
import math

from numba import cuda

from ._common import offset1, offset2, offset3

# --- scalar device functions ----------------------------------------------------


@cuda.jit(device=True, inline=True)
def _add(a, b):
    return a + b


@cuda.jit(device=True, inline=True)
def _sub(a, b):
    return a - b


@cuda.jit(device=True, inline=True)
def _mul(a, b):
    return a * b


@cuda.jit(device=True, inline=True)
def _div(a, b):
    return a / b


@cuda.jit(device=True, inline=True)
def _pow(a, b):
    return a ** b


@cuda.jit(device=True, inline=True)
def _maximum(a, b):
    return a if (a >= b or a != a) else b


@cuda.jit(device=True, inline=True)
def _minimum(a, b):
    return a if (a <= b or a != a) else b


@cuda.jit(device=True, inline=True)
def _eq(a, b):
    return 1 if a == b else 0


@cuda.jit(device=True, inline=True)
def _ne(a, b):
    return 1 if a != b else 0


@cuda.jit(device=True, inline=True)
def _lt(a, b):
    return 1 if a < b else 0


@cuda.jit(device=True, inline=True)
def _le(a, b):
    return 1 if a <= b else 0


@cuda.jit(device=True, inline=True)
def _gt(a, b):
    return 1 if a > b else 0


@cuda.jit(device=True, inline=True)
def _ge(a, b):
    return 1 if a >= b else 0


@cuda.jit(device=True, inline=True)
def _relu_grad(y, g):
    return g if y > 0 else 0


@cuda.jit(device=True, inline=True)
def _sigmoid_grad(y, g):
    return g * y * (1 - y)


@cuda.jit(device=True, inline=True)
def _tanh_grad(y, g):
    return g * (1 - y * y)


BINARY_FUNCS = {
    "add": _add, "sub": _sub, "mul": _mul, "div": _div, "pow": _pow,
    "maximum": _maximum, "minimum": _minimum, "eq": _eq, "ne": _ne, "lt": _lt,
    "le": _le, "gt": _gt, "ge": _ge,
    "relu_grad": _relu_grad, "sigmoid_grad": _sigmoid_grad, "tanh_grad": _tanh_grad,
}


@cuda.jit(device=True, inline=True)
def _neg(x):
    return -x


@cuda.jit(device=True, inline=True)
def _exp(x):
    if x > 709:  # keeps the simulator (Python's math) from raising OverflowError
        return math.inf
    return math.exp(x)


@cuda.jit(device=True, inline=True)
def _log(x):
    if x < 0:
        return math.nan
    if x == 0:
        return -math.inf
    return math.log(x)


@cuda.jit(device=True, inline=True)
def _sqrt(x):
    if x < 0:
        return math.nan
    return math.sqrt(x)


@cuda.jit(device=True, inline=True)
def _relu(x):
    return x if (x > 0 or x != x) else 0


@cuda.jit(device=True, inline=True)
def _sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@cuda.jit(device=True, inline=True)
def _tanh(x):
    return math.tanh(x)


@cuda.jit(device=True, inline=True)
def _abs(x):
    return abs(x)


@cuda.jit(device=True, inline=True)
def _sign(x):
    if x > 0:
        return 1
    if x < 0:
        return -1
    return x * 0


@cuda.jit(device=True, inline=True)
def _erf(x):
    return math.erf(x)


UNARY_FUNCS = {
    "neg": _neg, "exp": _exp, "log": _log, "sqrt": _sqrt, "relu": _relu,
    "sigmoid": _sigmoid, "tanh": _tanh, "abs": _abs, "sign": _sign, "erf": _erf,
}


# --- kernel factories -----------------------------------------------------------


@functools.lru_cache(maxsize=None)
def unary_kernel(op):
    """``out[i] = op(x[i])`` over flat contiguous arrays."""
    fn = UNARY_FUNCS[op]

    @cuda.jit(cache=True)
    def kernel(x, out, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            out[i] = fn(x[i])

    return kernel


@functools.lru_cache(maxsize=None)
def binary_flat_kernel(op):
    """``out[i] = op(a[i], b[i])`` for same-shape contiguous operands."""
    fn = BINARY_FUNCS[op]

    @cuda.jit(cache=True)
    def kernel(a, b, out, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            out[i] = fn(a[i], b[i])

    return kernel


@functools.lru_cache(maxsize=None)
def binary_bcast_kernel(op):
    """``out[i] = op(a[off_a(i)], b[off_b(i)])`` with broadcasting stride tuples."""
    fn = BINARY_FUNCS[op]

    @cuda.jit(cache=True)
    def kernel(a, b, out, n, shape, sa, sb):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            oa, ob = offset2(i, shape, sa, sb)
            out[i] = fn(a[oa], b[ob])

    return kernel


@functools.lru_cache(maxsize=None)
def scalar_kernel(op, reverse):
    """``out[i] = op(x[i], s)`` (or ``op(s, x[i])`` when ``reverse``)."""
    fn = BINARY_FUNCS[op]
    if reverse:
        @cuda.jit(cache=True)
        def kernel(x, s, out, n):
            for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                out[i] = fn(s, x[i])
    else:
        @cuda.jit(cache=True)
        def kernel(x, s, out, n):
            for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                out[i] = fn(x[i], s)
    return kernel


@cuda.jit(cache=True)
def where_kernel(c, a, b, out, n, shape, sc, sa, sb):
    """``out[i] = a if c != 0 else b`` with broadcasting stride tuples."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        oc, oa, ob = offset3(i, shape, sc, sa, sb)
        if c[oc] != 0:
            out[i] = a[oa]
        else:
            out[i] = b[ob]


@cuda.jit(cache=True)
def fill_kernel(out, value, n):
    """``out[:] = value``."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[i] = value


@cuda.jit(cache=True)
def cast_kernel(x, out, n):
    """``out[i] = x[i]`` converting dtype."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[i] = x[i]


@cuda.jit(cache=True)
def mix_kernel(dst, keep, src, take, n):
    """``dst[i] = keep * dst[i] + take * src[i]`` in place."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        dst[i] = keep * dst[i] + take * src[i]


@cuda.jit(cache=True)
def strided_copy_kernel(src, soff, sst, dst, doff, dst_st, shape, n):
    """``dst[doff + c.dst_st] = src[soff + c.sst]`` for every coordinate ``c`` of ``shape``.

    One kernel for transpose, broadcast_to, basic getitem, concatenate and the basic
    ``index_add``: only the offsets and stride tuples differ.
    """
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        os_, od = offset2(i, shape, sst, dst_st)
        dst[doff + od] = src[soff + os_]


@cuda.jit(cache=True)
def pad_kernel(x, out, n, out_shape, in_strides, before, in_shape, value):
    """Constant padding: ``out[c] = x[c - before]`` inside the input, else ``value``."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        rem = i
        off = 0
        inside = True
        for d in range(len(out_shape) - 1, -1, -1):
            m = out_shape[d]
            c = rem % m - before[d]
            rem = rem // m
            if c < 0 or c >= in_shape[d]:
                inside = False
            off += c * in_strides[d]
        if inside:
            out[i] = x[off]
        else:
            out[i] = value


@cuda.jit(cache=True)
def gather_kernel(src, idx, out, n):
    """``out[i] = src[idx[i]]`` (integer-array indexing through a flat index map)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[i] = src[idx[i]]


@cuda.jit(cache=True)
def scatter_add_kernel(out, idx, g, n):
    """``out[idx[i]] += g[i]`` with atomics (repeated indices accumulate)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        cuda.atomic.add(out, idx[i], g[i])


__all__ = ["unary_kernel", "binary_flat_kernel", "binary_bcast_kernel", "scalar_kernel",
           "where_kernel", "fill_kernel", "cast_kernel", "mix_kernel", "strided_copy_kernel",
           "pad_kernel", "gather_kernel", "scatter_add_kernel", "offset1"]
