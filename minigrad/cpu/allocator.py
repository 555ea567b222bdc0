"""glibc malloc thresholds for NumPy-held activations (Linux/glibc only, process-wide).

Activations of a few MB are allocated and freed every training step.  glibc serves
blocks above its mmap threshold (128 KB at start) with a fresh ``mmap``, and it returns
freed memory at the top of the heap to the kernel once it exceeds its trim threshold.
Either way the next step touches new pages: a LeNet-5 step at batch 128 took about
3,000 page faults and 11-15 ms in a fresh process, against 7 ms once the pages are
reused (BENCHMARKS_perf.md, change 40).  glibc raises both thresholds by itself only
after a large mmapped block is freed, which a small model's step may never do.

:func:`tune` raises them from the start: blocks up to 4 MB come from the heap (LeNet's
largest activation is 2.4 MB), and up to 64 MB of freed heap stays mapped between steps.
Larger blocks are still mmapped and go back to the kernel when freed, so peak memory does
not grow: the ResNet-18 step's peak RSS was 736 MB with these settings and 743 MB without,
while a 32 MB mmap threshold (glibc's own ceiling) raised it to 969 MB by fragmenting the
heap.  ``MINIGRAD_MALLOC_TUNING=0`` in the environment leaves the allocator alone.
"""

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 4 << 20
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
