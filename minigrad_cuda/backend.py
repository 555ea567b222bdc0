"""``CUDABackend``: the minigrad kernel interface on ``numba.cuda`` device arrays.

Storage is always a C-contiguous ``DeviceNDArray`` (``transpose``, ``getitem`` and
``broadcast_to`` return contiguous copies made by one gather kernel).  Every kernel is
launched on the backend's single stream without synchronising; only ``to_numpy``,
``sum_of_squares`` and ``all_finite`` (which return host values) wait for the stream.
Device memory comes from a caching pool (``memory.BlockPool``) so steady-state
training does not call the driver allocator.
"""

import functools
import math
import os
import sys

import numpy as np
import scipy.special
from numba import cuda

from minigrad.backend import Backend

from . import depthwise as dk
from . import elementwise as ew
from . import gemm as gm
from . import nn as nk
from . import reduce as rd
from ._common import (BLOCK, SIM, broadcast_strides, ceil_div, collapse, contiguous_strides,
                      grid1d, lowest, np_scalar, red_block)

_COMPARE = ("eq", "ne", "lt", "le", "gt", "ge")
_NP_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
    "pow": np.power, "maximum": np.maximum, "minimum": np.minimum,
}
_NP_UNARY = {
    "neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "relu": None,
    "sigmoid": scipy.special.expit, "tanh": np.tanh, "abs": np.abs, "sign": np.sign,
    "erf": scipy.special.erf,
}
_ACT_GRADS = {"relu": "relu_grad", "sigmoid": "sigmoid_grad", "tanh": "tanh_grad"}


def _prod(shape):
    out = 1
    for n in shape:
        out *= int(n)
    return out


@functools.lru_cache(maxsize=None)
def _binary_dtype(op, da, db):
    if op in _COMPARE:
        return da if da.kind != "b" else np.dtype(np.float32)
    with np.errstate(all="ignore"):
        return _NP_BINARY[op](np.zeros(1, da), np.zeros(1, db)).dtype


@functools.lru_cache(maxsize=None)
def _unary_dtype(op, dx):
    fn = _NP_UNARY[op]
    if fn is None:
        return dx
    with np.errstate(all="ignore"):
        return np.asarray(fn(np.zeros(1, dx))).dtype


def _is_advanced(item):
    return isinstance(item, (bool, np.bool_, list, np.ndarray)) or hasattr(item, "copy_to_host")


def _address(x):
    """Address of a device array's first element (the simulator's arrays are NumPy ones)."""
    iface = getattr(x, "__cuda_array_interface__", None)
    return (iface if iface is not None else x.__array_interface__)["data"][0]


def _overlap(a, b):
    """True when device arrays a and b (C-contiguous) share any byte."""
    pa, pb = _address(a), _address(b)
    na = _prod(a.shape) * np.dtype(a.dtype).itemsize
    nb = _prod(b.shape) * np.dtype(b.dtype).itemsize
    return na > 0 and nb > 0 and pa < pb + nb and pb < pa + na


def _storage(x):
    """The object holding the memory of device array ``x`` that every reshape of ``x`` refers
    to too: numba's ``MemoryPointer`` for an allocation (``None`` for a view into another
    one), or, under the simulator, the NumPy array that owns the memory of the array ``x``
    wraps (that array itself, or the base of a reshape of it; ``None`` for a slice)."""
    if SIM:
        ary = getattr(x, "_ary", None)
        if type(ary) is not np.ndarray or not ary.flags.writeable:
            return None
        base = ary if ary.flags.owndata else ary.base
        whole = type(base) is np.ndarray and base.flags.owndata and base.nbytes == ary.nbytes
        return base if whole else None
    from numba.cuda.cudadrv.driver import MemoryPointer

    data = getattr(x, "gpu_data", None)
    return data if isinstance(data, MemoryPointer) and data._owner is None else None


def _storage_counts(x):
    """(type of x's storage, Python references to it, numba's count of views into it), or
    None when ``x`` has no storage of its own (see ``_storage``)."""
    storage = _storage(x)
    if storage is None or not _prod(x.shape):
        return None
    return type(storage), sys.getrefcount(storage), getattr(storage, "refct", 0)


def _unshared_storage_counts(be):
    """{storage type: (references, views)} measured on a fresh array from the backend's
    allocator that nothing shares (the memory pool's ``MemoryPointer`` on a GPU; a NumPy
    array under the simulator).  numba's own allocations reach a GPU array through an
    ``OwnedPointer``, which ``_storage`` never counts: arrays made without the pool are
    always copied."""
    counts = _storage_counts(be.empty((1,), np.float32))
    return {} if counts is None else {counts[0]: counts[1:]}


class CUDABackend(Backend):
    """Kernels for device "cuda" (``numba.cuda``; runs under the simulator too)."""

    name = "cuda"

    def __init__(self):
        self.stream = cuda.stream()
        self.simulator = SIM
        self._pool = None
        if not SIM and os.environ.get("MINIGRAD_CUDA_POOL", "1") != "0":
            from .memory import numba_pool

            self._pool = numba_pool()
        self._dummies = {}
        self._k_tables = {}
        self._unshared_counts = None

    # --- helpers ---------------------------------------------------------
    def empty(self, shape, dtype):
        """Uninitialised contiguous device array (from the memory pool on a real GPU)."""
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        nbytes = _prod(shape) * dtype.itemsize
        if self._pool is None or nbytes == 0:
            return cuda.device_array(shape, dtype=dtype, stream=self.stream)
        from numba.cuda.cudadrv.devicearray import DeviceNDArray

        strides = tuple(s * dtype.itemsize for s in contiguous_strides(shape))
        return DeviceNDArray(shape, strides, dtype, stream=self.stream,
                             gpu_data=self._pool.alloc(nbytes))

    def memory_stats(self):
        """Byte counts of the memory pool (``None`` under the simulator)."""
        return None if self._pool is None else self._pool.stats()

    def empty_cache(self):
        """Return every cached block of the memory pool to the driver."""
        if self._pool is not None:
            self._pool.empty_cache()

    def synchronize(self):
        """Wait until every kernel queued on the backend's stream has finished."""
        self.stream.synchronize()

    def _dummy(self, dtype):
        dtype = np.dtype(dtype)
        d = self._dummies.get(dtype)
        if d is None:
            d = self._dummies[dtype] = cuda.device_array(1, dtype=dtype, stream=self.stream)
        return d

    def _c(self, x):
        """``x`` as a C-contiguous device array (NumPy arrays are uploaded)."""
        if isinstance(x, np.ndarray) or np.isscalar(x):
            return self.from_numpy(np.asarray(x))
        if not x.is_c_contiguous():  # not produced by this backend: rare, go through the host
            return self.from_numpy(x.copy_to_host(stream=self.stream))
        return x

    @staticmethod
    def _flat(x):
        return x.reshape(_prod(x.shape))

    def _launch1d(self, kernel, n, *args):
        grid, block = grid1d(n)
        kernel[grid, block, self.stream](*args)

    def _strided_copy(self, src, soff, sst, dst, doff, dst_st, shape):
        n = _prod(shape)
        if n == 0:
            return
        shp, s1, s2 = collapse(shape, sst, dst_st)
        self._launch1d(ew.strided_copy_kernel, n, self._flat(src), int(soff), s1,
                       self._flat(dst), int(doff), s2, shp, n)

    # --- storage -------------------------------------------------------
    def from_numpy(self, array):
        """Copy a NumPy array to a new device array (asynchronously on the stream)."""
        array = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        out = self.empty(array.shape, array.dtype)
        if array.size:
            out.copy_to_device(array, stream=self.stream)
        return out

    def to_numpy(self, x):
        """Copy a device array to a new NumPy array (waits for the stream)."""
        if isinstance(x, np.ndarray):
            return np.array(x, copy=True)
        if _prod(x.shape) == 0:
            return np.empty(x.shape, dtype=x.dtype)
        host = x.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        return host

    def full(self, shape, value, dtype):
        """New device array of ``shape`` filled with ``value``."""
        out = self.empty(shape, dtype)
        self.fill_(out, value)
        return out

    def astype(self, x, dtype):
        """Copy of ``x`` converted to ``dtype``."""
        x = self._c(x)
        out = self.empty(x.shape, dtype)
        n = _prod(x.shape)
        if n:
            self._launch1d(ew.cast_kernel, n, self._flat(x), self._flat(out), n)
        return out

    def copy_(self, dst, src):
        """Copy ``src`` (same or broadcastable shape) into ``dst`` in place."""
        src = self._c(src)
        if tuple(src.shape) == tuple(dst.shape):
            n = _prod(dst.shape)
            if n:
                self._launch1d(ew.cast_kernel, n, self._flat(src), self._flat(dst), n)
            return
        shape = tuple(dst.shape)
        self._strided_copy(src, 0, broadcast_strides(src.shape, shape), dst, 0,
                           contiguous_strides(shape), shape)

    def add_into_(self, dst, src):
        """``dst += src`` in place for C-contiguous float device arrays of one shape and
        dtype that share no memory (autograd's accumulation of a leaf's ``.grad``)."""
        if not all(callable(getattr(x, "is_c_contiguous", None)) for x in (dst, src)):
            return False            # not device arrays
        if (tuple(dst.shape) != tuple(src.shape) or np.dtype(dst.dtype) != np.dtype(src.dtype)
                or np.dtype(dst.dtype).kind != "f" or not dst.is_c_contiguous()
                or not src.is_c_contiguous() or _overlap(dst, src)):
            return False
        n = _prod(dst.shape)
        if n:
            self._launch1d(ew.binary_flat_kernel("add"), n, self._flat(dst), self._flat(src),
                           self._flat(dst), n)
        return True

    def fill_(self, x, value):
        """Set every element of ``x`` to ``value`` in place."""
        n = _prod(x.shape)
        if n:
            self._launch1d(ew.fill_kernel, n, self._flat(x), np_scalar(value, x.dtype), n)

    def mix_into_(self, dst, keep, src, take):
        """``dst = keep * dst + take * src`` in place (one kernel; ``src`` converted to
        ``dst``'s dtype first when they differ)."""
        src = self._conformed(src, dst, "mix_into_: src", "dst")
        n = _prod(dst.shape)
        if n:
            self._launch1d(ew.mix_kernel, n, self._flat(dst), np_scalar(keep, dst.dtype),
                           self._flat(src), np_scalar(take, dst.dtype), n)

    def owns_memory(self, x):
        """True when ``x`` is a contiguous device array on memory of its own that no other
        array object shares (no reshape or view of it is alive): autograd may then keep it
        as a leaf's ``.grad`` instead of copying it."""
        if not callable(getattr(x, "is_c_contiguous", None)) or not x.is_c_contiguous():
            return False
        if self._unshared_counts is None:
            self._unshared_counts = _unshared_storage_counts(self)
        counts = _storage_counts(x)
        limit = None if counts is None else self._unshared_counts.get(counts[0])
        return limit is not None and counts[1] <= limit[0] and counts[2] <= limit[1]

    # --- elementwise ---------------------------------------------------
    def _map2(self, op, a, b, out_dtype, shape):
        out = self.empty(shape, out_dtype)
        n = _prod(shape)
        if n == 0:
            return out
        if tuple(a.shape) == shape and tuple(b.shape) == shape:
            self._launch1d(ew.binary_flat_kernel(op), n, self._flat(a), self._flat(b),
                           self._flat(out), n)
        else:
            shp, sa, sb = collapse(shape, broadcast_strides(a.shape, shape),
                                   broadcast_strides(b.shape, shape))
            self._launch1d(ew.binary_bcast_kernel(op), n, self._flat(a), self._flat(b),
                           self._flat(out), n, shp, sa, sb)
        return out

    def unary(self, op, x):
        """Elementwise ``op`` (neg, exp, log, sqrt, relu, sigmoid, tanh, abs, sign, erf)."""
        x = self._c(x)
        out = self.empty(x.shape, _unary_dtype(op, np.dtype(x.dtype)))
        n = _prod(x.shape)
        if n:
            self._launch1d(ew.unary_kernel(op), n, self._flat(x), self._flat(out), n)
        return out

    def binary(self, op, a, b):
        """Broadcasting elementwise ``op``; comparisons return 0/1 in the dtype of ``a``."""
        a, b = self._c(a), self._c(b)
        shape = tuple(np.broadcast_shapes(tuple(a.shape), tuple(b.shape)))
        return self._map2(op, a, b, _binary_dtype(op, np.dtype(a.dtype), np.dtype(b.dtype)), shape)

    def scalar(self, op, x, s, reverse=False):
        """``op(x, s)`` (or ``op(s, x)``) for a Python scalar ``s``, NumPy's dtype rules."""
        x = self._c(x)
        dx = np.dtype(x.dtype)
        if op in _COMPARE:
            out_dtype = dx if dx.kind != "b" else np.dtype(np.float32)
            s_typed = np_scalar(s, np.result_type(dx, s))
        else:
            with np.errstate(all="ignore"):
                dummy = np.zeros(1, dx)
                fn = _NP_BINARY[op]
                out_dtype = (fn(s, dummy) if reverse else fn(dummy, s)).dtype
            s_typed = np_scalar(s, out_dtype)
        out = self.empty(x.shape, out_dtype)
        n = _prod(x.shape)
        if n:
            self._launch1d(ew.scalar_kernel(op, bool(reverse)), n, self._flat(x), s_typed,
                           self._flat(out), n)
        return out

    def where(self, cond, a, b):
        """Broadcasting select: ``a`` where ``cond`` is non-zero, else ``b``."""
        cond, a, b = self._c(cond), self._c(a), self._c(b)
        shape = tuple(np.broadcast_shapes(tuple(cond.shape), tuple(a.shape), tuple(b.shape)))
        out = self.empty(shape, np.result_type(a.dtype, b.dtype))
        n = _prod(shape)
        if n:
            shp, sc, sa, sb = collapse(shape, broadcast_strides(cond.shape, shape),
                                       broadcast_strides(a.shape, shape),
                                       broadcast_strides(b.shape, shape))
            self._launch1d(ew.where_kernel, n, self._flat(cond), self._flat(a), self._flat(b),
                           self._flat(out), n, shp, sc, sa, sb)
        return out

    def activation_grad(self, op, y, gy):
        """Gradient of relu/sigmoid/tanh from the activation's output ``y``."""
        y, gy = self._c(y), self._c(gy)
        return self._map2(_ACT_GRADS[op], y, gy, np.dtype(y.dtype), tuple(y.shape))

    # --- reductions ----------------------------------------------------
    def _reduce(self, x, axes, keepdims, op, out_dtype):
        x = self._c(x)
        shape = tuple(int(n) for n in x.shape)
        ndim = len(shape)
        axes = tuple(sorted({int(a) % ndim for a in axes})) if ndim else ()
        if keepdims:
            out_shape = tuple(1 if d in axes else n for d, n in enumerate(shape))
        else:
            out_shape = tuple(n for d, n in enumerate(shape) if d not in axes)
        out_dtype = np.dtype(out_dtype)
        init = lowest(out_dtype) if op == "max" else np_scalar(0, out_dtype)
        nred = _prod([shape[d] for d in axes])
        nout = _prod(out_shape)
        if nout == 0:
            return self.empty(out_shape, out_dtype)
        if nred == 0:
            return self.full(out_shape, init, out_dtype)
        if nred == 1 and op in ("sum", "max"):
            return self.astype(x, out_dtype).reshape(out_shape)
        st = contiguous_strides(shape)
        kept = [d for d in range(ndim) if d not in axes]
        kshape, kst = collapse([shape[d] for d in kept], [st[d] for d in kept])
        rshape, rst = collapse([shape[d] for d in axes], [st[d] for d in axes])
        last = max((d for d in range(ndim) if shape[d] > 1), default=0)
        xf = self._flat(x)
        if last in axes:  # innermost dim reduced: a block per output, tree in shared memory
            nsplit = 1
            target = 8 if SIM else 264
            if nout < target and nred > 4096:
                nsplit = min(ceil_div(target, nout), ceil_div(nred, 2048), 1024)
            chunk = ceil_div(nred, nsplit)
            nsplit = ceil_div(nred, chunk)
            dst = self.empty((nsplit * nout,), out_dtype)
            kern = rd.rows_kernel(op, _nb(out_dtype))
            grid = (max(1, min(nout, 65535)), nsplit)
            kern[grid, red_block(chunk), self.stream](xf, dst, nout, kshape, kst, rshape, rst,
                                                      nred, chunk, init)
        else:  # innermost dim kept: a thread per output, adjacent threads adjacent addresses
            nsplit = 1
            target = 2048 if SIM else 270000
            if nout < target and nred > 256:
                nsplit = min(ceil_div(target, nout), ceil_div(nred, 64), 1024)
            chunk = ceil_div(nred, nsplit)
            nsplit = ceil_div(nred, chunk)
            dst = self.empty((nsplit * nout,), out_dtype)
            blocks, threads = grid1d(nout)
            rd.cols_kernel(op)[(blocks, nsplit), threads, self.stream](
                xf, dst, nout, kshape, kst, rshape, rst, nred, chunk, init)
        if nsplit > 1:
            op2 = "sum" if op in ("sum", "sumsq") else "max"
            dst = self._reduce(dst.reshape((nsplit, nout)), (0,), False, op2, out_dtype)
        return dst.reshape(out_shape)

    def sum(self, x, axes, keepdims):
        """Sum over ``axes`` (NumPy's result dtype: int64 for ints and bools)."""
        dtype = np.sum(np.zeros(1, np.dtype(x.dtype))).dtype
        return self._reduce(x, axes, keepdims, "sum", dtype)

    def max(self, x, axes, keepdims):
        """Maximum over ``axes`` (NaN propagates, as NumPy)."""
        return self._reduce(x, axes, keepdims, "max", x.dtype)

    def sum_to_shape(self, x, shape):
        """Sum a broadcast result back to ``shape``."""
        shape = tuple(int(n) for n in shape)
        lead = len(x.shape) - len(shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1)
        out = self.sum(x, axes, True) if axes else self._c(x)
        return out.reshape(shape)

    # --- shape ---------------------------------------------------------
    def reshape(self, x, shape):
        """A view of ``x`` with a new shape (storage is always contiguous)."""
        x = self._c(x)
        shape = tuple(int(n) for n in shape)
        if -1 in shape:
            known = _prod([n for n in shape if n != -1])
            shape = tuple(_prod(x.shape) // max(known, 1) if n == -1 else n for n in shape)
        return x.reshape(shape)

    def transpose(self, x, axes):
        """Contiguous copy of ``x`` with axes permuted (one gather kernel)."""
        x = self._c(x)
        axes = tuple(int(a) for a in axes)
        st = contiguous_strides(x.shape)
        shape = tuple(int(x.shape[a]) for a in axes)
        out = self.empty(shape, x.dtype)
        self._strided_copy(x, 0, tuple(st[a] for a in axes), out, 0,
                           contiguous_strides(shape), shape)
        return out

    def broadcast_to(self, x, shape):
        """``x`` broadcast to ``shape`` (materialised as a contiguous array)."""
        x = self._c(x)
        shape = tuple(int(n) for n in shape)
        if tuple(x.shape) == shape:
            return x
        out = self.empty(shape, x.dtype)
        self._strided_copy(x, 0, broadcast_strides(x.shape, shape), out, 0,
                           contiguous_strides(shape), shape)
        return out

    @staticmethod
    def _basic_layout(shape, index):
        """(offset, shape, strides) in elements of ``x[index]`` for basic indexing, else None."""
        items = index if isinstance(index, tuple) else (index,)
        if any(_is_advanced(i) for i in items):
            return None
        base = np.zeros(1, dtype=np.uint8)
        fake = np.lib.stride_tricks.as_strided(base, shape=tuple(shape),
                                               strides=contiguous_strides(shape), writeable=False)
        if not any(i is Ellipsis for i in items):
            items = tuple(items) + (Ellipsis,)  # a view even when every axis gets an int
        view = fake[tuple(items)]
        offset = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        return offset, tuple(view.shape), tuple(view.strides)

    def _index_map(self, shape, index):
        n = _prod(shape)
        dtype = np.int32 if n < 2**31 else np.int64
        return np.arange(n, dtype=dtype).reshape(shape)[index]

    def getitem(self, x, index):
        """Basic indexing by one strided gather; integer/bool arrays through a flat index map."""
        x = self._c(x)
        layout = self._basic_layout(x.shape, index)
        if layout is not None:
            offset, shape, strides = layout
            out = self.empty(shape, x.dtype)
            self._strided_copy(x, offset, strides, out, 0, contiguous_strides(shape), shape)
            return out
        idx = self._index_map(tuple(x.shape), index)
        out = self.empty(idx.shape, x.dtype)
        n = idx.size
        if n:
            self._launch1d(ew.gather_kernel, n, self._flat(x), self._flat(self.from_numpy(idx)),
                           self._flat(out), n)
        return out

    def index_add(self, shape, index, g):
        """Zeros of ``shape`` with ``g`` added at ``index`` (atomics for repeated array indices)."""
        g = self._c(g)
        shape = tuple(int(n) for n in shape)
        out = self.full(shape, 0, g.dtype)
        layout = self._basic_layout(shape, index)
        if layout is not None:
            offset, vshape, strides = layout
            self._strided_copy(g, 0, broadcast_strides(g.shape, vshape), out, offset, strides,
                               vshape)
            return out
        idx = self._index_map(shape, index)
        n = idx.size
        if n:
            if tuple(g.shape) != tuple(idx.shape):
                g = self.broadcast_to(g, idx.shape)
            self._launch1d(ew.scatter_add_kernel, n, self._flat(out),
                           self._flat(self.from_numpy(idx)), self._flat(g), n)
        return out

    def pad(self, x, pads, value):
        """Constant padding; ``pads`` is one ``(before, after)`` pair per axis."""
        x = self._c(x)
        pads = tuple((int(b), int(a)) for b, a in pads)
        shape = tuple(int(n) + b + a for n, (b, a) in zip(x.shape, pads))
        out = self.empty(shape, x.dtype)
        n = _prod(shape)
        if n == 0:
            return out
        if len(shape) == 0:
            return self.astype(x, x.dtype)
        if _prod(x.shape) == 0:
            self.fill_(out, value)
            return out
        self._launch1d(ew.pad_kernel, n, self._flat(x), self._flat(out), n, shape,
                       contiguous_strides(x.shape), tuple(b for b, _ in pads),
                       tuple(int(m) for m in x.shape), np_scalar(value, x.dtype))
        return out

    def concatenate(self, xs, axis):
        """Join arrays along ``axis`` (one strided copy per input)."""
        xs = [self._c(x) for x in xs]
        ndim = len(xs[0].shape)
        axis = int(axis) % ndim
        shape = list(xs[0].shape)
        shape[axis] = sum(int(x.shape[axis]) for x in xs)
        shape = tuple(int(n) for n in shape)
        out = self.empty(shape, np.result_type(*[x.dtype for x in xs]))
        ost = contiguous_strides(shape)
        start = 0
        for x in xs:
            self._strided_copy(x, 0, contiguous_strides(x.shape), out, start * ost[axis], ost,
                               tuple(x.shape))
            start += int(x.shape[axis])
        return out

    # --- linear algebra ------------------------------------------------
    def _as_dtype(self, x, dtype):
        return x if np.dtype(x.dtype) == dtype else self.astype(x, dtype)

    def _gemm(self, kind, A, B, C, bias, M, N, K, P, nz=1, kz=0, kchunk=None,
              a_kfast=True, b_nfast=True, batch=0):
        if kchunk is None:
            kchunk = K
        tile = gm.tile_for(M, N)
        kern = gm.gemm_kernel(kind, np.dtype(C.dtype).str, bool(a_kfast), bool(b_nfast), tile)
        grid, block = gm.launch_geometry(M, N, nz, tile)
        table = (self._dummy(np.int64) if kind == "matmul" or K == 0
                 else self._k_table(kind, P, batch))
        kern[grid, block, self.stream](self._flat(A), self._flat(B), self._flat(C),
                                       self._flat(bias), table, int(M), int(N), int(K), int(kz),
                                       int(kchunk), int(nz), P)

    def _k_table(self, kind, P, batch):
        """The device copy of ``gemm.k_table`` for this convolution (cached per shape)."""
        key = (kind, P[:14] + P[15:], batch if kind == "conv_bwd_weight" else 0)
        table = self._k_tables.get(key)
        if table is None:
            if len(self._k_tables) >= 256:
                self._k_tables.clear()
            table = self.from_numpy(gm.k_table(kind, P, batch).reshape(-1))
            self._k_tables[key] = table
        return table

    def _split_k(self, M, N, K):
        s = gm.choose_split(M, N, K)
        if s <= 1:
            return 1, K
        chunk = ceil_div(ceil_div(K, s), gm.BK) * gm.BK
        return ceil_div(K, chunk), chunk

    def matmul(self, a, b):
        """``a @ b`` (2-D or batched with broadcast batch dims) with the tiled GEMM."""
        a, b = self._c(a), self._c(b)
        dtype = np.result_type(a.dtype, b.dtype)
        if dtype.kind != "f":
            dtype = np.dtype(np.float64)
        a, b = self._as_dtype(a, dtype), self._as_dtype(b, dtype)
        ash, bsh = tuple(int(n) for n in a.shape), tuple(int(n) for n in b.shape)
        M, K = ash[-2], ash[-1]
        N = bsh[-1]
        if bsh[-2] != K:
            raise ValueError(f"matmul: shapes {ash} and {bsh} do not match")
        batch = tuple(np.broadcast_shapes(ash[:-2], bsh[:-2]))
        nb = _prod(batch)

        def batch_stride(x, rows, cols):
            xb = tuple(int(n) for n in x.shape)[:-2]
            if xb == batch:
                return x, rows * cols
            if _prod(xb) == 1:
                return x, 0
            return self.broadcast_to(x, batch + (rows, cols)), rows * cols

        a, a_bs = batch_stride(a, M, K)
        b, b_bs = batch_stride(b, K, N)
        out = self.empty(batch + (M, N), dtype)
        if _prod(out.shape) == 0:
            return out
        if K == 0:
            self.fill_(out, 0)
            return out
        if nb == 1:
            splits, chunk = self._split_k(M, N, K)
            if splits > 1:
                part = self.empty((splits, M, N), dtype)
                self._gemm("matmul", a, b, part, self._dummy(dtype), M, N, K,
                           (0, K, 1, 0, N, 1, M * N, 0), nz=splits, kz=chunk, kchunk=chunk)
                return self.sum(part, (0,), False).reshape(out.shape)
        self._gemm("matmul", a, b, out, self._dummy(dtype), M, N, K,
                   (a_bs, K, 1, b_bs, N, 1, M * N, 0), nz=nb)
        return out

    def linear(self, x, w, b):
        """``x @ w.T + b`` with the bias fused into the GEMM's store (w read transposed in place)."""
        x, w = self._c(x), self._c(w)
        dtype = np.result_type(x.dtype, w.dtype)
        x, w = self._as_dtype(x, dtype), self._as_dtype(w, dtype)
        Nr, K = int(x.shape[0]), int(x.shape[1])
        O = int(w.shape[0])
        out = self.empty((Nr, O), dtype)
        if Nr * O == 0:
            return out
        if K == 0:
            if b is None:
                self.fill_(out, 0)
            else:
                self.copy_(out, self._as_dtype(self._c(b), dtype))
            return out
        has_bias = b is not None
        bias = self._as_dtype(self._c(b), dtype) if has_bias else self._dummy(dtype)
        self._gemm("matmul", x, w, out, bias, Nr, O, K, (0, K, 1, 0, 1, K, 0, int(has_bias)),
                   b_nfast=False)
        return out

    # --- convolution and pooling ----------------------------------------
    @staticmethod
    def _conv_params(x, w, stride, padding, dilation, has_bias):
        N, C, H, W = (int(s) for s in x.shape)
        K, _, R, S = (int(s) for s in w.shape)
        sh, sw = int(stride[0]), int(stride[1])
        ph, pw = int(padding[0]), int(padding[1])
        dh, dw = int(dilation[0]), int(dilation[1])
        OH = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
        OW = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
        P = (C, H, W, R, S, OH, OW, sh, sw, ph, pw, dh, dw, K, int(has_bias))
        return N, C, H, W, K, R, S, OH, OW, P

    def conv2d(self, x, w, b, stride, padding, dilation):
        """Cross-correlation as an implicit GEMM (no im2col buffer), bias fused."""
        x, w = self._c(x), self._c(w)
        dtype = np.result_type(x.dtype, w.dtype)
        x, w = self._as_dtype(x, dtype), self._as_dtype(w, dtype)
        N, C, H, W, K, R, S, OH, OW, P = self._conv_params(x, w, stride, padding, dilation,
                                                           b is not None)
        y = self.empty((N, K, OH, OW), dtype)
        if _prod(y.shape) == 0:
            return y
        bias = self._as_dtype(self._c(b), dtype) if b is not None else self._dummy(dtype)
        if C * R * S == 0:
            self.copy_(y, bias.reshape((1, K, 1, 1))) if b is not None else self.fill_(y, 0)
            return y
        self._gemm("conv_fwd", w, x, y, bias, K, N * OH * OW, C * R * S, P)
        return y

    def _conv_bwd_data(self, w, gy, gx, dummy, N, C, H, W, K, R, S, P):
        """gx by one implicit GEMM per stride phase (see ``gemm.k_table``)."""
        sh, sw, ph, pw, dh, dw = P[7], P[8], P[9], P[10], P[11], P[12]
        for h0 in range(min(sh, H)):
            nr = len(gm.phase_taps(R, h0, ph, dh, sh))
            for w0 in range(min(sw, W)):
                ns = len(gm.phase_taps(S, w0, pw, dw, sw))
                HA, WA = ceil_div(H - h0, sh), ceil_div(W - w0, sw)
                Pp = P[:14] + (0, h0, w0, HA, WA)
                self._gemm("conv_bwd_data", w, gy, gx, dummy, C, N * HA * WA, K * nr * ns, Pp)

    def conv2d_backward(self, x, w, gy, stride, padding, dilation, need_x, need_w, need_b):
        """``(gx, gw, gb)``: implicit GEMMs for data and weight (split-K) gradients."""
        x, w, gy = self._c(x), self._c(w), self._c(gy)
        dtype = np.dtype(gy.dtype)
        x, w = self._as_dtype(x, dtype), self._as_dtype(w, dtype)
        N, C, H, W, K, R, S, OH, OW, P = self._conv_params(x, w, stride, padding, dilation, False)
        gx = gw = gb = None
        dummy = self._dummy(dtype)
        if need_x:
            gx = self.empty(x.shape, dtype)
            if _prod(gx.shape):
                if K * R * S * OH * OW == 0:
                    self.fill_(gx, 0)
                else:
                    self._conv_bwd_data(w, gy, gx, dummy, N, C, H, W, K, R, S, P)
        if need_w:
            gw = self.empty(w.shape, dtype)
            if _prod(gw.shape):
                Kd = N * OH * OW
                if Kd == 0:
                    self.fill_(gw, 0)
                else:
                    splits, chunk = self._split_k(K, C * R * S, Kd)
                    if splits > 1:
                        part = self.empty((splits, K, C * R * S), dtype)
                        self._gemm("conv_bwd_weight", gy, x, part, dummy, K, C * R * S, Kd, P,
                                   nz=splits, kz=chunk, kchunk=chunk, batch=N)
                        gw = self.sum(part, (0,), False).reshape(w.shape)
                    else:
                        self._gemm("conv_bwd_weight", gy, x, gw, dummy, K, C * R * S, Kd, P, batch=N)
        if need_b:
            gb = self.sum(gy, (0, 2, 3), False)
        return gx, gw, gb

    # Used by ops.conv.conv2d when present: groups equal to the input channels.
    def depthwise_conv2d(self, x, w, b, stride, padding, dilation):
        """Depthwise convolution of x (N, C, H, W) with w (K, 1, R, S), K a multiple of C:
        one thread per output, bias fused."""
        x, w = self._c(x), self._c(w)
        dtype = np.result_type(x.dtype, w.dtype)
        x, w = self._as_dtype(x, dtype), self._as_dtype(w, dtype)
        N, C, H, W, K, R, S, OH, OW, P = self._conv_params(x, w, stride, padding, dilation, False)
        y = self.empty((N, K, OH, OW), dtype)
        n = _prod(y.shape)
        if n == 0:
            return y
        bias = self._as_dtype(self._c(b), dtype) if b is not None else self.full((K,), 0, dtype)
        self._launch1d(dk.depthwise_fwd, n, self._flat(x), self._flat(w), bias, self._flat(y),
                       n, C, H, W, K // C, R, S, OH, OW, *P[7:13])
        return y

    def depthwise_conv2d_backward(self, x, w, gy, stride, padding, dilation, need_x, need_w,
                                  need_b, gx_addend=None, addend_writable=False):
        """``(gx, gw, gb)`` of depthwise_conv2d: dX gathered per input pixel, dW one block
        per weight element; gx includes ``gx_addend`` when one is given (a separate add
        here: ``addend_writable`` is ignored)."""
        x, w, gy = self._c(x), self._c(w), self._c(gy)
        dtype = np.dtype(gy.dtype)
        x, w = self._as_dtype(x, dtype), self._as_dtype(w, dtype)
        N, C, H, W, K, R, S, OH, OW, P = self._conv_params(x, w, stride, padding, dilation, False)
        geo = (C, H, W, K // C, R, S, OH, OW) + tuple(P[7:13])
        gx = gw = gb = None
        if need_x:
            gx = self.empty(x.shape, dtype)
            n = _prod(gx.shape)
            if n:
                self._launch1d(dk.depthwise_bwd_data, n, self._flat(gy), self._flat(w),
                               self._flat(gx), n, *geo, np_scalar(0, dtype))
        if need_w:
            gw = self.empty(w.shape, dtype)
            if _prod(gw.shape):
                if N * OH * OW == 0:
                    self.fill_(gw, 0)
                else:
                    dk.depthwise_bwd_weight[min(K * R * S, 65535), red_block(N * OH * OW),
                                            self.stream](
                        self._flat(x), self._flat(gy), self._flat(gw), N, *geo)
        if need_b:
            gb = self.sum(gy, (0, 2, 3), False)
        if gx is not None and gx_addend is not None:
            gx = self.binary("add", gx, gx_addend)
        return gx, gw, gb

    @staticmethod
    def _pool_params(x_shape, kernel, stride, padding, out_hw=None):
        N, C, H, W = (int(s) for s in x_shape)
        kh, kw = int(kernel[0]), int(kernel[1])
        sh, sw = int(stride[0]), int(stride[1])
        ph, pw = int(padding[0]), int(padding[1])
        if out_hw is None:
            OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        else:
            OH, OW = out_hw
        return N, C, H, W, OH, OW, (kh, kw, sh, sw, ph, pw)

    def max_pool2d(self, x, kernel, stride, padding):
        """Max pooling; returns ``(y, argmax)`` with int32 flat in-plane argmax (as the CPU)."""
        x = self._c(x)
        N, C, H, W, OH, OW, k = self._pool_params(x.shape, kernel, stride, padding)
        y = self.empty((N, C, OH, OW), x.dtype)
        am = self.empty((N, C, OH, OW), np.int32)
        n = N * C * OH * OW
        if n:
            self._launch1d(nk.max_pool_fwd, n, self._flat(x), self._flat(y), self._flat(am), n,
                           H, W, OH, OW, *k)
        return y, am

    def max_pool2d_backward(self, gy, argmax, x_shape):
        """Gradient of max pooling: each output adds its gradient at its argmax (atomics)."""
        gy, argmax = self._c(gy), self._c(argmax)
        N, C, H, W = (int(s) for s in x_shape)
        gx = self.full((N, C, H, W), 0, gy.dtype)
        n = _prod(gy.shape)
        if n and N * C * H * W:
            OHW = int(gy.shape[2]) * int(gy.shape[3])
            self._launch1d(nk.max_pool_bwd, n, self._flat(gy), self._flat(argmax),
                           self._flat(gx), n, OHW, H * W)
        return gx

    def avg_pool2d(self, x, kernel, stride, padding, count_include_pad):
        """Average pooling (PyTorch's divisor for ``count_include_pad``)."""
        x = self._c(x)
        N, C, H, W, OH, OW, k = self._pool_params(x.shape, kernel, stride, padding)
        y = self.empty((N, C, OH, OW), x.dtype)
        n = N * C * OH * OW
        if n:
            self._launch1d(nk.avg_pool_fwd, n, self._flat(x), self._flat(y), n, H, W, OH, OW, *k,
                           bool(count_include_pad), np_scalar(0, x.dtype))
        return y

    def avg_pool2d_backward(self, gy, x_shape, kernel, stride, padding, count_include_pad):
        """Gradient of average pooling (gather over the windows covering each pixel)."""
        gy = self._c(gy)
        N, C, H, W, OH, OW, k = self._pool_params(x_shape, kernel, stride, padding,
                                                  (int(gy.shape[2]), int(gy.shape[3])))
        gx = self.empty((N, C, H, W), gy.dtype)
        n = N * C * H * W
        if n:
            self._launch1d(nk.avg_pool_bwd, n, self._flat(gy), self._flat(gx), n, H, W, OH, OW,
                           *k, bool(count_include_pad), np_scalar(0, gy.dtype))
        return gx

    # --- fused layers ---------------------------------------------------
    @staticmethod
    def _rows(shape, axis):
        axis = int(axis) % len(shape)
        outer = _prod(shape[:axis])
        inner = _prod(shape[axis + 1:])
        return outer, int(shape[axis]), inner

    def log_softmax(self, x, axis):
        """Stable log-softmax along ``axis`` (block per row, or thread per row when strided)."""
        x = self._c(x)
        out = self.empty(x.shape, x.dtype)
        outer, C, inner = self._rows(x.shape, axis)
        nrows = outer * inner
        if nrows * C == 0:
            return out
        if inner == 1:
            nk.log_softmax_rows[min(nrows, 65535), red_block(C), self.stream](
                self._flat(x), self._flat(out), nrows, C)
        else:
            self._launch1d(nk.log_softmax_strided, nrows, self._flat(x), self._flat(out), nrows,
                           C, inner)
        return out

    def log_softmax_backward(self, y, gy, axis, addend=None):
        """Gradient of log-softmax from its output: ``gy - exp(y) * sum(gy)`` (+ ``addend``)."""
        y, gy = self._c(y), self._c(gy)
        gy = self._as_dtype(gy, np.dtype(y.dtype))
        out = self.empty(y.shape, y.dtype)
        outer, C, inner = self._rows(y.shape, axis)
        nrows = outer * inner
        if nrows * C == 0:
            return out
        if inner == 1:
            nk.log_softmax_bwd_rows[min(nrows, 65535), red_block(C), self.stream](
                self._flat(y), self._flat(gy), self._flat(out), nrows, C)
        else:
            self._launch1d(nk.log_softmax_bwd_strided, nrows, self._flat(y), self._flat(gy),
                           self._flat(out), nrows, C, inner)
        return out if addend is None else self.binary("add", out, addend)

    def softmax_cross_entropy(self, logits, labels, label_smoothing):
        """Fused per-sample loss and softmax; an out-of-range label gives a NaN loss."""
        logits, labels = self._c(logits), self._c(labels)
        N, C = int(logits.shape[0]), int(logits.shape[1])
        loss = self.empty((N,), logits.dtype)
        probs = self.empty((N, C), logits.dtype)
        if N == 0:
            return loss, probs
        nk.softmax_xent_fwd[min(N, 65535), red_block(C), self.stream](
            self._flat(logits), self._flat(labels), loss, self._flat(probs), N, C,
            float(label_smoothing))
        return loss, probs

    def softmax_cross_entropy_backward(self, probs, labels, label_smoothing, gloss):
        """``gloss[:, None] * (probs - smoothed one-hot)``."""
        probs, labels, gloss = self._c(probs), self._c(labels), self._c(gloss)
        N, C = int(probs.shape[0]), int(probs.shape[1])
        if tuple(gloss.shape) != (N,):
            gloss = self.broadcast_to(gloss.reshape(()) if _prod(gloss.shape) == 1 else gloss,
                                      (N,))
        gx = self.empty((N, C), probs.dtype)
        if N * C:
            self._launch1d(nk.softmax_xent_bwd, N * C, self._flat(probs), self._flat(labels),
                           self._flat(gloss), self._flat(gx), N * C, C, float(label_smoothing))
        return gx

    @staticmethod
    def _ncl(shape):
        return int(shape[0]), int(shape[1]), _prod(shape[2:])

    def _affine(self, gamma, beta, dtype):
        if gamma is None and beta is None:
            return self._dummy(dtype), self._dummy(dtype), False
        C = None
        for t in (gamma, beta):
            if t is not None:
                C = int(t.shape[0])
        g = self._c(gamma) if gamma is not None else self.full((C,), 1, dtype)
        b = self._c(beta) if beta is not None else self.full((C,), 0, dtype)
        return g, b, True

    def _conformed(self, a, ref, name, ref_name):
        """``a`` as a C-contiguous device array of ``ref``'s dtype, once it is checked to have
        ``ref``'s shape (a ValueError naming both shapes otherwise)."""
        a = self._c(a)
        if tuple(a.shape) != tuple(ref.shape):
            raise ValueError(f"{name} shape {tuple(a.shape)} != {ref_name} shape "
                             f"{tuple(ref.shape)}")
        if np.dtype(a.dtype) != np.dtype(ref.dtype):
            a = self.astype(a, ref.dtype)
        return a

    def _bn_residual(self, residual, x):
        """``residual`` as a C-contiguous device array of x's shape and dtype (or None)."""
        if residual is None:
            return None
        return self._conformed(residual, x, "batch norm: residual", "input")

    def _bn_apply(self, x, scale, shift, relu=False, residual=None):
        """One pass: ``y = x * scale[c] + shift[c]`` (+ residual, then relu if asked)."""
        N, C, L = self._ncl(x.shape)
        y = self.empty(x.shape, x.dtype)
        n = N * C * L
        if n:
            res = self._dummy(x.dtype) if residual is None else self._flat(residual)
            self._launch1d(nk.bn_apply, n, self._flat(x), self._flat(y), scale, shift, n, C, L,
                           res, residual is not None, bool(relu))
        return y

    def batch_norm_train(self, x, gamma, beta, eps, relu=False, residual=None):
        """Batch statistics over all axes but 1; returns ``(y, mean, biased var, invstd)``,
        ``y = relu(bn(x) + residual)`` with the optional parts (see the base class)."""
        return self.batch_norm_train_tracked(x, gamma, beta, eps, None, None, 1.0, 0.0, 0.0,
                                             None, relu, residual)

    def batch_norm_train_tracked(self, x, gamma, beta, eps, running_mean, running_var, keep,
                                 take_mean, take_var, counter, relu=False, residual=None):
        """``batch_norm_train`` plus the running-statistics update and batch count (see the
        base class) in two kernels: the statistics kernel also computes the per-channel
        scale and shift, mixes the running buffers and counts, then one pass writes y (adding
        the residual and applying the relu on the way).  Running buffers of another dtype
        than x, or not C-contiguous device arrays, take the base class's separate updates."""
        x = self._c(x)
        N, C, L = self._ncl(x.shape)
        dt = x.dtype
        def usable(a, dtype):   # None, or a C-contiguous device array of dtype
            return a is None or (not isinstance(a, np.ndarray) and np.dtype(a.dtype) == dtype
                                 and a.is_c_contiguous())

        tracked = running_mean is not None or running_var is not None or counter is not None
        if tracked and (C == 0 or not (usable(running_mean, dt) and usable(running_var, dt)
                                       and usable(counter, np.int64))):
            return super().batch_norm_train_tracked(x, gamma, beta, eps, running_mean,
                                                    running_var, keep, take_mean, take_var,
                                                    counter, relu, residual)
        residual = self._bn_residual(residual, x)
        if C == 0:
            return (self.empty(x.shape, dt),) + tuple(self.empty((C,), dt) for _ in range(3))
        mean, var, invstd, scale, shift = (self.empty((C,), dt) for _ in range(5))
        g, b, affine = self._affine(gamma, beta, dt)
        dummy = self._dummy(dt)
        nk.bn_stats[min(C, 65535), red_block(N * L), self.stream](
            self._flat(x), mean, var, invstd, N, C, L, float(eps), g, b, affine, scale, shift,
            dummy if running_mean is None else self._flat(running_mean),
            dummy if running_var is None else self._flat(running_var),
            np_scalar(keep, dt), np_scalar(take_mean, dt), np_scalar(take_var, dt),
            running_mean is not None, running_var is not None,
            self._dummy(np.int64) if counter is None else self._flat(counter),
            counter is not None)
        return self._bn_apply(x, scale, shift, relu, residual), mean, var, invstd

    def batch_norm_eval(self, x, mean, var, gamma, beta, eps, relu=False, residual=None):
        """Batch norm with given (running) statistics, ``relu(bn(x) + residual)`` with the
        optional parts, in two kernels (per-channel scale and shift, then the output pass)."""
        x, mean, var = self._c(x), self._c(mean), self._c(var)
        residual = self._bn_residual(residual, x)
        N, C, L = self._ncl(x.shape)
        dt = x.dtype
        g, b, affine = self._affine(gamma, beta, dt)
        scale, shift = self.empty((C,), dt), self.empty((C,), dt)
        if C:
            self._launch1d(nk.bn_eval_params, C, mean, var, g, b, scale, shift, C, float(eps),
                           affine)
        return self._bn_apply(x, scale, shift, relu, residual)

    def _bn_backward(self, gy, y, x, gamma, mean, invstd, want_masked):
        """Both backward kernels; with ``y`` (not None) gy is masked by ``y > 0`` as it is
        read.  Returns ``(gx, ggamma, gbeta, gm)``, gm the masked gy when ``want_masked``."""
        gy, x, mean, invstd = self._c(gy), self._c(x), self._c(mean), self._c(invstd)
        masked = y is not None
        y = self._c(y) if masked else self._dummy(x.dtype)
        N, C, L = self._ncl(x.shape)
        dt = x.dtype
        gsum, gdot = self.empty((C,), dt), self.empty((C,), dt)
        gx = self.empty(x.shape, dt)
        want_gm = bool(masked and want_masked)
        gm = self.empty(x.shape, gy.dtype) if want_gm else None
        if C == 0:
            return gx, gdot, gsum, gm
        nk.bn_bwd_reduce[min(C, 65535), red_block(N * L), self.stream](
            self._flat(gy), self._flat(x), mean, invstd, gsum, gdot, N, C, L,
            self._flat(y), masked)
        affine = gamma is not None
        g = self._c(gamma) if affine else self._dummy(dt)
        n = N * C * L
        if n:
            self._launch1d(nk.bn_bwd_apply, n, self._flat(gy), self._flat(x), mean, invstd, g,
                           gsum, gdot, self._flat(gx), n, C, L, float(N * L), affine,
                           self._flat(y), masked,
                           self._flat(gm) if want_gm else self._dummy(gy.dtype), want_gm)
        return gx, gdot, gsum, gm

    def batch_norm_backward(self, gy, x, gamma, mean, invstd):
        """``(gx, ggamma, gbeta)`` of training-mode batch norm (two fused kernels)."""
        return self._bn_backward(gy, None, x, gamma, mean, invstd, False)[:3]

    def batch_norm_relu_backward(self, gy, y, x, gamma, mean, invstd, want_masked):
        """``(gx, ggamma, gbeta, gm)`` of ``y = relu(batch_norm_train(x) + residual)`` (see
        the base class) in the same two kernels as batch_norm_backward: both mask gy by
        ``y > 0`` as they read it, and the second also writes gm when ``want_masked``."""
        return self._bn_backward(gy, y, x, gamma, mean, invstd, want_masked)

    def lrn(self, x, size, alpha, beta, k):
        """Local response norm across channels; returns ``(y, scale)``."""
        x = self._c(x)
        N, C, L = self._ncl(x.shape)
        y, scale = self.empty(x.shape, x.dtype), self.empty(x.shape, x.dtype)
        n = N * C * L
        if n:
            self._launch1d(nk.lrn_fwd, n, self._flat(x), self._flat(y), self._flat(scale), n, C,
                           L, int(size), float(alpha), float(beta), float(k))
        return y, scale

    def lrn_backward(self, x, y, scale, gy, size, alpha, beta, k):
        """Gradient of local response norm."""
        x, y, scale, gy = self._c(x), self._c(y), self._c(scale), self._c(gy)
        N, C, L = self._ncl(x.shape)
        gx = self.empty(x.shape, x.dtype)
        n = N * C * L
        if n:
            self._launch1d(nk.lrn_bwd, n, self._flat(x), self._flat(y), self._flat(scale),
                           self._flat(gy), self._flat(gx), n, C, L, int(size), float(alpha),
                           float(beta))
        return gx

    def dropout_mask(self, shape, p, seed, dtype):
        """Inverted-dropout mask from a Philox4x32-10 stream keyed by ``seed`` (deterministic)."""
        shape = tuple(int(s) for s in shape)
        out = self.empty(shape, dtype)
        n = _prod(shape)
        if n:
            seed = int(seed) & 0xFFFFFFFFFFFFFFFF
            keep = 0.0 if p >= 1 else 1.0 / (1.0 - p)
            grid, block = grid1d(ceil_div(n, 4))
            nk.dropout_mask_kernel[grid, block, self.stream](
                self._flat(out), n, np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32),
                float(p), np_scalar(keep, dtype))
        return out

    # --- optimizers ------------------------------------------------------
    def sgd_step_(self, p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first):
        """One fused PyTorch SGD update of ``p`` (and ``buf``)."""
        g = self._as_dtype(self._c(g), np.dtype(p.dtype))
        dt = p.dtype
        n = _prod(p.shape)
        if n == 0:
            return
        has_buf = buf is not None
        kern = nk.sgd_kernel(has_buf, bool(nesterov), bool(first), weight_decay != 0)
        self._launch1d(kern, n, self._flat(p), self._flat(g),
                       self._flat(buf) if has_buf else self._dummy(dt), n, np_scalar(lr, dt),
                       np_scalar(momentum, dt), np_scalar(1.0 - dampening, dt),
                       np_scalar(weight_decay, dt))

    def adam_step_(self, p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
        """One fused PyTorch Adam (AdamW when ``decoupled``) update of ``p``, ``m``, ``v``."""
        g = self._as_dtype(self._c(g), np.dtype(p.dtype))
        dt = p.dtype
        n = _prod(p.shape)
        if n == 0:
            return
        bc1 = 1.0 - beta1 ** step
        bc2 = 1.0 - beta2 ** step
        kern = nk.adam_kernel(bool(decoupled), weight_decay != 0)
        self._launch1d(kern, n, self._flat(p), self._flat(g), self._flat(m), self._flat(v), n,
                       np_scalar(1.0 - lr * weight_decay, dt), np_scalar(weight_decay, dt),
                       np_scalar(beta1, dt), np_scalar(1.0 - beta1, dt), np_scalar(beta2, dt),
                       np_scalar(1.0 - beta2, dt), np_scalar(eps, dt), np_scalar(lr / bc1, dt),
                       np_scalar(math.sqrt(bc2), dt))

    def sum_of_squares(self, x):
        """Sum of squares of all elements (float64 accumulation), as a Python float."""
        x = self._c(x)
        if _prod(x.shape) == 0:
            return 0.0
        r = self._reduce(x, tuple(range(len(x.shape))), False, "sumsq", np.float64)
        return float(self.to_numpy(r).reshape(()))

    def all_finite(self, x):
        """True when no element is NaN or infinite (one reduction, one sync)."""
        x = self._c(x)
        if np.dtype(x.dtype).kind != "f" or _prod(x.shape) == 0:
            return True
        r = self._reduce(x, tuple(range(len(x.shape))), False, "nonfinite", np.int32)
        return int(self.to_numpy(r).reshape(())) == 0


def _nb(dtype):
    from numba import from_dtype

    return from_dtype(np.dtype(dtype))


__all__ = ["CUDABackend", "BLOCK"]
