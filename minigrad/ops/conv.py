"""2-D convolution (cross-correlation, NCHW) with stride, padding, dilation and groups."""

import numpy as np

from ..autograd import Function


def pair(value, what):
    """``value`` as an ``(h, w)`` pair of ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{what} must be an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def conv_output_size(size, kernel, stride, padding, dilation):
    """Output length of a convolution along one axis."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def same_padding(kernel, stride, dilation, what="conv2d"):
    """Symmetric padding for ``padding="same"`` (stride 1 only, as PyTorch)."""
    if stride != (1, 1):
        raise ValueError(f"{what}: padding='same' is not supported for strided convolutions (stride={stride})")
    total = [d * (k - 1) for k, d in zip(kernel, dilation)]
    if any(t % 2 for t in total):
        raise ValueError(
            f"{what}: padding='same' with kernel {kernel} and dilation {dilation} needs asymmetric "
            f"padding, which minigrad does not support; pad explicitly with pad()")
    return tuple(t // 2 for t in total)


def resolve_padding(padding, kernel, stride, dilation, what="conv2d"):
    """Integer/pair padding, or the pair that ``"same"``/``"valid"`` stands for."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            return same_padding(kernel, stride, dilation, what)
        raise ValueError(f"{what}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    return pair(padding, "padding")


class Conv2d(Function):
    """y = conv(x, w) + b; backward through the backend's fused conv gradient kernel.

    dX takes the gradient already gathered for x as an addend (see ``autograd``): the CPU
    kernels add it while copying dX out, which saves a separate pass over an array of x's size."""

    grad_addend_inputs = (0,)

    def forward(self, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        self.conf = (stride, padding, dilation)
        self.save(x, w)
        self.wprep = None
        need = getattr(self, "needs_grad", None)
        saving = getattr(self.be, "conv2d_saving", None)
        if saving is not None and need is not None and (need[0] or need[1]):
            # a backend may hand back what its backward would otherwise redo (CPU: the GEMM
            # layout of the weights, and the channels-last copy of x that dW reads)
            y, self.wprep = saving(x, w, b, stride, padding, dilation, bool(need[1]))
            return y
        return self.be.conv2d(x, w, b, stride, padding, dilation)

    def backward(self, g):
        x, w = self.saved
        need = self.needs_grad
        gx_addend, writable = self.grad_addend(0)
        if self.wprep is not None:
            return self.be.conv2d_backward_saved(
                self.wprep, x, w, g, *self.conf, need[0], need[1], len(need) > 2 and need[2],
                gx_addend=gx_addend, addend_writable=writable)
        gx, gw, gb = self.be.conv2d_backward(
            x, w, g, *self.conf, need[0], need[1], len(need) > 2 and need[2])
        if gx_addend is not None and gx is not None:
            gx = self.be.binary("add", gx, gx_addend)
        return gx, gw, gb


class DepthwiseConv2d(Function):
    """Depthwise y = conv(x, w) + b (groups equal to the input channels, w (K, 1, R, S) with
    K a multiple of C); for backends with depthwise kernels (``depthwise_conv2d``).  dX
    takes the gradient already gathered for x as an addend, as Conv2d's does."""

    grad_addend_inputs = (0,)

    def forward(self, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        self.conf = (stride, padding, dilation)
        self.save(x, w)
        return self.be.depthwise_conv2d(x, w, b, stride, padding, dilation)

    def backward(self, g):
        x, w = self.saved
        need = self.needs_grad
        gx_addend, writable = self.grad_addend(0)
        return self.be.depthwise_conv2d_backward(
            x, w, g, *self.conf, need[0], need[1], len(need) > 2 and need[2],
            gx_addend=gx_addend, addend_writable=writable)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation as ``torch.nn.functional.conv2d``.

    ``groups`` > 1 splits the input channels and the filters into that many groups, each
    convolved on its own (weight (out, in / groups, kH, kW)).  Depthwise convolutions
    (groups equal to the input channels) run the backend's depthwise kernels (both
    backends have them); other groupings run one convolution per group on the channel
    slices and concatenate the outputs."""
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    groups = int(groups)
    xshape, wshape, xdtype = x.shape, weight.shape, x.dtype
    if len(xshape) != 4:
        raise ValueError(f"conv2d: input must be 4-D (N, C, H, W), got shape {xshape}")
    if len(wshape) != 4:
        raise ValueError(f"conv2d: weight must be 4-D (out, in, kH, kW), got shape {wshape}")
    if xdtype.kind != "f":
        raise TypeError(
            f"conv2d: input must be floating point, got {xdtype}; convert with .float()")
    if xdtype != weight.dtype:
        raise TypeError(f"conv2d: input dtype {xdtype} differs from weight dtype {weight.dtype}")
    if xshape[1] % groups or wshape[0] % groups:
        raise ValueError(
            f"conv2d: groups={groups} must divide the input channels of {xshape} and the "
            f"output channels of weight {wshape}")
    if xshape[1] != wshape[1] * groups:
        raise ValueError(
            f"conv2d: input {xshape} has {xshape[1]} channels but weight {wshape} "
            f"with groups={groups} expects {wshape[1] * groups}")
    if bias is not None and bias.shape != (wshape[0],):
        raise ValueError(f"conv2d: bias shape {bias.shape} != ({wshape[0]},)")
    kernel = wshape[2:]
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"conv2d: stride {stride} and dilation {dilation} must be positive")
    padding = resolve_padding(padding, kernel, stride, dilation)
    if min(padding) < 0:
        raise ValueError(f"conv2d: padding {padding} must be non-negative")
    for size, k, p, d in zip(xshape[2:], kernel, padding, dilation):
        if d * (k - 1) + 1 > size + 2 * p:
            raise ValueError(
                f"conv2d: kernel {tuple(kernel)} (dilation {dilation}) is larger than the "
                f"padded input {xshape[2] + 2 * padding[0]}x{xshape[3] + 2 * padding[1]} of "
                f"input {xshape}")
    conf = dict(stride=stride, padding=padding, dilation=dilation)
    args = (x, weight) if bias is None else (x, weight, bias)
    if groups == 1:
        return Conv2d.apply(*args, **conf)
    if groups == xshape[1] and hasattr(x.be, "depthwise_conv2d"):
        return DepthwiseConv2d.apply(*args, **conf)
    from .shape import concatenate

    cin, cout = weight.shape[1], weight.shape[0] // groups
    outs = []
    for g in range(groups):
        ws = slice(g * cout, (g + 1) * cout)
        args = (x[:, g * cin:(g + 1) * cin], weight[ws]) + (() if bias is None else (bias[ws],))
        outs.append(Conv2d.apply(*args, **conf))
    return concatenate(outs, 1)
