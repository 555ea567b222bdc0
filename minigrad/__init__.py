"""minigrad: a small deep-learning engine with reverse-mode autodiff and Numba kernels.

    import minigrad as mg
    x = mg.tensor([[1.0, 2.0]], requires_grad=True)
    (x * x).sum().backward()
    x.grad  # tensor([[2., 4.]])
"""

import numpy as np

from . import cpu as _cpu  # noqa: F401  (registers device "cpu")
from .autograd import (AnomalyError, Function, detect_anomaly, enable_grad, is_grad_enabled,
                       no_grad)
from .backend import devices
from .random import get_rng_state, manual_seed, set_rng_state
from .tensor import (Tensor, bool_, float32, float64, int32, int64, tensor, uint8,
                     _as_numpy, _install_methods)
from . import backend as _backend_registry
from .ops.elementwise import (abs, clamp, erf, exp, log, maximum, minimum, relu, sigmoid, sqrt,
                              tanh, where)
from .ops.reduce import argmax, argmin, max, mean, min, sum, var
from .ops.shape import (cat, concatenate, expand, flatten, pad, permute, reshape, squeeze,
                        stack, transpose, unsqueeze)
from .ops.matmul import linear, matmul
from .ops.softmax import log_softmax, softmax
from .ops.conv import conv2d
from .ops.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from . import random as _random

_install_methods()

try:  # the CUDA backend registers itself when numba.cuda is importable
    import minigrad_cuda as _minigrad_cuda  # noqa: F401
except ImportError:  # pragma: no cover - minigrad_cuda ships with minigrad
    pass

__version__ = "0.1.0"


def _new(array, requires_grad, device):
    """Tensor owning ``array``, a fresh array the factory just made: Tensor() would copy it
    again (8 MB more traffic for one ``ones`` the size of a ResNet activation)."""
    array = _as_numpy(array, None)  # Tensor()'s dtype rules, without a copy
    return Tensor._make(_backend_registry.get(device).from_numpy(array), device).requires_grad_(
        requires_grad)


def zeros(*shape, dtype=float32, device="cpu", requires_grad=False):
    """Tensor of zeros."""
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return _new(np.zeros(shape, dtype=dtype), requires_grad, device)


def ones(*shape, dtype=float32, device="cpu", requires_grad=False):
    """Tensor of ones."""
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return _new(np.ones(shape, dtype=dtype), requires_grad, device)


def full(shape, value, dtype=float32, device="cpu", requires_grad=False):
    """Tensor filled with ``value``."""
    return _new(np.full(shape, value, dtype=dtype), requires_grad, device)


def zeros_like(x, requires_grad=False):
    """Zeros with the shape, dtype and device of ``x``."""
    return zeros(x.shape, dtype=x.dtype, device=x.device, requires_grad=requires_grad)


def ones_like(x, requires_grad=False):
    """Ones with the shape, dtype and device of ``x``."""
    return ones(x.shape, dtype=x.dtype, device=x.device, requires_grad=requires_grad)


def randn(*shape, dtype=float32, device="cpu", requires_grad=False):
    """Standard-normal samples from the global generator (seed with ``manual_seed``)."""
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return _new(_random.generator().standard_normal(shape).astype(dtype), requires_grad, device)


def rand(*shape, dtype=float32, device="cpu", requires_grad=False):
    """Uniform [0, 1) samples from the global generator."""
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return _new(_random.generator().random(shape).astype(dtype), requires_grad, device)


def randn_like(x, requires_grad=False):
    """Standard-normal samples with the shape, dtype and device of ``x``."""
    return randn(x.shape, dtype=x.dtype, device=x.device, requires_grad=requires_grad)


def rand_like(x, requires_grad=False):
    """Uniform [0, 1) samples with the shape, dtype and device of ``x``."""
    return rand(x.shape, dtype=x.dtype, device=x.device, requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype=None, device="cpu"):
    """Evenly spaced values (int64 for integer arguments, else float32)."""
    values = np.arange(start, stop, step) if stop is not None else np.arange(start)
    return Tensor(values, device=device, dtype=dtype)


def save(obj, path, metadata=None):
    """Save a (nested) dict of state dicts to ``path`` in the safetensors format, atomically."""
    from .io import save as _save

    return _save(obj, path, metadata=metadata)


def load(path, device="cpu"):
    """Load what ``save`` wrote (no pickle involved)."""
    from .io import load as _load

    return _load(path)


# Imported last: it needs the names above.  Binding the function after the import keeps
# ``mg.summary`` the function although ``minigrad.summary`` is also a submodule.
from . import summary as _summary_module  # noqa: E402

summary = _summary_module.summary
layer_grad_norms = _summary_module.layer_grad_norms

# As in PyTorch, ``import minigrad as mg`` is enough for ``mg.nn`` and ``mg.optim``.
from . import nn, optim  # noqa: E402,F401
