"""Reductions over axes: sum, mean, max (and min, var) with ``keepdims``."""

import builtins

import numpy as np

from ..autograd import Function


def normalize_axes(axis, ndim, what="axis"):
    """``axis`` (None, int or sequence) as a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (axis,)
    out = []
    for a in axis:
        a = int(a)
        if not -ndim <= a < builtins.max(ndim, 1):
            raise ValueError(f"{what} {a} is out of range for a tensor with {ndim} dimensions")
        out.append(a % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated {what} in {tuple(axis)}")
    return tuple(sorted(out))


def _kept_shape(shape, axes):
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


class Sum(Function):
    """Sum over ``axes``."""

    def forward(self, x, axes, keepdims):
        self.x_shape, self.axes = x.shape, axes
        return self.be.sum(x, axes, keepdims)

    def backward(self, g):
        be = self.be
        g = be.reshape(g, _kept_shape(self.x_shape, self.axes))
        return (be.broadcast_to(g, self.x_shape),)


class Max(Function):
    """Maximum over ``axes``; tied maxima share the gradient equally (as ``torch.amax``)."""

    def forward(self, x, axes, keepdims):
        self.axes = axes
        out = self.be.max(x, axes, keepdims)
        self.save(x, out)
        return out

    def backward(self, g):
        be = self.be
        x, out = self.saved
        kept = _kept_shape(x.shape, self.axes)
        mask = be.binary("eq", x, be.reshape(out, kept))
        count = be.sum(mask, self.axes, True)
        g = be.binary("div", be.reshape(g, kept), count)
        return (be.binary("mul", mask, g),)


def _reduce_args(x, axis, keepdims, dim, keepdim):
    if dim is not None:
        axis = dim
    if keepdim is not None:
        keepdims = keepdim
    return normalize_axes(axis, x.ndim), bool(keepdims)


def sum(x, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001
    """Sum over ``axis`` (None: all); ``dim``/``keepdim`` are accepted as in PyTorch."""
    axes, keepdims = _reduce_args(x, axis, keepdims, dim, keepdim)
    return Sum.apply(x, axes=axes, keepdims=keepdims)


def mean(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Mean over ``axis``."""
    axes, keepdims = _reduce_args(x, axis, keepdims, dim, keepdim)
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    if count == 0:
        raise ValueError(f"mean over an empty selection of a tensor of shape {x.shape}")
    # Scaling before summing keeps the mean finite where the float32 sum would overflow.
    return Sum.apply(x * (1.0 / count), axes=axes, keepdims=keepdims)


def max(x, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001
    """Maximum over ``axis`` (values only, like ``torch.amax``)."""
    axes, keepdims = _reduce_args(x, axis, keepdims, dim, keepdim)
    if any(x.shape[a] == 0 for a in axes):
        raise ValueError(f"max over an empty dimension of a tensor of shape {x.shape}")
    return Max.apply(x, axes=axes, keepdims=keepdims)


def min(x, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001
    """Minimum over ``axis``."""
    return -max(-x, axis, keepdims, dim=dim, keepdim=keepdim)


def var(x, axis=None, keepdims=False, unbiased=True):
    """Variance over ``axis`` (unbiased by default, as PyTorch)."""
    axes = normalize_axes(axis, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    centred = x - mean(x, axes, keepdims=True)
    return sum(centred * centred, axes, keepdims) * (1.0 / (count - 1 if unbiased else count))


def _arg_extreme(np_fn, x, axis, keepdims, dim, keepdim):
    from ..tensor import Tensor

    if dim is not None:
        axis = dim
    if keepdim is not None:
        keepdims = keepdim
    if axis is None:
        if 0 in x.shape:
            raise ValueError(f"{np_fn.__name__} of an empty tensor of shape {x.shape}")
        return Tensor(np.asarray(np_fn(x.numpy())), device=x.device)
    (axis,) = normalize_axes(axis, x.ndim, "dim")
    if x.shape[axis] == 0:
        raise ValueError(f"{np_fn.__name__} over an empty dimension {axis} of a tensor of shape "
                         f"{x.shape}")
    return Tensor(np_fn(x.numpy(), axis=axis, keepdims=bool(keepdims)), device=x.device)


def argmax(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Indices of the maxima along ``axis`` (``dim``), or into the flattened tensor when None
    (int64, no gradient; the first one among ties, as PyTorch)."""
    return _arg_extreme(np.argmax, x, axis, keepdims, dim, keepdim)


def argmin(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Indices of the minima, as :func:`argmax`."""
    return _arg_extreme(np.argmin, x, axis, keepdims, dim, keepdim)


TENSOR_METHODS = {"sum": sum, "mean": mean, "max": max, "min": min, "var": var, "argmax": argmax,
                  "argmin": argmin, "amax": max}
