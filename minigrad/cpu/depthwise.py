"""Depthwise convolution on the CPU: groups equal to the input channels (NCHW).

Output channel o = c*m + j (m = K / C, the channel multiplier) reads input channel c only:

    y[n, o] = b[o] + sum_{r,s} w[o, 0, r, s] * xpad[n, c, oh*sh + r*dh, ow*sw + s*dw]

Each (image, channel) plane is a few KB, so the kernels work plane by plane in L1, with
the forward parallel over planes and the backward over input channels (dW of a channel's
m filters and dX of its planes are then summed without sharing anything between threads;
one pass over dY serves both).

**Sweeps.**  With stride 1, output (oh, ow) reads the padded plane, laid out flat with row
length Wp, at oh*Wp + ow + tap offset: each tap is then one long vectorised loop over the
whole plane ("sweep"; the Wp - OW columns past each output row are computed and dropped).
Stride 2 with a 3x3 filter gets the same through the plane's four polyphase components
(even/odd rows x even/odd columns, each of row length Wh = Wp/2): tap (r, s) reads
component ((r*dh) % 2, (s*dw) % 2) at oh*Wh + ow + offset.  Other strides go row by row.
dX is a gather: dX = sum over taps of the weight times dY shifted back, over dY laid out
as the padded plane (spread to every second pixel at stride 2), with zeros around it.

**Vectorising in Numba.**  Each tap is its own array view indexed by the loop counter
alone: an index like q + offset keeps Numba's negative-index check in the loop, and LLVM
then does not vectorise it.  A sweep handles three taps: LLVM vectorises a loop that
stores into one array and loads from others only after run-time checks that they do
not overlap, and it gives up when there are too many.

A GEMM formulation (what ``groups`` did before: one convolution per input channel) ran 3x3
depthwise over 32 channels at 0.14x PyTorch's speed (BENCHMARKS_perf.md, change 87).
"""

import numba
import numpy as np
from numba import njit, prange

from .addend import nchw_foldable, writable_in_place


@njit(cache=True)
def _pad_plane(src, ph, pw, dst):
    """dst = src (H, W) with ph / pw rows and columns of zeros before it, zeros after."""
    H, W = src.shape
    Hd, Wd = dst.shape
    for i in range(Hd):
        row = dst[i]
        if i < ph or i >= ph + H:
            for j in range(Wd):
                row[j] = 0
            continue
        for j in range(pw):
            row[j] = 0
        inner = row[pw:]
        s = src[i - ph]
        for j in range(W):
            inner[j] = s[j]
        tail = row[pw + W:]
        for j in range(Wd - pw - W):
            tail[j] = 0


@njit(cache=True)
def _polyphase(src, ph, pw, out):
    """out[2a + b] (Hh, Wh) = xpad[a::2, b::2], where xpad is src (H, W) with ph / pw rows
    and columns of zeros before it and zeros after, straight from src."""
    H, W = src.shape
    flat = out.reshape(-1)
    for q in range(flat.size):
        flat[q] = 0
    # Source column j is padded column j + pw: phase (j + pw) % 2, index (j + pw) // 2.
    # Columns are read in pairs (j, j + 1) with j + pw even, both members at once, which
    # LLVM vectorises (2x faster than one strided loop per phase); an odd pw leaves column
    # 0 before the first pair, and the last column may remain after the last pair.
    j0 = pw % 2
    npairs = (W - j0) // 2
    kb = (j0 + pw) // 2
    for h in range(H):
        i, a = (h + ph) // 2, (h + ph) % 2
        row = src[h]
        d0 = out[2 * a, i]
        d1 = out[2 * a + 1, i]
        if j0 == 1 and W > 0:
            d1[pw // 2] = row[0]
        s = row[j0:]
        e0 = d0[kb:]
        e1 = d1[kb:]
        for k in range(npairs):
            u = s[2 * k]
            v = s[2 * k + 1]
            e0[k] = u
            e1[k] = v
        if (W - j0) % 2 == 1:
            d0[(W - 1 + pw) // 2] = row[W - 1]


@njit(fastmath=True, cache=True)
def _sweep3(t0, t1, t2, w0, w1, w2, L, out, first, bias):
    """out[q] (= bias when first, else +=) + w0*t0[q] + w1*t1[q] + w2*t2[q] for q < L."""
    if first:
        for q in range(L):
            out[q] = bias + w0 * t0[q] + w1 * t1[q] + w2 * t2[q]
    else:
        for q in range(L):
            out[q] += w0 * t0[q] + w1 * t1[q] + w2 * t2[q]


@njit(fastmath=True, cache=True)
def _dot3(e, t0, t1, t2, L, zero, acc):
    """acc[s] += sum_{q < L} e[q] * t_s[q] for s = 0, 1, 2; ``zero`` is 0 in the arrays'
    dtype, so the sums vectorise in it (acc is float64)."""
    s0 = s1 = s2 = zero
    for q in range(L):
        g = e[q]
        s0 += g * t0[q]
        s1 += g * t1[q]
        s2 += g * t2[q]
    acc[0] += s0
    acc[1] += s1
    acc[2] += s2


@njit(fastmath=True, cache=True)
def _dot9(e, t00, t01, t02, t10, t11, t12, t20, t21, t22, L, zero, acc):
    """acc[r, s] += sum_{q < L} e[q] * t_rs[q] for a 3x3 filter: one sweep over e."""
    s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = zero
    for q in range(L):
        g = e[q]
        s00 += g * t00[q]
        s01 += g * t01[q]
        s02 += g * t02[q]
        s10 += g * t10[q]
        s11 += g * t11[q]
        s12 += g * t12[q]
        s20 += g * t20[q]
        s21 += g * t21[q]
        s22 += g * t22[q]
    acc[0, 0] += s00
    acc[0, 1] += s01
    acc[0, 2] += s02
    acc[1, 0] += s10
    acc[1, 1] += s11
    acc[1, 2] += s12
    acc[2, 0] += s20
    acc[2, 1] += s21
    acc[2, 2] += s22


@njit(cache=True)
def _three(wrow, s0, zero):
    """Taps s0, s1, s2 of one filter row for a three-tap sweep, and their weights: past the
    row's end a tap repeats the last one with weight zero."""
    S = wrow.shape[0]
    s1, s2 = min(s0 + 1, S - 1), min(s0 + 2, S - 1)
    w1 = wrow[s1] if s0 + 1 < S else zero
    w2 = wrow[s2] if s0 + 2 < S else zero
    return s1, s2, wrow[s0], w1, w2


@njit(cache=True)
def _tap(planes, st, Wr, dh, dw, r, s):
    """The flat view that tap (r, s) reads at q = oh*Wr + ow: the padded plane
    (planes[0], row length Wr) at stride 1, its polyphase component at stride 2."""
    if st == 1:
        return planes[0].reshape(-1)[r * dh * Wr + s * dw:]
    a, b = (r * dh) % 2, (s * dw) % 2
    return planes[2 * a + b].reshape(-1)[((r * dh) // 2) * Wr + (s * dw) // 2:]


@njit(cache=True)
def _sweep_stride(sh, sw, R, S):
    """1 or 2 when the kernels sweep whole planes (stride 1, or stride 2 with a 3x3
    filter); 0 when they go row by row."""
    if sh == 1 and sw == 1:
        return 1
    if sh == 2 and sw == 2 and R == 3 and S == 3:
        return 2
    return 0


@njit(cache=True)
def _geometry(H, W, ph, pw, st):
    """(rows, cols) of the padded-plane buffer and Wr, the row length of the sweeps."""
    Hp, Wp = H + 2 * ph, W + 2 * pw
    if st == 2:
        Hp += Hp % 2
        Wp += Wp % 2
        return Hp, Wp, Wp // 2
    return Hp, Wp, Wp


@njit(parallel=True, fastmath=True, cache=True)
def forward(x, w, b, sh, sw, ph, pw, dh, dw, y, nt):
    """y (N, K, OH, OW) = depthwise conv of x (N, C, H, W) with w (K, 1, R, S), plus b (K,);
    all C-contiguous, K a multiple of C."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    m = K // C
    OH, OW = y.shape[2], y.shape[3]
    st = _sweep_stride(sh, sw, R, S)
    Hb, Wb, Wr = _geometry(H, W, ph, pw, st)
    L = (OH - 1) * Wr + OW
    xbuf = np.empty((nt, 0 if st == 2 else Hb, Wb), dtype=x.dtype)
    pbuf = np.empty((nt, 4 if st == 2 else 0, Hb // 2, Wr), dtype=x.dtype)
    ebuf = np.empty((nt, L if st else 0), dtype=x.dtype)
    zero = np.zeros(1, dtype=x.dtype)[0]
    for task in prange(N * C):
        t = numba.get_thread_id()
        n = task // C
        c = task % C
        xp = xbuf[t]
        planes = xp.reshape((1, xp.shape[0], Wb))
        if st == 2:
            planes = pbuf[t]
            _polyphase(x[n, c], ph, pw, planes)
        else:
            _pad_plane(x[n, c], ph, pw, xp)
        e = ebuf[t]
        for j in range(m):
            o = c * m + j
            out = y[n, o]
            bo = b[o]
            if st:
                for r in range(R):
                    for s0 in range(0, S, 3):
                        s1, s2, w0, w1, w2 = _three(w[o, 0, r], s0, zero)
                        _sweep3(_tap(planes, st, Wr, dh, dw, r, s0),
                                _tap(planes, st, Wr, dh, dw, r, s1),
                                _tap(planes, st, Wr, dh, dw, r, s2),
                                w0, w1, w2, L, e, r == 0 and s0 == 0, bo)
                for oh in range(OH):
                    row = out[oh]
                    src = e[oh * Wr:]
                    for ow in range(OW):
                        row[ow] = src[ow]
                continue
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
                        if sw == 2:   # a literal stride vectorises
                            for ow in range(OW):
                                row[ow] += wv * src[2 * ow]
                        else:
                            for ow in range(OW):
                                row[ow] += wv * src[ow * sw]


@njit(parallel=True, fastmath=True, cache=True)
def backward(x, w, gy, sh, sw, ph, pw, dh, dw, need_x, need_w, add, gx, gw, nt):
    """dX into gx (N, C, H, W) when need_x, dW into gw (K, 1, R, S) when need_w (both
    overwritten), for ``forward``'s convolution with output gradient gy (N, K, OH, OW).
    ``add``: empty, or an (N, C, H, W) array that the copy-out of dX adds (gx = dX + add; add
    may be gx itself)."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    m = K // C
    OH, OW = gy.shape[2], gy.shape[3]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    st = _sweep_stride(sh, sw, R, S)
    Hb, Wb, Wr = _geometry(H, W, ph, pw, st)
    L = (OH - 1) * Wr + OW
    M = (R - 1) * dh * Wp + (S - 1) * dw       # the largest tap offset in the padded plane
    xbuf = np.empty((nt, Hb if need_w and st != 2 else 0, Wb), dtype=x.dtype)
    pbuf = np.empty((nt, 4 if st == 2 and need_w else 0, Hb // 2, Wr), dtype=x.dtype)
    gbuf = np.empty((nt, Hp if need_x else 0, Wp), dtype=x.dtype)
    # dY of one plane laid out as the forward's output rows (row length Wr, zeros in the
    # dropped columns) for the dW sweeps; and as the padded input plane (row length Wp,
    # at every second pixel at stride 2) with M zeros before and after, for dX
    ebuf = np.empty((nt, L if st and need_w else 0), dtype=x.dtype)
    ubuf = np.empty((nt, Hp * Wp + 2 * M if st and need_x else 0), dtype=x.dtype)
    for c in prange(C):
        t = numba.get_thread_id()
        xp = xbuf[t]
        gp = gbuf[t]
        gpf = gp.reshape(-1)
        e = ebuf[t]
        uf = ubuf[t]
        u = uf[M:]
        acc = np.zeros((m, R, S))                 # dW sums in float64 over the batch
        part = np.zeros(3)
        zero = np.zeros(1, dtype=x.dtype)[0]
        planes = xp.reshape((1, xp.shape[0], Wb))
        for n in range(N):
            if need_w:
                if st == 2:
                    _polyphase(x[n, c], ph, pw, pbuf[t])
                    planes = pbuf[t]
                else:
                    _pad_plane(x[n, c], ph, pw, xp)
            if need_x and not st:
                for i in range(Hp):
                    for k in range(Wp):
                        gp[i, k] = 0
            for j in range(m):
                o = c * m + j
                g = gy[n, o]
                if not st:
                    _strided_taps(g, xp, gp, w[o, 0], sh, sw, dh, dw, need_w, need_x, zero,
                                  acc[j])
                    continue
                if need_w:
                    for q in range(L):
                        e[q] = 0
                    for oh in range(OH):
                        grow = g[oh]
                        dst = e[oh * Wr:]
                        for ow in range(OW):
                            dst[ow] = grow[ow]
                    if R == 3 and S == 3:
                        _dot9(e, _tap(planes, st, Wr, dh, dw, 0, 0),
                              _tap(planes, st, Wr, dh, dw, 0, 1),
                              _tap(planes, st, Wr, dh, dw, 0, 2),
                              _tap(planes, st, Wr, dh, dw, 1, 0),
                              _tap(planes, st, Wr, dh, dw, 1, 1),
                              _tap(planes, st, Wr, dh, dw, 1, 2),
                              _tap(planes, st, Wr, dh, dw, 2, 0),
                              _tap(planes, st, Wr, dh, dw, 2, 1),
                              _tap(planes, st, Wr, dh, dw, 2, 2), L, zero, acc[j])
                    else:
                        for r in range(R):
                            for s0 in range(0, S, 3):
                                s1, s2 = _three(w[o, 0, r], s0, zero)[:2]
                                part[:] = 0.0
                                _dot3(e, _tap(planes, st, Wr, dh, dw, r, s0),
                                      _tap(planes, st, Wr, dh, dw, r, s1),
                                      _tap(planes, st, Wr, dh, dw, r, s2), L, zero, part)
                                for k in range(min(3, S - s0)):
                                    acc[j, r, s0 + k] += part[k]
                if need_x:
                    for q in range(uf.size):
                        uf[q] = 0
                    for oh in range(OH):
                        grow = g[oh]
                        dst = u[st * oh * Wp:]
                        if st == 1:
                            for ow in range(OW):
                                dst[ow] = grow[ow]
                        else:
                            # the odd members are zeros already; storing them too lets
                            # LLVM vectorise the pairs
                            for ow in range(OW):
                                dst[2 * ow] = grow[ow]
                                dst[2 * ow + 1] = zero
                    # dX[p] = sum_{r,s} w[r,s] * dY_spread[p - offset(r,s)] over the rows gx
                    # keeps: three taps per sweep, weights in reverse order
                    for r in range(R):
                        base = M - r * dh * Wp + ph * Wp
                        for s0 in range(0, S, 3):
                            s1, s2, w0, w1, w2 = _three(w[o, 0, r], s0, zero)
                            _sweep3(uf[base - s0 * dw:], uf[base - s1 * dw:],
                                    uf[base - s2 * dw:], w0, w1, w2, H * Wp,
                                    gpf[ph * Wp:], j == 0 and r == 0 and s0 == 0, zero)
            if need_x:
                for i in range(H):
                    src = gp[ph + i, pw:]
                    dst = gx[n, c, i]
                    if add.size:
                        a = add[n, c, i]
                        for k in range(W):
                            dst[k] = src[k] + a[k]
                    else:
                        for k in range(W):
                            dst[k] = src[k]
        if need_w:
            for j in range(m):
                for r in range(R):
                    for s in range(S):
                        gw[c * m + j, 0, r, s] = acc[j, r, s]


@njit(fastmath=True, cache=True)
def _strided_taps(g, xp, gp, wt, sh, sw, dh, dw, need_w, need_x, zero, acc):
    """One output plane g of a convolution the sweeps do not cover: acc[r, s] += its dW
    sums (from the padded input plane xp) and gp += its dX (padded), row by row."""
    OH, OW = g.shape
    R, S = wt.shape
    for r in range(R):
        for s in range(S):
            wv = wt[r, s]
            for oh in range(OH):
                grow = g[oh]
                h = oh * sh + r * dh
                if need_w:
                    xrow = xp[h, s * dw:]
                    part = zero
                    if sw == 2:   # a literal stride vectorises
                        for ow in range(OW):
                            part += grow[ow] * xrow[2 * ow]
                    else:
                        for ow in range(OW):
                            part += grow[ow] * xrow[ow * sw]
                    acc[r, s] += part
                if need_x:
                    drow = gp[h, s * dw:]
                    if sw == 2:
                        for ow in range(OW):
                            drow[2 * ow] += wv * grow[ow]
                    else:
                        for ow in range(OW):
                            drow[ow * sw] += wv * grow[ow]


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
    forward(x, w, bb, sh, sw, ph, pw, dh, dw, y, numba.get_num_threads())
    return y


def conv2d_backward(x, w, gy, stride, padding, dilation, need_x, need_w, need_b,
                    gx_addend=None, addend_writable=False):
    """(gx, gw, gb) of ``conv2d``; entries not needed are None.  With ``gx_addend`` (the
    gradient already gathered for x), gx is dX + gx_addend: added while dX is copied out
    (an NCHW-contiguous addend of x's dtype; others are added afterwards), written into
    gx_addend itself when ``addend_writable``."""
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w, dtype=x.dtype)
    gy = np.ascontiguousarray(gy, dtype=x.dtype)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    add = np.empty((0, 0, 0, 0), dtype=x.dtype)
    folded = need_x and nchw_foldable(gx_addend, x.shape, x.dtype)
    if folded:
        add = gx_addend
    if folded and writable_in_place(gx_addend, addend_writable, x, w, gy):
        gx = gx_addend
    else:
        gx = np.empty(x.shape if need_x else (0, 0, 0, 0), dtype=x.dtype)
    gw = np.empty(w.shape if need_w else (0, 0, 0, 0), dtype=x.dtype)
    if need_x or need_w:
        backward(x, w, gy, sh, sw, ph, pw, dh, dw, bool(need_x), bool(need_w), add, gx, gw,
                 numba.get_num_threads())
    if need_x and gx_addend is not None and not folded:
        gx = gx + gx_addend
    gb = gy.sum(axis=(0, 2, 3)) if need_b else None
    return (gx if need_x else None), (gw if need_w else None), gb
