"""CPU max/avg pooling kernels (NCHW), PyTorch semantics with ceil_mode=False.

Each kernel is a ``parallel=True`` Numba loop over the ``N*C`` image planes;
a plane's output (or input gradient) is owned by one iteration, so the
backward scatter needs no atomics.  ``max_pool2d`` returns, as its "argmax",
the int32 flat index ``ih*W + iw`` of the chosen element inside its input
plane (padding acts as -inf and is never chosen; NaN propagates, as in PyTorch).
"""

import numpy as np
from numba import njit, prange

from ._jit import pjit


def _as_float(x, keep_cl=False):
    """Float32/64 C-contiguous array; with keep_cl a dense channels-last 4-D array is
    returned as it is (no transposing copy)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64 if x.dtype.itemsize > 4 else np.float32)
    if keep_cl and x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous:
        return x
    return np.ascontiguousarray(x)


def _out(H, k, s, p):
    return (H + 2 * p - k) // s + 1


@pjit()
def _max_fwd(x, kh, kw, sh, sw, ph, pw, y, am):
    NC = x.shape[0]
    H = x.shape[1]
    W = x.shape[2]
    OH = y.shape[1]
    OW = y.shape[2]
    for t in prange(NC):
        for oh in range(OH):
            h0 = oh * sh - ph
            hs = max(h0, 0)
            he = min(h0 + kh, H)
            for ow in range(OW):
                w0 = ow * sw - pw
                ws = max(w0, 0)
                we = min(w0 + kw, W)
                best = -np.inf
                bi = hs * W + ws
                found = False
                for ih in range(hs, he):
                    for iw in range(ws, we):
                        v = x[t, ih, iw]
                        if not found:
                            best = v
                            bi = ih * W + iw
                            found = True
                            if v != v:
                                break
                        elif v > best or v != v:
                            best = v
                            bi = ih * W + iw
                            if v != v:
                                break
                    if found and best != best:
                        break
                y[t, oh, ow] = best
                am[t, oh, ow] = bi


@pjit()
def _max_fwd_nopad(x, kh, kw, sh, sw, y, am):
    """_max_fwd without padding: the window never leaves the plane, so the loop is the
    bare compare on flat indices (8x faster than the general kernel for LeNet's pools);
    same selection: first maximum by strict >, first NaN wins."""
    NC = x.shape[0]
    H = x.shape[1]
    W = x.shape[2]
    OH = y.shape[1]
    OW = y.shape[2]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    af = am.reshape(-1)
    for t in prange(NC):
        for oh in range(OH):
            h0 = oh * sh
            o = (t * OH + oh) * OW
            for ow in range(OW):
                w0 = ow * sw
                base = (t * H + h0) * W + w0
                best = xf[base]
                bi = 0
                if best == best:
                    done = False
                    for dy in range(kh):
                        rb = base + dy * W
                        for dx in range(kw):
                            v = xf[rb + dx]
                            if v > best:
                                best = v
                                bi = dy * W + dx
                            elif v != v:
                                best = v
                                bi = dy * W + dx
                                done = True
                                break
                        if done:
                            break
                yf[o + ow] = best
                af[o + ow] = h0 * W + w0 + bi


@njit(cache=True, inline="always")
def _first_max(v, best, bi, idx):
    """(best, bi) after window element v at offset idx: keeps the first maximum, or the
    first NaN.  Branch-free (selects), so the 2x2 loops below compile without jumps."""
    m = (v > best) | ((v != v) & (best == best))
    return (v if m else best), (idx if m else bi)


# Image planes per parallel work unit of _max_fwd_2x2 (each allocates its own buffers).
_PLANES_PER_BLOCK = 8


@pjit()
def _max_fwd_2x2(x, y, am):
    """2x2 / stride 2 / no padding (LeNet, VGG): _max_fwd_nopad's selection in two passes.

    Vertical, per pair of input rows: the first maximum of each column's (top, bottom) pair
    (or its first NaN) and that element's offset in the plane, into buffers of the work
    unit.  Horizontal, in one loop over the whole output plane: of each window's (left,
    right) column winners the right one wins if it is bigger, or the only NaN, or equal (both
    NaN included) at a smaller offset, which keeps the first maximum in row-major order, as
    _first_max does.  The first pass runs over rows of 2*OW pixels and the second over all
    OH*OW outputs, long enough for LLVM's vector loops; one selection loop per output row of
    OW (14 for LeNet) pixels ran 4.5x slower (BENCHMARKS_perf.md, change 115)."""
    NC = x.shape[0]
    H = x.shape[1]
    W = x.shape[2]
    OH = y.shape[1]
    OW = y.shape[2]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    af = am.reshape(-1)
    nblocks = (NC + _PLANES_PER_BLOCK - 1) // _PLANES_PER_BLOCK
    for blk in prange(nblocks):
        # fresh arrays: LLVM then knows they alias nothing, and vectorises
        v = np.empty(OH * 2 * OW, dtype=x.dtype)
        vi = np.empty(OH * 2 * OW, dtype=np.int32)
        for t in range(blk * _PLANES_PER_BLOCK, min(NC, (blk + 1) * _PLANES_PER_BLOCK)):
            for oh in range(OH):
                r0 = (t * H + 2 * oh) * W
                top = xf[r0:r0 + 2 * OW]
                bot = xf[r0 + W:r0 + W + 2 * OW]
                vr = v[oh * 2 * OW:(oh + 1) * 2 * OW]
                ir = vi[oh * 2 * OW:(oh + 1) * 2 * OW]
                base = np.int32(2 * oh * W)
                for j in range(2 * OW):
                    i0 = base + np.int32(j)
                    vr[j], ir[j] = _first_max(bot[j], top[j], i0, i0 + np.int32(W))
            yo = yf[t * OH * OW:(t + 1) * OH * OW]
            ao = af[t * OH * OW:(t + 1) * OH * OW]
            for q in range(OH * OW):
                left = v[2 * q]
                right = v[2 * q + 1]
                il = vi[2 * q]
                ir_ = vi[2 * q + 1]
                tie = (right == left) | ((right != right) & (left != left))
                m = (right > left) | ((right != right) & (left == left)) | (tie & (ir_ < il))
                yo[q] = right if m else left
                ao[q] = ir_ if m else il


@pjit()
def _max_fwd_2x2_cl(xt, y, am):
    """_max_fwd_2x2 on channels-last storage: xt is the dense (N, H, W, C) buffer, y and
    am are NCHW.  Same selection (first maximum, first NaN) and the same argmax values."""
    N, H, W, C = xt.shape
    OH = y.shape[2]
    OW = y.shape[3]
    for t in prange(N * OH):
        n = t // OH
        oh = t - n * OH
        h = 2 * oh
        for ow in range(OW):
            w = 2 * ow
            base = h * W + w
            a = xt[n, h, w]
            b = xt[n, h, w + 1]
            c = xt[n, h + 1, w]
            d = xt[n, h + 1, w + 1]
            for ch in range(C):
                best, bi = _first_max(b[ch], a[ch], 0, 1)
                best, bi = _first_max(c[ch], best, bi, W)
                best, bi = _first_max(d[ch], best, bi, W + 1)
                y[n, ch, oh, ow] = best
                am[n, ch, oh, ow] = base + bi


@pjit(size_arg=1)
def _max_bwd_4d(gy4, am, gx):
    """_max_bwd reading gy as an (N, C, OH, OW) array of any strides (no copy of a
    channels-last gradient)."""
    N = gy4.shape[0]
    C = gy4.shape[1]
    OH = gy4.shape[2]
    OW = gy4.shape[3]
    HW = gx.shape[1]
    for t in prange(N * C):
        n = t // C
        ch = t - n * C
        for i in range(HW):
            gx[t, i] = 0
        for oh in range(OH):
            for ow in range(OW):
                gx[t, am[t, oh, ow]] += gy4[n, ch, oh, ow]


@pjit()
def _max_bwd(gy, am, gx):
    NC = gy.shape[0]
    OH = gy.shape[1]
    OW = gy.shape[2]
    HW = gx.shape[1]
    for t in prange(NC):
        for i in range(HW):
            gx[t, i] = 0
        for oh in range(OH):
            for ow in range(OW):
                gx[t, am[t, oh, ow]] += gy[t, oh, ow]


@njit(cache=True)
def _avg_div(h0, w0, kh, kw, H, W, ph, pw, include_pad):
    if include_pad:
        # window clipped to the padded input (never exceeds it with ceil_mode=False)
        he = min(h0 + kh, H + ph)
        we = min(w0 + kw, W + pw)
        return (he - h0) * (we - w0)
    hs = max(h0, 0)
    ws = max(w0, 0)
    he = min(h0 + kh, H)
    we = min(w0 + kw, W)
    return (he - hs) * (we - ws)


@pjit()
def _avg_fwd(x, kh, kw, sh, sw, ph, pw, include_pad, y):
    NC = x.shape[0]
    H = x.shape[1]
    W = x.shape[2]
    OH = y.shape[1]
    OW = y.shape[2]
    for t in prange(NC):
        for oh in range(OH):
            h0 = oh * sh - ph
            hs = max(h0, 0)
            he = min(h0 + kh, H)
            for ow in range(OW):
                w0 = ow * sw - pw
                ws = max(w0, 0)
                we = min(w0 + kw, W)
                acc = 0.0
                for ih in range(hs, he):
                    for iw in range(ws, we):
                        acc += x[t, ih, iw]
                d = _avg_div(h0, w0, kh, kw, H, W, ph, pw, include_pad)
                y[t, oh, ow] = acc / d if d > 0 else 0.0


@pjit()
def _avg_bwd(gy, kh, kw, sh, sw, ph, pw, include_pad, gx):
    NC = gy.shape[0]
    OH = gy.shape[1]
    OW = gy.shape[2]
    H = gx.shape[1]
    W = gx.shape[2]
    for t in prange(NC):
        for ih in range(H):
            for iw in range(W):
                gx[t, ih, iw] = 0
        for oh in range(OH):
            h0 = oh * sh - ph
            hs = max(h0, 0)
            he = min(h0 + kh, H)
            for ow in range(OW):
                w0 = ow * sw - pw
                ws = max(w0, 0)
                we = min(w0 + kw, W)
                d = _avg_div(h0, w0, kh, kw, H, W, ph, pw, include_pad)
                if d <= 0:
                    continue
                g = gy[t, oh, ow] / d
                for ih in range(hs, he):
                    for iw in range(ws, we):
                        gx[t, ih, iw] += g


def max_pool2d(x, kernel, stride, padding):
    """Max pooling of x (N,C,H,W); returns (y, argmax) with argmax int32 (N,C,OH,OW)."""
    x = _as_float(x, keep_cl=(tuple(kernel), tuple(stride), tuple(padding)) == ((2, 2), (2, 2), (0, 0)))
    N, C, H, W = x.shape
    kh, kw = int(kernel[0]), int(kernel[1])
    sh, sw = int(stride[0]), int(stride[1])
    ph, pw = int(padding[0]), int(padding[1])
    OH, OW = _out(H, kh, sh, ph), _out(W, kw, sw, pw)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    am = np.empty((N, C, OH, OW), dtype=np.int32)
    if y.size:
        if ((kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0) and not x.flags.c_contiguous
                and x.transpose(0, 2, 3, 1).flags.c_contiguous):
            _max_fwd_2x2_cl(x.transpose(0, 2, 3, 1), y, am)
        elif (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0):
            _max_fwd_2x2(x.reshape(N * C, H, W), y.reshape(N * C, OH, OW), am.reshape(N * C, OH, OW))
        elif ph == 0 and pw == 0:
            _max_fwd_nopad(x.reshape(N * C, H, W), kh, kw, sh, sw,
                           y.reshape(N * C, OH, OW), am.reshape(N * C, OH, OW))
        else:
            _max_fwd(x.reshape(N * C, H, W), kh, kw, sh, sw, ph, pw,
                     y.reshape(N * C, OH, OW), am.reshape(N * C, OH, OW))
    return y, am


def max_pool2d_backward(gy, argmax, x_shape):
    """Gradient of max pooling w.r.t. its input of shape x_shape."""
    gy = _as_float(gy, keep_cl=True)
    am = np.ascontiguousarray(argmax, dtype=np.int32)
    N, C, H, W = (int(s) for s in x_shape)
    OH, OW = gy.shape[2], gy.shape[3]
    gx = np.empty((N, C, H, W), dtype=gy.dtype)  # both kernels zero each plane first
    if gx.size and not gy.size:
        gx[...] = 0
    elif gx.size:
        if gy.flags.c_contiguous:
            _max_bwd(gy.reshape(N * C, OH, OW), am.reshape(N * C, OH, OW),
                     gx.reshape(N * C, H * W))
        else:
            _max_bwd_4d(gy, am.reshape(N * C, OH, OW), gx.reshape(N * C, H * W))
    return gx


def avg_pool2d(x, kernel, stride, padding, count_include_pad):
    """Average pooling of x (N,C,H,W), PyTorch semantics (ceil_mode=False)."""
    x = _as_float(x)
    N, C, H, W = x.shape
    kh, kw = int(kernel[0]), int(kernel[1])
    sh, sw = int(stride[0]), int(stride[1])
    ph, pw = int(padding[0]), int(padding[1])
    OH, OW = _out(H, kh, sh, ph), _out(W, kw, sw, pw)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    if y.size:
        _avg_fwd(x.reshape(N * C, H, W), kh, kw, sh, sw, ph, pw,
                 bool(count_include_pad), y.reshape(N * C, OH, OW))
    return y


def avg_pool2d_backward(gy, x_shape, kernel, stride, padding, count_include_pad):
    """Gradient of average pooling w.r.t. its input of shape x_shape."""
    gy = _as_float(gy)
    N, C, H, W = (int(s) for s in x_shape)
    OH, OW = gy.shape[2], gy.shape[3]
    kh, kw = int(kernel[0]), int(kernel[1])
    sh, sw = int(stride[0]), int(stride[1])
    ph, pw = int(padding[0]), int(padding[1])
    gx = np.empty((N, C, H, W), dtype=gy.dtype)  # _avg_bwd zeroes each plane first
    if gx.size and not gy.size:
        gx[...] = 0
    elif gx.size:
        _avg_bwd(gy.reshape(N * C, OH, OW), kh, kw, sh, sw, ph, pw,
                 bool(count_include_pad), gx.reshape(N * C, H, W))
    return gx
