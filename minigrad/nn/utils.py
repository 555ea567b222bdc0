"""Gradient utilities: ``clip_grad_norm_``."""

import math

import numpy as np

from ..tensor import Tensor


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale the gradients so that their global L2 norm is at most ``max_norm`` (as PyTorch).

    Returns the total norm before clipping as a 0-d float32 Tensor on the CPU.
    Only ``norm_type=2`` is supported.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    if float(norm_type) != 2.0:
        raise ValueError(f"clip_grad_norm_: only norm_type=2 is supported, got {norm_type}")
    params = [p for p in parameters if p.grad is not None]
    total = math.sqrt(sum(p.grad.be.sum_of_squares(p.grad.data) for p in params)) if params else 0.0
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total gradient norm is {total}")
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1.0:
        for p in params:
            g = p.grad
            g.be.copy_(g.data, g.be.scalar("mul", g.data, coef))
    return Tensor(np.asarray(total, dtype=np.float32))
