"""Batch, layer and local response normalisation as differentiable ops.

Training-mode batch norm is one fused backend kernel forward and one backward
(``batch_norm_train`` / ``batch_norm_backward``); eval mode uses
``batch_norm_eval`` and a per-channel scale for its gradient.  Running-statistic
updates happen outside the graph, in place, in the forward's backend call
(``batch_norm_train_tracked``).
Layer norm is one backend call each way (``layer_norm`` / ``layer_norm_backward``) when
input, weight and bias share a float dtype, else composed of elementwise ops and reductions.
"""

import numpy as np

from ..autograd import Function


def _channel_shape(ndim, c):
    return (1, c) + (1,) * (ndim - 2)


class BatchNormTrain(Function):
    """Batch norm with batch statistics, then optionally ``+ residual`` and a ReLU in the same
    output pass (``relu``; the backward then masks the gradient by the saved output).
    ``running``: None, or the arguments of the backend's ``batch_norm_train_tracked`` after
    ``eps`` (running buffers, mixing factors, batch counter), which it updates in place in the
    same call."""

    def forward(self, x, gamma=None, beta=None, residual=None, eps=1e-5, running=None,
                relu=False):
        """Output storage from input storage."""
        be = self.be
        c = x.shape[1]
        if gamma is None:
            gamma = be.full((c,), 1.0, x.dtype)
        if beta is None:
            beta = be.full((c,), 0.0, x.dtype)
        if running is None:
            y, mean, _, invstd = be.batch_norm_train(x, gamma, beta, eps, relu, residual)
        else:
            y, mean, _, invstd = be.batch_norm_train_tracked(x, gamma, beta, eps, *running,
                                                             relu=relu, residual=residual)
        self.save(x, gamma, mean, invstd, y if relu else None)
        return y

    def backward(self, g):
        """Gradients for the positional inputs."""
        x, gamma, mean, invstd, y = self.saved
        need = self.needs_grad
        want_res = len(need) > 3 and need[3]
        if y is None:
            gx, ggamma, gbeta = self.be.batch_norm_backward(g, x, gamma, mean, invstd)
            gres = g
        else:
            gx, ggamma, gbeta, gres = self.be.batch_norm_relu_backward(g, y, x, gamma, mean,
                                                                       invstd, want_res)
        return (gx if need[0] else None,
                ggamma if len(need) > 1 and need[1] else None,
                gbeta if len(need) > 2 and need[2] else None,
                gres if want_res else None)


class BatchNormEval(Function):
    """Batch norm with given statistics: ``(x - mean) / sqrt(var + eps) * gamma + beta``, then
    optionally ``+ residual`` and a ReLU in the same pass."""

    def forward(self, x, mean, var, gamma=None, beta=None, residual=None, eps=1e-5, relu=False):
        """Output storage from input storage."""
        be = self.be
        c = x.shape[1]
        if gamma is None:
            gamma = be.full((c,), 1.0, x.dtype)
        if beta is None:
            beta = be.full((c,), 0.0, x.dtype)
        self.eps = eps
        y = be.batch_norm_eval(x, mean, var, gamma, beta, eps, relu, residual)
        self.save(x, mean, var, gamma, y if relu else None)
        return y

    def backward(self, g):
        """Gradients for the positional inputs."""
        x, mean, var, gamma, y = self.saved
        be = self.be
        if y is not None:
            g = be.activation_grad("relu", y, g)
        cs = _channel_shape(len(x.shape), x.shape[1])
        invstd = be.scalar("pow", be.scalar("add", be.astype(var, x.dtype), self.eps), -0.5)
        need = self.needs_grad
        gx = ggamma = gbeta = None
        if need[0]:
            gx = be.binary("mul", g, be.reshape(be.binary("mul", be.astype(gamma, x.dtype), invstd), cs))
        axes = (0,) + tuple(range(2, len(x.shape)))
        if len(need) > 3 and need[3]:
            xhat = be.binary("mul", be.binary("sub", x, be.reshape(be.astype(mean, x.dtype), cs)),
                             be.reshape(invstd, cs))
            ggamma = be.sum(be.binary("mul", g, xhat), axes, False)
        if len(need) > 4 and need[4]:
            gbeta = be.sum(g, axes, False)
        return gx, None, None, ggamma, gbeta, (g if len(need) > 5 and need[5] else None)


class LocalResponseNorm(Function):
    """``y_c = x_c * (k + alpha/n * sum_{c' in window(c)} x_{c'}^2) ** -beta`` across channels."""

    def forward(self, x, size, alpha, beta, k):
        """Output storage from input storage."""
        self.conf = (size, alpha, beta, k)
        y, scale = self.be.lrn(x, size, alpha, beta, k)
        self.save(x, y, scale)
        return y

    def backward(self, g):
        """Gradients for the positional inputs."""
        x, y, scale = self.saved
        return (self.be.lrn_backward(x, y, scale, g, *self.conf),)


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalisation as ``torch.nn.functional.batch_norm``.

    In training mode the batch statistics normalise ``x`` and, when given, the
    running buffers are updated in place: ``running_mean`` with the batch mean and
    ``running_var`` with the *unbiased* batch variance, both with factor ``momentum``.
    In eval mode the running statistics are used.
    """
    return batch_norm_counted(x, running_mean, running_var, weight, bias, training, momentum, eps)


def batch_norm_relu(x, running_mean=None, running_var=None, weight=None, bias=None,
                    training=False, momentum=0.1, eps=1e-5, residual=None):
    """``relu(batch_norm(x, ...) + residual)`` (``residual`` None: ``relu(batch_norm(x,
    ...))``) as one op: the sum and the ReLU are applied in batch norm's output pass and the
    gradient is masked inside its backward, so neither makes a pass of its own over the
    activations.  The arguments are ``batch_norm``'s; the result is the same."""
    return batch_norm_counted(x, running_mean, running_var, weight, bias, training, momentum, eps,
                              relu=True, residual=residual)


def batch_norm_counted(x, running_mean=None, running_var=None, weight=None, bias=None,
                       training=False, momentum=0.1, eps=1e-5, num_batches_tracked=None,
                       relu=False, residual=None):
    """``batch_norm``, plus (in training mode) ``num_batches_tracked`` (a scalar int64 tensor,
    or None) += 1 in place, in the same backend call as the running statistics: what a
    BatchNorm module's training step does.  ``residual`` (a tensor of x's shape, or None) is
    added to the output and ``relu`` rectifies the sum, in the same op: ``relu(batch_norm(x)
    + residual)`` without the two extra passes over the activations."""
    if x.ndim < 2:
        raise ValueError(f"batch_norm: input must have at least 2 dimensions (N, C, ...), got {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"batch_norm: input must be floating point, got {x.dtype}")
    c = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"batch_norm: {name} shape {tuple(t.shape)} != ({c},) for input {x.shape}")
    if residual is not None:
        if tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"batch_norm: residual shape {tuple(residual.shape)} != input shape "
                             f"{tuple(x.shape)}")
        if residual.dtype != x.dtype:   # the sum promotes: not this op's output dtype
            y = batch_norm_counted(x, running_mean, running_var, weight, bias, training,
                                   momentum, eps, num_batches_tracked) + residual
            return y.relu() if relu else y
    if training:
        count = x.numel() // c
        if count <= 1:
            raise ValueError(
                f"batch_norm: expected more than 1 value per channel when training, got input {x.shape}")
        running = None
        if running_mean is not None or running_var is not None or num_batches_tracked is not None:
            be = x.be
            m = 0.0 if momentum is None else momentum
            counter = (None if num_batches_tracked is None
                       else be.reshape(num_batches_tracked.data, (1,)))
            running = (None if running_mean is None else running_mean.data,
                       None if running_var is None else running_var.data,
                       1.0 - m, m, m * count / (count - 1), counter)
        return BatchNormTrain.apply(x, weight, bias, residual, eps=eps, running=running, relu=relu)
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm: eval mode needs running_mean and running_var")
    return BatchNormEval.apply(x, running_mean.detach(), running_var.detach(), weight, bias,
                               residual, eps=eps, relu=relu)


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalisation across channels (as ``torch.nn.functional.local_response_norm``)."""
    if x.ndim < 3:
        raise ValueError(f"local_response_norm: input must have at least 3 dimensions, got {x.shape}")
    if int(size) < 1:
        raise ValueError(f"local_response_norm: size must be positive, got {size}")
    return LocalResponseNorm.apply(x, size=int(size), alpha=float(alpha), beta=float(beta), k=float(k))


class LayerNorm(Function):
    """Layer norm over the trailing ``ndims`` dimensions (the backend sees (rows, D))."""

    def forward(self, x, weight=None, bias=None, eps=1e-5, ndims=1):
        """Output storage from input storage."""
        be = self.be
        self.shape, self.wshape = tuple(x.shape), tuple(x.shape[len(x.shape) - ndims:])
        D = int(np.prod(self.wshape))
        x2 = be.reshape(x, (int(np.prod(self.shape)) // max(D, 1), D))
        w = be.reshape(weight, (D,)) if weight is not None else None
        b = be.reshape(bias, (D,)) if bias is not None else None
        y, mean, rstd = be.layer_norm(x2, w, b, eps)
        self.save(x2, w, mean, rstd)
        return be.reshape(y, self.shape)

    def backward(self, g):
        """Gradients for x, weight and bias."""
        x2, w, mean, rstd = self.saved
        be = self.be
        gx, gw, gb = be.layer_norm_backward(be.reshape(g, tuple(x2.shape)), x2, w, mean, rstd)
        need = self.needs_grad
        return (be.reshape(gx, self.shape) if need[0] else None,
                be.reshape(gw, self.wshape) if len(need) > 1 and need[1] else None,
                be.reshape(gb, self.wshape) if len(need) > 2 and need[2] else None)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``torch.nn.functional.layer_norm``: normalise over the trailing ``normalized_shape``
    dimensions with the biased variance, then scale by ``weight`` and shift by ``bias``
    (both of that shape, optional)."""
    shape = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) \
        else tuple(int(n) for n in normalized_shape)
    if not shape or len(shape) > x.ndim or tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(f"layer_norm: normalized_shape {shape} must be the trailing dimensions "
                         f"of the input's shape {x.shape}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != shape:
            raise ValueError(f"layer_norm: {name} shape {p.shape} != normalized_shape {shape}")
    if x.dtype.kind == "f" and all(p is None or p.dtype == x.dtype for p in (weight, bias)) \
            and x.numel() > 0:
        return LayerNorm.apply(x, weight, bias, eps=float(eps), ndims=len(shape))
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    centred = x - x.mean(axes, keepdims=True)
    y = centred * ((centred * centred).mean(axes, keepdims=True) + eps) ** -0.5
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y
