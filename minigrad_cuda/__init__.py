"""minigrad's CUDA backend: ``numba.cuda`` kernels registered as device ``"cuda"``.

Importing this package is cheap and never fails for want of a GPU: ``numba.cuda``
is imported only when the backend is first requested (``Tensor(..., device="cuda")``
or ``x.to("cuda")``).  Without a usable GPU the factory raises one clear
``RuntimeError``; setting ``NUMBA_ENABLE_CUDASIM=1`` runs every kernel under
Numba's CUDA simulator instead (slow, for tests on small shapes).

    import minigrad_cuda
    minigrad_cuda.is_available()        # True with a GPU or the simulator
    minigrad_cuda.unavailable_reason()  # None, or why not
"""

import os

from minigrad import backend as _registry

__all__ = ["is_available", "unavailable_reason", "compiler_problem", "is_simulator", "get_backend"]

_MESSAGE = ("CUDA device requested but no usable GPU was found ({reason}); run with --device cpu, "
            "or set NUMBA_ENABLE_CUDASIM=1 to use Numba's CUDA simulator")


def is_simulator():
    """True when Numba's CUDA simulator is enabled (``NUMBA_ENABLE_CUDASIM=1``)."""
    try:
        from numba.core import config

        return bool(config.ENABLE_CUDASIM)
    except Exception:  # pragma: no cover - numba missing
        return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def compiler_problem():
    """``None``, or why Numba's CUDA compiler cannot work with the installed NumPy.

    numba-cuda imports its array typing (``numba.cuda.np.arrayobj``) only when it compiles
    the first kernel; with NumPy 2.5 that import fails (numba-cuda 0.30 registers
    ``np.row_stack``, which NumPy 2.5 removed), so every launch would fail with an
    ``AttributeError`` far from its cause.  Importing it here turns that into a reason.
    """
    try:
        import numba.cuda.np.arrayobj  # noqa: F401
    except ImportError:  # Numba's older built-in CUDA target has no such module
        return None
    except Exception as err:
        import numpy

        return (f"Numba's CUDA compiler fails with NumPy {numpy.__version__} "
                f"({type(err).__name__}: {err}); install numpy<2.5")
    return None


def unavailable_reason():
    """``None`` when device "cuda" can be used, else a short reason why not (never raises)."""
    try:
        from numba import cuda
    except Exception as err:  # pragma: no cover - numba is a dependency
        return f"numba.cuda cannot be imported: {err}"
    if is_simulator():
        return None
    try:
        if cuda.is_available():
            if len(cuda.gpus) == 0:
                return "the CUDA driver reports no devices"
            return compiler_problem()
    except Exception as err:
        return f"{type(err).__name__}: {err}".strip().splitlines()[0]
    try:
        err = cuda.cuda_error()
    except Exception:  # pragma: no cover
        err = None
    if err is not None:
        text = " ".join(str(err).split())
        return text.split(". ")[0].rstrip(".") or type(err).__name__
    return "numba.cuda.is_available() returned False"


def is_available():
    """True when device "cuda" can be used (a GPU, or the simulator); never raises."""
    return unavailable_reason() is None


def _cache_probe():
    """A function of this package, for asking Numba where its cached kernels live."""


def _factory():
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(_MESSAGE.format(reason=reason))
    from numba.core import config

    # Small tensors legitimately launch small grids; Numba would warn on every such launch.
    config.CUDA_LOW_OCCUPANCY_WARNINGS = False
    if not is_simulator():   # kernels are cached on disk (cache=True): drop stale ones first
        from minigrad import cache_stamp

        cache_stamp.check(os.path.dirname(os.path.abspath(__file__)), _cache_probe)
    from .backend import CUDABackend

    return CUDABackend()


def get_backend():
    """The ``CUDABackend`` instance (created on first use; raises ``RuntimeError`` without a GPU)."""
    return _registry.get("cuda")


_registry.register("cuda", _factory)
