"""Softmax cross-entropy (fused backend kernels), NLL and MSE losses."""

import numpy as np

from ..autograd import Function
from ..tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")
# False: nll_loss of a log_softmax output takes NLLLoss and log_softmax's backward separately
FUSE_LOG_SOFTMAX_NLL = True


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
        self.index, self.shape = (np.arange(logp.shape[0]), labels), logp.shape
        self.reduction = reduction
        out, self.scale = _picked_nll(self.be, logp, self.index, reduction)
        return out

    def backward(self, g):
        """Gradients for the positional inputs."""
        be = self.be
        n = self.shape[0]
        if self.reduction == "none":
            per_sample = be.scalar("mul", g, -1.0)
        else:
            per_sample = be.broadcast_to(be.reshape(be.scalar("mul", g, self.scale), (1,)), (n,))
        return be.index_add(self.shape, self.index, per_sample), None


class LogSoftmaxNLL(Function):
    """``nll_loss(log_softmax(x, 1), labels)`` with its gradient taken to x in one pass.

    Through log_softmax, the gradient of the loss term -logp[i, labels[i]] (weight g_i) is
    g_i * (exp(logp[i, j]) - [j == labels[i]]): what softmax cross-entropy's backward
    computes.  :func:`nll_loss` builds this node, whose parent is x, when its input is the
    output of log_softmax over the classes; the log_softmax node stays in the graph for any
    other use of logp.  So the backward skips NLLLoss's dense one-hot gradient and the
    log_softmax backward over it, two passes over (N, C) arrays (BENCHMARKS_perf.md, change
    143).  ``logp``: log_softmax's output (storage); ``labels_host``: the labels as a host
    int64 array; ``labels``: the same as a Tensor on x's device."""

    grad_addend_inputs = (0,)

    def forward(self, x, labels, logp=None, labels_host=None, reduction="mean"):
        """Output storage from input storage (x itself is not read: logp holds what is needed)."""
        self.save(logp, labels)
        self.reduction = reduction
        out, self.scale = _picked_nll(self.be, logp, (np.arange(logp.shape[0]), labels_host),
                                      reduction)
        return out

    def backward(self, g):
        """Gradients for the positional inputs."""
        logp, labels = self.saved
        be = self.be
        n = logp.shape[0]
        # the loss terms' weights (NLLLoss's per-sample gradient with the sign turned)
        if self.reduction == "none":
            gloss = g
        else:
            gloss = be.broadcast_to(be.reshape(be.scalar("mul", g, -self.scale), (1,)), (n,))
        addend, writable = self.grad_addend(0)
        return be.log_softmax_nll_backward(logp, labels, gloss, addend, writable), None


def _picked_nll(be, logp, index, reduction):
    """(loss, scale) of the NLL of logp (N, C) at index = (arange(N), labels): the per-sample
    losses -logp[index] for reduction "none", else their sum times -scale; scale is d loss /
    d logp[index] per sample for a unit loss gradient (-1, or -1/N for "mean")."""
    n = logp.shape[0]
    scale = -1.0 if reduction != "mean" else -1.0 / n if n else float("nan")
    picked = be.getitem(logp, index)
    if reduction == "none":
        return be.scalar("mul", picked, -1.0), scale
    return be.scalar("mul", be.sum(picked, (0,), False), scale), scale


def _log_softmax_input(logp):
    """x when the 2-D Tensor ``logp`` is the output of log_softmax(x, 1) recorded in the graph
    (and nothing asked to keep logp's own gradient), else None."""
    from .softmax import LogSoftmax

    ctx = logp._ctx
    if not (FUSE_LOG_SOFTMAX_NLL and isinstance(ctx, LogSoftmax)) or ctx.axis != 1 \
            or logp._retains_grad:
        return None
    x = ctx.parents[0] if ctx.parents else None
    if not isinstance(x, Tensor) or x.shape != logp.shape or x.dtype != logp.dtype:
        return None
    return x


def _check_reduction(reduction, what):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{what}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _labels(target, logits, what, ignore_index=None):
    """``target`` as an int64 Tensor (N,) on the logits' device with values in [0, C), and
    None or, when some values equal ``ignore_index``, a bool mask of the others (the ignored
    entries then read 0 in the returned labels)."""
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
    keep = None
    if ignore_index is not None and values.size and (values == ignore_index).any():
        keep = values != ignore_index
        values = np.where(keep, values, 0)
        target = Tensor(values.astype(np.int64), device=logits.device)
    if values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= c:
            bad = lo if lo < 0 else hi
            pos = int(np.argmax(values == bad))
            raise ValueError(
                f"{what}: target value {bad} (at index {pos}) is out of range for {c} classes; "
                f"labels must be in [0, {c})" + ("" if ignore_index is None else
                                                 f" or {ignore_index} (ignore_index)"))
    if target.dtype != np.int64:
        target = target.long()
    if target.device != logits.device:
        target = target.to(logits.device)
    return target, keep


def _reduce(per_sample, reduction, denominator):
    """Per-sample losses as they are ("none"), summed ("sum"), or summed and divided by
    ``denominator`` ("mean"; NaN when it is 0, as PyTorch's 0 / 0)."""
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total * (1.0 / denominator) if denominator else total * float("nan")


def _masked(per_sample, keep, reduction):
    """Reduce per-sample losses over the kept samples only (PyTorch's ignore_index: the
    mean divides by their count)."""
    mask = Tensor(keep.astype(per_sample.dtype), device=per_sample.device)
    return _reduce(per_sample * mask, reduction, float(keep.sum()))


def _class_weights(weight, c, what):
    """``weight`` (None, or C per-class weights) as a float64 host array, or None."""
    if weight is None:
        return None
    w = weight.numpy() if isinstance(weight, Tensor) else np.asarray(weight)
    if w.shape != (c,) or w.dtype.kind not in "fiu":
        raise ValueError(f"{what}: weight must hold one number per class, shape ({c},); got "
                         f"shape {w.shape}, dtype {w.dtype}")
    return w.astype(np.float64)


def _weighted_nll(logp, labels, keep, w, eps, reduction):
    """PyTorch's class-weighted loss from log-probabilities: sample i adds
    ``-(1 - eps) * w[y_i] * logp[i, y_i] - eps / C * sum_c w[c] * logp[i, c]``, and "mean"
    divides the sum by that of ``w[y_i]`` over the samples not ignored."""
    n, c = logp.shape
    kept = np.ones(n) if keep is None else keep.astype(np.float64)
    wy = w[labels] * kept

    def const(a):
        return Tensor(np.asarray(a, dtype=logp.dtype), device=logp.device)

    per = NLLLoss.apply(logp, labels, reduction="none") * const(wy * (1.0 - eps))
    if eps:
        smooth = (logp * const(w[None, :] * (eps / c))).sum(1)
        per = per - smooth * const(kept)
    return _reduce(per, reduction, float(wy.sum()))


def cross_entropy(input, target, reduction="mean", label_smoothing=0.0,  # noqa: A002
                  ignore_index=-100, weight=None):
    """Softmax cross-entropy as ``torch.nn.functional.cross_entropy`` (class-index targets).

    ``input`` is (N, C) logits, ``target`` (N,) int class indices; ``label_smoothing``
    mixes the one-hot target with the uniform distribution, PyTorch's formula.  Samples
    whose target is ``ignore_index`` add nothing to the loss or the gradient, and "mean"
    averages over the others.  ``weight``: one number per class (a constant: it gets no
    gradient), weighting each sample's loss as PyTorch does; "mean" then divides by the
    summed weights of the samples' targets.
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
    labels, keep = _labels(target, input, "cross_entropy", ignore_index)
    w = _class_weights(weight, input.shape[1], "cross_entropy")
    if w is not None:
        from .softmax import log_softmax

        return _weighted_nll(log_softmax(input, 1), labels.numpy(), keep, w,
                             float(label_smoothing), reduction)
    if keep is not None:
        per_sample = SoftmaxCrossEntropy.apply(input, labels, label_smoothing=float(label_smoothing),
                                               reduction="none")
        return _masked(per_sample, keep, reduction)
    return SoftmaxCrossEntropy.apply(input, labels, label_smoothing=float(label_smoothing),
                                     reduction=reduction)


def nll_loss(input, target, reduction="mean", ignore_index=-100, weight=None):  # noqa: A002
    """Negative log-likelihood of log-probabilities (N, C) at int class indices (N,);
    ``ignore_index`` and ``weight`` as in :func:`cross_entropy`.

    When ``input`` is log_softmax's output over the classes (``nll_loss(log_softmax(x, 1),
    target)``) and no label is ignored or weighted, the loss node takes its gradient to x
    directly (:class:`LogSoftmaxNLL`, the same values); ``FUSE_LOG_SOFTMAX_NLL = False`` turns
    that off, and so does ``input.retain_grad()`` called before this."""
    _check_reduction(reduction, "nll_loss")
    if input.ndim != 2:
        raise ValueError(f"nll_loss: input must be 2-D (N, C), got shape {input.shape}")
    labels, keep = _labels(target, input, "nll_loss", ignore_index)
    w = _class_weights(weight, input.shape[1], "nll_loss")
    if w is not None:
        return _weighted_nll(input, labels.numpy(), keep, w, 0.0, reduction)
    if keep is not None:
        return _masked(NLLLoss.apply(input, labels.numpy(), reduction="none"), keep, reduction)
    x = _log_softmax_input(input)
    if x is not None:
        return LogSoftmaxNLL.apply(x, labels, logp=input.data, labels_host=labels.numpy(),
                                   reduction=reduction)
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
