"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay (PyTorch's rule)."""

from ..tensor import Tensor
from .optimizer import Optimizer


class SGD(Optimizer):
    """PyTorch's SGD::

        d = g + weight_decay * p
        buf = d (first step) or momentum * buf + (1 - dampening) * d
        d = d + momentum * buf (nesterov) or buf
        p -= lr * d

    Updates run in place through the backend's fused ``sgd_step_`` kernel.
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _validate_group(self, group):
        super()._validate_group(group)
        if group["momentum"] < 0.0:
            raise ValueError(f"invalid momentum value: {group['momentum']}")
        if group["weight_decay"] < 0.0:
            raise ValueError(f"invalid weight_decay value: {group['weight_decay']}")

    def step(self):
        """One SGD update of every parameter with a gradient."""
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                be = p.be
                state = self.state.setdefault(id(p), {})
                buf, first = None, False
                if momentum != 0:
                    b = state.get("momentum_buffer")
                    if b is None:
                        b = Tensor._make(be.full(p.shape, 0.0, p.dtype), p.device)
                        state["momentum_buffer"] = b
                        first = True
                    buf = b.data
                be.sgd_step_(p.data, p.grad.data, buf, lr, momentum, group["dampening"],
                             group["nesterov"], group["weight_decay"], first)
