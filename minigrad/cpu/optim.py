"""CPU kernels for in-place optimizer updates (PyTorch's SGD and Adam/AdamW rules)."""

import math

import numpy as np
from numba import njit, prange

from ._jit import pjit


@pjit()
def _sgd(p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first, use_buf):
    for i in prange(p.size):
        d = g[i] + weight_decay * p[i] if weight_decay != 0.0 else np.float64(g[i])
        if use_buf:
            if first:
                b = d
            else:
                b = momentum * buf[i] + (1.0 - dampening) * d
            buf[i] = b
            if nesterov:
                d = d + momentum * b
            else:
                d = b
        p[i] = p[i] - lr * d


# Always the parallel compilation, unlike pjit's kernels: LLVM vectorises this loop only in
# Numba's parallel (gufunc) form, and the serial copy ran 14x slower per element (48,000
# float32 parameters, one thread: 185 us against 13 us on two threads); LeNet-5's Adam step
# (10 tensors, all under pjit's size limit) spent 0.24 ms of a 2.5 ms train step there
# (BENCHMARKS_perf.md, change 140).
@njit(parallel=True, cache=True)
def _adam(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step_size, bc2_sqrt):
    for i in prange(p.size):
        pi = np.float64(p[i])
        gi = np.float64(g[i])
        if decoupled:
            pi = pi * (1.0 - lr * weight_decay)
        elif weight_decay != 0.0:
            gi = gi + weight_decay * pi
        mi = beta1 * m[i] + (1.0 - beta1) * gi
        vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = pi - step_size * mi / (np.sqrt(vi) / bc2_sqrt + eps)


def _flat_inplace(a):
    """A flat view of ``a`` when it is contiguous, else a contiguous copy (written back later)."""
    if a.flags.c_contiguous:
        return a.reshape(-1), False
    return np.ascontiguousarray(a).reshape(-1), True


def sgd_step_(p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first):
    """One PyTorch SGD update of ``p`` in place (and of the momentum buffer ``buf`` unless None)."""
    pf, p_copy = _flat_inplace(p)
    gf = np.ascontiguousarray(g, dtype=p.dtype).reshape(-1)
    use_buf = buf is not None and momentum != 0
    if use_buf:
        bf, b_copy = _flat_inplace(buf)
    else:
        bf, b_copy = np.empty(1, p.dtype), False
    _sgd(pf, gf, bf, float(lr), float(momentum), float(dampening), bool(nesterov),
         float(weight_decay), bool(first), use_buf)
    if p_copy:
        np.copyto(p, pf.reshape(p.shape))
    if b_copy:
        np.copyto(buf, bf.reshape(buf.shape))


def adam_step_(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    """One PyTorch Adam (``decoupled=False``) or AdamW update of ``p``, ``m``, ``v`` in place.

    ``step`` is the 1-based count of this update (used for bias correction).
    """
    pf, p_copy = _flat_inplace(p)
    mf, m_copy = _flat_inplace(m)
    vf, v_copy = _flat_inplace(v)
    gf = np.ascontiguousarray(g, dtype=p.dtype).reshape(-1)
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    _adam(pf, gf, mf, vf, float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
          bool(decoupled), float(lr) / bc1, math.sqrt(bc2))
    for arr, flat, copied in ((p, pf, p_copy), (m, mf, m_copy), (v, vf, v_copy)):
        if copied:
            np.copyto(arr, flat.reshape(arr.shape))
