"""Kernels that run with Numba's chunk size set to 1 (``conv._dynamic_schedule``) must have
no parallel loop other than their own ``prange``.

With ``parallel=True`` Numba also turns ``np.zeros``, ``np.ones``, array expressions and
slice fills into parallel loops, and those run with the same chunk size: one element per
chunk.  A zero-filled 128 KB scratch buffer in ``_bwd_cols`` took its dW-only call on the
stem from 2.0 to 19 ms that way (BENCHMARKS_perf.md, change 96).  Each kernel here is
compiled afresh (the cached compilation carries no parfor diagnostics) with the arguments
a small convolution passes it, and its parallel loops are counted.
"""

import numba
import numpy as np

from minigrad.cpu import conv, conv3x3_rows

# (module attribute, prange loops in the source)
KERNELS = [("_fwd_cols", 1), ("_bwd_cols", 1)]


def _captured_args(monkeypatch):
    """The arguments of each kernel's first call in a small 3x3 convolution's forward and
    backward (NCHW input, so that the transposed dW path of change 96 is taken in float32;
    the few-channel 3x3 kernels, which would take this shape, off)."""
    monkeypatch.setattr(conv3x3_rows, "USE", False)
    seen = {}
    for name, _ in KERNELS:
        kernel = getattr(conv, name)

        def spy(*args, _kernel=kernel, _name=name):
            seen.setdefault(_name, (_kernel, args))
            return _kernel(*args)

        monkeypatch.setattr(conv, name, spy)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    y = conv.conv2d(x, w, None, (1, 1), (1, 1), (1, 1))
    conv.conv2d_backward(x, w, np.ones_like(y), (1, 1), (1, 1), (1, 1), True, True, False)
    return seen


def test_dynamic_schedule_kernels_have_only_their_prange(monkeypatch):
    seen = _captured_args(monkeypatch)
    for name, loops in KERNELS:
        assert name in seen, f"{name} was not called by the convolution"
        kernel, args = seen[name]
        fresh = numba.njit(parallel=True)(kernel.py_func)
        fresh(*args)
        diag = fresh.overloads[fresh.signatures[0]].metadata["parfor_diagnostics"]
        found = len(diag.get_parfors())
        assert found == loops, (
            f"{name} compiles to {found} parallel loops, its source has {loops} prange: "
            "an np.zeros / array expression outside the prange runs one element per chunk")
