"""Softmax cross-entropy (fused backend kernels), NLL and MSE losses."""

import numpy as np

from ..autograd import Function
from ..tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


class SoftmaxCrossEntropy(Function):
    """Cross-entropy of logits (N, C) against int64 labels (N,), with label smoothing and reduction."""

    def forward(self, logits, labels, label_smoothing=0.0, reduction="mean"):
        """Output storage from input storage."""
        be = self.be
        loss, probs = be.softmax_cross_entropy(logits, labels, label_smoothing)
        self.conf = (label_smoothing, reduction, loss.shape[0])
        self.save(probs, labels)
        if reduction == "none":
            return loss
        total = be.sum(loss, (0,), False)
        return be.scalar("mul", total, 1.0 / loss.shape[0]) if reduction == "mean" else total

    def backward(self, g):
        """Gradients for the positional inputs."""
        probs, labels = self.saved
        be = self.be
        eps, reduction, n = self.conf
        if reduction != "none":
            g = be.broadcast_to(be.reshape(g, (1,)), (n,))
            if reduction == "mean":
                g = be.scalar("mul", g, 1.0 / n)
        return be.softmax_cross_entropy_backward(probs, labels, eps, g), None


class NLLLoss(Function):
    """Negative log-likelihood: ``-logp[i, labels[i]]`` per sample, then the reduction; one
    graph node instead of an index, a negation and a mean (nll_loss(log_softmax) row: 0.93 ->
    0.88 ms at 1024x1000).  ``labels`` is a host int64 array."""

    def forward(self, logp, labels, reduction="mean"):
        """Output storage from input storage."""
        be = self.be
        n = logp.shape[0]
        self.index, self.shape = (np.arange(n), labels), logp.shape
        self.scale = -1.0 if reduction != "mean" else -1.0 / n if n else float("nan")
        self.reduction = reduction
        picked = be.getitem(logp, self.index)
        if reduction == "none":
            return be.scalar("mul", picked, -1.0)
        return be.scalar("mul", be.sum(picked, (0,), False), self.scale)

    def backward(self, g):
        """Gradients for the positional inputs."""
        be = self.be
        n = self.shape[0]
        if self.reduction == "none":
            per_sample = be.scalar("mul", g, -1.0)
        else:
            per_sample = be.broadcast_to(be.reshape(be.scalar("mul", g, self.scale), (1,)), (n,))
        return be.index_add(self.shape, self.index, per_sample), None


def _check_reduction(reduction, what):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{what}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _labels(target, logits, what):
    """``target`` as an int64 Tensor (N,) on the logits' device with values in [0, C)."""
    if not isinstance(target, Tensor):
        arr = np.asarray(target)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{what}: target must hold integer class indices, got dtype {arr.dtype}")
        target = Tensor(arr.astype(np.int64), device=logits.device)
    if target.dtype.kind not in "iu":
        raise TypeError(
            f"{what}: target must hold integer class indices (int64), got dtype {target.dtype}; "
            f"class-probability targets are not supported")
    n, c = logits.shape
    if target.shape != (n,):
        raise ValueError(f"{what}: target shape {target.shape} must be ({n},) for input of shape {logits.shape}")
    values = target.numpy()
    if values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= c:
            bad = lo if lo < 0 else hi
            pos = int(np.argmax(values == bad))
            raise ValueError(
                f"{what}: target value {bad} (at index {pos}) is out of range for {c} classes; "
                f"labels must be in [0, {c})")
    if target.dtype != np.int64:
        target = target.long()
    if target.device != logits.device:
        target = target.to(logits.device)
    return target


def cross_entropy(input, target, reduction="mean", label_smoothing=0.0):  # noqa: A002
    """Softmax cross-entropy as ``torch.nn.functional.cross_entropy`` (class-index targets).

    ``input`` is (N, C) logits, ``target`` (N,) int class indices; ``label_smoothing``
    mixes the one-hot target with the uniform distribution, PyTorch's formula.
    """
    _check_reduction(reduction, "cross_entropy")
    if input.ndim != 2:
        raise ValueError(f"cross_entropy: input must be 2-D logits (N, C), got shape {input.shape}")
    if input.dtype.kind != "f":
        raise TypeError(f"cross_entropy: input must be floating point, got {input.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if input.shape[0] == 0:
        raise ValueError(f"cross_entropy: empty batch, input shape {input.shape}")
    labels = _labels(target, input, "cross_entropy")
    return SoftmaxCrossEntropy.apply(input, labels, label_smoothing=float(label_smoothing),
                                     reduction=reduction)


def nll_loss(input, target, reduction="mean"):  # noqa: A002
    """Negative log-likelihood of log-probabilities (N, C) at int class indices (N,)."""
    _check_reduction(reduction, "nll_loss")
    if input.ndim != 2:
        raise ValueError(f"nll_loss: input must be 2-D (N, C), got shape {input.shape}")
    labels = _labels(target, input, "nll_loss")
    return NLLLoss.apply(input, labels.numpy(), reduction=reduction)


def mse_loss(input, target, reduction="mean"):  # noqa: A002
    """Mean squared error as ``torch.nn.functional.mse_loss``."""
    _check_reduction(reduction, "mse_loss")
    if not isinstance(target, Tensor):
        target = Tensor(np.asarray(target, dtype=input.dtype), device=input.device)
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"mse_loss: input shape {input.shape} != target shape {target.shape}")
    d = input - target
    sq = d * d
    if reduction == "none":
        return sq
    return sq.sum() if reduction == "sum" else sq.mean()
