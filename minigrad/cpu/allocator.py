"""glibc malloc thresholds for NumPy-held activations (Linux/glibc only, process-wide).

Activations of a few MB are allocated and freed every training step.  glibc serves
blocks above its mmap threshold (128 KB at start) with a fresh ``mmap``, and it returns
freed memory at the top of the heap to the kernel once it exceeds its trim threshold.
Either way the next step touches new pages: a LeNet-5 step at batch 128 took about
3,000 page faults and 11-15 ms in a fresh process, against 7 ms once the pages are
reused (BENCHMARKS_perf.md, change 40).  glibc raises both thresholds by itself, but
only to the largest mmapped block freed so far: after LeNet's 2.4 MB activations its
trim threshold is 4.8 MB, less than one step frees at the top of the heap.

:func:`tune` sets both from the start: blocks up to 128 MB come from the heap, and up to
256 MB of freed heap stays mapped between steps.  glibc's own heuristic stops at 32 MB,
below ResNet-18's 33.5 MB activations at batch 128, which were then mmapped and faulted
in on every step (6,900 faults and 185 ms of system time in a 1.94 s step; 124 faults,
8 ms and 1.70 s with these settings).  Peak memory is unchanged (VmHWM of the ResNet-18
step: 1,648 against 1,655 MB at batch 128, 698 against 699 MB at batch 32).  A low mmap
threshold (4 MB, tried first) is worse: fixing the thresholds also stops the heuristic, so
every larger block was mmapped on every step.  ``MINIGRAD_MALLOC_TUNING=0`` in the
environment leaves the allocator alone.
"""

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 128 << 20
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD = -1   # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3

_state = {"done": False, "applied": False, "status": "not started (the CPU backend is not in use)"}


def tune():
    """Set glibc's mmap and trim thresholds once per process; returns True when applied.

    Does nothing (and returns False) off Linux, without glibc, or when the environment has
    ``MINIGRAD_MALLOC_TUNING=0``."""
    if _state["done"]:
        return _state["applied"]
    _state["done"] = True
    if os.environ.get("MINIGRAD_MALLOC_TUNING", "1") == "0":
        _state["status"] = "left alone (MINIGRAD_MALLOC_TUNING=0)"
        return False
    _state["status"] = "left alone (not glibc on Linux)"
    if not sys.platform.startswith("linux"):
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
    _state["status"] = (f"glibc thresholds set (mmap {MMAP_THRESHOLD >> 20} MB, trim "
                        f"{TRIM_THRESHOLD >> 20} MB; MINIGRAD_MALLOC_TUNING=0 turns this off)"
                        if ok else "left alone (glibc refused the thresholds)")
    return ok


def applied():
    """True when :func:`tune` has set the thresholds in this process."""
    return _state["applied"]


def status():
    """One line on what :func:`tune` did in this process (for ``cli.py info``)."""
    return _state["status"]
