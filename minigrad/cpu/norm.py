"""CPU kernels for batch, layer and local response normalisation.

The batch-norm and LRN kernels view their input as ``(N, C, L)`` (``L`` = product of the
spatial dimensions, 1 for ``(N, C)`` input), layer norm as ``(rows, D)``; each kernel runs
one ``parallel=True`` Numba loop and accumulates sums in float64 whatever the storage dtype
(float32 or float64; the channels-last kernels over partial sums of SUM_ROWS rows).
"""

import numba
import numpy as np
from numba import njit, prange

from . import kernels

# reassociation (vectorised reductions), contraction and fast pow; NaN/inf semantics kept
_FM = {"reassoc", "contract", "nsz", "arcp", "afn"}


def _float(x):
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    return np.ascontiguousarray(x)


def _ncl(x):
    n, c = x.shape[0], x.shape[1]
    return x.reshape(n, c, -1)


def _vec(v, c, dtype, fill):
    if v is None:
        return np.full(c, fill, dtype=dtype)
    return np.ascontiguousarray(np.asarray(v, dtype=dtype).reshape(c))


# --- the output pass and the gradient's mask, shared by both layouts -------------
# Each takes its flags as literals (the dispatchers below), so that every combination
# compiles to its own branch-free loop.

@njit(cache=True, inline="always", fastmath=_FM)
def _out_val(v, r, has_res, relu):
    """v (+ r), rectified with NaN kept as F.relu does."""
    if has_res:
        v = v + r
    if relu:
        v = v if (v > 0 or v != v) else 0.0
    return v


@njit(cache=True, inline="always", fastmath=_FM)
def _out_row_as(xr, rr, yr, scale, shift, has_res, relu):
    for j in range(xr.size):
        yr[j] = _out_val(xr[j] * scale + shift, rr[j], has_res, relu)


@njit(cache=True, inline="always", fastmath=_FM)
def _out_pixel_as(xr, rr, yr, scale, shift, has_res, relu):
    for ch in range(xr.size):
        yr[ch] = _out_val(xr[ch] * scale[ch] + shift[ch], rr[ch], has_res, relu)


@njit(cache=True, inline="always")
def _out_pass(body, xr, rr, yr, scale, shift, has_res, relu):
    """``body`` (_out_row_as: one channel's row, NCHW, scalar scale and shift; _out_pixel_as:
    one pixel's channels, channels-last) with the flags as literals:
    yr = relu?(xr * scale + shift (+ rr))."""
    if has_res and relu:
        body(xr, rr, yr, scale, shift, True, True)
    elif has_res:
        body(xr, rr, yr, scale, shift, True, False)
    elif relu:
        body(xr, rr, yr, scale, shift, False, True)
    else:
        body(xr, rr, yr, scale, shift, False, False)


# The backward's mask: with a fused ReLU (``masked``) the gradient of the sum is gy where the
# output y > 0, else 0; ``write`` also stores it (the residual's gradient).

@njit(cache=True, inline="always")
def _masked(g, yv, masked):
    if masked:
        return g if yv > 0 else 0.0
    return g


@njit(cache=True, inline="always", fastmath=_FM)
def _sums_row_as(gr, xr, yr, mu, masked):
    s = 0.0
    sx = 0.0
    for j in range(gr.size):
        g = np.float64(_masked(gr[j], yr[j], masked))
        s += g
        sx += g * (xr[j] - mu)
    return s, sx


@njit(cache=True, inline="always")
def _sums_row(gr, xr, yr, mu, masked):
    """(sum g, sum g * (x - mu)) over one channel's row, g = gy (masked by y > 0)."""
    if masked:
        return _sums_row_as(gr, xr, yr, mu, True)
    return _sums_row_as(gr, xr, yr, mu, False)


@njit(cache=True, inline="always", fastmath=_FM)
def _grad_row_as(gr, xr, yr, gxr, gmr, k, m, mean_g, mu, coef, masked, write):
    for j in range(gr.size):
        g = _masked(gr[j], yr[j], masked)
        gxr[j] = k * (m * g - mean_g - (xr[j] - mu) * coef)
        if write:
            gmr[j] = g


@njit(cache=True, inline="always")
def _grad_row(gr, xr, yr, gxr, gmr, k, m, mean_g, mu, coef, masked, write):
    """One channel's row of gx (and of the masked gy when ``write``)."""
    if write:
        _grad_row_as(gr, xr, yr, gxr, gmr, k, m, mean_g, mu, coef, True, True)
    elif masked:
        _grad_row_as(gr, xr, yr, gxr, gmr, k, m, mean_g, mu, coef, True, False)
    else:
        _grad_row_as(gr, xr, yr, gxr, gmr, k, m, mean_g, mu, coef, False, False)


@njit(cache=True, inline="always", fastmath=_FM)
def _sums_pixel_as(gr, xr, yr, mu, ps, psx, masked):
    for ch in range(gr.size):
        g = _masked(gr[ch], yr[ch], masked)
        ps[ch] += g
        psx[ch] += g * (xr[ch] - mu[ch])


@njit(cache=True, inline="always")
def _sums_pixel(gr, xr, yr, mu, ps, psx, masked):
    """ps += g, psx += g * (x - mu) over one pixel's channels (channels-last)."""
    if masked:
        _sums_pixel_as(gr, xr, yr, mu, ps, psx, True)
    else:
        _sums_pixel_as(gr, xr, yr, mu, ps, psx, False)


@njit(cache=True, inline="always", fastmath=_FM)
def _grad_pixel_as(gr, xr, yr, gxr, gmr, a, b, d, mu, masked, write):
    for ch in range(gr.size):
        g = _masked(gr[ch], yr[ch], masked)
        gxr[ch] = a[ch] * g + b[ch] * (xr[ch] - mu[ch]) + d[ch]
        if write:
            gmr[ch] = g


@njit(cache=True, inline="always")
def _grad_pixel(gr, xr, yr, gxr, gmr, a, b, d, mu, masked, write):
    """One pixel's channels of gx (and of the masked gy when ``write``; channels-last)."""
    if write:
        _grad_pixel_as(gr, xr, yr, gxr, gmr, a, b, d, mu, True, True)
    elif masked:
        _grad_pixel_as(gr, xr, yr, gxr, gmr, a, b, d, mu, True, False)
    else:
        _grad_pixel_as(gr, xr, yr, gxr, gmr, a, b, d, mu, False, False)


# --- batch norm on channels-last storage --------------------------------------
# x is viewed as a dense (M, C) matrix (M = N*H*W); each thread reduces its share of the
# rows into its own row of partial sums (float64), then the sums are combined.  The forward's
# statistics take one pass over memory: blocks of SUM_ROWS rows, each summed and then (from
# L1) its squared deviations taken, merged as they go (_merge_stats).

# Rows per block in the channels-last kernels' sums: a block is summed in the storage dtype
# (its statistics in the forward: the sum, then, from L1, the squared deviations from the
# block's mean), and the blocks' results are combined in float64.  Float64 sums updated at
# every row kept these passes busy with conversions, loads and stores (BENCHMARKS_perf.md,
# change 158).
SUM_ROWS = 64


@njit(cache=True, inline="always")
def _merge_stats(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """(mean_a, m2_a) += the group (n_b, mean_b, m2_b) by Chan et al.'s update: the means and
    sums of squared deviations of two groups of n_a and n_b rows give those of their union."""
    n = n_a + n_b
    f = n_b / n
    g = n_a * f
    for ch in range(mean_a.size):
        d = mean_b[ch] - mean_a[ch]
        mean_a[ch] += d * f
        m2_a[ch] += m2_b[ch] + d * d * g


@njit(cache=True, parallel=True, fastmath=_FM)
def _bn_train_cl(x, gamma, beta, eps, y, mean_out, var_out, invstd_out, nt, res, has_res, relu):
    m, c = x.shape
    chunk = (m + nt - 1) // nt
    mean_t = np.zeros((nt, c), np.float64)
    m2_t = np.zeros((nt, c), np.float64)
    for t in prange(nt):
        bmean = np.empty(c, x.dtype)
        bm2 = np.empty(c, x.dtype)
        i0 = t * chunk
        i1 = min(m, i0 + chunk)
        for b0 in range(i0, i1, SUM_ROWS):
            b1 = min(i1, b0 + SUM_ROWS)
            bmean[:] = 0.0
            for i in range(b0, b1):
                xr = x[i]
                for ch in range(c):
                    bmean[ch] += xr[ch]
            for ch in range(c):
                bmean[ch] /= b1 - b0
            bm2[:] = 0.0
            for i in range(b0, b1):
                xr = x[i]
                for ch in range(c):
                    d = xr[ch] - bmean[ch]
                    bm2[ch] += d * d
            _merge_stats(b0 - i0, mean_t[t], m2_t[t], b1 - b0, bmean, bm2)
    mu = np.zeros(c, np.float64)
    m2 = np.zeros(c, np.float64)
    for t in range(nt):
        _merge_stats(min(m, t * chunk), mu, m2, max(0, min(m, (t + 1) * chunk) - t * chunk),
                     mean_t[t], m2_t[t])
    scale = np.empty(c, x.dtype)
    shift = np.empty(c, x.dtype)
    for ch in range(c):
        var = m2[ch] / m
        inv = 1.0 / np.sqrt(var + eps)
        scale[ch] = gamma[ch] * inv
        shift[ch] = beta[ch] - mu[ch] * gamma[ch] * inv
        mean_out[ch] = mu[ch]
        var_out[ch] = var
        invstd_out[ch] = inv
    for t in prange(nt):
        for i in range(t * chunk, min(m, (t + 1) * chunk)):
            _out_pass(_out_pixel_as, x[i], res[i], y[i], scale, shift, has_res, relu)


@njit(cache=True, parallel=True, fastmath=_FM)
def _bn_eval_cl(x, mean, var, gamma, beta, eps, y, res, has_res, relu):
    m, c = x.shape
    scale = np.empty(c, x.dtype)
    shift = np.empty(c, x.dtype)
    for ch in range(c):
        inv = 1.0 / np.sqrt(np.float64(var[ch]) + eps)
        scale[ch] = gamma[ch] * inv
        shift[ch] = beta[ch] - mean[ch] * gamma[ch] * inv
    for i in prange(m):
        _out_pass(_out_pixel_as, x[i], res[i], y[i], scale, shift, has_res, relu)


@njit(cache=True, parallel=True, fastmath=_FM)
def _bn_backward_cl(gy, x, gamma, mean, invstd, gx, ggamma, gbeta, nt, y, masked, gm, write):
    m, c = x.shape
    chunk = (m + nt - 1) // nt
    psg = np.zeros((nt, c), np.float64)
    psgx = np.zeros((nt, c), np.float64)
    mu = np.empty(c, x.dtype)
    for ch in range(c):
        mu[ch] = mean[ch]
    for t in prange(nt):
        s = np.empty(c, x.dtype)
        sx = np.empty(c, x.dtype)
        i1 = min(m, (t + 1) * chunk)
        for b0 in range(t * chunk, i1, SUM_ROWS):
            s[:] = 0.0
            sx[:] = 0.0
            for i in range(b0, min(i1, b0 + SUM_ROWS)):
                _sums_pixel(gy[i], x[i], y[i], mu, s, sx, masked)
            for ch in range(c):
                psg[t, ch] += s[ch]
                psgx[t, ch] += sx[ch]
    a = np.empty(c, x.dtype)      # gx = a*gy + b*(x - mu) + d
    bcoef = np.empty(c, x.dtype)
    d = np.empty(c, x.dtype)
    for ch in range(c):
        sg = 0.0
        sgx = 0.0
        for t in range(nt):
            sg += psg[t, ch]
            sgx += psgx[t, ch]
        inv = np.float64(invstd[ch])
        sgxhat = sgx * inv
        ggamma[ch] = sgxhat
        gbeta[ch] = sg
        k = gamma[ch] * inv / m
        a[ch] = k * m
        bcoef[ch] = -k * sgxhat * inv
        d[ch] = -k * sg
    for t in prange(nt):
        for i in range(t * chunk, min(m, (t + 1) * chunk)):
            _grad_pixel(gy[i], x[i], y[i], gx[i], gm[i], a, bcoef, d, mu, masked, write)


def _is_cl(x):
    """Channels-last dense 4-D storage that is not also plain NCHW-contiguous."""
    return (x.ndim == 4 and not x.flags.c_contiguous
            and x.transpose(0, 2, 3, 1).flags.c_contiguous)


def _cl2(x):
    n, c, h, w = x.shape
    return x.transpose(0, 2, 3, 1).reshape(n * h * w, c)


def _new_cl(shape, dtype):
    n, c, h, w = shape
    return np.empty((n, h, w, c), dtype=dtype).transpose(0, 3, 1, 2)


# --- batch norm --------------------------------------------------------------

@njit(cache=True, parallel=True, fastmath=_FM)
def _bn_train(x, gamma, beta, eps, y, mean_out, var_out, invstd_out, res, has_res, relu):
    n, c, l = x.shape
    m = n * l
    for ch in prange(c):
        s = 0.0
        for i in range(n):
            for j in range(l):
                s += x[i, ch, j]
        mu = s / m
        ss = 0.0
        for i in range(n):
            for j in range(l):
                d = x[i, ch, j] - mu
                ss += d * d
        var = ss / m
        inv = 1.0 / np.sqrt(var + eps)
        scale = gamma[ch] * inv
        shift = beta[ch] - mu * scale
        for i in range(n):
            _out_pass(_out_row_as, x[i, ch], res[i, ch], y[i, ch], scale, shift, has_res, relu)
        mean_out[ch] = mu
        var_out[ch] = var
        invstd_out[ch] = inv


@njit(cache=True, parallel=True, fastmath=_FM)
def _bn_eval(x, mean, var, gamma, beta, eps, y, res, has_res, relu):
    n, c, l = x.shape
    for ch in prange(c):
        inv = 1.0 / np.sqrt(np.float64(var[ch]) + eps)
        scale = gamma[ch] * inv
        shift = beta[ch] - mean[ch] * scale
        for i in range(n):
            _out_pass(_out_row_as, x[i, ch], res[i, ch], y[i, ch], scale, shift, has_res, relu)


@njit(cache=True, parallel=True, fastmath=_FM)
def _bn_backward(gy, x, gamma, mean, invstd, gx, ggamma, gbeta, y, masked, gm, write):
    n, c, l = x.shape
    m = n * l
    for ch in prange(c):
        mu = np.float64(mean[ch])
        inv = np.float64(invstd[ch])
        sg = 0.0
        sgx = 0.0
        for i in range(n):
            s, sx = _sums_row(gy[i, ch], x[i, ch], y[i, ch], mu, masked)
            sg += s
            sgx += sx
        sgxhat = sgx * inv
        ggamma[ch] = sgxhat
        gbeta[ch] = sg
        k = gamma[ch] * inv / m
        mean_g = sg
        coef = sgxhat * inv
        for i in range(n):
            _grad_row(gy[i, ch], x[i, ch], y[i, ch], gx[i, ch], gm[i, ch], k, m, mean_g, mu, coef,
                      masked, write)


def _cl_copy(a):
    """``a`` (N, C, H, W) as dense channels-last storage (itself when it already is)."""
    return a if _is_cl(a) else np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _cl_kernels(x):
    """True when x takes the channels-last kernels."""
    return _is_cl(x) and x.dtype in (np.float32, np.float64) and x.size


def _like_x(a, x, cl):
    """``a`` (x's shape) in x's dtype and in the layout of the kernels x takes (channels-last
    when ``cl``, else C-contiguous); None gives x itself, a placeholder the kernels ignore."""
    if a is None:
        return x
    a = np.asarray(a, dtype=x.dtype)
    return _cl_copy(a) if cl else np.ascontiguousarray(a)


def batch_norm_train(x, gamma, beta, eps, relu=False, residual=None):
    """Training-mode batch norm over all axes but 1; returns ``(y, mean, var, invstd)`` (biased
    var).  ``y = relu?(bn(x) + residual)`` with ``residual`` (x's shape) added and ``relu``
    applied in the output pass (the backend's batch_norm_train)."""
    x = np.asarray(x)
    c = x.shape[1]
    has_res = residual is not None
    if _cl_kernels(x):
        y = _new_cl(x.shape, x.dtype)
        res = _cl2(_like_x(residual, x, True))
        mean = np.empty(c, x.dtype)
        var = np.empty(c, x.dtype)
        invstd = np.empty(c, x.dtype)
        _bn_train_cl(_cl2(x), _vec(gamma, c, x.dtype, 1.0), _vec(beta, c, x.dtype, 0.0), float(eps),
                     _cl2(y), mean, var, invstd, numba.get_num_threads(), res, has_res, relu)
        return y, mean, var, invstd
    x = _float(x)
    res = _like_x(residual, x, False)
    g = _vec(gamma, c, x.dtype, 1.0)
    b = _vec(beta, c, x.dtype, 0.0)
    y = np.empty_like(x)
    mean = np.empty(c, x.dtype)
    var = np.empty(c, x.dtype)
    invstd = np.empty(c, x.dtype)
    _bn_train(_ncl(x), g, b, float(eps), _ncl(y), mean, var, invstd, _ncl(res), has_res, relu)
    return y, mean, var, invstd


def batch_norm_eval(x, mean, var, gamma, beta, eps, relu=False, residual=None):
    """Batch norm with the given per-channel statistics (inference mode); ``relu`` and
    ``residual`` as in batch_norm_train."""
    x = np.asarray(x)
    c = x.shape[1]
    has_res = residual is not None
    if _cl_kernels(x):
        y = _new_cl(x.shape, x.dtype)
        res = _cl2(_like_x(residual, x, True))
        _bn_eval_cl(_cl2(x), _vec(mean, c, x.dtype, 0.0), _vec(var, c, x.dtype, 1.0),
                    _vec(gamma, c, x.dtype, 1.0), _vec(beta, c, x.dtype, 0.0), float(eps), _cl2(y),
                    res, has_res, relu)
        return y
    x = _float(x)
    res = _like_x(residual, x, False)
    y = np.empty_like(x)
    _bn_eval(_ncl(x), _vec(mean, c, x.dtype, 0.0), _vec(var, c, x.dtype, 1.0),
             _vec(gamma, c, x.dtype, 1.0), _vec(beta, c, x.dtype, 0.0), float(eps), _ncl(y),
             _ncl(res), has_res, relu)
    return y


def batch_norm_backward(gy, x, gamma, mean, invstd):
    """Gradients ``(gx, ggamma, gbeta)`` of training-mode batch norm, one pass per channel."""
    return batch_norm_relu_backward(gy, None, x, gamma, mean, invstd, False)[:3]


def batch_norm_relu_backward(gy, y, x, gamma, mean, invstd, want_masked):
    """``(gx, ggamma, gbeta, gm)``: batch_norm_backward for ``gm = gy where y > 0 else 0``
    (y None: gm = gy, unmasked), gm itself returned when ``want_masked`` (else None); gy is
    read and masked in the same passes that compute gx."""
    x = np.asarray(x)
    c = x.shape[1]
    masked = y is not None
    write = masked and want_masked
    if _cl_kernels(x):
        gy = np.asarray(gy, dtype=x.dtype)
        yv = _like_x(y, x, True)
        if masked and not _is_cl(gy):
            # gy in another layout (a max-pool's backward gives NCHW): mask it while it is
            # transposed, one parallel pass, instead of a transposing copy and a masked read
            gm = np.empty(yv.transpose(0, 2, 3, 1).shape, dtype=x.dtype)
            kernels.relu_grad_cl_nchw(yv.transpose(0, 2, 3, 1), gy, gm)
            gx, ggamma, gbeta, _ = batch_norm_relu_backward(gm.transpose(0, 3, 1, 2), None, x,
                                                            gamma, mean, invstd, False)
            return gx, ggamma, gbeta, gm.transpose(0, 3, 1, 2) if want_masked else None
        gy = _cl_copy(gy)
        gx = _new_cl(x.shape, x.dtype)
        gm = _new_cl(x.shape, x.dtype) if write else gx
        ggamma = np.empty(c, x.dtype)
        gbeta = np.empty(c, x.dtype)
        _bn_backward_cl(_cl2(gy), _cl2(x), _vec(gamma, c, x.dtype, 1.0), _vec(mean, c, x.dtype, 0.0),
                        _vec(invstd, c, x.dtype, 1.0), _cl2(gx), ggamma, gbeta,
                        numba.get_num_threads(), _cl2(yv), masked, _cl2(gm), write)
    else:
        x = _float(x)
        gy = _like_x(gy, x, False)
        yv = _like_x(y, x, False)
        gx = np.empty_like(x)
        gm = np.empty_like(x) if write else gx
        ggamma = np.empty(c, x.dtype)
        gbeta = np.empty(c, x.dtype)
        _bn_backward(_ncl(gy), _ncl(x), _vec(gamma, c, x.dtype, 1.0), _vec(mean, c, x.dtype, 0.0),
                     _vec(invstd, c, x.dtype, 1.0), _ncl(gx), ggamma, gbeta, _ncl(yv), masked,
                     _ncl(gm), write)
    if want_masked:
        return gx, ggamma, gbeta, gm if masked else gy
    return gx, ggamma, gbeta, None


# --- local response norm -----------------------------------------------------

# --- layer norm: each row of a (rows, D) matrix normalised over its D values ----------

@njit(cache=True, parallel=True, fastmath=_FM)
def _ln_forward(x, w, b, eps, y, mean, rstd):
    R, D = x.shape
    for r in prange(R):
        row = x[r]
        s = 0.0
        for j in range(D):
            s += row[j]
        m = s / D
        v = 0.0
        for j in range(D):
            d = row[j] - m
            v += d * d
        rs = 1.0 / np.sqrt(v / D + eps)
        mean[r] = m
        rstd[r] = rs
        out = y[r]
        for j in range(D):
            out[j] = (row[j] - m) * rs * w[j] + b[j]


@njit(cache=True, parallel=True, fastmath=_FM)
def _ln_backward(g, x, w, mean, rstd, gx, gw_part, gb_part, nt):
    R, D = x.shape
    chunk = (R + nt - 1) // nt
    for t in prange(nt):
        gwp = gw_part[t]
        gbp = gb_part[t]
        for r in range(t * chunk, min(R, (t + 1) * chunk)):
            m = mean[r]
            rs = rstd[r]
            gr = g[r]
            xr = x[r]
            a = 0.0       # sum of g*w, and of g*w*xhat, over the row
            c = 0.0
            for j in range(D):
                h = (xr[j] - m) * rs
                gh = gr[j] * w[j]
                a += gh
                c += gh * h
                gwp[j] += gr[j] * h
                gbp[j] += gr[j]
            a /= D
            c /= D
            out = gx[r]
            for j in range(D):
                h = (xr[j] - m) * rs
                out[j] = rs * (gr[j] * w[j] - a - h * c)


def layer_norm(x, w, b, eps):
    """(y, mean, rstd) of layer norm over the rows of a (rows, D) float array: y = (x - mean)
    * rstd * w + b, rstd = 1 / sqrt(biased variance + eps); w, b (D,) of x's dtype (ones and
    zeros when None).  mean and rstd (float64 per row) are what layer_norm_backward needs."""
    x = np.ascontiguousarray(x)
    R, D = x.shape
    w = _vec(w, D, x.dtype, 1.0)
    b = _vec(b, D, x.dtype, 0.0)
    y = np.empty_like(x)
    mean = np.empty(R, np.float64)
    rstd = np.empty(R, np.float64)
    _ln_forward(x, w, b, eps, y, mean, rstd)
    return y, mean, rstd


def layer_norm_backward(g, x, w, mean, rstd):
    """(gx, gw, gb) of layer_norm for the output gradient g (rows, D); gw and gb sum over
    the rows (x's dtype)."""
    x = np.ascontiguousarray(x)
    R, D = x.shape
    g = np.ascontiguousarray(g, dtype=x.dtype)
    w = _vec(w, D, x.dtype, 1.0)
    nt = numba.get_num_threads()
    gx = np.empty_like(x)
    gw_part = np.zeros((nt, D), np.float64)
    gb_part = np.zeros((nt, D), np.float64)
    _ln_backward(g, x, w, mean, rstd, gx, gw_part, gb_part, nt)
    return gx, gw_part.sum(axis=0).astype(x.dtype), gb_part.sum(axis=0).astype(x.dtype)


@njit(cache=True, fastmath=_FM, inline="always")
def _pow_neg(s, beta):
    """``s ** -beta``; AlexNet's beta = 0.75 through square roots (much cheaper than pow)."""
    if beta == 0.75:
        r = np.sqrt(s)
        return 1.0 / (r * np.sqrt(r))
    return s ** (-beta)


@njit(cache=True, parallel=True, fastmath=_FM)
def _lrn(x, size, alpha, beta, k, y, scale):
    n, c, l = x.shape
    lo = size // 2
    hi = (size - 1) // 2
    a = alpha / size
    for i in prange(n):
        acc = np.zeros(l, np.float64)
        for ch in range(c):
            acc[:] = 0.0
            for cc in range(max(0, ch - lo), min(c, ch + hi + 1)):
                for j in range(l):
                    v = np.float64(x[i, cc, j])
                    acc[j] += v * v
            for j in range(l):
                s = k + a * acc[j]
                scale[i, ch, j] = s
                y[i, ch, j] = x[i, ch, j] * _pow_neg(s, beta)


@njit(cache=True, parallel=True, fastmath=_FM)
def _lrn_backward(x, y, scale, gy, size, alpha, beta, k, gx):
    n, c, l = x.shape
    lo = size // 2
    hi = (size - 1) // 2
    coef = 2.0 * alpha * beta / size
    for i in prange(n):
        r = np.empty((c, l), np.float64)
        for o in range(c):
            for j in range(l):
                r[o, j] = np.float64(gy[i, o, j]) * y[i, o, j] / scale[i, o, j]
        acc = np.zeros(l, np.float64)
        for ch in range(c):
            # output channels o whose window contains ch: ch - hi <= o <= ch + lo
            acc[:] = 0.0
            for o in range(max(0, ch - hi), min(c, ch + lo + 1)):
                for j in range(l):
                    acc[j] += r[o, j]
            for j in range(l):
                s = np.float64(scale[i, ch, j])
                gx[i, ch, j] = gy[i, ch, j] * _pow_neg(s, beta) - coef * x[i, ch, j] * acc[j]


def lrn(x, size, alpha, beta, k):
    """Local response norm across channels (PyTorch's formula); returns ``(y, scale)``."""
    x = _float(x)
    y = np.empty_like(x)
    scale = np.empty_like(x)
    _lrn(_ncl(x), int(size), float(alpha), float(beta), float(k), _ncl(y), _ncl(scale))
    return y, scale


def lrn_backward(x, y, scale, gy, size, alpha, beta, k):
    """Gradient of local response norm with respect to its input."""
    x = _float(x)
    dt = x.dtype
    y = np.ascontiguousarray(np.asarray(y, dtype=dt))
    scale = np.ascontiguousarray(np.asarray(scale, dtype=dt))
    gy = np.ascontiguousarray(np.asarray(gy, dtype=dt))
    gx = np.empty_like(x)
    _lrn_backward(_ncl(x), _ncl(y), _ncl(scale), _ncl(gy), int(size), float(alpha), float(beta),
                  float(k), _ncl(gx))
    return gx
