"""Max, average and adaptive-average pooling over NCHW tensors."""

from ..autograd import Function
from .conv import pair
from .reduce import mean


class MaxPool2d(Function):
    """Max over each window; padding counts as -inf."""

    def forward(self, x, kernel, stride, padding):
        self.x_shape = x.shape
        y, self.argmax = self.be.max_pool2d(x, kernel, stride, padding)
        return y

    def backward(self, g):
        return (self.be.max_pool2d_backward(g, self.argmax, self.x_shape),)


class AvgPool2d(Function):
    """Mean over each window."""

    def forward(self, x, kernel, stride, padding, count_include_pad):
        self.conf = (x.shape, kernel, stride, padding, count_include_pad)
        return self.be.avg_pool2d(x, kernel, stride, padding, count_include_pad)

    def backward(self, g):
        return (self.be.avg_pool2d_backward(g, *self.conf),)


def _pool_args(x, kernel_size, stride, padding, what):
    if x.ndim != 4:
        raise ValueError(f"{what}: input must be 4-D (N, C, H, W), got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{what}: input must be floating point, got {x.dtype}")
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding")
    if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"{what}: kernel {kernel}, stride {stride}, padding {padding} out of range")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{what}: padding {padding} must be at most half the kernel {kernel}")
    for size, k, p in zip(x.shape[2:], kernel, padding):
        if k > size + 2 * p:
            raise ValueError(
                f"{what}: kernel {kernel} is larger than the padded input "
                f"{x.shape[2] + 2 * padding[0]}x{x.shape[3] + 2 * padding[1]} of input {x.shape}")
    return kernel, stride, padding


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """2-D max pooling (as ``torch.nn.functional.max_pool2d``, ``ceil_mode=False``)."""
    kernel, stride, padding = _pool_args(x, kernel_size, stride, padding, "max_pool2d")
    return MaxPool2d.apply(x, kernel=kernel, stride=stride, padding=padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """2-D average pooling (as ``torch.nn.functional.avg_pool2d``, ``ceil_mode=False``)."""
    kernel, stride, padding = _pool_args(x, kernel_size, stride, padding, "avg_pool2d")
    return AvgPool2d.apply(x, kernel=kernel, stride=stride, padding=padding,
                           count_include_pad=bool(count_include_pad))


def adaptive_avg_pool2d(x, output_size):
    """Average pooling to a fixed output size; 1x1 or sizes dividing the input exactly."""
    if x.ndim != 4:
        raise ValueError(f"adaptive_avg_pool2d: input must be 4-D, got shape {x.shape}")
    oh, ow = pair(output_size, "output_size")
    h, w = x.shape[2:]
    if (oh, ow) == (1, 1):
        return mean(x, (2, 3), keepdims=True)
    if h % oh or w % ow:
        raise ValueError(
            f"adaptive_avg_pool2d: output size {(oh, ow)} must divide the input size {(h, w)}")
    return avg_pool2d(x, (h // oh, w // ow))
