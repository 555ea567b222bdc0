"""Numerically stable ``log_softmax`` and ``softmax`` along an axis."""

import numpy as np

from ..autograd import Function
from .reduce import normalize_axes


class LogSoftmax(Function):
    """log(softmax(x)) computed as x - max - log(sum(exp(x - max))).

    The backward adds the gradient already gathered for x (see ``autograd``) in its own
    pass over the rows."""

    grad_addend_inputs = (0,)

    def forward(self, x, axis):
        self.axis = axis
        y = self.be.log_softmax(x, axis)
        self.save(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        return (self.be.log_softmax_backward(y, g, self.axis, self.grad_addend(0)[0]),)


class Softmax(Function):
    """softmax along an axis in one backend call each way (``softmax``, ``softmax_backward``)."""

    def forward(self, x, axis):
        self.axis = axis
        y = self.be.softmax(x, axis)
        self.save(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        return (self.be.softmax_backward(y, g, self.axis),)


def _one_dim(dim, ndim, what):
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"{what}: dim must be an integer, got {dim!r}")
    return normalize_axes(dim, ndim, f"{what}: dim")[0]


def log_softmax(x, dim=-1, *, axis=None):
    """Log-softmax along ``dim`` (``axis`` is accepted too)."""
    if axis is not None:
        dim = axis
    if x.ndim == 0:
        raise ValueError("log_softmax needs at least one dimension")
    dim = _one_dim(dim, x.ndim, "log_softmax")
    return LogSoftmax.apply(x, axis=dim)


def softmax(x, dim=-1, *, axis=None):
    """Softmax along ``dim`` (``axis`` is accepted too)."""
    if axis is not None:
        dim = axis
    if x.ndim == 0:
        raise ValueError("softmax needs at least one dimension")
    dim = _one_dim(dim, x.ndim, "softmax")
    if x.dtype.kind != "f":
        x = x.float()
    return Softmax.apply(x, axis=dim)


TENSOR_METHODS = {"log_softmax": log_softmax, "softmax": softmax}
