"""Numerically stable ``log_softmax`` and ``softmax`` along an axis."""

from ..autograd import Function


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
        addends = getattr(self, "grad_addends", None)
        return (self.be.log_softmax_backward(y, g, self.axis, addends[0] if addends else None),)


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


def log_softmax(x, dim=-1, *, axis=None):
    """Log-softmax along ``dim`` (``axis`` is accepted too)."""
    if axis is not None:
        dim = axis
    if x.ndim == 0:
        raise ValueError("log_softmax needs at least one dimension")
    return LogSoftmax.apply(x, axis=dim % x.ndim)


def softmax(x, dim=-1, *, axis=None):
    """Softmax along ``dim`` (``axis`` is accepted too)."""
    if axis is not None:
        dim = axis
    if x.ndim == 0:
        raise ValueError("softmax needs at least one dimension")
    if x.dtype.kind != "f":
        x = x.float()
    return Softmax.apply(x, axis=dim % x.ndim)


TENSOR_METHODS = {"log_softmax": log_softmax, "softmax": softmax}
