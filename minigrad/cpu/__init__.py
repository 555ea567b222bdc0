"""The CPU backend: NumPy storage, Numba-jitted kernels; registered as device "cpu"."""

from .. import backend as _backend


def _make_cpu_backend():
    from . import allocator
    from .backend import CPUBackend

    allocator.tune()
    return CPUBackend()


_backend.register("cpu", _make_cpu_backend)
