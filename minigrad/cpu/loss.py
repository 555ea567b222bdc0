"""CPU kernels for the fused softmax cross-entropy (one pass forward, one backward)."""

import numpy as np
from numba import prange

from ._jit import pjit


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
        # smoothing term: mean over classes of -log p_j = lse - mean(x)
        smooth = lse - sx / c
        loss[i] = (1.0 - eps) * nll + eps * smooth


@pjit()
def _sce_backward(probs, labels, eps, gloss, gx):
    n, c = probs.shape
    off = eps / c
    for i in prange(n):
        g = gloss[i]
        for j in range(c):
            gx[i, j] = g * (probs[i, j] - off)
        gx[i, labels[i]] -= g * (1.0 - eps)


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
