"""The CPU backend: NumPy storage, Numba-jitted kernels; registered as device "cpu"."""

import os as _os

from .. import backend as _backend
from .. import cache_stamp as _cache_stamp

PACKAGE_DIR = _os.path.dirname(_os.path.abspath(__file__))


def cache_probe():
    """A function of this package, for asking Numba where its cached kernels live."""


# before any kernel of the package is loaded from Numba's cache
_cache_stamp.check(PACKAGE_DIR, cache_probe)


def _make_cpu_backend():
    from . import allocator
    from .backend import CPUBackend

    allocator.tune()
    return CPUBackend()


_backend.register("cpu", _make_cpu_backend)
