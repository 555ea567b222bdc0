"""Functional forms of the layers (PyTorch's ``torch.nn.functional``)."""

from ..ops.conv import conv2d
from ..ops.dropout import dropout
from ..ops.elementwise import gelu, leaky_relu, relu, sigmoid, tanh
from ..ops.loss import cross_entropy, mse_loss, nll_loss
from ..ops.matmul import linear
from ..ops.embedding import embedding
from ..ops.norm import batch_norm, batch_norm_relu, layer_norm, local_response_norm
from ..ops.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from ..ops.shape import flatten
from ..ops.shape import pad as _pad_pairs
from ..ops.softmax import log_softmax, softmax

__all__ = ["conv2d", "dropout", "relu", "leaky_relu", "gelu", "sigmoid", "tanh", "cross_entropy",
           "mse_loss", "nll_loss", "linear", "batch_norm", "batch_norm_relu", "layer_norm",
           "local_response_norm", "embedding", "adaptive_avg_pool2d", "avg_pool2d", "max_pool2d",
           "flatten", "log_softmax", "softmax", "pad"]


def pad(input, pad, mode="constant", value=0.0):  # noqa: A002
    """Constant padding with PyTorch's convention: ``pad`` lists ``(before, after)`` from the LAST dim backwards.

    ``F.pad(x, (1, 2))`` pads the last dimension by 1 before and 2 after;
    ``F.pad(x, (1, 1, 2, 2))`` also pads the second-to-last by 2 on each side.
    """
    if mode != "constant":
        raise ValueError(f"pad: only mode='constant' is supported, got {mode!r}")
    pad = tuple(int(p) for p in pad)
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise ValueError(f"pad: padding {pad} must have an even length of at most 2*{input.ndim} "
                         f"for input of shape {input.shape}")
    pairs = [(0, 0)] * input.ndim
    for i in range(len(pad) // 2):
        pairs[input.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    return _pad_pairs(input, pairs, value)
