"""The layers: Linear, Conv2d, pooling, BatchNorm, Dropout, LRN, activations, containers, losses."""

import math
from collections import OrderedDict

import numpy as np

from ..ops.conv import pair, resolve_padding
from ..ops.norm import batch_norm_counted
from ..tensor import Tensor
from . import functional as F
from . import init
from .module import Module, Parameter


def _empty(*shape):
    return Parameter(np.zeros(shape, dtype=np.float32))


# --- containers ----------------------------------------------------------------

class Sequential(Module):
    """Modules applied in order; indexable (int or slice), ``len``, iterable, ``append``.

    ``Sequential(m0, m1, ...)`` names children "0", "1", ...; ``Sequential(OrderedDict)`` keeps the keys.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (OrderedDict, dict)):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def _index(self, idx):
        n = len(self._modules)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for {type(self).__name__} of length {n}")
        return idx % n

    def __getitem__(self, idx):
        items = list(self._modules.items())
        if isinstance(idx, slice):
            return type(self)(OrderedDict(items[idx]))
        return items[self._index(int(idx))][1]

    def __setitem__(self, idx, module):
        key = list(self._modules)[self._index(int(idx))]
        self.add_module(key, module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        """Add ``module`` at the end; returns ``self``."""
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x):
        """Apply each module in turn; a BatchNorm directly followed by a ReLU runs as one fused
        op where ``bn_relu`` can fuse them (same result, two passes fewer each way)."""
        mods = tuple(self._modules.values())
        i = 0
        while i < len(mods):
            m = mods[i]
            if i + 1 < len(mods) and can_fuse_bn_relu(m, mods[i + 1]):
                x = m.forward_relu(x)
                i += 2
            else:
                x = m(x)
                i += 1
        return x


class ModuleList(Module):
    """A list of modules registered as children (named "0", "1", ...)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def __getitem__(self, idx):
        items = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(items[idx])
        return items[idx]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        """Add ``module`` at the end; returns ``self``."""
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        """Append every module of ``modules``."""
        for m in modules:
            self.append(m)
        return self


class Identity(Module):
    """Returns its input."""

    def forward(self, x):
        """``x`` unchanged."""
        return x


# --- linear and convolution -------------------------------------------------------

class Linear(Module):
    """``y = x @ weight.T + bias``; weight (out, in) kaiming-uniform(a=sqrt(5)), bias U(+-1/sqrt(in))."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = _empty(self.out_features, self.in_features)
        if bias:
            self.bias = _empty(self.out_features)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        """PyTorch's default initialisation."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_features
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        """Affine map of the last dimension."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        """``in_features=..., out_features=..., bias=...``"""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution (NCHW); PyTorch's arguments, in PyTorch's order, and its default
    initialisation.

    ``padding`` is an int, a pair, ``"same"`` (stride 1) or ``"valid"``.  ``groups`` must
    divide both channel counts; the weight is (out, in / groups, kH, kW).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True):
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or \
                in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups!r} must be a positive int dividing "
                             f"in_channels={in_channels} and out_channels={out_channels}")
        self.groups = groups
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        if isinstance(padding, str):
            resolve_padding(padding, self.kernel_size, self.stride, self.dilation, "Conv2d")
            self.padding = padding
        else:
            self.padding = pair(padding, "padding")
        self.weight = _empty(self.out_channels, self.in_channels // groups, *self.kernel_size)
        if bias:
            self.bias = _empty(self.out_channels)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        """PyTorch's default initialisation."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        """Cross-correlation of ``x`` with the weight, plus bias."""
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self):
        """PyTorch's Conv2d description."""
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


# --- pooling ---------------------------------------------------------------------

class MaxPool2d(Module):
    """2-D max pooling (``stride`` defaults to ``kernel_size``)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding

    def forward(self, x):
        """Max over each window."""
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        """Kernel, stride and padding."""
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """2-D average pooling (``stride`` defaults to ``kernel_size``)."""

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.count_include_pad = count_include_pad

    def forward(self, x):
        """Mean over each window."""
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def extra_repr(self):
        """Kernel, stride and padding."""
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Average pooling to ``output_size`` (1x1, or sizes dividing the input)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        """Pool to the output size."""
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        """The output size."""
        return f"output_size={self.output_size}"


# --- normalisation and regularisation --------------------------------------------

class _BatchNorm(Module):
    """Shared BatchNorm logic: affine weight/bias, running statistics, ``num_batches_tracked``."""

    _ndims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        self.num_features = int(num_features)
        self.eps, self.momentum = eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(self.num_features, dtype=np.float32))
            self.bias = Parameter(np.zeros(self.num_features, dtype=np.float32))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(self.num_features, dtype=np.float32)))
            self.register_buffer("running_var", Tensor(np.ones(self.num_features, dtype=np.float32)))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0, dtype=np.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        """Running mean 0, running variance 1, batch count 0."""
        if self.track_running_stats:
            init.zeros_(self.running_mean)
            init.ones_(self.running_var)
            self.num_batches_tracked.fill_(0)

    def reset_parameters(self):
        """Reset running statistics; weight 1, bias 0."""
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def forward(self, x):
        """Normalise with batch statistics (training) or running statistics (eval)."""
        return self._normalise(x, False, None)

    def forward_relu(self, x, residual=None):
        """``relu(self(x) + residual)`` (``relu(self(x))`` without a residual) as one op: the
        sum and the ReLU happen in batch norm's own passes (``F.batch_norm_relu``).  The
        buffers are updated as by ``self(x)``; forward hooks do not run."""
        return self._normalise(x, True, residual)

    def _normalise(self, x, relu, residual):
        if x.ndim not in self._ndims:
            raise ValueError(f"{type(self).__name__}: expected {' or '.join(f'{d}-D' for d in self._ndims)} "
                             f"input, got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}): input {x.shape} has "
                             f"{x.shape[1]} channels")
        factor = 0.0 if self.momentum is None else self.momentum
        counted = None
        if self.training and self.track_running_stats:
            nbt = self.num_batches_tracked
            if self.momentum is None:   # the cumulative average needs the new count first
                nbt.data = nbt.be.scalar("add", nbt.data, 1)
                factor = 1.0 / float(nbt.item())
            else:                       # counted in the batch norm's own backend call
                counted = nbt
        use_batch = self.training or not self.track_running_stats
        track = self.training and self.track_running_stats
        return batch_norm_counted(x, self.running_mean if track or not use_batch else None,
                                  self.running_var if track or not use_batch else None,
                                  self.weight, self.bias, use_batch, factor, self.eps, counted,
                                  relu, residual)

    def extra_repr(self):
        """PyTorch's BatchNorm description."""
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) input."""

    _ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) input, per channel."""

    _ndims = (4,)


# False makes bn_relu and Sequential call the modules one by one (for paired timings).
FUSE_BN_RELU = True


def can_fuse_bn_relu(bn, act):
    """True when ``act(bn(x))`` may run as ``bn.forward_relu(x)``: ``bn`` a BatchNorm whose
    forward is not overridden (by a subclass, or on the instance as ``mg.summary`` wraps it),
    ``act`` a plain ReLU likewise, and neither with a forward hook: hooks and wrappers see each
    layer's output only through the modules' own calls."""
    return (FUSE_BN_RELU and isinstance(bn, _BatchNorm) and type(bn).forward is _BatchNorm.forward
            and type(act) is ReLU and not bn._forward_hooks and not act._forward_hooks
            and "forward" not in bn.__dict__ and "forward" not in act.__dict__)


def bn_relu(bn, act, x, residual=None):
    """``act(bn(x) + residual)`` (no residual: ``act(bn(x))``), as one fused op
    (``bn.forward_relu``) when ``can_fuse_bn_relu(bn, act)``, else through the modules' calls."""
    if can_fuse_bn_relu(bn, act):
        return bn.forward_relu(x, residual)
    out = bn(x)
    return act(out if residual is None else out + residual)


class LayerNorm(Module):
    """Normalisation over the trailing ``normalized_shape`` dimensions of each sample, as
    ``torch.nn.LayerNorm`` (weight ones, bias zeros when ``elementwise_affine``)."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = tuple(int(n) for n in shape), eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=np.float32))
        else:
            self.register_parameter("weight", None)
        if elementwise_affine and bias:
            self.bias = Parameter(np.zeros(self.normalized_shape, dtype=np.float32))
        else:
            self.register_parameter("bias", None)

    def forward(self, x):
        """Normalise, scale, shift."""
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        """PyTorch's LayerNorm description."""
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class Embedding(Module):
    """A lookup table of ``num_embeddings`` vectors of size ``embedding_dim`` (initialised from
    N(0, 1), as ``torch.nn.Embedding``); indexed by integer tensors of any shape."""

    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.weight = _empty(self.num_embeddings, self.embedding_dim)
        init.normal_(self.weight)

    def forward(self, input):  # noqa: A002
        """The rows of the weight at ``input``: shape ``input.shape + (embedding_dim,)``."""
        return F.embedding(input, self.weight)

    def extra_repr(self):
        """Sizes."""
        return f"{self.num_embeddings}, {self.embedding_dim}"


class Dropout(Module):
    """Inverted dropout with probability ``p`` in training mode; identity in eval mode."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
        self.p = p

    def forward(self, x):
        """Drop and rescale (training) or pass through (eval)."""
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        """The probability."""
        return f"p={self.p}, inplace=False"


class LocalResponseNorm(Module):
    """AlexNet's local response normalisation across channels (PyTorch's formula)."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        """``x_c * (k + alpha/size * sum of x^2 over the channel window) ** -beta``."""
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self):
        """Size, alpha, beta, k."""
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


# --- activations and reshaping -----------------------------------------------------

class ReLU(Module):
    """max(x, 0)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        """Rectify."""
        return F.relu(x)

    def extra_repr(self):
        """``inplace=True`` when requested (computed out of place anyway)."""
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """``x`` where positive, else ``negative_slope * x``."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope, self.inplace = float(negative_slope), inplace

    def forward(self, x):
        """Rectify with a leak."""
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        """The slope (and ``inplace=True`` when requested; computed out of place anyway)."""
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class GELU(Module):
    """``x * Phi(x)`` (``approximate="tanh"``: PyTorch's tanh formula)."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        """Gaussian error linear unit."""
        return F.gelu(x, self.approximate)

    def extra_repr(self):
        """The approximation when not exact."""
        return f"approximate={self.approximate!r}" if self.approximate != "none" else ""


class Sigmoid(Module):
    """Logistic function."""

    def forward(self, x):
        """1 / (1 + exp(-x))."""
        return F.sigmoid(x)


class Tanh(Module):
    """Hyperbolic tangent."""

    def forward(self, x):
        """tanh(x)."""
        return F.tanh(x)


class Softmax(Module):
    """Softmax along ``dim``."""

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        """Softmax."""
        return F.softmax(x, self.dim)

    def extra_repr(self):
        """The dimension."""
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """Log-softmax along ``dim``."""

    def forward(self, x):
        """Log-softmax."""
        return F.log_softmax(x, self.dim)


class Flatten(Module):
    """Flatten dimensions ``start_dim..end_dim`` (default: all but the batch dimension)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        """Flattened view."""
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self):
        """Start and end dims."""
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# --- losses ------------------------------------------------------------------------

def _class_weight_buffer(weight):
    """A loss module's per-class ``weight`` as a Tensor buffer (PyTorch keeps it in the state
    dict under "weight"), or None."""
    if weight is None or isinstance(weight, Tensor):
        return weight
    return Tensor(np.asarray(weight, dtype=np.float32))


class CrossEntropyLoss(Module):
    """Softmax cross-entropy of logits (N, C) and class indices (N,), with reduction and label smoothing."""

    def __init__(self, reduction="mean", label_smoothing=0.0, ignore_index=-100, weight=None):
        super().__init__()
        self.reduction, self.label_smoothing = reduction, label_smoothing
        self.ignore_index = ignore_index
        self.register_buffer("weight", _class_weight_buffer(weight))

    def forward(self, input, target):  # noqa: A002
        """The loss."""
        return F.cross_entropy(input, target, reduction=self.reduction,
                               label_smoothing=self.label_smoothing, ignore_index=self.ignore_index,
                               weight=self.weight)

    def extra_repr(self):
        """Reduction, smoothing and ignore_index when not default."""
        s = f"reduction={self.reduction!r}" if self.reduction != "mean" else ""
        if self.label_smoothing:
            s += (", " if s else "") + f"label_smoothing={self.label_smoothing}"
        if self.ignore_index != -100:
            s += (", " if s else "") + f"ignore_index={self.ignore_index}"
        return s


class NLLLoss(Module):
    """Negative log-likelihood of log-probabilities."""

    def __init__(self, reduction="mean", ignore_index=-100, weight=None):
        super().__init__()
        self.reduction, self.ignore_index = reduction, ignore_index
        self.register_buffer("weight", _class_weight_buffer(weight))

    def forward(self, input, target):  # noqa: A002
        """The loss."""
        return F.nll_loss(input, target, reduction=self.reduction, ignore_index=self.ignore_index,
                          weight=self.weight)


class MSELoss(Module):
    """Mean squared error."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target):  # noqa: A002
        """The loss."""
        return F.mse_loss(input, target, reduction=self.reduction)
