"""The kernel interface every device implements, and the device registry.

An op (``minigrad/ops``) knows the math and calls these methods on the backend
of its inputs; a backend knows one device and nothing of autodiff.  Every
method takes and returns *storage* objects of the backend's device (a
``numpy.ndarray`` for "cpu", a ``numba.cuda`` device array for "cuda"); plain
Python numbers and tuples are passed for hyper-parameters.  Methods return new
storage unless their name ends in ``_`` (those update their first argument in
place and return nothing).

Shapes are NCHW for images, ``(C_out, C_in, KH, KW)`` for conv weights.
Tuples ``stride``, ``padding``, ``dilation``, ``kernel`` are ``(h, w)`` pairs.
"""

import math

_REGISTRY = {}
_FACTORIES = {}


class Backend:
    """Abstract kernel set for one device.  Subclasses implement every method."""

    name = "abstract"

    # --- storage -------------------------------------------------------
    def from_numpy(self, array):
        """Copy a NumPy array into this device's storage."""
        raise NotImplementedError

    def to_numpy(self, x):
        """Copy storage back to a NumPy array (a new array the caller owns)."""
        raise NotImplementedError

    def full(self, shape, value, dtype):
        """New storage of ``shape`` filled with ``value``."""
        raise NotImplementedError

    def astype(self, x, dtype):
        """Copy of ``x`` converted to ``dtype``."""
        raise NotImplementedError

    def owns_memory(self, x):
        """True when ``x`` is an array object that owns its memory outright (no array it
        is a view of, no buffer it borrows) and may be written: autograd then lets a leaf
        keep a gradient array that no other object refers to, instead of copying it.
        False (always copy) unless a backend knows better."""
        return False

    def copy_(self, dst, src):
        """Copy ``src`` into ``dst`` (same shape) in place."""
        raise NotImplementedError

    def add_into_(self, dst, src):
        """``dst += src`` in place when this backend can for these arrays (same shape and
        dtype, ``dst`` writable, no shared memory); returns whether it did.  Autograd
        accumulates a leaf's ``.grad`` with it; where it returns False (the default) the
        sum goes to a new array."""
        return False

    def fill_(self, x, value):
        """Set every element of ``x`` to ``value`` in place."""
        raise NotImplementedError

    def mix_into_(self, dst, keep, src, take):
        """``dst = keep * dst + take * src`` in place, ``src`` (same shape) converted to
        ``dst``'s dtype first (BatchNorm's running statistics).  This default builds it from
        other methods; a backend overrides it to do it in one pass."""
        src = self.astype(src, dst.dtype)
        self.copy_(dst, self.binary("add", self.scalar("mul", dst, keep),
                                    self.scalar("mul", src, take)))

    # --- elementwise ---------------------------------------------------
    def unary(self, op, x):
        """Elementwise ``op`` in {"neg","exp","log","sqrt","relu","sigmoid","tanh","abs","sign"}."""
        raise NotImplementedError

    def binary(self, op, a, b):
        """Broadcasting elementwise ``op`` in {"add","sub","mul","div","pow","maximum","minimum",
        "eq","ne","lt","le","gt","ge"}; comparisons return the dtype of ``a`` holding 0/1."""
        raise NotImplementedError

    def scalar(self, op, x, s, reverse=False):
        """``op(x, s)`` (or ``op(s, x)`` when ``reverse``) for a Python scalar ``s``."""
        raise NotImplementedError

    def where(self, cond, a, b):
        """Broadcasting select: ``a`` where ``cond`` is non-zero, else ``b``."""
        raise NotImplementedError

    def activation_grad(self, op, y, gy):
        """Gradient of an activation from its *output* ``y``: ``op`` in {"relu","sigmoid","tanh"}."""
        raise NotImplementedError

    def gelu(self, x, approximate):
        """GELU of float ``x``: ``x * Phi(x)`` (``approximate="none"``) or PyTorch's
        ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` ("tanh").  This default composes
        the elementwise methods above; a device with a fused kernel overrides it."""
        if approximate == "tanh":
            th = self.unary("tanh", self._gelu_tanh_arg(x))
            return self.scalar("mul", self.binary("mul", x, self.scalar("add", th, 1.0)), 0.5)
        return self.binary("mul", x, self._gelu_phi(x))

    def gelu_backward(self, x, g, approximate):
        """Gradient of :meth:`gelu` at ``x`` for the output's gradient ``g`` (same shape)."""
        xx = self.binary("mul", x, x)
        if approximate == "tanh":
            th = self.unary("tanh", self._gelu_tanh_arg(x))
            du = self.scalar("mul", self.scalar("add", self.scalar("mul", xx, 3 * 0.044715), 1.0),
                             math.sqrt(2.0 / math.pi))
            sech2 = self.scalar("sub", self.binary("mul", th, th), 1.0, reverse=True)
            d = self.binary("add", self.scalar("add", th, 1.0),
                            self.binary("mul", self.binary("mul", x, sech2), du))
            return self.binary("mul", g, self.scalar("mul", d, 0.5))
        pdf = self.scalar("mul", self.unary("exp", self.scalar("mul", xx, -0.5)),
                          1.0 / math.sqrt(2.0 * math.pi))
        return self.binary("mul", g, self.binary("add", self._gelu_phi(x),
                                                 self.binary("mul", x, pdf)))

    def _gelu_phi(self, x):
        return self.scalar("mul", self.scalar("add", self.unary(
            "erf", self.scalar("mul", x, 1.0 / math.sqrt(2.0))), 1.0), 0.5)

    def _gelu_tanh_arg(self, x):
        cube = self.binary("mul", self.binary("mul", x, x), x)
        return self.scalar("mul", self.binary("add", x, self.scalar("mul", cube, 0.044715)),
                           math.sqrt(2.0 / math.pi))

    # --- reductions ----------------------------------------------------
    def sum(self, x, axes, keepdims):
        """Sum over ``axes`` (a tuple of non-negative ints)."""
        raise NotImplementedError

    def max(self, x, axes, keepdims):
        """Maximum over ``axes``."""
        raise NotImplementedError

    def sum_to_shape(self, x, shape):
        """Sum a broadcast result back to ``shape`` (the reverse of broadcasting)."""
        raise NotImplementedError

    # --- shape ---------------------------------------------------------
    def reshape(self, x, shape):
        """``x`` with a new shape (copies when ``x`` is not contiguous)."""
        raise NotImplementedError

    def transpose(self, x, axes):
        """Axes permuted as ``numpy.transpose``."""
        raise NotImplementedError

    def broadcast_to(self, x, shape):
        """``x`` broadcast to ``shape`` (may be a read-only view)."""
        raise NotImplementedError

    def getitem(self, x, index):
        """Basic indexing (ints, slices, None, Ellipsis) and integer-array indexing."""
        raise NotImplementedError

    def index_add(self, shape, index, g):
        """Zeros of ``shape`` with ``g`` added at ``index`` (the backward of ``getitem``)."""
        raise NotImplementedError

    def index_add_into(self, base, index, g, in_place):
        """``base`` (the gradient already gathered for an indexed array, of g's dtype) plus g
        at ``index``; a backend may add into base itself when ``in_place``.  Default: a new
        array, ``base + index_add(base.shape, index, g)``."""
        return self.binary("add", base, self.index_add(base.shape, index, g))

    def pad(self, x, pads, value):
        """Constant padding; ``pads`` is one ``(before, after)`` pair per axis."""
        raise NotImplementedError

    def concatenate(self, xs, axis):
        """Join storages along ``axis``."""
        raise NotImplementedError

    # --- linear algebra ------------------------------------------------
    def matmul(self, a, b):
        """``a @ b`` for 2-D or batched (broadcasting batch dimensions) operands."""
        raise NotImplementedError

    def linear(self, x, w, b):
        """``x @ w.T + b`` for ``x`` (N, in), ``w`` (out, in), ``b`` (out,) or None."""
        raise NotImplementedError

    # --- convolution and pooling ----------------------------------------
    def conv2d(self, x, w, b, stride, padding, dilation):
        """Cross-correlation of ``x`` (N,C,H,W) with ``w`` (K,C,R,S) plus bias ``b`` (K,) or None."""
        raise NotImplementedError

    def conv2d_backward(self, x, w, gy, stride, padding, dilation, need_x, need_w, need_b):
        """Gradients ``(gx, gw, gb)`` of conv2d; entries not needed are None."""
        raise NotImplementedError

    def max_pool2d(self, x, kernel, stride, padding):
        """Max pooling; returns ``(y, argmax)`` where ``argmax`` is what the backward needs."""
        raise NotImplementedError

    def max_pool2d_backward(self, gy, argmax, x_shape):
        """Gradient of max pooling with respect to its input of shape ``x_shape``."""
        raise NotImplementedError

    def avg_pool2d(self, x, kernel, stride, padding, count_include_pad):
        """Average pooling (PyTorch semantics for ``count_include_pad``)."""
        raise NotImplementedError

    def avg_pool2d_backward(self, gy, x_shape, kernel, stride, padding, count_include_pad):
        """Gradient of average pooling."""
        raise NotImplementedError

    # --- fused layers ---------------------------------------------------
    def log_softmax(self, x, axis):
        """Numerically stable log-softmax along ``axis``."""
        raise NotImplementedError

    def softmax(self, x, axis):
        """Softmax along ``axis``.  This default is exp(log_softmax); a device with a fused
        kernel overrides it."""
        return self.unary("exp", self.log_softmax(x, axis))

    def softmax_backward(self, y, gy, axis):
        """Gradient of softmax from its output ``y``: ``y * (gy - sum(gy * y))`` along
        ``axis`` (composed of the methods above unless a device overrides it)."""
        dot = self.sum(self.binary("mul", gy, y), (axis,), True)
        return self.binary("mul", y, self.binary("sub", gy, dot))

    def log_softmax_backward(self, y, gy, axis, addend=None):
        """Gradient of log-softmax from its output ``y``: ``gy - exp(y) * sum(gy)``, plus
        ``addend`` (an array of y's shape, only read) when given."""
        raise NotImplementedError

    def softmax_cross_entropy(self, logits, labels, label_smoothing):
        """Per-sample loss of logits (N, C) against int64 labels (N,); returns ``(loss, probs)``."""
        raise NotImplementedError

    def softmax_cross_entropy_backward(self, probs, labels, label_smoothing, gloss):
        """Gradient w.r.t. logits given per-sample loss gradient ``gloss`` (N,)."""
        raise NotImplementedError

    def log_softmax_nll_backward(self, logp, labels, gloss, addend=None, addend_writable=False):
        """Gradient with respect to x of the NLL of logp = log_softmax(x) (N, C) at int64
        labels (N,), given the per-sample loss gradient gloss (N,):
        ``gloss[:, None] * (exp(logp) - onehot(labels))``, plus ``addend`` (an array of
        logp's shape) when given, which may then be updated in place and returned when
        ``addend_writable``.  This default composes other methods; a device with a fused
        kernel overrides it."""
        gx = self.softmax_cross_entropy_backward(self.unary("exp", logp), labels, 0.0, gloss)
        return gx if addend is None else self.binary("add", gx, addend)

    def layer_norm(self, x, weight, bias, eps):
        """Layer norm over the rows of a 2-D ``x`` (rows, D): ``(y, mean, rstd)`` with
        ``y = (x - mean) * rstd * weight + bias``, rstd = 1 / sqrt(biased variance + eps);
        weight, bias (D,) or None.  mean and rstd are whatever :meth:`layer_norm_backward`
        takes back.  This default composes the methods above; a device with a fused kernel
        overrides both."""
        scale = 1.0 / x.shape[1]
        mean = self.scalar("mul", self.sum(x, (1,), True), scale)
        centred = self.binary("sub", x, mean)
        var = self.scalar("mul", self.sum(self.binary("mul", centred, centred), (1,), True), scale)
        rstd = self.scalar("pow", self.scalar("add", var, eps), -0.5)
        y = self.binary("mul", centred, rstd)
        if weight is not None:
            y = self.binary("mul", y, weight)
        if bias is not None:
            y = self.binary("add", y, bias)
        return y, mean, rstd

    def layer_norm_backward(self, g, x, weight, mean, rstd):
        """``(gx, gweight, gbias)`` of :meth:`layer_norm` for the output gradient ``g``
        (gweight and gbias summed over the rows)."""
        scale = 1.0 / x.shape[1]
        xhat = self.binary("mul", self.binary("sub", x, mean), rstd)
        gw = self.sum(self.binary("mul", g, xhat), (0,), False)
        gb = self.sum(g, (0,), False)
        gh = self.binary("mul", g, weight) if weight is not None else g
        a = self.scalar("mul", self.sum(gh, (1,), True), scale)
        c = self.scalar("mul", self.sum(self.binary("mul", gh, xhat), (1,), True), scale)
        gx = self.binary("mul", self.binary("sub", self.binary("sub", gh, a),
                                            self.binary("mul", xhat, c)), rstd)
        return gx, gw, gb

    def batch_norm_train(self, x, gamma, beta, eps, relu=False, residual=None):
        """Batch norm over all axes but 1; returns ``(y, mean, var, invstd)`` (``var`` biased).

        ``residual`` (None, or an array of x's shape and dtype, any layout) is added to the
        normalised output, then with ``relu`` the sum is rectified: ``y = relu(bn(x) +
        residual)`` in the output pass (ResNet's block endings; see batch_norm_relu_backward)."""
        raise NotImplementedError

    def batch_norm_train_tracked(self, x, gamma, beta, eps, running_mean, running_var, keep,
                                 take_mean, take_var, counter, relu=False, residual=None):
        """``batch_norm_train`` that also updates running statistics in place, as BatchNorm's
        training step does: ``running_mean = keep * running_mean + take_mean * mean`` and
        ``running_var = keep * running_var + take_var * var`` (either buffer may be None),
        then ``counter`` (a one-element int64 array, or None) += 1.  Returns what
        ``batch_norm_train`` returns.  This default builds it from other methods; a backend
        overrides it to save the extra passes (the CUDA backend: kernel launches)."""
        y, mean, var, invstd = self.batch_norm_train(x, gamma, beta, eps, relu, residual)
        if running_mean is not None:
            self.mix_into_(running_mean, keep, mean, take_mean)
        if running_var is not None:
            self.mix_into_(running_var, keep, var, take_var)
        if counter is not None:
            self.copy_(counter, self.scalar("add", counter, 1))
        return y, mean, var, invstd

    def batch_norm_eval(self, x, mean, var, gamma, beta, eps, relu=False, residual=None):
        """Batch norm with given statistics; ``relu`` and ``residual`` as in batch_norm_train."""
        raise NotImplementedError

    def batch_norm_backward(self, gy, x, gamma, mean, invstd):
        """Gradients ``(gx, ggamma, gbeta)`` of training-mode batch norm."""
        raise NotImplementedError

    def batch_norm_relu_backward(self, gy, y, x, gamma, mean, invstd, want_masked):
        """Gradients of ``y = relu(batch_norm_train(x) + residual)`` from y itself:
        ``(gx, ggamma, gbeta, gm)``, where ``gm = gy where y > 0 else 0`` is the gradient of
        the sum (the residual's gradient; None unless ``want_masked``) and the others are
        batch_norm_backward's for gm.  This default builds it from other methods; a backend
        overrides it to read gy once and skip gm's pass (the CPU backend: memory traffic)."""
        gm = self.activation_grad("relu", y, gy)
        gx, ggamma, gbeta = self.batch_norm_backward(gm, x, gamma, mean, invstd)
        return gx, ggamma, gbeta, gm if want_masked else None

    def lrn(self, x, size, alpha, beta, k):
        """Local response norm across channels (PyTorch's formula); returns ``(y, scale)``."""
        raise NotImplementedError

    def lrn_backward(self, x, y, scale, gy, size, alpha, beta, k):
        """Gradient of local response norm."""
        raise NotImplementedError

    def dropout_mask(self, shape, p, seed, dtype):
        """Inverted-dropout mask: ``0`` with probability ``p``, else ``1/(1-p)``; deterministic in ``seed``."""
        raise NotImplementedError

    # --- optimizers (in place) -----------------------------------------
    def sgd_step_(self, p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first):
        """One PyTorch SGD update of ``p`` (and momentum buffer ``buf`` unless None)."""
        raise NotImplementedError

    def adam_step_(self, p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
        """One PyTorch Adam (or AdamW when ``decoupled``) update of ``p``, ``m``, ``v``."""
        raise NotImplementedError

    def sum_of_squares(self, x):
        """Sum of squares of all elements, as a Python float."""
        raise NotImplementedError

    def all_finite(self, x):
        """True when no element is NaN or infinite."""
        raise NotImplementedError


def register(name, factory):
    """Register a backend factory (called lazily on first use) under device ``name``."""
    _FACTORIES[name] = factory


def get(name):
    """Return the backend for device ``name``, creating it on first use."""
    backend = _REGISTRY.get(name)
    if backend is not None:
        return backend
    if name not in _FACTORIES:
        known = ", ".join(sorted(_FACTORIES)) or "none"
        raise ValueError(f"unknown device {name!r}; known devices: {known}")
    backend = _FACTORIES[name]()
    _REGISTRY[name] = backend
    return backend


def devices():
    """Names of the registered devices."""
    return sorted(_FACTORIES)
