"""CPU conv2d kernels (forward and backward), NCHW in and out, groups=1.

How it works (measured choices, see benchmarks/bench_conv.py):

* The input is first copied once into a zero-padded channels-last buffer
  ``xp`` (N, H+2ph, W+2pw, C).  In that layout the receptive field of one
  output pixel is R*S runs of C contiguous numbers (R runs of S*C when the
  horizontal stride and dilation are 1), so an im2col row is a few memcpys.
* Output pixels of the whole batch (flattened ``n*OH*OW + p``) are cut into
  *tiles* of ``T`` pixels whose column matrix ``colT`` (T x R*S*C) fits in L2.
  Images are dealt out in *groups* to the Numba threads (``prange``); each
  thread im2cols one tile into its own buffer and multiplies it with BLAS
  (Numba's ``np.dot``) while it is still in cache:
      forward  out (K x T)    = Wm (K x RSC) @ colT.T      -> scattered to y (+bias)
      dW       gW  (K x RSC) += gyT (K x T) @ colT         (one accumulator per thread)
      dX       dcolT (T x RSC) = gyT.T @ Wm                -> col2im into padded NHWC gx
  A thread owns whole images, so the col2im scatter has no races.
* A 1x1, stride-1, unpadded convolution needs no im2col: the tile of ``xp``
  *is* ``colT``, and dX is written straight into the gradient buffer.
* BLAS is made single-threaded for the duration of a call (the parallelism is
  over tiles, one per core); many small GEMMs on a multi-threaded OpenBLAS
  called from several threads at once run several times slower.  The previous
  thread count is restored afterwards.
"""

import ctypes
import threading

import numba
import numpy as np
from numba import njit, prange

# Bytes of one tile's column matrix (per thread), forward and backward, and
# the smallest tile in pixels (the backward's dW GEMM has the tile as its
# inner dimension, so it wants longer tiles).
_TILE_BYTES_FWD = 512 << 10
_TILE_BYTES_BWD = 512 << 10
_MIN_TILE_FWD = 512
_MIN_TILE_BWD = 512
_MAX_TILE = 4096


# ---------------------------------------------------------------------------
# BLAS thread control (the BLAS that Numba's np.dot calls: SciPy's)
# ---------------------------------------------------------------------------

class _BlasThreads:
    def __init__(self):
        self._lock = threading.Lock()
        self._get = self._set = None
        self._looked_up = False

    def _lookup(self):
        self._looked_up = True
        try:
            import scipy.linalg.cython_blas as cb
            lib = ctypes.CDLL(cb.__file__)
        except Exception:  # noqa: BLE001 - no SciPy BLAS: nothing to control
            return
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("", "64_"):
                try:
                    g = getattr(lib, prefix + "_get_num_threads" + suffix)
                    s = getattr(lib, prefix + "_set_num_threads" + suffix)
                except AttributeError:
                    continue
                g.restype = ctypes.c_int
                g.argtypes = []
                s.restype = None
                s.argtypes = [ctypes.c_int]
                self._get, self._set = g, s
                return

    def __enter__(self):
        self._lock.acquire()
        if not self._looked_up:
            self._lookup()
        self._prev = None
        if self._get is not None:
            prev = self._get()
            if prev != 1:
                self._set(1)
                self._prev = prev
        return self

    def __exit__(self, *exc):
        try:
            if self._prev is not None:
                self._set(self._prev)
        finally:
            self._lock.release()
        return False


_single_blas = _BlasThreads()


# ---------------------------------------------------------------------------
# layout kernels
# ---------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _to_padded_nhwc(x, ph, pw, xp):
    """xp[n, h+ph, w+pw, c] = x[n, c, h, w]; the border of xp is zeroed."""
    N, C, H, W = x.shape
    Hp = xp.shape[1]
    Wp = xp.shape[2]
    for t in prange(N * Hp):
        n = t // Hp
        hp = t - n * Hp
        h = hp - ph
        if h < 0 or h >= H:
            for wq in range(Wp):
                for c in range(C):
                    xp[n, hp, wq, c] = 0
            continue
        for wq in range(pw):
            for c in range(C):
                xp[n, hp, wq, c] = 0
        for wq in range(pw + W, Wp):
            for c in range(C):
                xp[n, hp, wq, c] = 0
        for c in range(C):
            for w in range(W):
                xp[n, hp, w + pw, c] = x[n, c, h, w]


@njit(parallel=True, cache=True)
def _from_padded_nhwc(gxp, ph, pw, gx):
    """gx[n, c, h, w] = gxp[n, h+ph, w+pw, c]."""
    N, C, H, W = gx.shape
    for t in prange(N * H):
        n = t // H
        h = t - n * H
        for c in range(C):
            for w in range(W):
                gx[n, c, h, w] = gxp[n, h + ph, w + pw, c]


@njit(cache=True)
def _im2col_tile(xp, q0, tp, P, OW, R, S, sh, sw, dh, dw, colT):
    """colT[i, (r*S+s)*C + c] = xp[n, oh*sh + r*dh, ow*sw + s*dw, c] for pixel q0+i."""
    N, Hp, Wp, C = xp.shape
    xr = xp.reshape((N, Hp, Wp * C))
    run = S * C
    for i in range(tp):
        q = q0 + i
        n = q // P
        p = q - n * P
        oh = p // OW
        ow = p - oh * OW
        h0 = oh * sh
        w0 = ow * sw * C
        for r in range(R):
            ih = h0 + r * dh
            if dw == 1:
                # the S*C numbers of this kernel row are contiguous in xp
                base = r * run
                for j in range(run):
                    colT[i, base + j] = xr[n, ih, w0 + j]
            else:
                for s in range(S):
                    iw = w0 + s * dw * C
                    base = (r * S + s) * C
                    for c in range(C):
                        colT[i, base + c] = xr[n, ih, iw + c]


@njit(cache=True)
def _col2im_tile(dcolT, q0, tp, P, OW, R, S, sh, sw, dh, dw, gxp):
    """Adjoint of _im2col_tile: gxp[...] += dcolT[...]."""
    N, Hp, Wp, C = gxp.shape
    gr = gxp.reshape((N, Hp, Wp * C))
    run = S * C
    for i in range(tp):
        q = q0 + i
        n = q // P
        p = q - n * P
        oh = p // OW
        ow = p - oh * OW
        h0 = oh * sh
        w0 = ow * sw * C
        for r in range(R):
            ih = h0 + r * dh
            if dw == 1:
                base = r * run
                for j in range(run):
                    gr[n, ih, w0 + j] += dcolT[i, base + j]
            else:
                for s in range(S):
                    iw = w0 + s * dw * C
                    base = (r * S + s) * C
                    for c in range(C):
                        gr[n, ih, iw + c] += dcolT[i, base + c]


# ---------------------------------------------------------------------------
# drivers
# ---------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _forward(xp, wm, b, R, S, sh, sw, dh, dw, OH, OW, T, g, direct, nt, y):
    """y (N, K, P) = conv of padded NHWC xp with wm (K, R*S*C) + b."""
    N = xp.shape[0]
    K = wm.shape[0]
    RSC = wm.shape[1]
    P = OH * OW
    ngroups = (N + g - 1) // g
    colbuf = np.empty((nt, T * RSC), dtype=xp.dtype)
    outbuf = np.empty((nt, K * T), dtype=xp.dtype)
    x2 = xp.reshape((-1, xp.shape[3]))   # used only when direct (then RSC == C)
    for t in prange(nt):
        for gi in range(t, ngroups, nt):
            qa = gi * g * P
            qb = min(N, (gi + 1) * g) * P
            for q0 in range(qa, qb, T):
                tp = min(T, qb - q0)
                out = outbuf[t, :K * tp].reshape((K, tp))
                if direct:
                    np.dot(wm, x2[q0:q0 + tp].T, out)
                else:
                    colT = colbuf[t, :tp * RSC].reshape((tp, RSC))
                    _im2col_tile(xp, q0, tp, P, OW, R, S, sh, sw, dh, dw, colT)
                    np.dot(wm, colT.T, out)
                # scatter (K x tp) -> y[n, k, p] with bias
                i = 0
                while i < tp:
                    q = q0 + i
                    n = q // P
                    p = q - n * P
                    m = min(tp - i, P - p)
                    for k in range(K):
                        bk = b[k]
                        for j in range(m):
                            y[n, k, p + j] = out[k, i + j] + bk
                    i += m


@njit(parallel=True, cache=True)
def _backward(xp, wm, gy, R, S, sh, sw, dh, dw, OH, OW, T, g, direct, nt,
              need_x, need_w, gxp, gwacc):
    """gwacc[t] (K x RSC) per-thread weight-gradient sums; gxp padded NHWC dX."""
    N = xp.shape[0]
    K = wm.shape[0]
    RSC = wm.shape[1]
    P = OH * OW
    ngroups = (N + g - 1) // g
    colbuf = np.empty((nt, T * RSC), dtype=xp.dtype)
    dcolbuf = np.empty((nt, T * RSC), dtype=xp.dtype)
    gybuf = np.empty((nt, K * T), dtype=xp.dtype)
    gwtmp = np.empty((nt, K, RSC), dtype=xp.dtype)
    x2 = xp.reshape((-1, xp.shape[3]))
    gx2 = gxp.reshape((-1, gxp.shape[3]))
    for t in prange(nt):
        first = True
        for gi in range(t, ngroups, nt):
            n_a = gi * g
            n_b = min(N, (gi + 1) * g)
            if need_x and not direct:
                for n in range(n_a, n_b):
                    gxp[n] = 0
            qa = n_a * P
            qb = n_b * P
            for q0 in range(qa, qb, T):
                tp = min(T, qb - q0)
                gyt = gybuf[t, :K * tp].reshape((K, tp))
                i = 0
                while i < tp:
                    q = q0 + i
                    n = q // P
                    p = q - n * P
                    m = min(tp - i, P - p)
                    for k in range(K):
                        for j in range(m):
                            gyt[k, i + j] = gy[n, k, p + j]
                    i += m
                if need_w:
                    if direct:
                        colT = x2[q0:q0 + tp]
                    else:
                        colT = colbuf[t, :tp * RSC].reshape((tp, RSC))
                        _im2col_tile(xp, q0, tp, P, OW, R, S, sh, sw, dh, dw, colT)
                    if first:
                        np.dot(gyt, colT, gwacc[t])
                        first = False
                    else:
                        np.dot(gyt, colT, gwtmp[t])
                        gwacc[t] += gwtmp[t]
                if need_x:
                    if direct:
                        np.dot(gyt.T, wm, gx2[q0:q0 + tp])
                    else:
                        dcolT = dcolbuf[t, :tp * RSC].reshape((tp, RSC))
                        np.dot(gyt.T, wm, dcolT)
                        _col2im_tile(dcolT, q0, tp, P, OW, R, S, sh, sw, dh, dw, gxp)
        if first:
            gwacc[t] = 0


@njit(parallel=True, cache=True)
def _bias_grad(gy, gb):
    """gb[k] = sum_{n,p} gy[n, k, p] (accumulated in float64)."""
    N, K, P = gy.shape
    for k in prange(K):
        acc = 0.0
        for n in range(N):
            for p in range(P):
                acc += gy[n, k, p]
        gb[k] = acc


# ---------------------------------------------------------------------------
# direct (no GEMM) path for convolutions with few channels (LeNet-sized),
# where a GEMM with K or C*R*S in the single digits wastes BLAS and im2col
# costs more than the arithmetic.  Planes are NCHW, zero-padded.
# ---------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _pad_nchw(x, ph, pw, xp):
    N, C, H, W = x.shape
    Hp = xp.shape[2]
    Wp = xp.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        for hp in range(Hp):
            h = hp - ph
            if h < 0 or h >= H:
                for wq in range(Wp):
                    xp[n, c, hp, wq] = 0
            else:
                for wq in range(pw):
                    xp[n, c, hp, wq] = 0
                for w in range(W):
                    xp[n, c, hp, w + pw] = x[n, c, h, w]
                for wq in range(pw + W, Wp):
                    xp[n, c, hp, wq] = 0


@njit(parallel=True, cache=True)
def _direct_fwd(xp, w, b, sh, sw, dh, dw, y):
    N, C, Hp, Wp = xp.shape
    K, _, R, S = w.shape
    OH = y.shape[2]
    OW = y.shape[3]
    for t in prange(N * K):
        n = t // K
        k = t - n * K
        bk = b[k]
        for oh in range(OH):
            for ow in range(OW):
                y[n, k, oh, ow] = bk
        for c in range(C):
            for r in range(R):
                for s in range(S):
                    wv = w[k, c, r, s]
                    for oh in range(OH):
                        ih = oh * sh + r * dh
                        if sw == 1:
                            for ow in range(OW):
                                y[n, k, oh, ow] += wv * xp[n, c, ih, ow + s * dw]
                        else:
                            for ow in range(OW):
                                y[n, k, oh, ow] += wv * xp[n, c, ih, ow * sw + s * dw]


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _direct_gw(xp, gy, sh, sw, dh, dw, gw):
    N, C, Hp, Wp = xp.shape
    K, _, R, S = gw.shape
    OH = gy.shape[2]
    OW = gy.shape[3]
    for t in prange(K * C):
        k = t // C
        c = t - k * C
        for r in range(R):
            for s in range(S):
                acc = 0.0
                for n in range(N):
                    for oh in range(OH):
                        ih = oh * sh + r * dh
                        if sw == 1:
                            for ow in range(OW):
                                acc += gy[n, k, oh, ow] * xp[n, c, ih, ow + s * dw]
                        else:
                            for ow in range(OW):
                                acc += gy[n, k, oh, ow] * xp[n, c, ih, ow * sw + s * dw]
                gw[k, c, r, s] = acc


@njit(parallel=True, cache=True)
def _direct_gx(w, gy, sh, sw, dh, dw, ph, pw, gxp, gx):
    N, C, H, W = gx.shape
    K, _, R, S = w.shape
    OH = gy.shape[2]
    OW = gy.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        gxp[n, c] = 0
        for k in range(K):
            for r in range(R):
                for s in range(S):
                    wv = w[k, c, r, s]
                    for oh in range(OH):
                        ih = oh * sh + r * dh
                        if sw == 1:
                            for ow in range(OW):
                                gxp[n, c, ih, ow + s * dw] += wv * gy[n, k, oh, ow]
                        else:
                            for ow in range(OW):
                                gxp[n, c, ih, ow * sw + s * dw] += wv * gy[n, k, oh, ow]
        for h in range(H):
            for wq in range(W):
                gx[n, c, h, wq] = gxp[n, c, h + ph, wq + pw]


# Use the direct path when C*K is at most this.  Measured (bench_conv.py,
# LeNet batch 128): the direct forward beats im2col+GEMM for LeNet's conv1
# (C*K = 6) but is several times slower for conv2 (C*K = 96, 10x10 planes),
# and the direct backward lost on both, so by default it is forward-only
# and for tiny C*K.  Tests force each path on all shapes.
_DIRECT_MAX_CK = 8
_DIRECT_MAX_CK_BWD = 0


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------

def _pairs(stride, padding, dilation):
    return ((int(stride[0]), int(stride[1])), (int(padding[0]), int(padding[1])),
            (int(dilation[0]), int(dilation[1])))


def _float_dtype(dt):
    dt = np.dtype(dt)
    if dt in (np.float32, np.float64):
        return dt
    return np.dtype(np.float64) if dt.itemsize > 4 else np.dtype(np.float32)


def _plan(N, P, RSC, itemsize, nt, backward=False):
    """Tile size T (pixels) and group size g (images per thread work unit)."""
    tile_bytes = _TILE_BYTES_BWD if backward else _TILE_BYTES_FWD
    min_tile = _MIN_TILE_BWD if backward else _MIN_TILE_FWD
    T = tile_bytes // max(1, RSC * itemsize)
    T = max(min_tile, min(_MAX_TILE, T))
    g = max(1, -(-T // P))                 # enough images to fill a tile
    g = min(g, max(1, -(-N // nt)))        # but keep every thread busy
    T = min(T, g * P)
    return int(T), int(g)


def _prepare(x, w, padding):
    dt = _float_dtype(x.dtype)
    x = np.ascontiguousarray(x, dtype=dt)
    N, C, H, W = x.shape
    ph, pw = padding
    xp = np.empty((N, H + 2 * ph, W + 2 * pw, C), dtype=dt)
    _to_padded_nhwc(x, ph, pw, xp)
    K, _, R, S = w.shape
    wm = np.ascontiguousarray(np.asarray(w, dtype=dt).transpose(0, 2, 3, 1)).reshape(K, R * S * C)
    return x, xp, wm


def conv2d(x, w, b, stride, padding, dilation):
    """Cross-correlation of x (N,C,H,W) with w (K,C,R,S) plus bias b (K,) or None."""
    (sh, sw), (ph, pw), (dh, dw) = _pairs(stride, padding, dilation)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    OH = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    dt = _float_dtype(x.dtype)
    y = np.empty((N, K, OH, OW), dtype=dt)
    if y.size == 0:
        return y
    bb = (np.ascontiguousarray(b, dtype=dt) if b is not None else np.zeros(K, dtype=dt))
    if C == 0:
        y[...] = bb[None, :, None, None]
        return y
    if C * K <= _DIRECT_MAX_CK:
        x = np.ascontiguousarray(x, dtype=dt)
        xp = np.empty((N, C, H + 2 * ph, W + 2 * pw), dtype=dt)
        _pad_nchw(x, ph, pw, xp)
        _direct_fwd(xp, np.ascontiguousarray(w, dtype=dt), bb, sh, sw, dh, dw, y)
        return y
    x, xp, wm = _prepare(x, w, (ph, pw))
    P = OH * OW
    nt = numba.get_num_threads()
    T, g = _plan(N, P, R * S * C, x.itemsize, nt)
    direct = R == 1 and S == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    with _single_blas:
        _forward(xp, wm, bb, R, S, sh, sw, dh, dw, OH, OW, T, g, direct, nt,
                 y.reshape(N, K, P))
    return y


def conv2d_backward(x, w, gy, stride, padding, dilation, need_x, need_w, need_b):
    """Gradients (gx, gw, gb) of conv2d; entries not needed are None."""
    (sh, sw), (ph, pw), (dh, dw) = _pairs(stride, padding, dilation)
    dt = _float_dtype(x.dtype)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    gy = np.ascontiguousarray(gy, dtype=dt)
    OH, OW = gy.shape[2], gy.shape[3]
    P = OH * OW
    gy3 = gy.reshape(N, K, P)
    gb = None
    if need_b:
        gb = np.empty(K, dtype=dt)
        if gy.size:
            _bias_grad(gy3, gb)
        else:
            gb[...] = 0
    gx = gw = None
    if not (need_x or need_w):
        return gx, gw, gb
    if gy.size == 0 or x.size == 0:
        return (np.zeros((N, C, H, W), dt) if need_x else None,
                np.zeros((K, C, R, S), dt) if need_w else None, gb)
    if C * K <= _DIRECT_MAX_CK_BWD:
        x = np.ascontiguousarray(x, dtype=dt)
        w = np.ascontiguousarray(w, dtype=dt)
        gy4 = gy.reshape(N, K, OH, OW)
        xp = np.empty((N, C, H + 2 * ph, W + 2 * pw), dtype=dt)
        if need_w:
            _pad_nchw(x, ph, pw, xp)
            gw = np.empty((K, C, R, S), dtype=dt)
            _direct_gw(xp, gy4, sh, sw, dh, dw, gw)
        if need_x:
            gx = np.empty((N, C, H, W), dtype=dt)
            _direct_gx(w, gy4, sh, sw, dh, dw, ph, pw, xp, gx)
        return gx, gw, gb
    x, xp, wm = _prepare(x, w, (ph, pw))
    nt = numba.get_num_threads()
    RSC = R * S * C
    T, g = _plan(N, P, RSC, x.itemsize, nt, backward=True)
    direct = R == 1 and S == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    if need_x:
        gxp = np.empty(xp.shape, dtype=dt)
    else:
        gxp = np.empty((1, 1, 1, RSC), dtype=dt)
    gwacc = np.empty((nt, K, RSC) if need_w else (nt, 1, 1), dtype=dt)
    with _single_blas:
        _backward(xp, wm, gy3, R, S, sh, sw, dh, dw, OH, OW, T, g, direct, nt,
                  bool(need_x), bool(need_w), gxp, gwacc)
    if need_w:
        gw = np.ascontiguousarray(
            gwacc.sum(axis=0).reshape(K, R, S, C).transpose(0, 3, 1, 2))
    if need_x:
        gx = np.empty((N, C, H, W), dtype=dt)
        _from_padded_nhwc(gxp, ph, pw, gx)
    return gx, gw, gb
