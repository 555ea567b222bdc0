"""glibc malloc thresholds for NumPy-held activations (Linux/glibc only, process-wide).

Activations of a few MB are allocated and freed every training step.  glibc serves
blocks above its mmap threshold (128 KB at start) with a fresh ``mmap``, and it returns
freed memory at the top of the heap to the kernel once it exceeds its trim threshold.
Either way the next step touches new pages: a LeNet-5 step at batch 128 took about
3,000 page faults and 11-15 ms in a fresh process, against 7 ms once the pages are
reused (BENCHMARKS_perf.md, change 40).  glibc raises both thresholds by itself, but
only to the largest mmapped block freed so far: after LeNet's 2.4 MB activations its
trim threshold is 4.8 MB, less than one step frees at the top of the heap.

:func:`tune` sets, from the start, the state glibc's heuristic reaches on its own after
freeing one large block: an mmap threshold of 32 MB (the heuristic's ceiling) and a trim
threshold of twice that.  Peak memory of the ResNet-18 step is unchanged (VmHWM 696 MB
with, 695 MB without).  A 4 MB mmap threshold was tried first: fixing it there also
stops the heuristic, so ResNet-18's 8 MB activations were mmapped on every step (29,000
faults and about 100 ms of system time per step).  ``MINIGRAD_MALLOC_TUNING=0`` in the
environment leaves the allocator alone.
"""

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD = -1   # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3

_state = {"done": False, "applied": False}


def tune():
    """Set glibc's mmap and trim thresholds once per process; returns True when applied.

    Does nothing (and returns False) off Linux, without glibc, or when the environment has
    ``MINIGRAD_MALLOC_TUNING=0``."""
    if _state["done"]:
        return _state["applied"]
    _state["done"] = True
    if os.environ.get("MINIGRAD_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # musl and other C libraries lack it
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    _state["applied"] = ok
    return ok


def applied():
    """True when :func:`tune` has set the thresholds in this process."""
    return _state["applied"]
