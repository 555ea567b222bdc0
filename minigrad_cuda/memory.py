"""A caching device-memory pool so a training step does not call ``cuMemAlloc`` every time.

Blocks are rounded up to a size class (at most 1/8 waste) and kept, when their last
user dies, on a free list keyed by that size.  The life of a block is tied to a small
``MemoryPointer`` handle that every ``DeviceNDArray`` made on it (and every view or
reshape of those) references; a ``weakref.finalize`` on the handle returns the block.
Kernels run on one stream, so a block released while kernels that use it are still
queued can be handed to the next allocation safely: stream order serialises them.

``MINIGRAD_CUDA_POOL=0`` turns the pool off (plain ``cuda.device_array``).
"""

import threading


def size_class(nbytes):
    """Round ``nbytes`` up to its pool size class (512-byte granularity, <= 12.5% waste)."""
    nbytes = max(int(nbytes), 1)
    if nbytes <= 4096:
        return (nbytes + 511) & ~511
    step = 1 << max(nbytes.bit_length() - 4, 9)
    return (nbytes + step - 1) // step * step


class BlockPool:
    """Free lists of raw blocks keyed by size class.

    ``raw_alloc(size)`` returns an object that owns ``size`` bytes of device memory
    (freed when it is garbage collected); ``wrap(raw, nbytes, release)`` returns the
    handle arrays are built on (reporting exactly ``nbytes``) and must arrange for
    ``release()`` to run when the handle dies.  Both are injected so the bookkeeping can be tested without a GPU.
    """

    def __init__(self, raw_alloc, wrap, max_cached_bytes=None):
        self._raw_alloc = raw_alloc
        self._wrap = wrap
        self._free = {}
        self._lock = threading.Lock()
        self.cached_bytes = 0
        self.in_use_bytes = 0
        self.driver_allocs = 0
        self.max_cached_bytes = max_cached_bytes

    def alloc(self, nbytes):
        """A handle to at least ``nbytes`` bytes, reusing a cached block when one fits."""
        size = size_class(nbytes)
        with self._lock:
            blocks = self._free.get(size)
            raw = blocks.pop() if blocks else None
            if raw is not None:
                self.cached_bytes -= size
        if raw is None:
            try:
                raw = self._raw_alloc(size)
            except Exception:
                # out of memory (or fragmentation): drop every cached block and retry once
                self.empty_cache()
                raw = self._raw_alloc(size)
            self.driver_allocs += 1
        with self._lock:
            self.in_use_bytes += size
        # the handle reports the exact byte count: DeviceNDArray copies ``alloc_size`` bytes
        return self._wrap(raw, max(int(nbytes), 1), _Releaser(self, raw, size))

    def _release(self, raw, size):
        with self._lock:
            self.in_use_bytes -= size
            if self.max_cached_bytes is not None and self.cached_bytes + size > self.max_cached_bytes:
                return  # let ``raw`` be garbage collected: the driver frees it
            self._free.setdefault(size, []).append(raw)
            self.cached_bytes += size

    def empty_cache(self):
        """Forget every cached block (their memory goes back to the driver)."""
        with self._lock:
            self._free.clear()
            self.cached_bytes = 0

    def stats(self):
        """A dict of byte counts: ``in_use``, ``cached`` and the number of driver allocations."""
        return {"in_use": self.in_use_bytes, "cached": self.cached_bytes,
                "driver_allocs": self.driver_allocs}


class _Releaser:
    """Callable run by the handle's finalizer: puts the raw block back on the free list."""

    __slots__ = ("pool", "raw", "size")

    def __init__(self, pool, raw, size):
        self.pool, self.raw, self.size = pool, raw, size

    def __call__(self):
        pool, raw, self.raw = self.pool, self.raw, None
        if raw is not None:
            pool._release(raw, self.size)


def numba_pool():
    """A ``BlockPool`` over the current ``numba.cuda`` context (real GPU only)."""
    import weakref

    from numba import cuda
    from numba.cuda.cudadrv.driver import MemoryPointer

    ctx = cuda.current_context()

    def raw_alloc(size):
        return ctx.memalloc(size)

    def wrap(raw, nbytes, release):
        return MemoryPointer(weakref.proxy(ctx), raw.device_pointer, nbytes, finalizer=release)

    return BlockPool(raw_alloc, wrap)
