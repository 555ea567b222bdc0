"""Matrix products: ``matmul`` (2-D and batched with broadcasting) and the fused ``linear``."""

from ..autograd import Function
from .shape import reshape


def _swap_last(be, x):
    axes = list(range(len(x.shape)))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return be.transpose(x, tuple(axes))


class MatMul(Function):
    """``a @ b`` for operands with at least two dimensions (batch dimensions broadcast)."""

    def forward(self, a, b):
        self.save(a, b)
        return self.be.matmul(a, b)

    def backward(self, g):
        a, b = self.saved
        be = self.be
        ga = gb = None
        if self.needs_grad[0]:
            ga = be.matmul(g, _swap_last(be, b))
            if ga.shape != a.shape:
                ga = be.sum_to_shape(ga, a.shape)
        if self.needs_grad[1]:
            if len(b.shape) == 2 and len(a.shape) > 2:
                # one product over all of a's rows, not a batch of products summed afterwards
                K, N = b.shape
                gb = be.matmul(be.transpose(be.reshape(a, (-1, K)), (1, 0)),
                               be.reshape(g, (-1, N)))
            else:
                gb = be.matmul(_swap_last(be, a), g)
                if gb.shape != b.shape:
                    gb = be.sum_to_shape(gb, b.shape)
        return ga, gb


class Linear(Function):
    """``x @ w.T + b`` for ``x`` (N, in) in one backend call."""

    def forward(self, x, w, b=None):
        self.save(x, w)
        return self.be.linear(x, w, b)

    def backward(self, g):
        x, w = self.saved
        be = self.be
        gx = be.matmul(g, w) if self.needs_grad[0] else None
        gw = be.matmul(be.transpose(g, (1, 0)), x) if self.needs_grad[1] else None
        gb = None
        if len(self.needs_grad) > 2 and self.needs_grad[2]:
            gb = be.sum(g, (0,), False)
        return gx, gw, gb


def matmul(a, b):
    """Matrix product with NumPy semantics (1-D operands are promoted and the dimension dropped)."""
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul needs tensors with at least one dimension, got {a.shape} and {b.shape}")
    a2 = reshape(a, 1, a.shape[0]) if a.ndim == 1 else a
    b2 = reshape(b, b.shape[0], 1) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"matmul: shapes {a.shape} and {b.shape} do not match "
            f"(inner dimensions {a2.shape[-1]} != {b2.shape[-2]})")
    batch_a, batch_b = a2.shape[:-2], b2.shape[:-2]
    for x, y in zip(reversed(batch_a), reversed(batch_b)):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"matmul: batch dimensions of {a.shape} and {b.shape} do not broadcast")
    out = MatMul.apply(a2, b2)
    if a.ndim == 1:
        out = reshape(out, out.shape[:-2] + out.shape[-1:])
    if b.ndim == 1:
        out = reshape(out, out.shape[:-1])
    return out


def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` (as ``torch.nn.functional.linear``); ``x`` may have leading dims."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input {x.shape} has {x.shape[-1]} features but weight {weight.shape} "
            f"expects {weight.shape[1]}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias shape {bias.shape} != ({weight.shape[0]},)")
    lead = x.shape[:-1]
    x2 = reshape(x, -1, x.shape[-1]) if x.ndim != 2 else x
    out = Linear.apply(x2, weight, bias) if bias is not None else Linear.apply(x2, weight)
    if x.ndim != 2:
        out = reshape(out, lead + (weight.shape[0],))
    return out


TENSOR_METHODS = {"__matmul__": matmul, "__rmatmul__": lambda b, a: matmul(a, b), "matmul": matmul}
