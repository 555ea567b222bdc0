"""CPU conv2d kernels (forward and backward), NCHW layout, groups=1.

Strategy: the batch is processed in *chunks* of ``nb`` images whose column
matrix (``C*R*S`` rows by ``nb*OH*OW`` columns) stays a few MiB, so it is
written by the im2col kernel and read back by BLAS while still in cache.
Every chunk is one sgemm/dgemm (Numba's ``np.dot``, which calls the BLAS that
SciPy ships) between the ``(K, C*R*S)`` weight matrix and the column matrix.

* forward : ``out = W @ col``, scattered into ``y`` with the bias added.
* backward: ``gW += gy_chunk @ col.T`` (one GEMM per chunk, summed) and
  ``dcol = W.T @ gy_chunk`` followed by col2im into ``gx``.
* a 1x1 / stride-1 / no-padding convolution needs no im2col: the column
  matrix of an image is the image itself, so it is fed to BLAS directly.

The copy kernels (im2col, col2im, scatter, gather) are ``parallel=True``
Numba loops over (image, channel) planes; BLAS runs its own threads for the
GEMMs.  Everything heavy is compiled with ``cache=True``.
"""

import numpy as np
from numba import njit, prange

# Target size of one chunk's column matrix, in bytes.  Chosen by measurement
# (benchmarks/bench_conv.py): large enough that the GEMM is efficient, small
# enough that im2col output is still cache-resident when BLAS reads it.
_COL_BYTES = 4 << 20


# ---------------------------------------------------------------------------
# copy kernels
# ---------------------------------------------------------------------------

@njit(cache=True)
def _ow_range(OW, W, sw, pw, s, dw):
    """Range [lo, hi) of output columns ``ow`` whose input column
    ``ow*sw - pw + s*dw`` lies inside ``[0, W)``."""
    off = s * dw - pw
    # smallest ow with ow*sw + off >= 0
    if off >= 0:
        lo = 0
    else:
        lo = (-off + sw - 1) // sw
    # largest ow with ow*sw + off <= W-1  ->  hi = that + 1
    lim = W - 1 - off
    if lim < 0:
        hi = 0
    else:
        hi = lim // sw + 1
    if hi > OW:
        hi = OW
    if lo > hi:
        lo = hi
    return lo, hi


@njit(parallel=True, cache=True)
def _im2col(x, n0, nb, R, S, sh, sw, ph, pw, dh, dw, OH, OW, col):
    """col[(c*R+r)*S+s, i*P + oh*OW + ow] = xpad[n0+i, c, oh*sh+r*dh, ow*sw+s*dw]."""
    C = x.shape[1]
    H = x.shape[2]
    W = x.shape[3]
    P = OH * OW
    for t in prange(nb * C):
        i = t // C
        c = t - i * C
        for r in range(R):
            for s in range(S):
                q = (c * R + r) * S + s
                lo, hi = _ow_range(OW, W, sw, pw, s, dw)
                woff = s * dw - pw
                for oh in range(OH):
                    ih = oh * sh - ph + r * dh
                    base = i * P + oh * OW
                    if ih < 0 or ih >= H:
                        for ow in range(OW):
                            col[q, base + ow] = 0
                        continue
                    for ow in range(lo):
                        col[q, base + ow] = 0
                    if sw == 1:
                        for ow in range(lo, hi):
                            col[q, base + ow] = x[n0 + i, c, ih, ow + woff]
                    else:
                        for ow in range(lo, hi):
                            col[q, base + ow] = x[n0 + i, c, ih, ow * sw + woff]
                    for ow in range(hi, OW):
                        col[q, base + ow] = 0


@njit(parallel=True, cache=True)
def _col2im(dcol, n0, nb, R, S, sh, sw, ph, pw, dh, dw, OH, OW, gx):
    """Adjoint of _im2col: gx[n0+i, c, ...] += dcol[...] (gx planes pre-zeroed)."""
    C = gx.shape[1]
    H = gx.shape[2]
    W = gx.shape[3]
    P = OH * OW
    for t in prange(nb * C):
        i = t // C
        c = t - i * C
        for r in range(R):
            for s in range(S):
                q = (c * R + r) * S + s
                lo, hi = _ow_range(OW, W, sw, pw, s, dw)
                woff = s * dw - pw
                for oh in range(OH):
                    ih = oh * sh - ph + r * dh
                    if ih < 0 or ih >= H:
                        continue
                    base = i * P + oh * OW
                    if sw == 1:
                        for ow in range(lo, hi):
                            gx[n0 + i, c, ih, ow + woff] += dcol[q, base + ow]
                    else:
                        for ow in range(lo, hi):
                            gx[n0 + i, c, ih, ow * sw + woff] += dcol[q, base + ow]


@njit(parallel=True, cache=True)
def _scatter_out(out, n0, nb, b, has_bias, y):
    """y[n0+i, k, p] = out[k, i*P + p] (+ b[k])."""
    K = y.shape[1]
    P = y.shape[2]
    for t in prange(nb * K):
        i = t // K
        k = t - i * K
        bk = b[k]
        for p in range(P):
            y[n0 + i, k, p] = out[k, i * P + p] + bk


@njit(parallel=True, cache=True)
def _gather_gy(gy, n0, nb, gyc):
    """gyc[k, i*P + p] = gy[n0+i, k, p]."""
    K = gy.shape[1]
    P = gy.shape[2]
    for t in prange(nb * K):
        i = t // K
        k = t - i * K
        for p in range(P):
            gyc[k, i * P + p] = gy[n0 + i, k, p]


@njit(parallel=True, cache=True)
def _copy_images(x, n0, nb, col):
    """col[c, i*P + p] = x[n0+i, c, p]  (im2col of a 1x1 stride-1 conv)."""
    C = x.shape[1]
    P = x.shape[2]
    for t in prange(nb * C):
        i = t // C
        c = t - i * C
        for p in range(P):
            col[c, i * P + p] = x[n0 + i, c, p]


@njit(parallel=True, cache=True)
def _scatter_add_images(dcol, n0, nb, gx):
    """gx[n0+i, c, p] = dcol[c, i*P + p]  (col2im of a 1x1 stride-1 conv)."""
    C = gx.shape[1]
    P = gx.shape[2]
    for t in prange(nb * C):
        i = t // C
        c = t - i * C
        for p in range(P):
            gx[n0 + i, c, p] = dcol[c, i * P + p]


@njit(parallel=True, cache=True)
def _bias_grad(gy, gb):
    """gb[k] = sum_{n,p} gy[n, k, p]."""
    N = gy.shape[0]
    K = gy.shape[1]
    P = gy.shape[2]
    for k in prange(K):
        acc = 0.0
        for n in range(N):
            for p in range(P):
                acc += gy[n, k, p]
        gb[k] = acc


# ---------------------------------------------------------------------------
# drivers (one compiled function per direction; chunk loop inside Numba)
# ---------------------------------------------------------------------------

@njit(cache=True)
def _forward(x, wm, b, has_bias, R, S, sh, sw, ph, pw, dh, dw, OH, OW, nb, pointwise, y):
    N = x.shape[0]
    C = x.shape[1]
    K = wm.shape[0]
    CRS = wm.shape[1]
    P = OH * OW
    col = np.empty((CRS, nb * P), dtype=x.dtype)
    out = np.empty((K, nb * P), dtype=x.dtype)
    x3 = x.reshape((N, C, -1))
    y3 = y.reshape((N, K, P))
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        if m != nb:
            col = np.empty((CRS, m * P), dtype=x.dtype)
            out = np.empty((K, m * P), dtype=x.dtype)
        if pointwise:
            if m == 1:
                np.dot(wm, x3[n0], out)
            else:
                _copy_images(x3, n0, m, col)
                np.dot(wm, col, out)
        else:
            _im2col(x, n0, m, R, S, sh, sw, ph, pw, dh, dw, OH, OW, col)
            np.dot(wm, col, out)
        _scatter_out(out, n0, m, b, has_bias, y3)


@njit(cache=True)
def _backward(x, wm, gy, R, S, sh, sw, ph, pw, dh, dw, OH, OW, nb, pointwise,
              need_x, need_w, gx, gw):
    N = x.shape[0]
    C = x.shape[1]
    K = wm.shape[0]
    CRS = wm.shape[1]
    P = OH * OW
    gy3 = gy.reshape((N, K, P))
    x3 = x.reshape((N, C, -1))
    col = np.empty((CRS, nb * P), dtype=x.dtype)
    dcol = np.empty((CRS, nb * P), dtype=x.dtype)
    gyc = np.empty((K, nb * P), dtype=x.dtype)
    gwt = np.empty((K, CRS), dtype=x.dtype)
    wmt = np.ascontiguousarray(wm.T)
    gx3 = gx.reshape((gx.shape[0], gx.shape[1], -1))
    first = True
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        if m != nb:
            col = np.empty((CRS, m * P), dtype=x.dtype)
            dcol = np.empty((CRS, m * P), dtype=x.dtype)
            gyc = np.empty((K, m * P), dtype=x.dtype)
        _gather_gy(gy3, n0, m, gyc)
        if need_w:
            if pointwise:
                _copy_images(x3, n0, m, col)
            else:
                _im2col(x, n0, m, R, S, sh, sw, ph, pw, dh, dw, OH, OW, col)
            if first:
                np.dot(gyc, col.T, gw)
            else:
                np.dot(gyc, col.T, gwt)
                gw += gwt
            first = False
        if need_x:
            np.dot(wmt, gyc, dcol)
            if pointwise:
                _scatter_add_images(dcol, n0, m, gx3)
            else:
                _col2im(dcol, n0, m, R, S, sh, sw, ph, pw, dh, dw, OH, OW, gx)


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------

def _out_size(H, W, R, S, stride, padding, dilation):
    OH = (H + 2 * padding[0] - dilation[0] * (R - 1) - 1) // stride[0] + 1
    OW = (W + 2 * padding[1] - dilation[1] * (S - 1) - 1) // stride[1] + 1
    return OH, OW


def _chunk(N, CRS, P, itemsize):
    per_image = max(1, CRS * P * itemsize)
    return int(max(1, min(N, _COL_BYTES // per_image)))


def _prep(x, w, dtype=None):
    x = np.ascontiguousarray(x)
    dt = x.dtype if dtype is None else dtype
    if dt not in (np.float32, np.float64):
        dt = np.dtype(np.float64) if dt.itemsize > 4 else np.dtype(np.float32)
    x = np.ascontiguousarray(x, dtype=dt)
    w = np.ascontiguousarray(w, dtype=dt)
    return x, w


def _is_pointwise(R, S, stride, padding):
    return R == 1 and S == 1 and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def conv2d(x, w, b, stride, padding, dilation):
    """Cross-correlation of x (N,C,H,W) with w (K,C,R,S) plus bias b (K,) or None."""
    x, w = _prep(x, w)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    sh, sw = int(stride[0]), int(stride[1])
    ph, pw = int(padding[0]), int(padding[1])
    dh, dw = int(dilation[0]), int(dilation[1])
    OH, OW = _out_size(H, W, R, S, (sh, sw), (ph, pw), (dh, dw))
    y = np.empty((N, K, OH, OW), dtype=x.dtype)
    if N == 0 or K == 0 or OH <= 0 or OW <= 0:
        return y
    if C == 0:
        y[...] = 0 if b is None else np.asarray(b, dtype=x.dtype)[None, :, None, None]
        return y
    has_bias = b is not None
    bb = np.ascontiguousarray(b, dtype=x.dtype) if has_bias else np.zeros(K, dtype=x.dtype)
    CRS = C * R * S
    P = OH * OW
    nb = _chunk(N, CRS, P, x.itemsize)
    pointwise = _is_pointwise(R, S, (sh, sw), (ph, pw))
    _forward(x, w.reshape(K, CRS), bb, has_bias, R, S, sh, sw, ph, pw, dh, dw,
             OH, OW, nb, pointwise, y)
    return y


def conv2d_backward(x, w, gy, stride, padding, dilation, need_x, need_w, need_b):
    """Gradients (gx, gw, gb) of conv2d; entries not needed are None."""
    x, w = _prep(x, w)
    gy = np.ascontiguousarray(gy, dtype=x.dtype)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    sh, sw = int(stride[0]), int(stride[1])
    ph, pw = int(padding[0]), int(padding[1])
    dh, dw = int(dilation[0]), int(dilation[1])
    OH, OW = gy.shape[2], gy.shape[3]
    gb = None
    if need_b:
        gb = np.empty(K, dtype=x.dtype)
        _bias_grad(gy.reshape(N, K, OH * OW), gb)
    if not (need_x or need_w):
        return None, None, gb
    CRS = C * R * S
    P = OH * OW
    pointwise = _is_pointwise(R, S, (sh, sw), (ph, pw))
    if need_x:
        # the pointwise path writes every element; col2im accumulates
        gx = np.empty_like(x) if pointwise else np.zeros_like(x)
    else:
        gx = np.empty((1, 1, 1, 1), dtype=x.dtype)
    gw = np.zeros((K, CRS), dtype=x.dtype) if need_w else np.empty((1, 1), dtype=x.dtype)
    if N > 0 and K > 0 and CRS > 0 and P > 0:
        nb = _chunk(N, CRS, P, x.itemsize)
        _backward(x, w.reshape(K, CRS), gy, R, S, sh, sw, ph, pw, dh, dw, OH, OW, nb,
                  pointwise, bool(need_x), bool(need_w), gx, gw)
    elif need_x:
        gx[...] = 0
    return (gx if need_x else None,
            gw.reshape(w.shape) if need_w else None,
            gb)
