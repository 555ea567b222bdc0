"""Depthwise convolution on the CPU: groups equal to the input channels (NCHW).

Output channel o = c*m + j (m = K / C, the channel multiplier) reads input channel c only:

    y[n, o]  = b[o] + sum_{r,s} w[o, 0, r, s] * xpad[n, c, oh*sh + r*dh, ow*sw + s*dw]

Each (image, channel) plane is a few KB, so the kernels work plane by plane in L1: the
forward pads one input plane into a per-thread buffer and adds the R*S shifted, scaled
planes into the output plane (rows of the output are the vectorised inner loop); the
backward handles one input channel per work unit, so dW for its m filters and dX for its
planes are summed without sharing anything between threads.  One pass over dY serves both.

A GEMM formulation (what ``groups`` did before, one convolution per group) has one
input channel per GEMM: 3x3 depthwise over 32 channels ran at 0.14x PyTorch's speed that way.
"""

import numba
import numpy as np
from numba import njit, prange


@njit(cache=True)
def _pad_plane(src, ph, pw, dst):
    """dst (Hp, Wp) = src (H, W) with ph / pw rows and columns of zeros around it."""
    H, W = src.shape
    Hp, Wp = dst.shape
    for i in range(Hp):
        for j in range(Wp):
            dst[i, j] = 0
    for i in range(H):
        row = dst[ph + i]
        s = src[i]
        for j in range(W):
            row[pw + j] = s[j]


@njit(parallel=True, fastmath=True, cache=True)
def forward(x, w, b, has_b, sh, sw, ph, pw, dh, dw, y, nt):
    """y (N, K, OH, OW) = depthwise conv of x (N, C, H, W) with w (K, 1, R, S), plus b (K,)
    when has_b; all C-contiguous, K a multiple of C."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    m = K // C
    OH, OW = y.shape[2], y.shape[3]
    xbuf = np.empty((nt, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    for task in prange(N * C):
        t = numba.get_thread_id()
        n = task // C
        c = task % C
        xp = xbuf[t]
        _pad_plane(x[n, c], ph, pw, xp)
        for j in range(m):
            o = c * m + j
            out = y[n, o]
            bo = b[o] if has_b else 0.0
            for oh in range(OH):
                row = out[oh]
                for ow in range(OW):
                    row[ow] = bo
            for r in range(R):
                for s in range(S):
                    wv = w[o, 0, r, s]
                    for oh in range(OH):
                        row = out[oh]
                        src = xp[oh * sh + r * dh, s * dw:]
                        if sw == 1:
                            for ow in range(OW):
                                row[ow] += wv * src[ow]
                        elif sw == 2:   # a literal stride vectorises
                            for ow in range(OW):
                                row[ow] += wv * src[2 * ow]
                        else:
                            for ow in range(OW):
                                row[ow] += wv * src[ow * sw]


@njit(parallel=True, fastmath=True, cache=True)
def backward(x, w, gy, sh, sw, ph, pw, dh, dw, need_x, need_w, gx, gw, nt):
    """dX into gx (N, C, H, W) when need_x, dW into gw (K, 1, R, S) when need_w (both
    overwritten), for ``forward``'s convolution with output gradient gy (N, K, OH, OW)."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    m = K // C
    OH, OW = gy.shape[2], gy.shape[3]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    xbuf = np.empty((nt, Hp if need_w else 0, Wp), dtype=x.dtype)
    gbuf = np.empty((nt, Hp if need_x else 0, Wp), dtype=x.dtype)
    for c in prange(C):
        t = numba.get_thread_id()
        xp = xbuf[t]
        gp = gbuf[t]
        acc = np.zeros((m, R, S))                 # dW sums in float64 over the batch
        zero = np.zeros(1, dtype=x.dtype)[0]     # per-image sums in x's dtype vectorise
        for n in range(N):
            if need_w:
                _pad_plane(x[n, c], ph, pw, xp)
            if need_x:
                for i in range(Hp):
                    for k in range(Wp):
                        gp[i, k] = 0
            for j in range(m):
                o = c * m + j
                g = gy[n, o]
                for r in range(R):
                    for s in range(S):
                        wv = w[o, 0, r, s]
                        if need_w:
                            part = zero
                            for oh in range(OH):
                                grow = g[oh]
                                xrow = xp[oh * sh + r * dh, s * dw:]
                                if sw == 1:
                                    for ow in range(OW):
                                        part += grow[ow] * xrow[ow]
                                elif sw == 2:
                                    for ow in range(OW):
                                        part += grow[ow] * xrow[2 * ow]
                                else:
                                    for ow in range(OW):
                                        part += grow[ow] * xrow[ow * sw]
                            acc[j, r, s] += part
                        if need_x:
                            for oh in range(OH):
                                grow = g[oh]
                                drow = gp[oh * sh + r * dh, s * dw:]
                                if sw == 1:
                                    for ow in range(OW):
                                        drow[ow] += wv * grow[ow]
                                elif sw == 2:
                                    for ow in range(OW):
                                        drow[2 * ow] += wv * grow[ow]
                                else:
                                    for ow in range(OW):
                                        drow[ow * sw] += wv * grow[ow]
            if need_x:
                for i in range(H):
                    src = gp[ph + i]
                    dst = gx[n, c, i]
                    for k in range(W):
                        dst[k] = src[pw + k]
        if need_w:
            for j in range(m):
                for r in range(R):
                    for s in range(S):
                        gw[c * m + j, 0, r, s] = acc[j, r, s]


def _out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv2d(x, w, b, stride, padding, dilation):
    """Depthwise y of x (N, C, H, W) with w (K, 1, R, S), K a multiple of C, b (K,) or None;
    stride, padding and dilation are (h, w) pairs.  Returns a new C-contiguous array."""
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w, dtype=x.dtype)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    OH, OW = _out_size(H, R, sh, ph, dh), _out_size(W, S, sw, pw, dw)
    y = np.empty((N, K, OH, OW), dtype=x.dtype)
    bb = np.ascontiguousarray(b, dtype=x.dtype) if b is not None else np.zeros(K, dtype=x.dtype)
    forward(x, w, bb, b is not None, sh, sw, ph, pw, dh, dw, y, numba.get_num_threads())
    return y


def conv2d_backward(x, w, gy, stride, padding, dilation, need_x, need_w, need_b):
    """(gx, gw, gb) of ``conv2d``; entries not needed are None."""
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w, dtype=x.dtype)
    gy = np.ascontiguousarray(gy, dtype=x.dtype)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    gx = np.empty(x.shape if need_x else (0, 0, 0, 0), dtype=x.dtype)
    gw = np.empty(w.shape if need_w else (0, 0, 0, 0), dtype=x.dtype)
    if need_x or need_w:
        backward(x, w, gy, sh, sw, ph, pw, dh, dw, bool(need_x), bool(need_w), gx, gw,
                 numba.get_num_threads())
    gb = gy.sum(axis=(0, 2, 3)) if need_b else None
    return (gx if need_x else None), (gw if need_w else None), gb
