"""Shared-memory tiled GEMM with a register tile per thread, and the implicit-GEMM convolutions.

One kernel skeleton computes ``C[z] (M x N) = A[z] (M x K) @ B[z] (K x N)``: a block
owns a ``BM x BN`` tile of C, the K range is walked in ``BK`` steps through shared
memory (A stored k-major so the inner loop reads rows of both tiles), and each of the
``(BM/TM) x (BN/TN)`` threads keeps a ``TM x TN`` accumulator tile in registers.
Threads own rows ``ty + i*TY`` and columns ``tx + j*TX`` (strided), so shared loads are
broadcast / conflict-free and the stores of a warp are coalesced.

What A, B and C *are* is given by three device functions, so the same skeleton is:

* ``matmul``  - strided (possibly transposed, possibly batch-broadcast) operands;
* ``conv_fwd``  - implicit im2col: B[(c,r,s), (n,oh,ow)] is read straight from the
  NCHW input, C is written NCHW, bias fused into the store;
* ``conv_bwd_data``  - gx = W^T (x) gy as an implicit GEMM over (k,r,s), reading gy
  at the output position each input pixel came from (no col2im scatter, no atomics);
* ``conv_bwd_weight`` - gw = gy (x) im2col(x)^T with the long N*OH*OW reduction split
  over ``gridDim.z`` into partial tiles ("split-K") that a reduction then sums.

``gridDim.z`` indexes batches (matmul) or K-splits; ``kz`` (0 or the chunk) picks which.
"""

import functools

import numpy as np
from numba import cuda, from_dtype

from ._common import SIM, dmin

if SIM:  # each simulated thread is a Python thread: small tiles, same code path
    BM, BN, BK, TM, TN = 16, 16, 8, 2, 2
else:
    BM, BN, BK, TM, TN = 64, 64, 16, 4, 4
TY, TX = BM // TM, BN // TN
NTHREADS = TX * TY
assert (BM * BK) % NTHREADS == 0 and (BK * BN) % NTHREADS == 0


# --- operand access: matmul ------------------------------------------------------
# P = (a_bs, a_sm, a_sk, b_bs, b_sk, b_sn, c_bs, has_bias)

@cuda.jit(device=True, inline=True)
def _mm_load_a(A, P, z, m, k, zero):
    return A[z * P[0] + m * P[1] + k * P[2]]


@cuda.jit(device=True, inline=True)
def _mm_load_b(B, P, z, k, n, zero):
    return B[z * P[3] + k * P[4] + n * P[5]]


@cuda.jit(device=True, inline=True)
def _mm_store(C, bias, P, z, m, n, M, N, v):
    if P[7]:
        v += bias[n]
    C[z * P[6] + m * N + n] = v


# --- operand access: convolution ---------------------------------------------------
# P = (C, H, W, R, S, OH, OW, sh, sw, ph, pw, dh, dw, K, has_bias)

@cuda.jit(device=True, inline=True)
def _im2col(X, P, crs, npix, zero):
    """x[n, c, oh*sh - ph + r*dh, ow*sw - pw + s*dw] for row (c,r,s), column (n,oh,ow); 0 in padding."""
    C = P[0]
    H = P[1]
    W = P[2]
    RS = P[3] * P[4]
    OHW = P[5] * P[6]
    c = crs // RS
    rs = crs - c * RS
    r = rs // P[4]
    s = rs - r * P[4]
    img = npix // OHW
    p = npix - img * OHW
    oh = p // P[6]
    ow = p - oh * P[6]
    ih = oh * P[7] - P[9] + r * P[11]
    iw = ow * P[8] - P[10] + s * P[12]
    if ih >= 0 and ih < H and iw >= 0 and iw < W:
        return X[((img * C + c) * H + ih) * W + iw]
    return zero


@cuda.jit(device=True, inline=True)
def _cf_load_a(Wt, P, z, m, k, zero):
    return Wt[m * (P[0] * P[3] * P[4]) + k]


@cuda.jit(device=True, inline=True)
def _cf_load_b(X, P, z, k, n, zero):
    return _im2col(X, P, k, n, zero)


@cuda.jit(device=True, inline=True)
def _cf_store(Y, bias, P, z, m, n, M, N, v):
    OHW = P[5] * P[6]
    img = n // OHW
    p = n - img * OHW
    if P[14]:
        v += bias[m]
    Y[(img * P[13] + m) * OHW + p] = v


@cuda.jit(device=True, inline=True)
def _cd_load_a(Wt, P, z, m, k, zero):
    RS = P[3] * P[4]
    ko = k // RS
    rs = k - ko * RS
    return Wt[(ko * P[0] + m) * RS + rs]


@cuda.jit(device=True, inline=True)
def _cd_load_b(GY, P, z, k, n, zero):
    RS = P[3] * P[4]
    ko = k // RS
    rs = k - ko * RS
    r = rs // P[4]
    s = rs - r * P[4]
    HW = P[1] * P[2]
    img = n // HW
    hw = n - img * HW
    h = hw // P[2]
    w = hw - h * P[2]
    th = h + P[9] - r * P[11]
    tw = w + P[10] - s * P[12]
    if th < 0 or tw < 0:
        return zero
    oh = th // P[7]
    ow = tw // P[8]
    if oh * P[7] != th or ow * P[8] != tw or oh >= P[5] or ow >= P[6]:
        return zero
    return GY[((img * P[13] + ko) * P[5] + oh) * P[6] + ow]


@cuda.jit(device=True, inline=True)
def _cd_store(GX, bias, P, z, m, n, M, N, v):
    HW = P[1] * P[2]
    img = n // HW
    hw = n - img * HW
    GX[(img * P[0] + m) * HW + hw] = v


@cuda.jit(device=True, inline=True)
def _cw_load_a(GY, P, z, m, k, zero):
    OHW = P[5] * P[6]
    img = k // OHW
    p = k - img * OHW
    return GY[(img * P[13] + m) * OHW + p]


@cuda.jit(device=True, inline=True)
def _cw_load_b(X, P, z, k, n, zero):
    return _im2col(X, P, n, k, zero)


@cuda.jit(device=True, inline=True)
def _cw_store(GW, bias, P, z, m, n, M, N, v):
    GW[(z * M + m) * N + n] = v


_KINDS = {
    "matmul": (_mm_load_a, _mm_load_b, _mm_store),
    "conv_fwd": (_cf_load_a, _cf_load_b, _cf_store),
    "conv_bwd_data": (_cd_load_a, _cd_load_b, _cd_store),
    "conv_bwd_weight": (_cw_load_a, _cw_load_b, _cw_store),
}


@functools.lru_cache(maxsize=None)
def gemm_kernel(kind, dtype, a_kfast=True, b_nfast=True):
    """The tiled GEMM kernel for operand kind ``kind`` and element type ``dtype``.

    ``a_kfast`` / ``b_nfast`` choose which tile dimension consecutive threads load,
    so global reads are coalesced whether an operand is stored row- or column-major.
    Launch with ``grid=(ceil(N/BN), ceil(M/BM), nz)`` and ``block=(TX, TY)``; arguments
    ``(A, B, C, bias, M, N, K, kz, kchunk, nz, P)``.
    """
    load_a, load_b, store = _KINDS[kind]
    np_dtype = np.dtype(dtype)
    nbt = from_dtype(np_dtype)
    zero = np_dtype.type(0)
    a_loads = (BM * BK) // NTHREADS
    b_loads = (BK * BN) // NTHREADS

    @cuda.jit
    def kernel(A, B, C, bias, M, N, K, kz, kchunk, nz, P):
        As = cuda.shared.array((BK, BM), nbt)
        Bs = cuda.shared.array((BK, BN), nbt)
        acc = cuda.local.array((TM, TN), nbt)
        ra = cuda.local.array(TM, nbt)
        rb = cuda.local.array(TN, nbt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        for z in range(cuda.blockIdx.z, nz, cuda.gridDim.z):
            kbeg = z * kz
            kend = dmin(K, kbeg + kchunk)
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] = zero
            for k0 in range(kbeg, kend, BK):
                for l in range(a_loads):
                    e = tid + l * NTHREADS
                    if a_kfast:
                        kk = e % BK
                        mm = e // BK
                    else:
                        mm = e % BM
                        kk = e // BM
                    m = m0 + mm
                    k = k0 + kk
                    v = zero
                    if m < M and k < kend:
                        v = load_a(A, P, z, m, k, zero)
                    As[kk, mm] = v
                for l in range(b_loads):
                    e = tid + l * NTHREADS
                    if b_nfast:
                        nn = e % BN
                        kk = e // BN
                    else:
                        kk = e % BK
                        nn = e // BK
                    n = n0 + nn
                    k = k0 + kk
                    v = zero
                    if n < N and k < kend:
                        v = load_b(B, P, z, k, n, zero)
                    Bs[kk, nn] = v
                cuda.syncthreads()
                for kk in range(BK):
                    for i in range(TM):
                        ra[i] = As[kk, ty + i * TY]
                    for j in range(TN):
                        rb[j] = Bs[kk, tx + j * TX]
                    for i in range(TM):
                        for j in range(TN):
                            acc[i, j] += ra[i] * rb[j]
                cuda.syncthreads()
            for i in range(TM):
                m = m0 + ty + i * TY
                if m < M:
                    for j in range(TN):
                        n = n0 + tx + j * TX
                        if n < N:
                            store(C, bias, P, z, m, n, M, N, acc[i, j])

    return kernel


def launch_geometry(M, N, nz):
    """``(grid, block)`` for a GEMM of ``M x N`` outputs over ``nz`` batches/splits."""
    return ((N + BN - 1) // BN, (M + BM - 1) // BM, max(1, min(nz, 65535))), (TX, TY)


def choose_split(M, N, K, target_blocks=None):
    """Number of K-splits that gives about ``target_blocks`` blocks (1 when tiles suffice)."""
    if target_blocks is None:
        target_blocks = 4 if SIM else 264
    tiles = ((N + BN - 1) // BN) * ((M + BM - 1) // BM)
    if tiles >= target_blocks or K <= 8 * BK:
        return 1
    want = -(-target_blocks // tiles)
    return max(1, min(want, K // (4 * BK), 1024))


__all__ = ["gemm_kernel", "launch_geometry", "choose_split", "BM", "BN", "BK", "TM", "TN"]
