"""The CPU backend: NumPy storage, Numba-jitted kernels; registered as device "cpu"."""

from .. import backend as _backend
from . import cache_stamp as _cache_stamp

# before any kernel of the package is loaded from Numba's cache
_cache_stamp.check()


def _make_cpu_backend():
    from . import allocator
    from .backend import CPUBackend

    allocator.tune()
    return CPUBackend()


_backend.register("cpu", _make_cpu_backend)
