"""NumPy float64 reference implementations shared by the CPU and CUDA tests."""

import numpy as np


def conv2d(x, w, b, stride, padding, dilation):
    """Direct cross-correlation in float64 (N,C,H,W) * (K,C,R,S)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    OH = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    y = np.zeros((N, K, OH, OW))
    for r in range(R):
        for s in range(S):
            patch = xp[:, :, r * dh: r * dh + sh * (OH - 1) + 1: sh, s * dw: s * dw + sw * (OW - 1) + 1: sw]
            y += np.einsum("nchw,kc->nkhw", patch, w[:, :, r, s])
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def conv2d_grads(x, w, gy, stride, padding, dilation):
    """(gx, gw, gb) of conv2d by the adjoint of the same loops, in float64."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    gy = np.asarray(gy, np.float64)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    OH, OW = gy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    for r in range(R):
        for s in range(S):
            hs = slice(r * dh, r * dh + sh * (OH - 1) + 1, sh)
            ws = slice(s * dw, s * dw + sw * (OW - 1) + 1, sw)
            gw[:, :, r, s] = np.einsum("nchw,nkhw->kc", xp[:, :, hs, ws], gy)
            gxp[:, :, hs, ws] += np.einsum("nkhw,kc->nchw", gy, w[:, :, r, s])
    gx = gxp[:, :, ph: ph + H, pw: pw + W]
    return gx, gw, gy.sum(axis=(0, 2, 3))


def _windows(H, k, s, p):
    O = (H + 2 * p - k) // s + 1
    return O, [(o * s - p, o * s - p + k) for o in range(O)]


def max_pool2d(x, kernel, stride, padding):
    """(y, gx_fn) where gx_fn(gy) routes gradients to the first maximum of each window."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    OH, hwin = _windows(H, kernel[0], stride[0], padding[0])
    OW, wwin = _windows(W, kernel[1], stride[1], padding[1])
    y = np.zeros((N, C, OH, OW))
    arg = np.zeros((N, C, OH, OW), np.int64)
    for i, (h0, h1) in enumerate(hwin):
        for j, (w0, w1) in enumerate(wwin):
            hs, he, ws, we = max(h0, 0), min(h1, H), max(w0, 0), min(w1, W)
            win = x[:, :, hs:he, ws:we].reshape(N, C, -1)
            k = win.argmax(-1)
            y[:, :, i, j] = np.take_along_axis(win, k[..., None], -1)[..., 0]
            arg[:, :, i, j] = (hs + k // (we - ws)) * W + ws + k % (we - ws)

    def backward(gy):
        gx = np.zeros((N, C, H * W))
        for n in range(N):
            for c in range(C):
                np.add.at(gx[n, c], arg[n, c].ravel(), np.asarray(gy, np.float64)[n, c].ravel())
        return gx.reshape(N, C, H, W)

    return y, backward


def avg_pool2d(x, kernel, stride, padding, count_include_pad):
    """(y, gx_fn) with PyTorch's divisor rules (ceil_mode=False)."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    ph, pw = padding
    OH, hwin = _windows(H, kernel[0], stride[0], ph)
    OW, wwin = _windows(W, kernel[1], stride[1], pw)
    y = np.zeros((N, C, OH, OW))
    divs = np.zeros((OH, OW))
    for i, (h0, h1) in enumerate(hwin):
        for j, (w0, w1) in enumerate(wwin):
            hs, he, ws, we = max(h0, 0), min(h1, H), max(w0, 0), min(w1, W)
            if count_include_pad:
                d = (min(h1, H + ph) - h0) * (min(w1, W + pw) - w0)
            else:
                d = (he - hs) * (we - ws)
            divs[i, j] = d
            y[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / d

    def backward(gy):
        gy = np.asarray(gy, np.float64)
        gx = np.zeros((N, C, H, W))
        for i, (h0, h1) in enumerate(hwin):
            for j, (w0, w1) in enumerate(wwin):
                gx[:, :, max(h0, 0):min(h1, H), max(w0, 0):min(w1, W)] += (gy[:, :, i, j] / divs[i, j])[:, :, None, None]
        return gx

    return y, backward


def log_softmax(x, axis):
    """Stable log-softmax in float64."""
    x = np.asarray(x, np.float64)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def cross_entropy(logits, labels, smoothing):
    """Per-sample loss, probabilities and logit gradient (for unit loss gradients)."""
    lp = log_softmax(logits, 1)
    N, C = lp.shape
    target = np.full((N, C), smoothing / C)
    target[np.arange(N), labels] += 1 - smoothing
    loss = -(target * lp).sum(1)
    probs = np.exp(lp)
    return loss, probs, probs - target


def batch_norm(x, gamma, beta, eps):
    """Training-mode batch norm: y, mean, biased var, invstd (float64)."""
    x = np.asarray(x, np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axes)
    var = x.var(axes)
    inv = 1 / np.sqrt(var + eps)
    y = (x - mean.reshape(shape)) * inv.reshape(shape) * np.asarray(gamma, np.float64).reshape(shape) \
        + np.asarray(beta, np.float64).reshape(shape)
    return y, mean, var, inv


def batch_norm_grads(x, gamma, gy, eps):
    """(gx, ggamma, gbeta) of training-mode batch norm."""
    x = np.asarray(x, np.float64)
    gy = np.asarray(gy, np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    M = x.size / x.shape[1]
    mean = x.mean(axes).reshape(shape)
    inv = (1 / np.sqrt(x.var(axes) + eps)).reshape(shape)
    xhat = (x - mean) * inv
    gb = gy.sum(axes)
    gg = (gy * xhat).sum(axes)
    gx = np.asarray(gamma, np.float64).reshape(shape) * inv / M * (
        M * gy - gb.reshape(shape) - xhat * gg.reshape(shape))
    return gx, gg, gb


def lrn(x, size, alpha, beta, k):
    """PyTorch's local response norm across channels (float64)."""
    x = np.asarray(x, np.float64)
    C = x.shape[1]
    sq = x ** 2
    s = np.zeros_like(x)
    for c in range(C):
        lo, hi = max(0, c - size // 2), min(C, c + (size - 1) // 2 + 1)
        s[:, c] = sq[:, lo:hi].sum(1)
    return x / (k + alpha / size * s) ** beta


def sgd(p, g, buf, lr, momentum, dampening, nesterov, wd, first):
    """PyTorch's SGD rule; returns (p, buf)."""
    d = g + wd * p
    if momentum:
        buf = d.copy() if first else momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf


def adam(p, g, m, v, t, lr, b1, b2, eps, wd, decoupled):
    """PyTorch's Adam / AdamW rule; returns (p, m, v)."""
    if decoupled:
        p = p * (1 - lr * wd)
    else:
        g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom = np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps
    return p - lr / (1 - b1 ** t) * m / denom, m, v
