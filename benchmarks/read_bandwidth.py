"""How fast this machine reads memory right now, with the benchmark's two threads.

The per-layer conv rows that move the most bytes per FLOP (the 1x1 stride-2 ones) run at
the speed of the last-level cache when their ~20-27 MB working set stays in it, and at
DRAM speed when it does not.  On a shared host the cache is shared with other tenants,
so how much of it this process gets changes from minute to minute.  ``read_gbps(mb)``
measures it: a buffer of ``mb`` MB read end to end by both threads, again and again; the
rate at 8 MB is the cache's, at 128 MB DRAM's, and at 24 MB whichever the host allows now.

Run it a moment after any multi-threaded OpenBLAS call, not right after: OpenBLAS's
threads spin on for a while and share the two cores with the probe's (measured right after
a 2048^3 sgemm: 8 MB once at 1 GB/s, 128 MB at 26-35 GB/s; 0.25 s later 123-145 and
47-48 GB/s).  run_all sleeps REF_SETTLE_S first.

    python -m benchmarks.read_bandwidth        # one line: GB/s at PROBE_MB
"""

import statistics
import time

import numba
import numpy as np
from numba import njit, prange

PROBE_MB = (8, 24, 128)
_PARTS = 2   # one part per benchmark thread


@njit(parallel=True, cache=True, fastmath=True)
def _read(a, sums):
    """sums[t] += the sum of part t of a (read once, in order)."""
    n = a.size // _PARTS
    for t in prange(_PARTS):
        part = a[t * n:(t + 1) * n]   # indexed from 0: no negative-index check in the loop
        s = np.float32(0.0)
        for i in range(part.size):
            s += part[i]
        sums[t] += s


_buffers = {}


def read_gbps(mb, calls=20):
    """GB/s of reading an ``mb`` MB float32 buffer with two threads: the median of ``calls``
    reads after two untimed ones (which bring the buffer into whichever caches keep it)."""
    a = _buffers.get(mb)
    if a is None:
        a = _buffers[mb] = np.ones(mb * (1 << 20) // 4, dtype=np.float32)
    sums = np.zeros(_PARTS, dtype=np.float32)
    for _ in range(2):
        _read(a, sums)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        _read(a, sums)
        times.append(time.perf_counter() - t0)
    return a.nbytes / statistics.median(times) / 1e9


def probe(sizes=PROBE_MB):
    """{mb: GB/s} for each buffer size."""
    return {mb: read_gbps(mb) for mb in sizes}


def describe(rates):
    """'8 MB 170, 24 MB 160, 128 MB 52 GB/s' for a ``probe`` result."""
    return ", ".join(f"{mb} MB {gbps:.0f}" for mb, gbps in rates.items()) + " GB/s"


if __name__ == "__main__":
    numba.set_num_threads(min(_PARTS, numba.config.NUMBA_NUM_THREADS))
    print("read bandwidth (two threads):", describe(probe()))
