"""Elementwise ops with NumPy broadcasting: arithmetic, activations, comparisons."""

import math

import numpy as np

from ..autograd import Function
from ..tensor import Tensor, is_number


class _Binary(Function):
    """Broadcasting binary op; subclasses give the gradients before un-broadcasting."""

    op = None

    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        self.save(a, b)
        return self.be.binary(self.op, a, b)

    def backward(self, g):
        ga, gb = self.grads(g)
        sa, sb = self.shapes
        be = self.be
        if ga is not None and ga.shape != sa:
            ga = be.sum_to_shape(ga, sa)
        if gb is not None and gb.shape != sb:
            gb = be.sum_to_shape(gb, sb)
        return ga, gb


class Add(_Binary):
    """a + b"""

    op = "add"

    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return self.be.binary("add", a, b)

    def grads(self, g):
        return g, g


class Sub(_Binary):
    """a - b"""

    op = "sub"

    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return self.be.binary("sub", a, b)

    def grads(self, g):
        return g, (self.be.unary("neg", g) if self.needs_grad[1] else None)


class Mul(_Binary):
    """a * b"""

    op = "mul"

    def grads(self, g):
        a, b = self.saved
        be = self.be
        return (be.binary("mul", g, b) if self.needs_grad[0] else None,
                be.binary("mul", g, a) if self.needs_grad[1] else None)


class Div(_Binary):
    """a / b"""

    op = "div"

    def grads(self, g):
        a, b = self.saved
        be = self.be
        ga = be.binary("div", g, b) if self.needs_grad[0] else None
        gb = None
        if self.needs_grad[1]:
            gb = be.unary("neg", be.binary("div", be.binary("mul", g, a), be.binary("mul", b, b)))
        return ga, gb


class Pow(_Binary):
    """a ** b for two tensors (``a`` must be positive where ``b``'s gradient is needed)."""

    op = "pow"

    def forward(self, a, b):
        out = super().forward(a, b)
        self.out = out
        return out

    def grads(self, g):
        a, b = self.saved
        be = self.be
        ga = gb = None
        if self.needs_grad[0]:
            ga = be.binary("mul", g, be.binary("mul", b, be.binary("pow", a, be.scalar("sub", b, 1.0))))
        if self.needs_grad[1]:
            gb = be.binary("mul", g, be.binary("mul", self.out, be.unary("log", a)))
        return ga, gb


class _Extremum(_Binary):
    """Elementwise maximum/minimum; ties send half the gradient to each side (as PyTorch)."""

    wins = None  # comparison that selects ``a``

    def grads(self, g):
        a, b = self.saved
        be = self.be
        eq = be.scalar("mul", be.binary("eq", a, b), 0.5)
        wa = be.binary("add", be.binary(self.wins, a, b), eq)
        ga = be.binary("mul", g, wa) if self.needs_grad[0] else None
        gb = be.binary("mul", g, be.scalar("sub", wa, 1.0, reverse=True)) if self.needs_grad[1] else None
        return ga, gb


class Maximum(_Extremum):
    """Elementwise maximum."""

    op, wins = "maximum", "gt"


class Minimum(_Extremum):
    """Elementwise minimum."""

    op, wins = "minimum", "lt"


class Scalar(Function):
    """``op(x, s)`` (or ``op(s, x)`` when ``reverse``) with a Python scalar ``s``."""

    def forward(self, x, op, s, reverse=False):
        self.op, self.s, self.reverse = op, s, reverse
        out = self.be.scalar(op, x, s, reverse)
        if op in ("mul", "add", "sub"):
            return out
        self.save(x, out)
        return out

    def backward(self, g):
        be, op, s = self.be, self.op, self.s
        if op == "add":
            return (g,)
        if op == "sub":
            return (be.unary("neg", g) if self.reverse else g,)
        if op == "mul":
            return (be.scalar("mul", g, s),)
        x, out = self.saved
        if op == "div":
            if not self.reverse:
                return (be.scalar("div", g, s),)
            return (be.binary("mul", g, be.unary("neg", be.binary("div", out, x))),)
        if op == "pow":
            if not self.reverse:
                if s == 2:
                    return (be.binary("mul", g, be.scalar("mul", x, 2.0)),)
                return (be.binary("mul", g, be.scalar("mul", be.scalar("pow", x, s - 1), s)),)
            return (be.binary("mul", g, be.scalar("mul", out, float(np.log(s)))),)
        if op in ("maximum", "minimum"):
            cmp = "gt" if op == "maximum" else "lt"
            w = be.binary("add", be.scalar(cmp, x, s), be.scalar("mul", be.scalar("eq", x, s), 0.5))
            return (be.binary("mul", g, w),)
        raise ValueError(f"no gradient for scalar op {op!r}")


class Unary(Function):
    """Elementwise function of one tensor."""

    def forward(self, x, op):
        self.op = op
        out = self.be.unary(op, x)
        self.save(x, out)
        return out

    def backward(self, g):
        be, op = self.be, self.op
        x, out = self.saved
        if op == "neg":
            return (be.unary("neg", g),)
        if op == "exp":
            return (be.binary("mul", g, out),)
        if op == "log":
            return (be.binary("div", g, x),)
        if op == "sqrt":
            return (be.binary("div", g, be.scalar("mul", out, 2.0)),)
        if op in ("relu", "sigmoid", "tanh"):
            return (be.activation_grad(op, out, g),)
        if op == "abs":
            return (be.binary("mul", g, be.unary("sign", x)),)
        if op == "erf":   # 2 / sqrt(pi) * exp(-x^2)
            bump = be.unary("exp", be.unary("neg", be.binary("mul", x, x)))
            return (be.binary("mul", g, be.scalar("mul", bump, 2.0 / math.sqrt(math.pi))),)
        raise ValueError(f"no gradient for {op!r}")


class Gelu(Function):
    """GELU in one backend call each way (the backend's ``gelu`` / ``gelu_backward``)."""

    def forward(self, x, approximate):
        self.approximate = approximate
        self.save(x)
        return self.be.gelu(x, approximate)

    def backward(self, g):
        (x,) = self.saved
        return (self.be.gelu_backward(x, g, self.approximate),)


class Cast(Function):
    """Change of dtype; the gradient is cast back."""

    def forward(self, x, dtype):
        self.src = x.dtype
        return self.be.astype(x, dtype)

    def backward(self, g):
        return (self.be.astype(g, self.src) if np.dtype(self.src).kind == "f" else None,)


class Where(Function):
    """``a`` where ``cond`` else ``b`` (``cond`` gets no gradient)."""

    def forward(self, cond, a, b):
        self.save(cond)
        self.shapes = (a.shape, b.shape)
        return self.be.where(cond, a, b)

    def backward(self, g):
        (cond,) = self.saved
        be = self.be
        zero = be.scalar("mul", g, 0.0)
        ga = gb = None
        if self.needs_grad[1]:
            ga = be.sum_to_shape(be.where(cond, g, zero), self.shapes[0])
        if self.needs_grad[2]:
            gb = be.sum_to_shape(be.where(cond, zero, g), self.shapes[1])
        return None, ga, gb


# --- public functions ------------------------------------------------------

_BINARY = {"add": Add, "sub": Sub, "mul": Mul, "div": Div, "pow": Pow,
           "maximum": Maximum, "minimum": Minimum}
_COMMUTES = {"add", "mul", "maximum", "minimum"}


def _as_tensor_like(x, ref):
    return Tensor(np.asarray(x, dtype=ref.dtype if np.asarray(x).dtype.kind == "f" else None),
                  device=ref.device)


def _weak_scalar(x):
    """A NumPy scalar as the Python number it holds: as in PyTorch, it does not change the
    tensor's dtype (float32 * np.float64(0.5) stays float32; NumPy 2 would make it float64)."""
    return x.item() if isinstance(x, (np.floating, np.integer)) else x


def binary(op, a, b):
    """Apply a differentiable broadcasting binary op to Tensors and/or scalars."""
    a, b = _weak_scalar(a), _weak_scalar(b)
    a_t, b_t = isinstance(a, Tensor), isinstance(b, Tensor)
    if a_t and b_t:
        return _BINARY[op].apply(a, b)
    if a_t and is_number(b):
        if a.dtype.kind != "f" and isinstance(b, float):
            a = a.float()
        return Scalar.apply(a, op=op, s=b)
    if b_t and is_number(a):
        if b.dtype.kind != "f" and isinstance(a, float):
            b = b.float()
        if op in _COMMUTES:
            return Scalar.apply(b, op=op, s=a)
        return Scalar.apply(b, op=op, s=a, reverse=True)
    if a_t:
        return _BINARY[op].apply(a, _as_tensor_like(b, a))
    if b_t:
        return _BINARY[op].apply(_as_tensor_like(a, b), b)
    raise TypeError(f"{op} needs at least one Tensor, got {type(a).__name__} and {type(b).__name__}")


def compare(op, a, b):
    """Elementwise comparison (no gradient); returns a bool-valued tensor of ``a``'s float dtype."""
    if not isinstance(a, Tensor):
        a, b = b, a
        op = {"lt": "gt", "gt": "lt", "le": "ge", "ge": "le"}.get(op, op)
    be = a.be
    if isinstance(b, Tensor):
        if b.device != a.device:
            raise ValueError(f"comparison between tensors on {a.device} and {b.device}")
        out = be.binary(op, a.data, b.data)
    else:
        out = be.scalar(op, a.data, b)
    return Tensor._make(out, a.device)


def unary(op, x):
    """Apply a differentiable elementwise function."""
    return Unary.apply(x, op=op)


def exp(x):
    """e ** x"""
    return unary("exp", x)


def log(x):
    """Natural logarithm."""
    return unary("log", x)


def sqrt(x):
    """Square root."""
    return unary("sqrt", x)


def relu(x):
    """max(x, 0)"""
    return unary("relu", x)


def erf(x):
    """The error function."""
    return unary("erf", x)


def gelu(x, approximate="none"):
    """``x * Phi(x)`` with Phi the standard normal CDF, as ``torch.nn.functional.gelu``;
    ``approximate="tanh"`` uses PyTorch's tanh formula instead of erf."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    if x.dtype.kind != "f":
        x = x.float()
    return Gelu.apply(x, approximate=approximate)


def leaky_relu(x, negative_slope=0.01):
    """``x`` where positive, else ``negative_slope * x`` (as PyTorch, the gradient at 0 is
    ``negative_slope``)."""
    return where(x > 0, x, x * float(negative_slope))


def sigmoid(x):
    """1 / (1 + exp(-x)), computed stably."""
    return unary("sigmoid", x)


def tanh(x):
    """Hyperbolic tangent."""
    return unary("tanh", x)


def abs(x):  # noqa: A001 - mirrors torch.abs
    """Absolute value."""
    return unary("abs", x)


def maximum(a, b):
    """Elementwise maximum with broadcasting."""
    return binary("maximum", a, b)


def minimum(a, b):
    """Elementwise minimum with broadcasting."""
    return binary("minimum", a, b)


def where(cond, a, b):
    """``a`` where ``cond`` else ``b`` (broadcasting; differentiable in ``a`` and ``b``)."""
    ref = a if isinstance(a, Tensor) else b
    if not isinstance(a, Tensor):
        a = _as_tensor_like(a, ref)
    if not isinstance(b, Tensor):
        b = _as_tensor_like(b, ref)
    if not isinstance(cond, Tensor):
        cond = Tensor(np.asarray(cond), device=ref.device)
    return Where.apply(cond, a, b)


def clamp(x, min=None, max=None):  # noqa: A002 - mirrors torch.clamp
    """Clip values to ``[min, max]``."""
    if min is not None:
        x = maximum(x, min)
    if max is not None:
        x = minimum(x, max)
    return x


TENSOR_METHODS = {
    "__add__": lambda a, b: binary("add", a, b),
    "__radd__": lambda a, b: binary("add", b, a),
    "__sub__": lambda a, b: binary("sub", a, b),
    "__rsub__": lambda a, b: binary("sub", b, a),
    "__mul__": lambda a, b: binary("mul", a, b),
    "__rmul__": lambda a, b: binary("mul", b, a),
    "__truediv__": lambda a, b: binary("div", a, b),
    "__rtruediv__": lambda a, b: binary("div", b, a),
    "__pow__": lambda a, b: binary("pow", a, b),
    "__rpow__": lambda a, b: binary("pow", b, a),
    "__neg__": lambda a: unary("neg", a),
    "__pos__": lambda a: a,
    "__eq__": lambda a, b: compare("eq", a, b),
    "__ne__": lambda a, b: compare("ne", a, b),
    "__lt__": lambda a, b: compare("lt", a, b),
    "__le__": lambda a, b: compare("le", a, b),
    "__gt__": lambda a, b: compare("gt", a, b),
    "__ge__": lambda a, b: compare("ge", a, b),
    "__abs__": abs,
    "exp": exp, "log": log, "sqrt": sqrt, "erf": erf, "relu": relu, "sigmoid": sigmoid,
    "tanh": tanh,
    "abs": abs, "maximum": maximum, "minimum": minimum, "clamp": clamp,
    "neg": lambda a: unary("neg", a),
}
