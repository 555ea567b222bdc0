"""CPU random kernels: the counter-based inverted-dropout mask.

The mask is a pure function of ``(seed, flat index)`` (a SplitMix64 hash), so it
is identical on every device and independent of the thread count.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def _mask(out, p, scale, seed):
    n = out.size
    for i in prange(n):
        z = np.uint64(seed) + np.uint64(i + 1) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        u = np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)
        out[i] = 0.0 if u < p else scale


def dropout_mask(shape, p, seed, dtype):
    """Mask of ``shape``: ``0`` with probability ``p``, else ``1/(1-p)``; deterministic in ``seed``."""
    out = np.empty(tuple(shape), dtype=dtype)
    p = float(p)
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    _mask(out.reshape(-1), p, scale, int(seed) & ((1 << 64) - 1))
    return out
