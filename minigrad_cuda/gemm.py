"""Shared-memory tiled GEMM with a register tile per thread, and the implicit-GEMM convolutions.

One kernel skeleton computes ``C[z] (M x N) = A[z] (M x K) @ B[z] (K x N)``: a block
owns a ``BM x BN`` tile of C, the K range is walked in ``BK`` steps through shared
memory (both tiles stored k-major, padded against bank conflicts), and each of the
16 x 16 threads keeps a ``TM x TN`` accumulator tile in registers.  A thread owns rows
and columns in runs of four (rows ``ty*4 .. ty*4+3``, then the same 64 further on), so
its shared-memory reads come in runs of four consecutive floats and a warp's stores
cover whole segments.
While a tile is multiplied, the next one's global values are already loaded into
registers (software pipelining).

Every operand element is found the same way, which is what keeps the inner loop free
of integer division: the element (line ``i``, reduction index ``k``) of an operand sits
at ``X[line_off(i) + k_off(k)]`` and exists (is not padding) when
``0 <= line_h(i) + k_h(k) < HB`` and ``0 <= line_w(i) + k_w(k) < WB``.  A thread loads
the same lines for the whole K loop, so it decomposes them once (``line_*`` functions,
before the loop); the ``k`` terms of the convolutions come from a small int64 table
built on the host (``k_table``), one row ``(a_off, b_off, b_h, b_w)`` per ``k``.

What A, B and C *are* is given by device functions per kind, so the same skeleton is:

* ``matmul``  - strided (possibly transposed, possibly batch-broadcast) operands;
* ``conv_fwd``  - implicit im2col: B[(c,r,s), (n,oh,ow)] is read straight from the
  NCHW input, C is written NCHW, bias fused into the store;
* ``conv_bwd_data``  - gx = W^T (x) gy as an implicit GEMM over (k,r,s), reading gy
  at the output position each input pixel came from (no col2im scatter, no atomics);
  one GEMM per stride phase (sh*sw of them), each over only the taps that reach its
  pixels, so a strided layer multiplies no zeros and its loads do not divide;
* ``conv_bwd_weight`` - gw = gy (x) im2col(x)^T with the long N*OH*OW reduction split
  over ``gridDim.z`` into partial tiles ("split-K") that a reduction then sums.

``gridDim.z`` indexes batches (matmul) or K-splits; ``kz`` (0 or the chunk) picks which.
"""

import functools
import inspect

import numpy as np
from numba import cuda, from_dtype

from ._common import SIM, dmin

#: Threads per block along x and y (the block is always THREADS_1D x THREADS_1D).
THREADS_1D = 4 if SIM else 16
NTHREADS = THREADS_1D * THREADS_1D
#: K step through shared memory.
BK = 8
#: Shared-memory row padding (floats) that spreads k-major stores over the banks.
PAD = 0 if SIM else 4
#: numba-cuda (not Numba's older built-in CUDA target, nor the simulator) can align shared
#: arrays; 16-byte alignment lets NVVM merge a thread's run of four reads into one
#: ld.shared.v4 (checked in the PTX: 4 vector loads per 64 FMAs instead of 16 scalar ones).
ALIGN_SHARED = not SIM and "alignment" in inspect.signature(cuda.shared.array).parameters


def tile_for(M, N):
    """``(BM, BN, TM, TN)``: 8x8 register tiles where the output is large, 4x4 where not."""
    if SIM:
        return 8, 8, 2, 2
    tm = 8 if M >= 128 else 4
    tn = 8 if N >= 128 else 4
    return tm * THREADS_1D, tn * THREADS_1D, tm, tn


# --- matmul ------------------------------------------------------------------------
# P = (a_bs, a_sm, a_sk, b_bs, b_sk, b_sn, c_bs, has_bias)

@cuda.jit(device=True, inline=True)
def _mm_line_a(P, z, m):
    return z * P[0] + m * P[1], 0, 0


@cuda.jit(device=True, inline=True)
def _mm_line_b(P, z, n):
    return z * P[3] + n * P[5], 0, 0


@cuda.jit(device=True, inline=True)
def _mm_load_a(A, P, T, s0, s1, s2, k, zero):
    return A[s0 + k * P[2]]


@cuda.jit(device=True, inline=True)
def _mm_load_b(B, P, T, s0, s1, s2, k, zero):
    return B[s0 + k * P[4]]


@cuda.jit(device=True, inline=True)
def _mm_col(P, z, n, M, N):
    return z * P[6] + n, N


@cuda.jit(device=True, inline=True)
def _mm_put(C, bias, P, m, n, col, rstride, v):
    if P[7]:
        v += bias[n]
    C[col + m * rstride] = v


@cuda.jit(device=True, inline=True)
def _plain_put(C, bias, P, m, n, col, rstride, v):
    C[col + m * rstride] = v


# --- convolution ----------------------------------------------------------------------
# P = (C, H, W, R, S, OH, OW, sh, sw, ph, pw, dh, dw, K, has_bias)


@cuda.jit(device=True, inline=True)
def _window(X, T, s0, s1, s2, k, H, W, zero):
    """X[s0 + T[k].off] when row s1 + T[k].h and column s2 + T[k].w lie inside H x W."""
    ih = s1 + T[4 * k + 2]
    iw = s2 + T[4 * k + 3]
    if ih >= 0 and ih < H and iw >= 0 and iw < W:
        return X[s0 + T[4 * k + 1]]
    return zero


@cuda.jit(device=True, inline=True)
def _pixel_line(P, npix, C):
    """(offset, top row, left column) of output pixel (img, oh, ow)'s window in x (C channels)."""
    OHW = P[5] * P[6]
    img = npix // OHW
    p = npix - img * OHW
    oh = p // P[6]
    ow = p - oh * P[6]
    ih0 = oh * P[7] - P[9]
    iw0 = ow * P[8] - P[10]
    return (img * C * P[1] + ih0) * P[2] + iw0, ih0, iw0


@cuda.jit(device=True, inline=True)
def _weight_line(P, z, m):
    return m * (P[0] * P[3] * P[4]), 0, 0


@cuda.jit(device=True, inline=True)
def _table_load_a(A, P, T, s0, s1, s2, k, zero):
    return A[s0 + T[4 * k]]


@cuda.jit(device=True, inline=True)
def _cf_line_b(P, z, n):
    return _pixel_line(P, n, P[0])


@cuda.jit(device=True, inline=True)
def _im2col_load_b(X, P, T, s0, s1, s2, k, zero):
    return _window(X, T, s0, s1, s2, k, P[1], P[2], zero)


@cuda.jit(device=True, inline=True)
def _cf_col(P, z, n, M, N):
    """Output pixel n = (img, oh, ow): y's offset of (img, 0, oh, ow); channels are OH*OW apart."""
    OHW = P[5] * P[6]
    img = n // OHW
    return img * (P[13] - 1) * OHW + n, OHW


@cuda.jit(device=True, inline=True)
def _cf_put(Y, bias, P, m, n, col, rstride, v):
    if P[14]:
        v += bias[m]
    Y[col + m * rstride] = v


@cuda.jit(device=True, inline=True)
def _cd_line_a(P, z, m):
    return m * (P[3] * P[4]), 0, 0


# conv_bwd_data runs once per output phase (h0, w0): the input pixels h = h0 + hi*sh,
# w = w0 + wi*sw, which receive gradient only from the taps r with
# (h0 + ph - r*dh) % sh == 0 (and s likewise), at gy row hi + q_r, q_r = (h0+ph-r*dh) // sh.
# P = (C, H, W, R, S, OH, OW, sh, sw, ph, pw, dh, dw, K, 0, h0, w0, HA, WA), HA x WA pixels.

@cuda.jit(device=True, inline=True)
def _phase_pixel(P, n):
    """(img, hi, wi) of column n of a phase GEMM."""
    HW = P[17] * P[18]
    img = n // HW
    p = n - img * HW
    hi = p // P[18]
    return img, hi, p - hi * P[18]


@cuda.jit(device=True, inline=True)
def _cd_line_b(P, z, n):
    """Phase pixel (img, hi, wi): gy's offset of (img, 0, hi, wi) and the row / column hi, wi."""
    img, hi, wi = _phase_pixel(P, n)
    return img * P[13] * P[5] * P[6] + hi * P[6] + wi, hi, wi


@cuda.jit(device=True, inline=True)
def _cd_load_b(GY, P, T, s0, s1, s2, k, zero):
    return _window(GY, T, s0, s1, s2, k, P[5], P[6], zero)


@cuda.jit(device=True, inline=True)
def _cd_col(P, z, n, M, N):
    """gx's offset of (img, 0, h0 + hi*sh, w0 + wi*sw); channels are H*W apart."""
    img, hi, wi = _phase_pixel(P, n)
    return (img * P[0] * P[1] + P[15] + hi * P[7]) * P[2] + P[16] + wi * P[8], P[1] * P[2]


@cuda.jit(device=True, inline=True)
def _cw_line_a(P, z, m):
    return m * (P[5] * P[6]), 0, 0


@cuda.jit(device=True, inline=True)
def _cw_line_b(P, z, n):
    """Weight column (c, r, s): its offset and (row, column) shift inside a window."""
    RS = P[3] * P[4]
    c = n // RS
    rs = n - c * RS
    r = rs // P[4]
    s = rs - r * P[4]
    return (c * P[1] + r * P[11]) * P[2] + s * P[12], r * P[11], s * P[12]


@cuda.jit(device=True, inline=True)
def _cw_col(P, z, n, M, N):
    return z * M * N + n, N


_KINDS = {  # line_a, load_a, line_b, load_b, store column, store
    "matmul": (_mm_line_a, _mm_load_a, _mm_line_b, _mm_load_b, _mm_col, _mm_put),
    "conv_fwd": (_weight_line, _table_load_a, _cf_line_b, _im2col_load_b, _cf_col, _cf_put),
    "conv_bwd_data": (_cd_line_a, _table_load_a, _cd_line_b, _cd_load_b, _cd_col, _plain_put),
    "conv_bwd_weight": (_cw_line_a, _table_load_a, _cw_line_b, _im2col_load_b, _cw_col, _plain_put),
}


def phase_taps(R, first, pad, dil, stride):
    """Taps r (of R) that reach the input rows first, first + stride, ...: those with
    (first + pad - r*dil) divisible by the stride (a conv_bwd_data phase's taps)."""
    return [r for r in range(R) if (first + pad - r * dil) % stride == 0]


def k_table(kind, P, N):
    """int64 ``(K, 4)`` rows ``(a_off, b_off, b_h, b_w)`` of a convolution GEMM's k terms.

    ``P`` is the convolution parameter tuple and ``N`` the batch size; see the module
    docstring for how a load combines a row with the thread's line state.
    """
    C, H, W, R, S, OH, OW, sh, sw, ph, pw, dh, dw, K = (int(v) for v in P[:14])
    if kind == "conv_fwd":  # k = (c, r, s): A = w[m, k], B = x window of pixel n
        c, r, s = np.meshgrid(np.arange(C), np.arange(R), np.arange(S), indexing="ij")
        return np.stack([np.arange(C * R * S).reshape(C, R, S), (c * H + r * dh) * W + s * dw,
                         r * dh, s * dw], -1).reshape(-1, 4).astype(np.int64)
    if kind == "conv_bwd_data":  # k = (ko, r, s) of phase (h0, w0): A = w[ko, m, r, s], B = gy
        h0, w0 = int(P[15]), int(P[16])
        rs = np.array(phase_taps(R, h0, ph, dh, sh), np.int64)
        ss = np.array(phase_taps(S, w0, pw, dw, sw), np.int64)
        ko, r, s = np.meshgrid(np.arange(K), rs, ss, indexing="ij")
        qr, qs = (h0 + ph - r * dh) // sh, (w0 + pw - s * dw) // sw
        return np.stack([ko * C * R * S + r * S + s, (ko * OH + qr) * OW + qs, qr, qs],
                        -1).reshape(-1, 4).astype(np.int64)
    if kind == "conv_bwd_weight":  # k = (img, oh, ow): A = gy[img, m, oh, ow], B = x window
        img, oh, ow = np.meshgrid(np.arange(N), np.arange(OH), np.arange(OW), indexing="ij")
        ih0, iw0 = oh * sh - ph, ow * sw - pw
        return np.stack([img * K * OH * OW + oh * OW + ow, (img * C * H + ih0) * W + iw0, ih0, iw0],
                        -1).reshape(-1, 4).astype(np.int64)
    raise ValueError(f"k_table: no table for GEMM kind {kind!r}")


@functools.lru_cache(maxsize=None)
def gemm_kernel(kind, dtype, a_kfast=True, b_nfast=True, tile=None):
    """The tiled GEMM kernel for operand kind ``kind``, element type ``dtype`` and ``tile``.

    ``tile`` is ``(BM, BN, TM, TN)`` from ``tile_for`` (default: the 8x8 one).
    ``a_kfast`` / ``b_nfast`` choose which tile dimension consecutive threads load,
    so global reads are coalesced whether an operand is stored row- or column-major.
    Launch with ``launch_geometry``; arguments
    ``(A, B, C, bias, T, M, N, K, kz, kchunk, nz, P)`` (``T``: the ``k_table``, flat).
    """
    line_a, load_a, line_b, load_b, store_col, put = _KINDS[kind]
    BM, BN, TM, TN = tile or tile_for(1 << 20, 1 << 20)
    TX = TY = THREADS_1D
    np_dtype = np.dtype(dtype)
    nbt = from_dtype(np_dtype)
    zero = np_dtype.type(0)
    a_loads = (BM * BK) // NTHREADS
    b_loads = (BK * BN) // NTHREADS
    assert a_loads * NTHREADS == BM * BK and b_loads * NTHREADS == BK * BN
    a_row, b_row = BM + PAD, BN + PAD
    VM, VN = min(4, TM), min(4, TN)  # run length of a thread's rows / columns

    @cuda.jit(device=True, inline=True)
    def load_tile(A, B, P, T, la, lb, oka, okb, tid, k0, kend, pa, pb):
        """This thread's share of the A and B tiles at k0 (0 past kend) into pa, pb."""
        for l in range(a_loads):
            e = tid + l * NTHREADS
            k = k0 + (e % BK if a_kfast else e // BM)
            v = zero
            if oka[l] and k < kend:
                v = load_a(A, P, T, la[l, 0], la[l, 1], la[l, 2], k, zero)
            pa[l] = v
        for l in range(b_loads):
            e = tid + l * NTHREADS
            k = k0 + (e // BN if b_nfast else e % BK)
            v = zero
            if okb[l] and k < kend:
                v = load_b(B, P, T, lb[l, 0], lb[l, 1], lb[l, 2], k, zero)
            pb[l] = v

    @cuda.jit(cache=True)
    def kernel(A, B, C, bias, T, M, N, K, kz, kchunk, nz, P):
        if ALIGN_SHARED:
            As = cuda.shared.array((BK, a_row), nbt, alignment=16)
            Bs = cuda.shared.array((BK, b_row), nbt, alignment=16)
        else:
            As = cuda.shared.array((BK, a_row), nbt)
            Bs = cuda.shared.array((BK, b_row), nbt)
        acc = cuda.local.array((TM, TN), nbt)
        ra = cuda.local.array(TM, nbt)
        rb = cuda.local.array(TN, nbt)
        pa = cuda.local.array(a_loads, nbt)  # next tile's values, loaded ahead
        pb = cuda.local.array(b_loads, nbt)
        la = cuda.local.array((a_loads, 3), np.int64)  # each loaded line's decomposition
        lb = cuda.local.array((b_loads, 3), np.int64)
        oka = cuda.local.array(a_loads, np.bool_)
        okb = cuda.local.array(b_loads, np.bool_)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        for z in range(cuda.blockIdx.z, nz, cuda.gridDim.z):
            kbeg = z * kz
            kend = dmin(K, kbeg + kchunk)
            for l in range(a_loads):
                e = tid + l * NTHREADS
                m = m0 + (e // BK if a_kfast else e % BM)
                oka[l] = m < M
                s0, s1, s2 = line_a(P, z, dmin(m, M - 1))
                la[l, 0] = s0
                la[l, 1] = s1
                la[l, 2] = s2
            for l in range(b_loads):
                e = tid + l * NTHREADS
                n = n0 + (e % BN if b_nfast else e // BK)
                okb[l] = n < N
                s0, s1, s2 = line_b(P, z, dmin(n, N - 1))
                lb[l, 0] = s0
                lb[l, 1] = s1
                lb[l, 2] = s2
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] = zero
            load_tile(A, B, P, T, la, lb, oka, okb, tid, kbeg, kend, pa, pb)
            for k0 in range(kbeg, kend, BK):
                for l in range(a_loads):
                    e = tid + l * NTHREADS
                    if a_kfast:
                        As[e % BK, e // BK] = pa[l]
                    else:
                        As[e // BM, e % BM] = pa[l]
                for l in range(b_loads):
                    e = tid + l * NTHREADS
                    if b_nfast:
                        Bs[e // BN, e % BN] = pb[l]
                    else:
                        Bs[e % BK, e // BK] = pb[l]
                cuda.syncthreads()
                k1 = k0 + BK
                if k1 < kend:  # load the next tile while this one is multiplied
                    load_tile(A, B, P, T, la, lb, oka, okb, tid, k1, kend, pa, pb)
                for kk in range(BK):
                    for i in range(TM):
                        ra[i] = As[kk, (i // VM) * (TY * VM) + ty * VM + i % VM]
                    for j in range(TN):
                        rb[j] = Bs[kk, (j // VN) * (TX * VN) + tx * VN + j % VN]
                    for i in range(TM):
                        for j in range(TN):
                            acc[i, j] += ra[i] * rb[j]
                cuda.syncthreads()
            for j in range(TN):  # a column's address arithmetic is shared by its TM rows
                n = n0 + (j // VN) * (TX * VN) + tx * VN + j % VN
                if n < N:
                    col, rstride = store_col(P, z, n, M, N)
                    for i in range(TM):
                        m = m0 + (i // VM) * (TY * VM) + ty * VM + i % VM
                        if m < M:
                            put(C, bias, P, m, n, col, rstride, acc[i, j])

    return kernel


def launch_geometry(M, N, nz, tile):
    """``(grid, block)`` for a GEMM of ``M x N`` outputs over ``nz`` batches/splits."""
    BM, BN = tile[0], tile[1]
    return ((N + BN - 1) // BN, (M + BM - 1) // BM, max(1, min(nz, 65535))), (THREADS_1D, THREADS_1D)


def choose_split(M, N, K, target_blocks=None):
    """Number of K-splits that gives about ``target_blocks`` blocks (1 when tiles suffice)."""
    if target_blocks is None:
        target_blocks = 4 if SIM else 264
    BM, BN = tile_for(M, N)[:2]
    tiles = ((N + BN - 1) // BN) * ((M + BM - 1) // BM)
    if tiles >= target_blocks or K <= 8 * BK:
        return 1
    want = -(-target_blocks // tiles)
    return max(1, min(want, K // (4 * BK), 1024))


__all__ = ["gemm_kernel", "k_table", "phase_taps", "tile_for", "launch_geometry", "choose_split", "BK",
           "THREADS_1D"]
