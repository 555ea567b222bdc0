"""GEMMs that prefetch other memory while they compute (CPU kernels, float32).

A kernel that alternates small GEMMs on cached operands with passes over memory (the NCHW
1x1 path: gather an image's sampled pixels, GEMM, scatter dX into x.grad) waits on each
pass, because one core on the hosts measured reads memory no faster than its own miss
buffers allow (25-28 GB/s from L3 on the Intel Xeon of sessions 36-43).  Prefetching the
next pass's memory in a burst waits on the same miss buffers as reading it; issued one line
at a time between the arithmetic, the misses run under the GEMM instead.

``gemm_stream(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc, bp, pf1, s1, l1, pf2,
s2, l2)`` computes ``C = op(A) @ op(B) + beta * C`` with the row-major interface of
``blas.gemm_rm`` (alpha 1) and, while it does, prefetches the elements ``pf1[s1:s1 + l1]``
and then ``pf2[s2:s2 + l2]`` into L2: small_gemm's micro-kernel issues one prefetch per
reduction step (``small_gemm.tile_stream``), the two streams spread over the tiles in
proportion to their lengths (a stream longer than 16 elements a step is thinned to every
step-th element).  B transposed is packed into the caller's ``bp`` (at least k*n elements).
Shapes the micro-kernel does not take, float64, and hosts or settings where small_gemm is off
go to ``gemm_rm`` without prefetching; the result is the same either way (a prefetch never
changes a value).  Jitted code only.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

from . import small_gemm
from .blas import gemm_rm
from .small_gemm import EDGE_MR, KC, MR, NR


@njit(inline="always")
def usable(transa, transb, m, n, k, lda):
    """True when gemm_stream's own tiles compute this float32 product: small_gemm on and
    preferring the shape, whole NR-column panels, one pass over the reduction (k <= KC), and
    m a multiple of the short tile's rows (so that every strip is a tile's exact height)."""
    return (small_gemm.SUPPORTED and small_gemm.switch_on()
            and small_gemm.preferred(transa, transb, m, n, k)
            and not small_gemm.a_rows_alias(transa, lda)
            and n % NR == 0 and 0 < k <= KC and m % EDGE_MR[0] == 0)


@njit(inline="always")
def _share(total, steps):
    """Elements a reduction step advances a stream of ``total`` elements over ``steps``."""
    return (total + steps - 1) // steps if total > 0 and steps > 0 else 0


@njit(inline="always")
def _tiles(transa, m, n, k, a, lda, bsrc, brs, pstride, beta, c, ldc, pf1, s1, l1, pf2, s2,
           l2):
    """The tile loop of gemm_stream: B's panel jp at bsrc[jp*pstride], rows brs apart."""
    ars, acs = (1, lda) if transa else (lda, 1)
    npan = n // NR
    ntiles = ((m + MR - 1) // MR) * npan
    t1 = (ntiles * l1 + l1 + l2 - 1) // (l1 + l2) if l1 + l2 > 0 else ntiles
    step1 = _share(l1, t1 * k)
    step2 = _share(l2, (ntiles - t1) * k)
    bet = np.float32(beta)
    t = 0
    for i0 in range(0, m, MR):
        mr = small_gemm._tile_rows(min(MR, m - i0))
        for jp in range(npan):
            if t < t1:
                small_gemm.tile_stream(mr, k, a, i0 * ars, ars, acs, bsrc, jp * pstride, brs, c,
                                       i0 * ldc + jp * NR, ldc, bet, pf1, s1 + t * k * step1,
                                       step1)
            else:
                small_gemm.tile_stream(mr, k, a, i0 * ars, ars, acs, bsrc, jp * pstride, brs, c,
                                       i0 * ldc + jp * NR, ldc, bet, pf2,
                                       s2 + (t - t1) * k * step2, step2)
            t += 1


def gemm_stream(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc, bp, pf1, s1, l1, pf2,
                s2, l2):
    """gemm_rm (alpha 1) that prefetches pf1[s1:s1+l1] and pf2[s2:s2+l2] into L2 while it
    computes (see the module docstring); jitted code only."""
    raise NotImplementedError("gemm_stream is callable from njit code only")


@overload(gemm_stream, jit_options={"cache": True})
def _gemm_stream_overload(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc, bp, pf1, s1,
                          l1, pf2, s2, l2):
    if not isinstance(c, types.Array):
        return None
    if c.dtype == types.float32 and small_gemm.SUPPORTED:
        def impl(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc, bp, pf1, s1, l1, pf2,
                 s2, l2):
            if not usable(transa, transb, m, n, k, lda):
                gemm_rm(transa, transb, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc)
            elif transb:
                small_gemm._pack_b(True, b, ldb, 0, k, 0, n, bp)
                _tiles(transa, m, n, k, a, lda, bp, NR, k * NR, beta, c, ldc, pf1, s1, l1,
                       pf2, s2, l2)
            else:
                _tiles(transa, m, n, k, a, lda, b, ldb, NR, beta, c, ldc, pf1, s1, l1, pf2, s2,
                       l2)
        return impl

    def plain(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc, bp, pf1, s1, l1, pf2,
              s2, l2):
        gemm_rm(transa, transb, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc)
    return plain


@njit(inline="always")
def gemm_stream_if(prefetch, transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc, bp, pf1, s1,
                   l1, pf2, s2, l2):
    """gemm_stream with its two prefetch streams when ``prefetch``, else plain gemm_rm (alpha
    1): the switch of the kernels that prefetch only when told to (jitted code only)."""
    if prefetch:
        gemm_stream(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc, bp, pf1, s1, l1, pf2,
                    s2, l2)
    else:
        gemm_rm(transa, transb, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc)
