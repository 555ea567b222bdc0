"""``pjit``: a Numba kernel compiled twice, parallel and serial, dispatched on problem size.

A ``parallel=True`` region costs a thread-pool wake-up and a barrier (microseconds on a
quiet machine, milliseconds when other processes hold the cores); for small arrays the
serial loop finishes first.  LeNet's step runs ~40 kernels on arrays of 1e3-6e5
elements, so this matters there.  The serial twin is a copy of the function under a
different ``__qualname__`` so that both versions have their own Numba cache files.
"""

import types

from numba import njit

# Below this many elements of the first array argument, the serial version runs.
SERIAL_BELOW = 1 << 16


def _twin(fn, suffix):
    g = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__,
                           fn.__closure__)
    g.__qualname__ = fn.__qualname__ + suffix
    g.__module__ = fn.__module__
    g.__doc__ = fn.__doc__
    return g


class _SizeDispatch:
    def __init__(self, fn, opts, size_arg):
        self.parallel = njit(parallel=True, cache=True, **opts)(fn)
        self.serial = njit(cache=True, **opts)(_twin(fn, "__serial"))
        self.size_arg = size_arg
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.py_func = fn

    def __call__(self, *args):
        if args[self.size_arg].size < SERIAL_BELOW:
            return self.serial(*args)
        return self.parallel(*args)


def pjit(size_arg=0, **opts):
    """Decorator: like ``njit(parallel=True, cache=True, **opts)`` but small calls (by the
    size of positional argument ``size_arg``) run a serial compilation of the same code.
    Only for kernels called from Python (the wrapper is not callable from jitted code)."""
    def deco(fn):
        return _SizeDispatch(fn, opts, size_arg)
    return deco
