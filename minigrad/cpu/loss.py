"""CPU kernels for the fused softmax cross-entropy (one pass forward, one backward) and the
float32 log-softmax and softmax, which share the vectorised exp and the row maximum."""

import numpy as np
import numba
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import pjit
from .bitcast import float32_from_bits
from .conv3x3_rows import _loop, _vec_ptr


@njit(cache=True, inline="always")
def _smoothed(nll, lse, sx, c, eps):
    """A row's loss from its NLL, its logsumexp and the sum sx of its c logits, with label
    smoothing eps: (1 - eps) * nll + eps * (lse - sx / c), the second term the mean over
    classes of -log p_j.  Without smoothing the loss is nll alone: a -inf logit (a masked
    class) makes that term +inf, and 0 * inf would turn the loss NaN (PyTorch's is finite)."""
    if eps == 0.0:
        return nll
    return (1.0 - eps) * nll + eps * (lse - sx / c)


@pjit()
def _sce(x, labels, eps, loss, probs):
    n, c = x.shape
    for i in prange(n):
        m = x[i, 0]
        for j in range(1, c):
            if x[i, j] > m:
                m = x[i, j]
        s = 0.0
        sx = 0.0
        for j in range(c):
            e = np.exp(np.float64(x[i, j]) - m)
            probs[i, j] = e
            s += e
            sx += x[i, j]
        lse = m + np.log(s)
        inv = 1.0 / s
        for j in range(c):
            probs[i, j] = probs[i, j] * inv
        nll = lse - x[i, labels[i]]
        loss[i] = _smoothed(nll, lse, sx, c, eps)


# float32 exp without libm: exp(d) = 2^n * e^r, n = round(d / ln2), r = d - n*ln2 (two-part
# ln2), e^r by its degree-7 Taylor polynomial (|r| <= ln2/2: truncation error < 6e-9
# relative), 2^n assembled in the exponent bits of a float32 (a bit cast in registers, so
# the exp is computed in the loop that uses it).  Plain arithmetic, so LLVM vectorises it;
# Numba's np.exp is one scalar libm call per element (no SVML here).
# d = x - max <= 0; d below -87 gives 0 (exp underflows there; -inf entries, e.g. masked
# attention scores, must give exactly 0), computed on a clamped d that keeps the exponent
# bits valid.
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125
_LN2_LO = 1.4286068203094172e-06


@njit(cache=True, fastmath={"contract", "nsz", "arcp"}, inline="always")
def _exp_f32(d):
    """exp(d) for a float32 d <= 0 (vectorises inside a loop)."""
    under = d < np.float32(-87.0)
    if under:
        d = np.float32(-87.0)
    # round(d / ln2) for d <= 0 without a floor call: truncation of a positive value
    ni = -np.int32(np.float32(0.5) - d * np.float32(_LOG2E))
    nf = np.float32(ni)
    r = d - nf * np.float32(_LN2_HI)
    r = r - nf * np.float32(_LN2_LO)
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    if under:
        p = np.float32(0.0)
    return p * float32_from_bits((ni + np.int32(127)) << np.int32(23))


# Row sums of exps are float32 within blocks of SUM_BLOCK elements, float64 across blocks: a
# float64 accumulator converts every float32 exp (two conversions and two adds per 16 lanes),
# one float32 sum over a whole row loses precision on long rows.  log_softmax forward on
# 1024 x 1000, one thread: 0.62 -> 0.55 ms (BENCHMARKS_perf.md, change 130).
SUM_BLOCK = 256


@njit(cache=True, fastmath={"reassoc", "contract", "nsz"}, inline="always")
def _exp_row_sum(xr, m, out):
    """out[j] = exp(xr[j] - m) for a float32 row; returns the sum (float32 within blocks of
    SUM_BLOCK, float64 across them; ``reassoc`` lets the blocks vectorise)."""
    s = 0.0
    for j0 in range(0, xr.size, SUM_BLOCK):
        # views indexed from 0: an index j0 + j keeps Numba's negative-index check, which
        # stops LLVM from vectorising the loop
        src = xr[j0:j0 + SUM_BLOCK]
        dst = out[j0:j0 + SUM_BLOCK]
        b = np.float32(0.0)
        for j in range(src.size):
            e = _exp_f32(np.float32(src[j] - m))
            dst[j] = e
            b += e
        s += b
    return s


@njit(cache=True, fastmath={"reassoc", "contract", "nsz"}, inline="always")
def _row_sum(xr):
    """The sum of a float32 row, summed as in _exp_row_sum."""
    s = 0.0
    for j0 in range(0, xr.size, SUM_BLOCK):
        src = xr[j0:j0 + SUM_BLOCK]
        b = np.float32(0.0)
        for j in range(src.size):
            b += src[j]
        s += b
    return s


@intrinsic
def _max_vectors_f32(typingctx, a, n):
    """The maximum of a[:n - n % 16] (a C-contiguous float32 array, n >= 16) through one
    16-lane vector of running maxima (llvm.maxnum) and a final lane reduction."""
    if not (isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim == 1
            and a.layout == "C"):
        return None
    sig = types.float32(a, types.intp)

    def codegen(context, builder, signature, args):
        arr, n = args
        data = context.make_array(signature.args[0])(context, builder, arr).data
        vt = ir.VectorType(ir.FloatType(), 16)
        i64 = ir.IntType(64)
        vmax = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt]),
                                              "llvm.maxnum.v16f32")
        first = builder.load(_vec_ptr(builder, data, ir.Constant(i64, 0), vt), align=4)
        count = builder.sub(builder.sdiv(n, ir.Constant(i64, 16)), ir.Constant(i64, 1))
        i, (acc,), close = _loop(builder, count, [first])
        off = builder.mul(builder.add(i, ir.Constant(i64, 1)), ir.Constant(i64, 16))
        nxt = builder.call(vmax, [acc, builder.load(_vec_ptr(builder, data, off, vt), align=4)])
        acc, = close([nxt])
        reduce = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.FloatType(), [vt]), "llvm.vector.reduce.fmax.v16f32")
        return builder.call(reduce, [acc])

    return sig, codegen


@njit(cache=True, fastmath={"nnan", "reassoc"}, inline="always")
def _row_max(xr):
    """Maximum of a C-contiguous float32 row.  LLVM vectorises no max reduction written in
    Numba (a running maximum is a chain of dependent compares, ~3 cycles an element); from 16
    elements on, _max_vectors_f32 keeps 16 running maxima in one vector: 1024 x 1000, one
    thread, 0.18 -> 0.11 ms (eight scalar running maxima before; BENCHMARKS_perf.md, change
    130).  A NaN in the row makes the row's loss and probabilities NaN whatever this
    returns: the exp pass below is NaN-aware."""
    c = xr.size
    m = xr[0]
    start = 0
    if c >= 16:
        m = _max_vectors_f32(xr, c)
        start = c - c % 16
    for j in range(start, c):
        v = xr[j]
        m = v if v > m else m
    return m


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _sce_f32(x, labels, eps, nt, loss, probs):
    """``_sce`` for float32 logits with the vectorised exp; rows split in nt blocks."""
    n, c = x.shape
    chunk = (n + nt - 1) // nt
    for t in prange(nt):
        for i in range(t * chunk, min(n, (t + 1) * chunk)):
            xr = x[i]
            m = _row_max(xr)
            sx = _row_sum(xr) if eps != 0.0 else 0.0    # only label smoothing reads it
            pr = probs[i]
            s = _exp_row_sum(xr, m, pr)
            inv = np.float32(1.0 / s)
            for j in range(c):
                pr[j] = pr[j] * inv
            lse = np.float64(m) + np.log(s)
            nll = lse - x[i, labels[i]]
            loss[i] = _smoothed(nll, lse, sx, c, eps)


@pjit()
def _sce_backward(probs, labels, eps, gloss, gx):
    n, c = probs.shape
    off = eps / c
    for i in prange(n):
        g = gloss[i]
        for j in range(c):
            gx[i, j] = g * (probs[i, j] - off)
        gx[i, labels[i]] -= g * (1.0 - eps)


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def log_softmax_f32(x, nt, out):
    """out[i] = x[i] - logsumexp(x[i]) for float32 rows (vectorised exp, blocked sum);
    rows split in nt blocks.  A NaN or +inf in a row makes that row NaN, as the float64
    kernel (``kernels.log_softmax_rows``) does."""
    n, c = x.shape
    chunk = (n + nt - 1) // nt
    for t in prange(nt):
        for i in range(t * chunk, min(n, (t + 1) * chunk)):
            xr = x[i]
            m = _row_max(xr)
            orow = out[i]
            # the exps go to the output row, which the next loop overwrites (as fast as a
            # sum that stores nothing, in L1)
            s = _exp_row_sum(xr, m, orow)
            lse = np.float32(np.float64(m) + np.log(s))
            for j in range(c):
                orow[j] = xr[j] - lse


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def log_softmax_backward_f32(y, g, add, nt, out):
    """out[i] = g[i] - exp(y[i]) * sum(g[i]) (+ add[i] unless add is empty) for float32
    rows (y: the log-softmax output)."""
    n, c = y.shape
    chunk = (n + nt - 1) // nt
    for t in prange(nt):
        for i in range(t * chunk, min(n, (t + 1) * chunk)):
            gr = g[i]
            sgf = np.float32(_row_sum(gr))
            yr = y[i]
            orow = out[i]
            if add.size:
                arow = add[i]
                for j in range(c):
                    orow[j] = gr[j] - _exp_f32(yr[j]) * sgf + arow[j]
            else:
                for j in range(c):
                    orow[j] = gr[j] - _exp_f32(yr[j]) * sgf


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def log_softmax_nll_backward_f32(logp, labels, gloss, add, accumulate, nt, out):
    """out[i] = gloss[i] * (exp(logp[i]) - onehot(labels[i])) for float32 rows of
    log-probabilities (every entry <= 0, as log_softmax gives), plus add[i] unless add is
    empty, or added into out itself with ``accumulate``."""
    n, c = logp.shape
    chunk = (n + nt - 1) // nt
    for t in prange(nt):
        for i in range(t * chunk, min(n, (t + 1) * chunk)):
            g = np.float32(gloss[i])
            lr = logp[i]
            orow = out[i]
            # in place as ``+=``: written as out = ... + add with add the same array, the
            # loop's overlap check failed at run time and its scalar copy ran (14x slower)
            if accumulate:
                for j in range(c):
                    orow[j] += g * _exp_f32(lr[j])
            elif add.size:
                arow = add[i]
                for j in range(c):
                    orow[j] = g * _exp_f32(lr[j]) + arow[j]
            else:
                for j in range(c):
                    orow[j] = g * _exp_f32(lr[j])
            orow[labels[i]] -= g


@pjit(size_arg=0)
def _log_softmax_nll_backward(logp, labels, gloss, add, accumulate, out):
    n, c = logp.shape
    for i in prange(n):
        g = gloss[i]
        for j in range(c):
            v = g * np.exp(logp[i, j])
            if accumulate:
                out[i, j] += v
            elif add.size:
                out[i, j] = v + add[i, j]
            else:
                out[i, j] = v
        out[i, labels[i]] -= g


def log_softmax_nll_backward(logp, labels, gloss, addend=None, addend_writable=False):
    """``gloss[:, None] * (exp(logp) - onehot(labels))`` (+ addend) for (N, C) log-probabilities:
    the gradient of the NLL of log_softmax(x) with respect to x (see ops.loss.LogSoftmaxNLL).
    A C-contiguous addend of logp's dtype is updated in place and returned when
    ``addend_writable``; otherwise the result is a new array."""
    p = np.ascontiguousarray(logp)
    if p.dtype not in (np.float32, np.float64):
        p = p.astype(np.float32)
    y = np.ascontiguousarray(labels, dtype=np.int64)
    g = np.ascontiguousarray(np.broadcast_to(gloss, (p.shape[0],)), dtype=p.dtype)
    add = np.empty((0, 0), dtype=p.dtype)
    accumulate = (addend is not None and addend_writable and addend.dtype == p.dtype
                  and addend.flags.c_contiguous and addend.shape == p.shape)
    if accumulate:
        out = addend
    else:
        out = np.empty_like(p)
        if addend is not None:
            add = np.ascontiguousarray(addend, dtype=p.dtype)
    if p.size == 0:
        if add.size:
            out[...] = add
        return out
    if p.dtype == np.float32:
        log_softmax_nll_backward_f32(p, y, g, add, accumulate, threads_for(p), out)
    else:
        _log_softmax_nll_backward(p, y, g, add, accumulate, out)
    return out


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def softmax_f32(x, nt, out):
    """out[i] = exp(x[i] - max) / sum(exp(x[i] - max)) for float32 rows (vectorised exp,
    blocked sum); rows split in nt blocks.  NaN or +inf in a row makes it NaN, as
    log_softmax_f32 does."""
    n, c = x.shape
    chunk = (n + nt - 1) // nt
    for t in prange(nt):
        for i in range(t * chunk, min(n, (t + 1) * chunk)):
            xr = x[i]
            orow = out[i]
            s = _exp_row_sum(xr, _row_max(xr), orow)
            inv = np.float32(1.0 / s)
            for j in range(c):
                orow[j] *= inv


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def softmax_backward_rows(y, g, nt, out):
    """out[i] = y[i] * (g[i] - sum(g[i] * y[i])): the gradient of softmax along rows, given
    its output y (float sum)."""
    n, c = y.shape
    chunk = (n + nt - 1) // nt
    for t in prange(nt):
        for i in range(t * chunk, min(n, (t + 1) * chunk)):
            yr = y[i]
            gr = g[i]
            d = 0.0
            for j in range(c):
                d += np.float64(gr[j]) * yr[j]
            orow = out[i]
            for j in range(c):
                orow[j] = yr[j] * (gr[j] - d)


def threads_for(x):
    """Row blocks for the row kernels: one per thread, fewer for small inputs."""
    return min(numba.get_num_threads(), max(1, x.size >> 15))


def softmax_cross_entropy(logits, labels, label_smoothing):
    """Per-sample loss of logits (N, C) against int labels (N,); returns ``(loss, probs)``.

    ``loss_i = (1 - e) * (-log p_{i,y_i}) + e / C * sum_j(-log p_ij)`` as PyTorch's
    ``cross_entropy(..., reduction="none", label_smoothing=e)``.
    """
    x = np.ascontiguousarray(logits)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    y = np.ascontiguousarray(labels, dtype=np.int64)
    loss = np.empty(x.shape[0], x.dtype)
    probs = np.empty_like(x)
    if x.dtype == np.float32 and x.shape[1] > 0:
        _sce_f32(x, y, float(label_smoothing), threads_for(x), loss, probs)
    else:
        _sce(x, y, float(label_smoothing), loss, probs)
    return loss, probs


def softmax_cross_entropy_backward(probs, labels, label_smoothing, gloss):
    """Gradient w.r.t. the logits: ``gloss_i * (p_ij - (1-e)[j == y_i] - e/C)``."""
    p = np.ascontiguousarray(probs)
    y = np.ascontiguousarray(labels, dtype=np.int64)
    g = np.ascontiguousarray(np.broadcast_to(gloss, (p.shape[0],)), dtype=p.dtype)
    gx = np.empty_like(p)
    _sce_backward(p, y, float(label_smoothing), g, gx)
    return gx
