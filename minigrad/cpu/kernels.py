"""Small fused Numba kernels for the CPU backend: activation gradients, log-softmax, GEMM calls."""

import numpy as np
from numba import njit, prange

from ._jit import pjit
from .blas import gemm_rm_select, gemm_rm_whole


@pjit()
def relu_fwd(x, out):
    """out = max(x, 0) with NaN kept (as np.maximum); flat contiguous arrays."""
    for i in prange(x.size):
        v = x[i]
        out[i] = v if (v > 0 or v != v) else 0.0


@pjit()
def add_flat(a, b, out):
    """out = a + b (flat contiguous arrays of one dtype)."""
    for i in prange(a.size):
        out[i] = a[i] + b[i]


@pjit()
def scale_flat(x, s, out):
    """out = x * s (flat contiguous arrays of one dtype, s a scalar of that dtype)."""
    for i in prange(x.size):
        out[i] = x[i] * s


@pjit()
def sum_rows(a, rows, cols, out, nt):
    """out[j] = sum_i a[i*cols + j]: the column sums of a row-major (rows, cols) matrix given
    flat, nt bands of rows summed in parallel in float64, then the bands in order (so the
    result depends on nt only); conv bias gradients and the CPU backend's sums over leading
    axes.

    Each thread sums into a fresh array, which LLVM knows aliases nothing, so the row loop
    vectorises (3.4-5.3x faster than summing into rows of ``part``: BENCHMARKS_perf.md,
    change 76)."""
    part = np.zeros((nt, cols), np.float64)
    chunk = (rows + nt - 1) // nt
    for t in prange(nt):
        acc = np.zeros(cols, np.float64)
        for i in range(t * chunk, min(rows, (t + 1) * chunk)):
            row = a[i * cols:(i + 1) * cols]
            for j in range(cols):
                acc[j] += row[j]
        # an element loop, not part[t] = acc: Numba compiles an array assignment with its
        # shape-mismatch error, whose message formatting took 3.7 s of this kernel's 6.0 s
        # cold compile (BENCHMARKS_perf.md, change 83)
        for j in range(cols):
            part[t, j] = acc[j]
    for j in range(cols):
        s = 0.0
        for t in range(nt):
            s += part[t, j]
        out[j] = s


@pjit(fastmath=True)
def relu_grad(y, g, out):
    """out = g where y > 0 else 0 (flat contiguous arrays)."""
    for i in prange(y.size):
        out[i] = g[i] if y[i] > 0 else 0.0


@pjit()
def relu_grad_cl_nchw(yt, g, out):
    """out[n,h,w,c] = g[n,c,h,w] where yt[n,h,w,c] > 0 else 0: yt and out dense
    channels-last (N, H, W, C), g any strides (N, C, H, W); no transposing copy of g."""
    N, H, W, C = yt.shape
    for t in prange(N * H):
        n = t // H
        h = t - n * H
        for w in range(W):
            for c in range(C):
                out[n, h, w, c] = g[n, c, h, w] if yt[n, h, w, c] > 0 else 0.0


@pjit(fastmath=True)
def sigmoid_grad(y, g, out):
    """out = g * y * (1 - y)."""
    for i in prange(y.size):
        out[i] = g[i] * y[i] * (1.0 - y[i])


@pjit(fastmath=True)
def tanh_grad(y, g, out):
    """out = g * (1 - y * y)."""
    for i in prange(y.size):
        out[i] = g[i] * (1.0 - y[i] * y[i])


@pjit()
def log_softmax_rows(x, out):
    """Row-wise stable log-softmax of a contiguous 2-D array."""
    rows, cols = x.shape
    for r in prange(rows):
        m = x[r, 0]
        for c in range(1, cols):
            if x[r, c] > m:
                m = x[r, c]
        s = 0.0
        for c in range(cols):
            s += np.exp(x[r, c] - m)
        lse = m + np.log(s)
        for c in range(cols):
            out[r, c] = x[r, c] - lse


@pjit()
def log_softmax_rows_backward(y, g, add, out):
    """Row-wise gradient of log-softmax from its output: g - exp(y) * sum(g), plus add
    unless add is empty."""
    rows, cols = y.shape
    has_add = add.size > 0
    for r in prange(rows):
        s = 0.0
        for c in range(cols):
            s += g[r, c]
        for c in range(cols):
            out[r, c] = g[r, c] - np.exp(y[r, c]) * s
        if has_add:
            for c in range(cols):
                out[r, c] += add[r, c]


@pjit(size_arg=2)
def one_per_row(cols, vals, out):
    """out (n, c) = zeros except out[i, cols[i]] = vals[i], with cols in [0, c): the
    gradient of picking one entry per row, x[arange(n), cols] (NLL loss), written in one
    pass instead of a zero fill and a scatter."""
    n, c = out.shape
    for i in prange(n):
        row = out[i]
        for j in range(c):
            row[j] = 0
        row[cols[i]] = vals[i]


@njit(cache=True)
def gemm(a, b):
    """a @ b for contiguous 2-D operands through BLAS."""
    return np.dot(a, b)


# gemm_threads splits the reduction instead of the columns when A is read transposed, B is the
# bigger operand and the reduction is at least SPLIT_K_MIN_RATIO times A's rows (a weight
# gradient dY^T @ x with more inputs than outputs): each thread then reads half of both
# operands' rows in order, and the partial products are summed.  The transformer block's fc2
# weight gradient (256 x 1024 summed over 2048 tokens) ran 1.26x faster than split by columns,
# old and new code in alternating processes (BENCHMARKS_perf.md, change 162).
SPLIT_K_MIN_RATIO = 4


@njit(parallel=True, cache=True)
def gemm_threads(a, transa, b, transb, bias, has_bias, out, nt):
    """out (M x N) = op(a) @ op(b) (+ bias on every row when has_bias), op(x) being x or,
    with trans*, x's transpose; a, b, out C-contiguous 2-D floats of one dtype.  The
    product is split between nt threads along M when a is the bigger operand, else along N
    (each thread then reads half of the big one) or, for weight-gradient shapes
    (SPLIT_K_MIN_RATIO), along the reduction, and each thread calls
    ``blas.gemm_rm_whole`` (small_gemm's wide tile where its rule prefers the shape, else
    single-threaded OpenBLAS: the caller holds conv._single_blas).  (OpenBLAS's own
    threads compete with the OpenMP workers that spin after every Numba parallel region.)"""
    M, N = out.shape
    K = a.shape[0] if transa else a.shape[1]
    lda = a.shape[1]
    ldb = b.shape[1]
    af = a.reshape(-1)
    bf = b.reshape(-1)
    of = out.reshape(-1)
    by_rows = a.size >= b.size
    if transa and not by_rows and nt > 1 and K >= SPLIT_K_MIN_RATIO * M:
        _gemm_split_k(af, lda, bf, transb, ldb, bias, has_bias, of, M, N, K, nt)
        return
    for t in prange(nt):
        if by_rows:
            r0 = M * t // nt
            r1 = M * (t + 1) // nt
            c0, c1 = 0, N
            gemm_rm_whole(transa, transb, r1 - r0, N, K, 1.0, af[r0 if transa else r0 * lda:],
                          lda, bf, ldb, 0.0, of[r0 * N:], N)
        else:
            r0, r1 = 0, M
            c0 = N * t // nt
            c1 = N * (t + 1) // nt
            gemm_rm_whole(transa, transb, M, c1 - c0, K, 1.0, af, lda,
                          bf[c0 * ldb if transb else c0:], ldb, 0.0, of[c0:], N)
        if has_bias:
            for i in range(r0, r1):
                row = of[i * N + c0:i * N + c1]
                bb = bias[c0:c1]
                for j in range(c1 - c0):
                    row[j] += bb[j]


@njit(inline="always")
def _gemm_split_k(af, lda, bf, transb, ldb, bias, has_bias, of, M, N, K, nt):
    """gemm_threads' product with A transposed, split along the reduction: thread t sums
    steps K*t/nt .. K*(t+1)/nt - 1 into out (t = 0) or a partial product, which are then
    added into out by rows (with the bias)."""
    parts = np.empty((nt - 1, M * N), dtype=of.dtype)
    for t in prange(nt):
        k0 = K * t // nt
        k1 = K * (t + 1) // nt
        dst = of if t == 0 else parts[t - 1]
        gemm_rm_whole(True, transb, M, N, k1 - k0, 1.0, af[k0 * lda:], lda,
                      bf[k0 if transb else k0 * ldb:], ldb, 0.0, dst, N)
    for i in prange(M):
        row = of[i * N:(i + 1) * N]
        for u in range(nt - 1):
            src = parts[u, i * N:(i + 1) * N]
            for j in range(N):
                row[j] += src[j]
        if has_bias:
            for j in range(N):
                row[j] += bias[j]


@njit(parallel=True, cache=True)
def batched_gemm(a, transa, a_off, lda, b, transb, b_off, ldb, K, out, splits, small):
    """out[i] = op(A_i) @ op(B_i) for each of out's (B, M, N) matrices (C-contiguous), where
    A_i is the matrix of the flat array ``a`` that starts at a_off[i] with leading dimension
    lda (row-major: M x K, or K x M read transposed when ``transa``), B_i likewise (K x N,
    or N x K with ``transb``); K, M and N at least 1.  So strided, broadcast and transposed
    views are read in place, not copied.  Each product is cut into ``splits`` row blocks,
    and the blocks are shared between the Numba threads, each calling single-threaded BLAS
    (the caller holds conv._single_blas), as gemm_threads does: small_gemm when ``small``
    (float32 only), else OpenBLAS."""
    B, M, N = out.shape
    of = out.reshape(-1)
    for u in prange(B * splits):
        i = u // splits
        j = u - i * splits
        r0 = M * j // splits
        r1 = M * (j + 1) // splits
        if r1 > r0:
            a0 = a_off[i] + (r0 if transa else r0 * lda)
            gemm_rm_select(small, transa, transb, r1 - r0, N, K, 1.0, a[a0:], lda,
                           b[b_off[i]:], ldb, 0.0, of[(i * M + r0) * N:], N)


@pjit()
def linear_forward(x, wt, bias, has_bias):
    """x @ wt (+ bias broadcast over rows)."""
    out = np.dot(x, wt)
    if has_bias:
        for i in prange(out.shape[0]):
            for j in range(out.shape[1]):
                out[i, j] += bias[j]
    return out


@njit(cache=True)
def crop_padded(gxp, n_a, n_b, H, W, C, Hp, Wp, ph, pw, gxf, addf):
    """gx[n] (channels-last, flat gxf) = the interior of padded image n - n_a of the flat
    (images, Hp, Wp, C) buffer gxp, plus addf (same layout as gxf) unless addf is empty:
    the copy-out of the conv backward kernels that sum dX in per-thread padded buffers."""
    add = addf.size > 0
    for n in range(n_a, n_b):
        for h in range(H):
            src = gxp[((n - n_a) * Hp + h + ph) * Wp * C + pw * C:]
            o = (n * H + h) * W * C
            dst = gxf[o:o + W * C]
            if add:
                other = addf[o:o + W * C]
                for j in range(W * C):
                    dst[j] = src[j] + other[j]
            else:
                for j in range(W * C):
                    dst[j] = src[j]
