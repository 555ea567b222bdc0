"""Adam and AdamW with PyTorch's update rules (bias-corrected moments, eps outside the square root)."""

from ..tensor import Tensor
from .optimizer import Optimizer


class Adam(Optimizer):
    """PyTorch's Adam::

        g = g + weight_decay * p                  (Adam: L2 penalty in the gradient)
        m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    Updates run in place through the backend's fused ``adam_step_`` kernel.
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        if amsgrad:
            raise ValueError("amsgrad is not supported")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _validate_group(self, group):
        super()._validate_group(group)
        b1, b2 = group["betas"]
        if not 0.0 <= b1 < 1.0 or not 0.0 <= b2 < 1.0:
            raise ValueError(f"invalid betas {group['betas']}: each must be in [0, 1)")
        if group["eps"] < 0.0:
            raise ValueError(f"invalid epsilon value: {group['eps']}")
        if group["weight_decay"] < 0.0:
            raise ValueError(f"invalid weight_decay value: {group['weight_decay']}")

    def step(self):
        """One Adam update of every parameter with a gradient."""
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                be = p.be
                state = self.state.setdefault(id(p), {})
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = Tensor._make(be.full(p.shape, 0.0, p.dtype), p.device)
                    state["exp_avg_sq"] = Tensor._make(be.full(p.shape, 0.0, p.dtype), p.device)
                state["step"] += 1
                be.adam_step_(p.data, p.grad.data, state["exp_avg"].data, state["exp_avg_sq"].data,
                              state["step"], group["lr"], beta1, beta2, group["eps"],
                              group["weight_decay"], self._decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch's AdamW): ``p *= 1 - lr * weight_decay`` before the Adam step."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
