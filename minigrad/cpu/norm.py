"""CPU kernels for batch, layer and local response normalisation.

The batch-norm and LRN kernels view their input as ``(N, C, L)`` (``L`` = product of the
spatial dimensions, 1 for ``(N, C)`` input), layer norm as ``(rows, D)``; each kernel runs
one ``parallel=True`` Numba loop and accumulates sums in float64 whatever the storage dtype
(float32 or float64).
"""

import numba
import numpy as np
from numba import njit, prange

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


# --- batch norm on channels-last storage --------------------------------------
# x is viewed as a dense (M, C) matrix (M = N*H*W); each thread reduces a block
# of rows into its own row of partial sums (float64), then the sums are combined.

@njit(cache=True, parallel=True, fastmath=_FM)
def _bn_train_cl(x, gamma, beta, eps, y, mean_out, var_out, invstd_out, nt):
    m, c = x.shape
    chunk = (m + nt - 1) // nt
    part = np.zeros((nt, c), np.float64)
    for t in prange(nt):
        for i in range(t * chunk, min(m, (t + 1) * chunk)):
            for ch in range(c):
                part[t, ch] += x[i, ch]
    mu = np.zeros(c, np.float64)
    for t in range(nt):
        for ch in range(c):
            mu[ch] += part[t, ch]
    for ch in range(c):
        mu[ch] /= m
    part[:, :] = 0.0
    for t in prange(nt):
        for i in range(t * chunk, min(m, (t + 1) * chunk)):
            for ch in range(c):
                d = x[i, ch] - mu[ch]
                part[t, ch] += d * d
    scale = np.empty(c, x.dtype)
    shift = np.empty(c, x.dtype)
    for ch in range(c):
        ss = 0.0
        for t in range(nt):
            ss += part[t, ch]
        var = ss / m
        inv = 1.0 / np.sqrt(var + eps)
        scale[ch] = gamma[ch] * inv
        shift[ch] = beta[ch] - mu[ch] * gamma[ch] * inv
        mean_out[ch] = mu[ch]
        var_out[ch] = var
        invstd_out[ch] = inv
    for t in prange(nt):
        for i in range(t * chunk, min(m, (t + 1) * chunk)):
            for ch in range(c):
                y[i, ch] = x[i, ch] * scale[ch] + shift[ch]


@njit(cache=True, parallel=True, fastmath=_FM)
def _bn_eval_cl(x, mean, var, gamma, beta, eps, y):
    m, c = x.shape
    scale = np.empty(c, x.dtype)
    shift = np.empty(c, x.dtype)
    for ch in range(c):
        inv = 1.0 / np.sqrt(np.float64(var[ch]) + eps)
        scale[ch] = gamma[ch] * inv
        shift[ch] = beta[ch] - mean[ch] * gamma[ch] * inv
    for i in prange(m):
        for ch in range(c):
            y[i, ch] = x[i, ch] * scale[ch] + shift[ch]


@njit(cache=True, parallel=True, fastmath=_FM)
def _bn_backward_cl(gy, x, gamma, mean, invstd, gx, ggamma, gbeta, nt):
    m, c = x.shape
    chunk = (m + nt - 1) // nt
    psg = np.zeros((nt, c), np.float64)
    psgx = np.zeros((nt, c), np.float64)
    mu = np.empty(c, x.dtype)
    for ch in range(c):
        mu[ch] = mean[ch]
    for t in prange(nt):
        for i in range(t * chunk, min(m, (t + 1) * chunk)):
            for ch in range(c):
                g = gy[i, ch]
                psg[t, ch] += g
                psgx[t, ch] += g * (x[i, ch] - mu[ch])
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
            for ch in range(c):
                gx[i, ch] = a[ch] * gy[i, ch] + bcoef[ch] * (x[i, ch] - mu[ch]) + d[ch]


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
def _bn_train(x, gamma, beta, eps, y, mean_out, var_out, invstd_out):
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
            for j in range(l):
                y[i, ch, j] = x[i, ch, j] * scale + shift
        mean_out[ch] = mu
        var_out[ch] = var
        invstd_out[ch] = inv


@njit(cache=True, parallel=True, fastmath=_FM)
def _bn_eval(x, mean, var, gamma, beta, eps, y):
    n, c, l = x.shape
    for ch in prange(c):
        inv = 1.0 / np.sqrt(np.float64(var[ch]) + eps)
        scale = gamma[ch] * inv
        shift = beta[ch] - mean[ch] * scale
        for i in range(n):
            for j in range(l):
                y[i, ch, j] = x[i, ch, j] * scale + shift


@njit(cache=True, parallel=True, fastmath=_FM)
def _bn_backward(gy, x, gamma, mean, invstd, gx, ggamma, gbeta):
    n, c, l = x.shape
    m = n * l
    for ch in prange(c):
        mu = np.float64(mean[ch])
        inv = np.float64(invstd[ch])
        sg = 0.0
        sgx = 0.0
        for i in range(n):
            for j in range(l):
                g = np.float64(gy[i, ch, j])
                sg += g
                sgx += g * (x[i, ch, j] - mu)
        sgxhat = sgx * inv
        ggamma[ch] = sgxhat
        gbeta[ch] = sg
        k = gamma[ch] * inv / m
        mean_g = sg
        coef = sgxhat * inv
        for i in range(n):
            for j in range(l):
                gx[i, ch, j] = k * (m * gy[i, ch, j] - mean_g - (x[i, ch, j] - mu) * coef)


def batch_norm_train(x, gamma, beta, eps):
    """Training-mode batch norm over all axes but 1; returns ``(y, mean, var, invstd)`` (biased var)."""
    x = np.asarray(x)
    c = x.shape[1]
    if _is_cl(x) and x.dtype in (np.float32, np.float64) and x.size:
        y = _new_cl(x.shape, x.dtype)
        mean = np.empty(c, x.dtype)
        var = np.empty(c, x.dtype)
        invstd = np.empty(c, x.dtype)
        _bn_train_cl(_cl2(x), _vec(gamma, c, x.dtype, 1.0), _vec(beta, c, x.dtype, 0.0), float(eps),
                     _cl2(y), mean, var, invstd, numba.get_num_threads())
        return y, mean, var, invstd
    x = _float(x)
    g = _vec(gamma, c, x.dtype, 1.0)
    b = _vec(beta, c, x.dtype, 0.0)
    y = np.empty_like(x)
    mean = np.empty(c, x.dtype)
    var = np.empty(c, x.dtype)
    invstd = np.empty(c, x.dtype)
    _bn_train(_ncl(x), g, b, float(eps), _ncl(y), mean, var, invstd)
    return y, mean, var, invstd


def batch_norm_eval(x, mean, var, gamma, beta, eps):
    """Batch norm with the given per-channel statistics (inference mode)."""
    x = np.asarray(x)
    c = x.shape[1]
    if _is_cl(x) and x.dtype in (np.float32, np.float64) and x.size:
        y = _new_cl(x.shape, x.dtype)
        _bn_eval_cl(_cl2(x), _vec(mean, c, x.dtype, 0.0), _vec(var, c, x.dtype, 1.0),
                    _vec(gamma, c, x.dtype, 1.0), _vec(beta, c, x.dtype, 0.0), float(eps), _cl2(y))
        return y
    x = _float(x)
    y = np.empty_like(x)
    _bn_eval(_ncl(x), _vec(mean, c, x.dtype, 0.0), _vec(var, c, x.dtype, 1.0),
             _vec(gamma, c, x.dtype, 1.0), _vec(beta, c, x.dtype, 0.0), float(eps), _ncl(y))
    return y


def batch_norm_backward(gy, x, gamma, mean, invstd):
    """Gradients ``(gx, ggamma, gbeta)`` of training-mode batch norm, one pass per channel."""
    x = np.asarray(x)
    c = x.shape[1]
    if _is_cl(x) and x.dtype in (np.float32, np.float64) and x.size:
        gy = np.asarray(gy, dtype=x.dtype)
        if not _is_cl(gy):
            gy = np.ascontiguousarray(gy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        gx = _new_cl(x.shape, x.dtype)
        ggamma = np.empty(c, x.dtype)
        gbeta = np.empty(c, x.dtype)
        _bn_backward_cl(_cl2(gy), _cl2(x), _vec(gamma, c, x.dtype, 1.0), _vec(mean, c, x.dtype, 0.0),
                        _vec(invstd, c, x.dtype, 1.0), _cl2(gx), ggamma, gbeta,
                        numba.get_num_threads())
        return gx, ggamma, gbeta
    x = _float(x)
    gy = np.ascontiguousarray(np.asarray(gy, dtype=x.dtype))
    gx = np.empty_like(x)
    ggamma = np.empty(c, x.dtype)
    gbeta = np.empty(c, x.dtype)
    _bn_backward(_ncl(gy), _ncl(x), _vec(gamma, c, x.dtype, 1.0), _vec(mean, c, x.dtype, 0.0),
                 _vec(invstd, c, x.dtype, 1.0), _ncl(gx), ggamma, gbeta)
    return gx, ggamma, gbeta


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
