"""``CPUBackend``: the backend interface on NumPy arrays.

Elementwise arithmetic uses NumPy (already one optimal pass); conv, pooling,
GEMM, softmax, norms, losses and optimizer updates call Numba kernels in the
sibling modules.  Kernels receive contiguous arrays (``_c`` makes them so).
"""

import importlib
import math

import numba
import numpy as np
import scipy.special

from ..autograd import references as _references
from ..backend import Backend
from . import gelu as gelu_kernels
from . import kernels, small_gemm, strided


def _c(x):
    return np.ascontiguousarray(x)


_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
    "pow": np.power, "maximum": np.maximum, "minimum": np.minimum,
}
_COMPARE = {
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
    "gt": np.greater, "ge": np.greater_equal,
}
_UNARY = {
    "neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
    "sigmoid": scipy.special.expit, "tanh": np.tanh, "abs": np.abs, "sign": np.sign,
    "erf": scipy.special.erf,
}
_ACT_GRAD = {"relu": kernels.relu_grad, "sigmoid": kernels.sigmoid_grad, "tanh": kernels.tanh_grad}


# 2-D GEMMs with fewer multiply-adds than this run on one BLAS thread; bigger ones are split
# between the Numba threads (kernels.gemm_threads).  Paired on the Zen 5 host (OpenBLAS without
# the machine's OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE), one thread against two: 0.80-0.82x up to
# 0.26M multiply-adds, 0.96-1.19x at 0.52M, 1.05-1.07x at 0.79-0.88M, 1.34-2.2x at 1.05M,
# 1.50-1.76x at 1.3M (LeNet's fc2), 1.55-1.75x at 6.1M (fc1) (BENCHMARKS_perf.md, change 142).
_SMALL_GEMM = 1 << 20
# Batched products with fewer multiply-adds than this (all matrices together) run as one
# np.matmul on one BLAS thread: below it kernels.batched_gemm was not faster (0.74-1.01x at
# 1M multiply-adds, change 142).
_SMALL_BATCHED = 1 << 23
# ReLU of at least this many elements runs in the (parallel) Numba kernel; NumPy's
# np.maximum is one thread.
_RELU_KERNEL_MIN = 1 << 16


def _single_blas():
    return _lazy("conv")._single_blas


_LAZY = {}


def _lazy(name):
    """The submodule ``minigrad.cpu.<name>``, imported on its first use, so that ``import
    minigrad`` does not import every kernel module.  After that a dictionary lookup: an import
    statement inside a method runs importlib's Python code on every call."""
    module = _LAZY.get(name)
    if module is None:
        module = importlib.import_module("." + name, __package__)
        _LAZY[name] = module
    return module


# Bigger GEMMs are split between the Numba threads, each on one BLAS thread
# (kernels.gemm_threads): OpenBLAS's own threads competed with the OpenMP workers that spin
# after every Numba parallel region (AlexNet-CIFAR train step, batch 128: 1.10x over
# OpenBLAS's threads, paired; isolated 1024^3 / 2048^3 matmuls 0.96x / 0.98x;
# BENCHMARKS_perf.md, change 102).
USE_GEMM_THREADS = True
USE_BATCHED_SMALL_GEMM = True
_NO_BIAS = {np.dtype(t).char: np.empty(0, dtype=t) for t in (np.float32, np.float64)}


def _threads_gemm_ok(a, b):
    """True when kernels.gemm_threads takes a @ b: 2-D float32 or float64 operands of one
    dtype (and USE_GEMM_THREADS)."""
    return USE_GEMM_THREADS and a.dtype == b.dtype and a.dtype.char in _NO_BIAS


# Sums over the leading axes of at least this many elements (a Linear layer's bias gradient, a
# broadcast bias's) run on all threads, accumulated in float64 (kernels.sum_rows); NumPy sums a
# leading axis on one thread in the array's dtype.  Bias gradients of the bench's transformer
# block (2048 tokens) by 256 / 768 / 1024 outputs, from memory: 127 / 280 / 320 us -> 60 / 140
# / 182 us, and float32 errors 20x smaller (BENCHMARKS_perf.md, change 165).
_PARALLEL_SUM_MIN = 1 << 16
# ...with at least this many sums (columns): fewer make each row's loop too short.
_PARALLEL_SUM_MIN_COLUMNS = 16


def _leading_axes(x, axes):
    """k when ``axes`` (an int, a tuple or None) names exactly x's first k axes, k < x.ndim;
    else 0."""
    if axes is None or x.ndim < 2:
        return 0
    t = tuple(sorted(a % x.ndim for a in (axes if isinstance(axes, tuple) else (axes,))))
    return len(t) if t == tuple(range(len(t))) and len(t) < x.ndim else 0


def _sums_rows_in_parallel(x, k):
    """True when x summed over its first k axes goes to kernels.sum_rows: a C-contiguous
    float32/float64 array of at least _PARALLEL_SUM_MIN elements, at least
    _PARALLEL_SUM_MIN_COLUMNS sums, two rows or more per thread, more than one thread."""
    nt = numba.get_num_threads()
    rows = math.prod(x.shape[:k])
    return (nt > 1 and x.dtype.char in _NO_BIAS and x.flags.c_contiguous
            and x.size >= _PARALLEL_SUM_MIN and x.size >= _PARALLEL_SUM_MIN_COLUMNS * rows
            and rows >= 2 * nt)


def _sum_leading(x, k, keepdims):
    """x summed over its first k axes (see _sums_rows_in_parallel) by kernels.sum_rows."""
    rows = math.prod(x.shape[:k])
    out = np.empty(x.shape[k:], dtype=x.dtype)
    kernels.sum_rows(x.reshape(-1), rows, out.size, out.reshape(-1), numba.get_num_threads())
    return out.reshape((1,) * k + x.shape[k:]) if keepdims else out


def _gemm_operand(x):
    """(C-contiguous data, transposed) for 2-D x: x itself, x.T (a transposed view of a
    C-contiguous array, so no copy), or a contiguous copy."""
    if x.flags.c_contiguous:
        return x, False
    if x.T.flags.c_contiguous:
        return x.T, True
    return np.ascontiguousarray(x), False


def _matrix_layout(r, c, sr, sc):
    """(transposed, ld) when an (r, c) matrix with element strides (sr, sc) is a row-major
    matrix with leading dimension ld (or, when ``transposed``, its transpose is), as BLAS
    reads them; else None (overlapping rows, as in a broadcast, or no unit stride)."""
    if (sc == 1 or c == 1) and (r == 1 or sr >= c):
        return False, (sr if r > 1 else c)
    if (sr == 1 or r == 1) and (c == 1 or sc >= r):
        return True, (sc if c > 1 else r)
    return None


def _batch_operand(x, batch):
    """(flat, transposed, ld, offsets) for an operand of a batched product: ``flat`` a 1-D
    view of x's memory from its first element, holding the matrix of product i at
    offsets[i] with leading dimension ld (transposed: x's matrices are the transposes of
    those row-major ones).  Strided and transposed views and broadcast batch entries are read
    in place (a broadcast entry repeats an offset); x is copied only when its matrices are
    not BLAS matrices (negative strides, rows that overlap or no unit stride)."""
    r, c = x.shape[-2:]
    item = x.itemsize
    layout = None
    if min(x.strides) >= 0 and not any(s % item for s in x.strides):
        st = [s // item for s in x.strides]
        layout = _matrix_layout(r, c, st[-2], st[-1])
    if layout is None:
        x = np.ascontiguousarray(x)
        st = [s // item for s in x.strides]
        layout = _matrix_layout(r, c, st[-2], st[-1])
    xb = x.shape[:-2]
    if len(xb) == 1 and xb == batch:
        offsets = np.arange(xb[0], dtype=np.int64) * st[0]
    else:
        off = np.zeros(xb, dtype=np.int64)
        for k, n in enumerate(xb):
            if n > 1:
                step = np.arange(n, dtype=np.int64) * st[k]
                off = off + step.reshape((n,) + (1,) * (len(xb) - k - 1))
        offsets = np.ascontiguousarray(np.broadcast_to(off, batch)).reshape(-1)
    if x.flags.c_contiguous:
        flat = x.reshape(-1)
    elif layout[0] and np.swapaxes(x, -1, -2).flags.c_contiguous:
        flat = np.swapaxes(x, -1, -2).reshape(-1)
    else:
        span = 1 + sum((n - 1) * s for n, s in zip(x.shape, st))
        flat = np.lib.stride_tricks.as_strided(x, shape=(span,), strides=(item,))
    return flat, layout[0], max(layout[1], 1), offsets


def _along_rows(rows, axis, x, *others):
    """``rows(x2, *others2, out=out2)`` on 2-D views with ``axis`` moved last (contiguous
    copies where needed; ``others`` shaped as x, cast to x's dtype); returns out with the axis
    back in place (the row kernels of softmax and log-softmax)."""
    # the last axis (the common case) skips moveaxis' Python overhead: nll_loss of
    # log_softmax forward + backward 1.20x faster on 128 x 10, 1.03x on 1024 x 1000
    last = axis in (-1, x.ndim - 1)

    def rows_of(a):
        return _c(a if last else np.moveaxis(a, axis, -1))

    xm = rows_of(x)
    c = xm.shape[-1]
    views = [rows_of(o).astype(xm.dtype, copy=False).reshape(-1, c) for o in others]
    out = np.empty_like(xm)
    rows(xm.reshape(-1, c), *views, out=out.reshape(-1, c))
    return out if last else np.moveaxis(out, -1, axis)


def _base_references_when_unshared():
    """What owns_memory's _references(base) reports when nothing but the view refers to
    its base (measured: interpreters count references differently)."""
    view = np.empty(2)[:1]
    base = view.base
    return _references(base)


_BASE_UNSHARED = _base_references_when_unshared()

_CHANNELS_LAST = (0, 2, 3, 1)


def _storage_order(x):
    """Axes that make x's storage C-contiguous: the identity for a C-contiguous array,
    (0, 2, 3, 1) for channels-last 4-D storage (conv / batch-norm outputs), else None."""
    if x.flags.c_contiguous:
        return tuple(range(x.ndim))
    if x.ndim == 4 and x.transpose(_CHANNELS_LAST).flags.c_contiguous:
        return _CHANNELS_LAST
    return None


def _common_order(a, b):
    """_storage_order of a when b is stored in the same order, else None."""
    order = _storage_order(a)
    return order if order is not None and order == _storage_order(b) else None


def _flat_map(kernel, order, *arrays):
    """``kernel(*flat inputs, flat out)`` over arrays stored in one order (``order`` from
    _storage_order): one pass in memory order, and the result keeps that storage."""
    views = [a.transpose(order) for a in arrays]
    out = np.empty(views[0].shape, dtype=arrays[0].dtype)
    kernel(*[v.reshape(-1) for v in views], out.reshape(-1))
    return out.transpose(np.argsort(order))


def _result_dtype(a):
    return a.dtype if a.dtype.kind == "f" else np.dtype(np.float32)


def _view_at(out, index):
    """out[index] when that is a view into out's memory, else None (a scalar, or a copy where
    the index holds a list NumPy treats as an index array)."""
    view = out[index]
    return view if isinstance(view, np.ndarray) and np.may_share_memory(view, out) else None


def _array_indexed(index):
    """True when ``index`` holds an integer or boolean array (NumPy's advanced indexing)."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, np.ndarray) for i in items)


def _one_per_row(shape, index):
    """For index == (arange(n), cols) into an (n, c) array with every col in [-c, c): cols
    as int64 in [0, c) (each row gets one entry, so an index_add is a plain write); else
    None."""
    if len(shape) != 2 or not isinstance(index, tuple) or len(index) != 2:
        return None
    rows, cols = index
    n, c = shape
    if not (isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray)
            and rows.shape == (n,) and cols.shape == (n,)
            and rows.dtype.kind in "iu" and cols.dtype.kind in "iu"):
        return None
    if n == 0 or c == 0 or not np.array_equal(rows, np.arange(n)):
        return None
    cols = cols.astype(np.int64)
    if cols.min() < -c or cols.max() >= c:
        return None           # numpy's path raises the IndexError
    return np.where(cols < 0, cols + c, cols)


class CPUBackend(Backend):
    """Kernels for device "cpu"."""

    name = "cpu"

    # --- storage -------------------------------------------------------
    def from_numpy(self, array):
        return np.asarray(array)

    def to_numpy(self, x):
        return np.asarray(x)

    def full(self, shape, value, dtype):
        return np.full(shape, value, dtype=dtype)

    def astype(self, x, dtype):
        return np.array(x, dtype=dtype, copy=True)

    def owns_memory(self, x):
        if type(x) is not np.ndarray or not x.flags.writeable:
            return False
        if x.flags.owndata:
            return True
        # a view (a reshape, say) of an array that nothing but the view refers to (NumPy
        # points .base at the array owning the memory, not at intermediate views)
        base = x.base
        return type(base) is np.ndarray and base.flags.owndata and \
            _references(base) <= _BASE_UNSHARED

    def copy_(self, dst, src):
        np.copyto(dst, src)

    def fill_(self, x, value):
        x.fill(value)

    def mix_into_(self, dst, keep, src, take):
        if tuple(np.shape(src)) != dst.shape:
            raise ValueError(f"mix_into_: src shape {tuple(np.shape(src))} != dst shape "
                             f"{dst.shape}")
        src = np.asarray(src).astype(dst.dtype, copy=False)
        np.multiply(dst, keep, out=dst)
        dst += take * src

    def add_into_(self, dst, src):
        if (type(dst) is not np.ndarray or type(src) is not np.ndarray
                or not dst.flags.writeable or dst.shape != src.shape or dst.dtype != src.dtype
                or dst.dtype not in (np.float32, np.float64) or np.may_share_memory(dst, src)):
            return False
        order = _common_order(dst, src)
        if dst.size >= _RELU_KERNEL_MIN and order is not None:
            d = dst.transpose(order).reshape(-1)
            kernels.add_flat(d, src.transpose(order).reshape(-1), d)
        else:
            np.add(dst, src, out=dst)
        return True

    # --- elementwise ---------------------------------------------------
    def unary(self, op, x):
        if op == "relu":
            if x.dtype in (np.float32, np.float64) and x.size >= _RELU_KERNEL_MIN:
                order = _storage_order(x)
                if order is not None:
                    return _flat_map(kernels.relu_fwd, order, x)
            return np.maximum(x, np.zeros((), x.dtype))
        with np.errstate(all="ignore"):
            return _UNARY[op](x)

    def binary(self, op, a, b):
        if (op == "add" and a.size >= _RELU_KERNEL_MIN and a.shape == b.shape
                and a.dtype == b.dtype and a.dtype in (np.float32, np.float64)):
            # gradient accumulation and residual adds: both cores (np.add is one thread),
            # when both operands share a dense storage order (NCHW or channels-last)
            order = _common_order(a, b)
            if order is not None:
                return _flat_map(kernels.add_flat, order, a, b)
        if op in _COMPARE:
            return _COMPARE[op](a, b).astype(a.dtype if a.dtype.kind != "b" else np.float32)
        with np.errstate(all="ignore"):
            return _BINARY[op](a, b)

    def scalar(self, op, x, s, reverse=False):
        if op in _COMPARE:
            out = _COMPARE[op](s, x) if reverse else _COMPARE[op](x, s)
            return out.astype(x.dtype if x.dtype.kind != "b" else np.float32)
        if (op == "mul" and x.size >= _RELU_KERNEL_MIN and x.dtype in (np.float32, np.float64)
                and (type(s) is float or (type(s) is int and abs(s) < 2 ** 53))):
            # a tensor scaled by a number (attention scores, loss scaling): both cores, as
            # NumPy's float32 product (s rounded to x's dtype first, NumPy 2's rule for a
            # Python number; np.multiply is one thread)
            order = _storage_order(x)
            if order is not None:
                with np.errstate(all="ignore"):
                    factor = x.dtype.type(s)
                return _flat_map(lambda v, out: kernels.scale_flat(v, factor, out), order, x)
        fn = _BINARY[op]
        with np.errstate(all="ignore"):
            out = fn(s, x) if reverse else fn(x, s)
        return np.asarray(out, dtype=np.result_type(x.dtype, out.dtype) if x.dtype.kind == "f" else out.dtype)

    def where(self, cond, a, b):
        return np.where(cond != 0, a, b)

    def gelu(self, x, approximate):
        if x.dtype.char not in _NO_BIAS:
            return super().gelu(x, approximate)
        order = _storage_order(x)
        if order is None:
            x, order = np.ascontiguousarray(x), tuple(range(x.ndim))
        kernel = gelu_kernels.gelu_tanh if approximate == "tanh" else gelu_kernels.gelu_erf
        return _flat_map(kernel, order, x)

    def gelu_backward(self, x, g, approximate):
        if x.dtype.char not in _NO_BIAS or g.shape != x.shape:
            return super().gelu_backward(x, g, approximate)
        g = g.astype(x.dtype, copy=False)
        order = _common_order(x, g)
        if order is None:
            x, g = np.ascontiguousarray(x), np.ascontiguousarray(g)
            order = tuple(range(x.ndim))
        kernel = (gelu_kernels.gelu_tanh_grad if approximate == "tanh"
                  else gelu_kernels.gelu_erf_grad)
        return _flat_map(kernel, order, x, g)

    def activation_grad(self, op, y, gy):
        if gy.shape == y.shape and gy.dtype == y.dtype:
            order = _common_order(y, gy)
            if order is not None:
                return _flat_map(_ACT_GRAD[op], order, y, gy)
        if (y.ndim == 4 and not y.flags.c_contiguous and gy.shape == y.shape
                and y.transpose(0, 2, 3, 1).flags.c_contiguous):
            # channels-last y, gy in another layout: keep y's storage, no copy of y
            yt = y.transpose(0, 2, 3, 1)
            if op == "relu" and gy.dtype == y.dtype:
                out = np.empty(yt.shape, dtype=y.dtype)
                kernels.relu_grad_cl_nchw(yt, gy, out)
                return out.transpose(0, 3, 1, 2)
            gt = np.ascontiguousarray(gy.transpose(0, 2, 3, 1), dtype=y.dtype)
            out = np.empty(yt.shape, dtype=y.dtype)
            _ACT_GRAD[op](yt.reshape(-1), gt.reshape(-1), out.reshape(-1))
            return out.transpose(0, 3, 1, 2)
        y, gy = _c(y), _c(np.broadcast_to(gy, y.shape)).astype(y.dtype, copy=False)
        out = np.empty_like(y)
        _ACT_GRAD[op](y.reshape(-1), gy.reshape(-1), out.reshape(-1))
        return out

    # --- reductions ----------------------------------------------------
    def sum(self, x, axes, keepdims):
        lead = _leading_axes(x, axes)
        if lead and _sums_rows_in_parallel(x, lead):
            return _sum_leading(x, lead, keepdims)
        return np.asarray(np.sum(x, axis=axes, keepdims=keepdims))

    def max(self, x, axes, keepdims):
        return np.asarray(np.max(x, axis=axes, keepdims=keepdims))

    def sum_to_shape(self, x, shape):
        lead = x.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1)
        out = self.sum(x, axes, True) if axes else x
        return np.asarray(out).reshape(shape)

    # --- shape ---------------------------------------------------------
    def reshape(self, x, shape):
        return np.reshape(x, shape)

    def transpose(self, x, axes):
        return np.transpose(x, axes)

    def broadcast_to(self, x, shape):
        return np.broadcast_to(x, shape)

    def getitem(self, x, index):
        return np.asarray(x[index])

    def index_add(self, shape, index, g):
        cols = _one_per_row(shape, index)
        if cols is not None and g.dtype in (np.float32, np.float64):
            vals = np.ascontiguousarray(np.broadcast_to(g, cols.shape))
            out = np.empty(shape, dtype=g.dtype)
            kernels.one_per_row(cols, vals, out)
            return out
        if _array_indexed(index):
            out = np.zeros(shape, dtype=g.dtype)
            np.add.at(out, index, g)
            return out
        out = np.empty(shape, dtype=g.dtype)
        if not strided.update(out, np.zeros((), dtype=g.dtype), False):
            out[...] = 0
        view = _view_at(out, index)
        if view is None or not strided.update(view, g, False):
            out[index] = g
        return out

    def index_add_into(self, base, index, g, in_place):
        """``base`` plus g at ``index`` (repeated array indices add up, as in index_add):
        added into base itself when ``in_place``, else into a copy of it."""
        out = base if in_place else base.copy()
        if _array_indexed(index):
            np.add.at(out, index, g)
            return out
        view = _view_at(out, index)
        if view is None or not strided.update(view, g, True):
            out[index] += g
        return out

    def pad(self, x, pads, value):
        return np.pad(x, pads, mode="constant", constant_values=value)

    def concatenate(self, xs, axis):
        return np.concatenate(xs, axis=axis)

    # --- linear algebra ------------------------------------------------
    def matmul(self, a, b):
        dtype = np.result_type(a.dtype, b.dtype)
        if dtype.char not in _NO_BIAS:
            return np.matmul(a, b)
        a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
        if a.ndim == 2 and b.ndim == 2:
            if a.shape[0] * a.shape[1] * b.shape[1] < _SMALL_GEMM:
                with _single_blas():
                    return kernels.gemm(_c(a), _c(b))
            if _threads_gemm_ok(a, b):
                (ad, ta), (bd, tb) = _gemm_operand(a), _gemm_operand(b)
                out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
                with _single_blas():
                    kernels.gemm_threads(ad, ta, bd, tb, _NO_BIAS[a.dtype.char], False, out,
                                         numba.get_num_threads())
                return out
            return kernels.gemm(_c(a), _c(b))
        return self._batched_matmul(a, b)

    def _batched_matmul(self, a, b):
        """a @ b with batch dimensions (broadcast as NumPy does); a and b float32 or float64
        of one dtype."""
        batch = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
        dtype = a.dtype
        M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
        count = math.prod(batch)
        if math.prod(b.shape[:-2]) == 1 and math.prod(a.shape[:-2]) == count \
                and a.flags.c_contiguous:
            # one 2-D product over all of a's rows (a linear map applied to a batch)
            return self.matmul(a.reshape(-1, K), b.reshape(K, N)).reshape(batch + (M, N))
        nt = numba.get_num_threads()
        if count * M * N * K < _SMALL_BATCHED or nt == 1:
            with _single_blas():
                return np.matmul(a, b)
        out = np.empty(batch + (M, N), dtype=dtype)
        if out.size == 0 or K == 0:
            out[...] = 0
            return out
        (af, ta, lda, ao), (bf, tb, ldb, bo) = _batch_operand(a, batch), _batch_operand(b, batch)
        small = USE_BATCHED_SMALL_GEMM and dtype == np.float32 and small_gemm.enabled() and \
            small_gemm.batched_preferred(ta, tb, M, N, K)
        # whole products per thread when they share out evenly, else row blocks of each
        splits = 1 if count % nt == 0 or count >= 8 * nt else min(nt, M)
        with _single_blas():
            kernels.batched_gemm(af, ta, ao, lda, bf, tb, bo, ldb, K, out.reshape(count, M, N),
                                 splits, small)
        return out

    def linear(self, x, w, b):
        dtype = np.result_type(x.dtype, w.dtype)
        if dtype.char not in _NO_BIAS:
            return np.matmul(x, w.T) + (b if b is not None else 0)
        x, w = x.astype(dtype, copy=False), w.astype(dtype, copy=False)
        b = b.astype(dtype, copy=False) if b is not None else None
        x = _c(x)
        wt = w.T if w.flags.c_contiguous else _c(w).T
        bias = b if b is not None else np.empty(0, dtype=x.dtype)
        if x.shape[0] * x.shape[1] * wt.shape[1] < _SMALL_GEMM:
            with _single_blas():
                return kernels.linear_forward(x, wt, bias, b is not None)
        if _threads_gemm_ok(x, w) and (b is None or (b.dtype == x.dtype and b.ndim == 1)):
            out = np.empty((x.shape[0], w.shape[0]), dtype=x.dtype)
            bias = _c(b) if b is not None else _NO_BIAS[x.dtype.char]
            with _single_blas():
                kernels.gemm_threads(x, False, _c(w), True, bias, b is not None, out,
                                     numba.get_num_threads())
            return out
        return kernels.linear_forward(x, wt, bias, b is not None)

    # --- convolution and pooling ----------------------------------------
    def conv2d(self, x, w, b, stride, padding, dilation):
        conv = _lazy("conv")

        return conv.conv2d(x, w, b, stride, padding, dilation)

    def conv2d_backward(self, x, w, gy, stride, padding, dilation, need_x, need_w, need_b):
        conv = _lazy("conv")

        return conv.conv2d_backward(x, w, gy, stride, padding, dilation, need_x, need_w, need_b)

    # CPU-only extension used by ops.conv.Conv2d when present: the forward hands back the
    # GEMM layout of the weights and, when the weights need a gradient, the channels-last
    # (padded) copy of x it made; the backward reuses both instead of redoing them.
    def conv2d_saving(self, x, w, b, stride, padding, dilation, keep_x):
        conv = _lazy("conv")

        return conv.conv2d_saving(x, w, b, stride, padding, dilation, keep_x)

    def conv2d_backward_saved(self, saved, x, w, gy, stride, padding, dilation, need_x, need_w,
                              need_b, gx_addend=None, addend_writable=False):
        """conv2d_backward reusing what conv2d_saving kept; with ``gx_addend``, gx is dX
        plus that array (added while dX is copied out where the path allows; with
        ``addend_writable`` possibly into gx_addend itself, which is then returned)."""
        conv = _lazy("conv")

        return conv.conv2d_backward(x, w, gy, stride, padding, dilation, need_x, need_w, need_b,
                                    saved=saved, gx_addend=gx_addend,
                                    addend_writable=addend_writable)

    # Optional backend method (the CUDA backend has it too), used by ops.conv.conv2d when
    # present: groups equal to the input channels, computed plane by plane instead of one
    # convolution per channel.
    def depthwise_conv2d(self, x, w, b, stride, padding, dilation):
        """Depthwise convolution of x (N, C, H, W) with w (K, 1, R, S), K a multiple of C."""
        depthwise = _lazy("depthwise")

        return depthwise.conv2d(x, w, b, stride, padding, dilation)

    def depthwise_conv2d_backward(self, x, w, gy, stride, padding, dilation, need_x, need_w,
                                  need_b, gx_addend=None, addend_writable=False):
        """Gradients ``(gx, gw, gb)`` of depthwise_conv2d; entries not needed are None.  With
        ``gx_addend``, gx includes it (added during dX's copy-out; in place when
        ``addend_writable``)."""
        depthwise = _lazy("depthwise")

        return depthwise.conv2d_backward(x, w, gy, stride, padding, dilation, need_x, need_w,
                                         need_b, gx_addend, addend_writable)

    def max_pool2d(self, x, kernel, stride, padding):
        pool = _lazy("pool")

        return pool.max_pool2d(x, kernel, stride, padding)

    def max_pool2d_backward(self, gy, argmax, x_shape):
        pool = _lazy("pool")

        return pool.max_pool2d_backward(gy, argmax, x_shape)

    def avg_pool2d(self, x, kernel, stride, padding, count_include_pad):
        pool = _lazy("pool")

        return pool.avg_pool2d(x, kernel, stride, padding, count_include_pad)

    def avg_pool2d_backward(self, gy, x_shape, kernel, stride, padding, count_include_pad):
        pool = _lazy("pool")

        return pool.avg_pool2d_backward(gy, x_shape, kernel, stride, padding, count_include_pad)

    # --- fused layers ---------------------------------------------------
    def log_softmax(self, x, axis):
        loss = _lazy("loss")

        def rows(x2, out):
            if x2.dtype == np.float32 and x2.size:
                loss.log_softmax_f32(x2, loss.threads_for(x2), out)
            else:
                kernels.log_softmax_rows(x2, out)
        return _along_rows(rows, axis, x)

    def log_softmax_backward(self, y, gy, axis, addend=None):
        loss = _lazy("loss")

        def rows(y2, g2, *a2, out):
            a2 = a2[0] if a2 else np.empty((0, 0), dtype=y2.dtype)
            if y2.dtype == np.float32 and y2.size:
                loss.log_softmax_backward_f32(y2, g2, a2, loss.threads_for(y2), out)
            else:
                kernels.log_softmax_rows_backward(y2, g2, a2, out)
        return _along_rows(rows, axis, y, gy, *(() if addend is None else (addend,)))

    def softmax(self, x, axis):
        if x.dtype != np.float32 or x.size == 0:
            return super().softmax(x, axis)
        loss = _lazy("loss")

        return _along_rows(lambda x2, out: loss.softmax_f32(x2, loss.threads_for(x2), out),
                           axis, x)

    def softmax_backward(self, y, gy, axis):
        if y.dtype.char not in _NO_BIAS or y.size == 0:
            return super().softmax_backward(y, gy, axis)
        loss = _lazy("loss")

        return _along_rows(
            lambda y2, g2, out: loss.softmax_backward_rows(y2, g2, loss.threads_for(y2), out),
            axis, y, gy)

    def softmax_cross_entropy(self, logits, labels, label_smoothing):
        loss = _lazy("loss")

        return loss.softmax_cross_entropy(logits, labels, label_smoothing)

    def softmax_cross_entropy_backward(self, probs, labels, label_smoothing, gloss):
        loss = _lazy("loss")

        return loss.softmax_cross_entropy_backward(probs, labels, label_smoothing, gloss)

    def log_softmax_nll_backward(self, logp, labels, gloss, addend=None, addend_writable=False):
        loss = _lazy("loss")

        return loss.log_softmax_nll_backward(logp, labels, gloss, addend, addend_writable)

    def layer_norm(self, x, weight, bias, eps):
        if x.dtype.char not in _NO_BIAS:
            return super().layer_norm(x, weight, bias, eps)
        norm = _lazy("norm")

        return norm.layer_norm(x, weight, bias, eps)

    def layer_norm_backward(self, g, x, weight, mean, rstd):
        if x.dtype.char not in _NO_BIAS:
            return super().layer_norm_backward(g, x, weight, mean, rstd)
        norm = _lazy("norm")

        return norm.layer_norm_backward(g, x, weight, mean, rstd)

    def batch_norm_train(self, x, gamma, beta, eps, relu=False, residual=None):
        norm = _lazy("norm")

        return norm.batch_norm_train(x, gamma, beta, eps, relu, residual)

    def batch_norm_eval(self, x, mean, var, gamma, beta, eps, relu=False, residual=None):
        norm = _lazy("norm")

        return norm.batch_norm_eval(x, mean, var, gamma, beta, eps, relu, residual)

    def batch_norm_backward(self, gy, x, gamma, mean, invstd):
        norm = _lazy("norm")

        return norm.batch_norm_backward(gy, x, gamma, mean, invstd)

    def batch_norm_relu_backward(self, gy, y, x, gamma, mean, invstd, want_masked):
        norm = _lazy("norm")

        return norm.batch_norm_relu_backward(gy, y, x, gamma, mean, invstd, want_masked)

    def lrn(self, x, size, alpha, beta, k):
        norm = _lazy("norm")

        return norm.lrn(x, size, alpha, beta, k)

    def lrn_backward(self, x, y, scale, gy, size, alpha, beta, k):
        norm = _lazy("norm")

        return norm.lrn_backward(x, y, scale, gy, size, alpha, beta, k)

    def dropout_mask(self, shape, p, seed, dtype):
        random = _lazy("random")

        return random.dropout_mask(shape, p, seed, dtype)

    # --- optimizers ------------------------------------------------------
    def sgd_step_(self, p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first):
        optim = _lazy("optim")

        optim.sgd_step_(p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first)

    def adam_step_(self, p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
        optim = _lazy("optim")

        optim.adam_step_(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled)

    def sum_of_squares(self, x):
        flat = x.reshape(-1)
        return float(np.dot(flat, flat)) if x.flags.c_contiguous else float(np.sum(np.square(x)))

    def all_finite(self, x):
        return bool(np.isfinite(x).all())
