"""Analytic parameter and FLOP counts for zoo models (no forward pass needed).

Forward FLOPs are counted as 2 x the multiply-adds of the convolution and linear layers
(bias additions, BatchNorm, activations, pooling and the loss are not counted), the usual
convention of the papers' cost tables (which often quote the multiply-adds themselves).
"""

import contextlib

import numpy as np

from minigrad.ops.conv import conv_output_size, pair


def _shape_of(shape):
    return tuple(int(s) for s in shape)


def _conv_geometry(m):
    out_c, in_c, kh, kw = m.weight.shape
    stride = pair(getattr(m, "stride", 1), "stride")
    padding = getattr(m, "padding", 0)
    padding = pair(padding, "padding") if not isinstance(padding, str) else None
    dilation = pair(getattr(m, "dilation", 1), "dilation")
    return out_c, in_c, (kh, kw), stride, padding, dilation


class Tracer:
    """Walks a model with an input shape ``(C, H, W)`` and accumulates multiply-adds.

    ``Tracer().run(model, shape)`` returns the output shape; ``.macs`` holds the total and
    ``.layers`` a list of ``(module, input_shape, output_shape, macs)`` for every leaf layer.
    """

    def __init__(self):
        self.macs = 0
        self.layers = []

    def run(self, module, shape):
        """Propagate ``shape`` (without the batch axis) through ``module``."""
        return self.visit(module, _shape_of(shape))

    def visit(self, m, shape):
        """Output shape of module ``m`` for input ``shape``; records leaf layers' cost."""
        if m is None:
            return shape
        if hasattr(m, "trace_shapes"):
            return m.trace_shapes(shape, self.visit)
        kind = type(m).__name__
        macs = 0
        if kind == "Sequential":
            for child in _children(m):
                shape = self.visit(child, shape)
            return shape
        if kind == "Conv2d":
            out_c, in_c, k, s, p, d = _conv_geometry(m)
            if p is None:  # "same"/"valid" padding strings
                p = (0, 0) if m.padding == "valid" else tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
            c, h, w = shape
            if c != in_c:
                raise ValueError(f"{kind}: expects {in_c} input channels, traced shape {shape}")
            oh = conv_output_size(h, k[0], s[0], p[0], d[0])
            ow = conv_output_size(w, k[1], s[1], p[1], d[1])
            out = (out_c, oh, ow)
            macs = out_c * oh * ow * in_c * k[0] * k[1]
        elif kind == "Linear":
            out_f, in_f = m.weight.shape
            if shape[-1] != in_f:
                raise ValueError(f"Linear: expects {in_f} input features, traced shape {shape}")
            out = shape[:-1] + (out_f,)
            macs = out_f * in_f
            for extra in shape[:-1]:
                macs *= extra
        elif kind in ("MaxPool2d", "AvgPool2d"):
            k = pair(m.kernel_size, "kernel_size")
            st = getattr(m, "stride", None)
            s = k if st is None else pair(st, "stride")
            p = pair(getattr(m, "padding", 0), "padding")
            c, h, w = shape
            out = (c, conv_output_size(h, k[0], s[0], p[0], 1),
                   conv_output_size(w, k[1], s[1], p[1], 1))
        elif kind == "AdaptiveAvgPool2d":
            oh, ow = pair(m.output_size, "output_size")
            out = (shape[0], oh, ow)
        elif kind == "Flatten":
            n = 1
            for s in shape:
                n *= s
            out = (n,)
        else:  # ReLU, BatchNorm, Dropout, LRN, Identity: shape-preserving
            out = shape
        self.macs += macs
        self.layers.append((m, shape, out, macs))
        return out


def _children(m):
    if hasattr(m, "children"):
        return list(m.children())
    return list(getattr(m, "_modules", {}).values())


def count_parameters(model):
    """Number of parameter elements (buffers such as BN running stats excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


def forward_macs(model, input_shape):
    """Multiply-adds of one forward pass for one image of shape ``(C, H, W)``."""
    t = Tracer()
    t.run(model, input_shape)
    return t.macs


def forward_flops(model, input_shape):
    """Forward FLOPs for one image of shape ``(C, H, W)``: 2 x :func:`forward_macs`."""
    return 2 * forward_macs(model, input_shape)


class _ZeroGenerator:
    """Stands in for minigrad's generator while building models only to count them: every
    draw returns zeros (no random numbers generated), so VGG builds in a fraction of the time."""

    def __init__(self, real):
        self._real = real

    def _zeros(self, size, dtype=None):
        return np.zeros(() if size is None else size, dtype=dtype or np.float64)

    def uniform(self, low=0.0, high=1.0, size=None):
        return self._zeros(size)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._zeros(size)

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        return self._zeros(size, dtype)

    def random(self, size=None, dtype=np.float64, out=None):
        return self._zeros(size, dtype)

    def __getattr__(self, name):
        return getattr(self._real, name)


@contextlib.contextmanager
def zero_init():
    """Context manager: models built inside get all-zero weights quickly (for counting
    parameters and FLOPs, never for training). The global generator is untouched."""
    from minigrad import random as _random

    real = _random._generator
    _random._generator = _ZeroGenerator(real)
    try:
        yield
    finally:
        _random._generator = real


def model_stats(name, **kwargs):
    """``{"name", "input", "params", "macs", "flops"}`` of registry model ``name`` at its default
    input (built with :func:`zero_init`)."""
    from .registry import get_spec

    spec = get_spec(name)
    with zero_init():
        model = spec.builder(**kwargs)
    macs = forward_macs(model, spec.input_shape)
    return {"name": spec.name, "input": "x".join(str(s) for s in spec.input_shape),
            "params": count_parameters(model), "macs": macs, "flops": 2 * macs}
