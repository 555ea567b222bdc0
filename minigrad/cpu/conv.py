"""CPU conv2d kernels (forward and backward), groups=1.

Layout: inputs and outputs are NCHW-*shaped* NumPy arrays, but the GEMM paths
(except the NCHW 1x1 path below) return **channels-last storage** (a C-contiguous ``(N, H, W, C)`` buffer seen
through ``transpose(0, 3, 1, 2)``) and read channels-last input without a
transposing copy.  Batch norm, ReLU and its gradient and residual adds (NumPy
keeps the layout) keep that layout, so a ResNet runs channels-last from its
first convolution to its global pooling with no transpose between layers.

Paths (measurements in BENCHMARKS_perf.md):

* **Winograd** (3x3, stride 1 or 2, undilated, >= 16 channels in and out; see
  ``minigrad/cpu/winograd.py``): F(2x2, 3x3), 2.25x fewer multiply-adds than the
  GEMM paths, or F(4x4, 3x3) (4x fewer) on layers with many tiles and outputs of at least
  16x16; for stride 2 a 25-position variant (1.44x fewer); the same channels-last storage.
  ResNet-18's 3x3 layers after the stem take it.

* **tiles** (default for C*K > _DIRECT_MAX_CK): the input is copied once into a
  zero-padded channels-last buffer ``xp`` (N, Hp, Wp, C), where the receptive
  field of an output pixel is R runs of S*C contiguous numbers.  One Numba
  parallel region per call; each thread gathers a tile of T output pixels into
  ``colT`` (T x R*S*C, in L2) and calls single-threaded BLAS
  (``minigrad.cpu.blas.gemm_rm``, any strides, ``beta``):
      forward  Y[tile] (T x K) = colT @ W          (rows of the channels-last output)
      dW       gW (RSC x K)   += colT^T @ GY[tile] (one accumulator per thread)
      dX       dcolT           = GY[tile] @ W^T     -> col2im into a per-thread padded
                                                      buffer of the thread's own images
  One parallel region matters: other processes load these 2-core machines, and
  every extra barrier (a second region, or multi-threaded BLAS inside) waits for
  a descheduled thread.  1x1 stride-1 convs skip im2col (the input *is* colT).
* **NCHW 1x1** (unpadded 1x1 convs of NCHW-contiguous input; ``conv1x1_nchw.py``): per-image
  GEMMs on the planes, Y (K x OH*OW) = W (K x C) @ x[n, :, ::sh, ::sw]; the only GEMM path
  whose output and dX are NCHW-contiguous (nothing of x is transposed).
* **channels-last strided 1x1** (unpadded, strided 1x1 convs of channels-last input with at
  least 256 output pixels an image; ``conv1x1_cl_units.py``): per-image GEMMs Y[n] (OH*OW x
  K) = x[n, ::sh, ::sw, :] @ W^T on runs of images, each GEMM prefetching the next image.
* **3x3 few-channel** (float32, 3x3, stride 1, padding 1, at most 3 input channels, AVX-512
  hosts): a network's first layer without a column matrix.  Forward (``conv3x3_rows.py``;
  a multiple of 64 output channels, widths a multiple of 4): groups of 4 pixels x 64
  channels in registers, channels-last output.  Backward with NCHW dY (``conv3x3_rows.py``;
  images 32 wide, a multiple of 8 output channels): dW and dX from whole image rows in
  registers.  Backward with channels-last dY (``conv3x3_cl.py``; a multiple of 16 output
  channels): vectorised over output channels, dY read in its own order.  gx NCHW.
* **direct** (C*K <= _DIRECT_MAX_CK, LeNet's first layer): NCHW loops without GEMM
  over "extended rows" (a plane as one flat run over the padded width) so the
  inner loops are long enough for LLVM to vectorise.
* **chunked** (``_GEMM_PATH = "chunked"``, not the default): whole images per
  chunk, im2col, then GEMMs split over the threads; fewer, larger GEMMs (faster
  single-threaded) but several barriers per call, which lose badly under load.
* **shifted GEMM** (stride 1, used when ``_SHIFT_MAX_WASTE`` allows; off by
  default): over the padded image the input of tap (r, s) is a plain shifted
  slice, so the conv is R*S accumulated GEMMs with no column buffer.  Measured
  slower than the tiles here (GEMMs with inner dimension C, and the padded
  border computed and thrown away), kept for reference.

BLAS is single-threaded inside a call (``_single_blas``); the previous thread
count is restored afterwards.
"""

import ctypes
import os
import threading

import numba
import numpy as np
from numba import njit, prange

from . import (conv1x1_cl, conv1x1_cl_units, conv1x1_nchw, conv3x3_cl, conv3x3_rows,
               conv_direct_cl, conv_direct_rows, small_gemm, winograd)
from .addend import nchw_foldable, writable_in_place
from ._jit import pjit
from .blas import gemm_rm
from .kernels import add_flat, crop_padded, sum_rows
from .prefetch import prefetch
from .small_gemm import _transpose_block

# Pixels per im2col tile (rows of the per-tile GEMMs), forward and backward.  Tiles
# used to grow to 512 KiB of column matrix (up to 4096 pixels) for layers with few input
# channels; 512 pixels keep the stem's (27-column) tiles and their GEMM packing in L2:
# stem backward 3.2 -> 2.3 ms, forward 1.14 -> 0.96 ms, ResNet-18 steps unchanged
# (BENCHMARKS_perf.md, change 55).  Deeper layers had 512-pixel tiles already.
_TILE = 512


# ---------------------------------------------------------------------------
# BLAS thread control: SciPy's OpenBLAS (what Numba's np.dot and blas.gemm_rm call) and
# NumPy's own copy (np.matmul's)
# ---------------------------------------------------------------------------

def _thread_controls(module_file):
    """(get, set) of the OpenBLAS thread count that the shared object ``module_file`` links,
    or None (no OpenBLAS there, or one under other names)."""
    try:
        lib = ctypes.CDLL(module_file)
    except OSError:
        return None
    for prefix in ("scipy_openblas", "openblas"):
        for suffix in ("", "64_"):
            try:
                g = getattr(lib, prefix + "_get_num_threads" + suffix)
                s = getattr(lib, prefix + "_set_num_threads" + suffix)
            except AttributeError:
                continue
            g.restype = ctypes.c_int
            g.argtypes = []
            s.restype = None
            s.argtypes = [ctypes.c_int]
            return g, s
    return None


def _blas_modules():
    """Files of the extension modules whose OpenBLAS the kernels call: SciPy's cython_blas
    and NumPy's multiarray (each wheel ships its own OpenBLAS, with its own threads)."""
    files = []
    try:
        import scipy.linalg.cython_blas as cb
        files.append(cb.__file__)
    except ImportError:  # no SciPy: nothing of it to control
        pass
    try:
        from numpy._core import _multiarray_umath as mu
    except ImportError:  # NumPy 1.x
        from numpy.core import _multiarray_umath as mu
    files.append(mu.__file__)
    return files


class _BlasThreads:
    """Context manager: every OpenBLAS the kernels reach runs on one thread inside it.

    Kernels that split work between Numba's threads call single-threaded BLAS from each.
    And a BLAS call on OpenBLAS's own threads, however short, leaves them spinning for a
    while; a Numba parallel region right after it then waits on the cores they hold: a
    batched product of two 256x128 @ 128x64 matrices through np.matmul followed by a ReLU
    over 1M floats took 8.0 ms a round instead of 0.1 (NumPy's OpenBLAS had not been
    held to one thread; BENCHMARKS_perf.md, change 141)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._controls = None
        self._prev = []

    def _lookup(self):
        controls, seen = [], set()
        for f in _blas_modules():
            c = _thread_controls(f)
            if c is None:
                continue
            key = ctypes.cast(c[1], ctypes.c_void_p).value
            if key not in seen:       # both modules may link one shared OpenBLAS
                seen.add(key)
                controls.append(c)
        self._controls = controls

    def __enter__(self):
        self._lock.acquire()
        if self._controls is None:
            self._lookup()
        self._prev = []
        for get, set_ in self._controls:
            prev = get()
            if prev != 1:
                set_(1)
                self._prev.append((set_, prev))
        return self

    def __exit__(self, *exc):
        try:
            for set_, prev in self._prev:
                set_(prev)
        finally:
            self._lock.release()
        return False


_single_blas = _BlasThreads()


class _dynamic_schedule:
    """Numba prange loops hand out one iteration at a time while active (load balance
    on a machine where other processes take turns on the cores); ``chunk`` iterations at a
    time when given (conv1x1_nchw.schedule: contiguous runs whose next unit a thread knows)."""

    def __init__(self, chunk=1):
        self._chunk = chunk

    def __enter__(self):
        self._prev = numba.set_parallel_chunksize(self._chunk)
        return self

    def __exit__(self, *exc):
        numba.set_parallel_chunksize(self._prev)
        return False


# Work units per thread the tiles path aims for (dynamic scheduling needs a few)...
_BALANCE = 2
# ...unless the weights are bigger than this: then every extra tile re-packs the
# weight matrix and re-reads/writes a weight-sized dW accumulator, so one tile per
# thread (measured: ResNet layer4, 9.4 MB of weights, 38 -> 63 ms with 2 tiles/thread).
_BALANCE_MAX_W = 1 << 20


# ---------------------------------------------------------------------------
# layout kernels
# ---------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _pixel_of(q, P, OW):
    """(n, oh, ow) of output pixel q, with P = OH * OW pixels per image."""
    n = q // P
    p = q - n * P
    oh = p // OW
    return n, oh, p - oh * OW


@njit(cache=True, inline="always")
def _next_pixel(n, oh, ow, OH, OW):
    """(n, oh, ow) of the pixel after (n, oh, ow), without dividing."""
    ow += 1
    if ow == OW:
        ow = 0
        oh += 1
        if oh == OH:
            oh = 0
            n += 1
    return n, oh, ow


@njit(cache=True)
def _im2col_tile(xp, q0, tp, P, OW, R, S, sh, sw, dh, dw, colT, pf, pf0, pf_step, pf_n):
    """colT[i, (r*S+s)*C + c] = xp[n, oh*sh + r*dh, ow*sw + s*dw, c] for pixel q0+i.
    colT's rows may be wider than R*S*C; their other columns are left as they are.

    The pixel's (n, oh, ow) are stepped, not divided out of q0+i: two 64-bit divisions a
    pixel cost more than copying the stem's 27 values (tile 0.45 -> 0.24 ms).
    With each pixel i < pf_n it also prefetches pf[pf0 + i*pf_step : pf0 + (i+1)*pf_step],
    every 16th element (a 64-byte line of float32): the next tile's operand, loaded from
    memory while this tile copies."""
    N, Hp, Wp, C = xp.shape
    xf = xp.reshape(-1)
    cf = colT.reshape(-1)
    ld = colT.shape[1]
    run = S * C
    OH = P // OW
    n, oh, ow = _pixel_of(q0, P, OW)
    rstep = dh * Wp * C
    for i in range(tp):
        o = i * ld
        src0 = ((n * Hp + oh * sh) * Wp + ow * sw) * C
        for r in range(R):
            if dw == 1:
                d = cf[o:o + run]
                src = xf[src0:src0 + run]
                for j in range(run):
                    d[j] = src[j]
            else:
                for s in range(S):
                    d = cf[o + s * C:o + (s + 1) * C]
                    src = xf[src0 + s * dw * C:src0 + s * dw * C + C]
                    for c in range(C):
                        d[c] = src[c]
            o += run
            src0 += rstep
        if i < pf_n:
            for j in range(0, pf_step, 16):
                prefetch(pf, pf0 + i * pf_step + j)
        n, oh, ow = _next_pixel(n, oh, ow, OH, OW)


@njit(cache=True)
def _col2im_tile(dcolT, q0, tp, P, OW, R, S, sh, sw, dh, dw, gxp, n_base=0):
    """Adjoint of _im2col_tile: gxp[n - n_base, ...] += dcolT[...].  dcolT's rows may be
    wider than R*S*C (zero-padded columns, ignored)."""
    N, Hp, Wp, C = gxp.shape
    gf = gxp.reshape(-1)
    cf = dcolT.reshape(-1)
    ld = dcolT.shape[1]
    run = S * C
    OH = P // OW
    n, oh, ow = _pixel_of(q0, P, OW)
    n -= n_base
    rstep = dh * Wp * C
    for i in range(tp):
        o = i * ld
        dst0 = ((n * Hp + oh * sh) * Wp + ow * sw) * C
        for r in range(R):
            if dw == 1:
                src = cf[o:o + run]
                d = gf[dst0:dst0 + run]
                for j in range(run):
                    d[j] += src[j]
            else:
                for s in range(S):
                    src = cf[o + s * C:o + (s + 1) * C]
                    d = gf[dst0 + s * dw * C:dst0 + s * dw * C + C]
                    for c in range(C):
                        d[c] += src[c]
            o += run
            dst0 += rstep
        n, oh, ow = _next_pixel(n, oh, ow, OH, OW)


# ---------------------------------------------------------------------------
# layout helpers
# ---------------------------------------------------------------------------

@pjit()
def _pad_cl(xt, ph, pw, xbuf, Hp, Wp):
    """Padded channels-last copy: xbuf[((n*Hp + h+ph)*Wp + w+pw)*C + c] = xt[n, h, w, c].

    ``xt`` is an (N, H, W, C) view of any strides (fast when channels-last); the
    border and the slack after the last image are zeroed."""
    N, H, W, C = xt.shape
    Q = N * Hp * Wp
    for t in prange(N * Hp):
        n = t // Hp
        hp = t - n * Hp
        h = hp - ph
        base = t * Wp * C
        row = xbuf[base:]   # views: an index like base + j is not vectorised
        if h < 0 or h >= H:
            for j in range(Wp * C):
                row[j] = 0
            continue
        for j in range(pw * C):
            row[j] = 0
        tail = row[(pw + W) * C:]
        for j in range((Wp - pw - W) * C):
            tail[j] = 0
        for w in range(W):
            d = row[(w + pw) * C:]
            src = xt[n, h, w]
            for c in range(C):
                d[c] = src[c]
    for j in range(Q * C, xbuf.size):
        xbuf[j] = 0


@pjit()
def _pad_cl_dense(xf, N, H, W, C, ph, pw, xbuf, Hp, Wp):
    """_pad_cl for a C-contiguous (N, H, W, C) source given flat (slice copies, vectorised)."""
    Q = N * Hp * Wp
    for t in prange(N * Hp):
        n = t // Hp
        hp = t - n * Hp
        h = hp - ph
        base = t * Wp * C
        if h < 0 or h >= H:
            z = xbuf[base:base + Wp * C]
            for j in range(Wp * C):
                z[j] = 0
            continue
        z = xbuf[base:base + pw * C]
        for j in range(pw * C):
            z[j] = 0
        z = xbuf[base + (pw + W) * C:base + Wp * C]
        for j in range((Wp - pw - W) * C):
            z[j] = 0
        d = xbuf[base + pw * C:base + (pw + W) * C]
        src = xf[(n * H + h) * W * C:(n * H + h + 1) * W * C]
        for j in range(W * C):
            d[j] = src[j]
    for j in range(Q * C, xbuf.size):
        xbuf[j] = 0


@pjit()
def _pad_cl_from_nchw(x, ph, pw, xbuf, Hp, Wp):
    """As _pad_cl from an NCHW-ordered x, contiguous or a strided view of one (reads rows
    of W, writes with stride C)."""
    N, C, H, W = x.shape
    Q = N * Hp * Wp
    for t in prange(N * Hp):
        n = t // Hp
        hp = t - n * Hp
        h = hp - ph
        base = t * Wp * C
        row = xbuf[base:]   # views: an index like base + j is not vectorised
        if h < 0 or h >= H:
            for j in range(Wp * C):
                row[j] = 0
            continue
        for j in range(pw * C):
            row[j] = 0
        tail = row[(pw + W) * C:]
        for j in range((Wp - pw - W) * C):
            tail[j] = 0
        for c in range(C):
            for w in range(W):
                xbuf[base + (w + pw) * C + c] = x[n, c, h, w]
    for j in range(Q * C, xbuf.size):
        xbuf[j] = 0


@njit(parallel=True, cache=True)
def _pad_cl_from_nchw_planes(x, ph, pw, xbuf, Hp, Wp):
    """_pad_cl_from_nchw with one task per (image, block of 16 channels) instead of per row.

    For planes of 4 KB or more: a row task reads C rows that lie a multiple of 4 KB apart,
    which alias in the L1 cache; a block task reads 16 planes from top to bottom and
    fills each 64-byte line of the output by itself (2x faster for 32x32x64 images)."""
    N, C, H, W = x.shape
    nb = (C + 15) // 16
    for t in prange(N * nb):
        n = t // nb
        c0 = (t - n * nb) * 16
        cb = min(16, C - c0)
        for hp in range(Hp):
            h = hp - ph
            base = (n * Hp + hp) * Wp * C + c0
            if h < 0 or h >= H:
                for w in range(Wp):
                    for c in range(cb):
                        xbuf[base + w * C + c] = 0
                continue
            for w in range(pw):
                for c in range(cb):
                    xbuf[base + w * C + c] = 0
            for w in range(pw + W, Wp):
                for c in range(cb):
                    xbuf[base + w * C + c] = 0
            for c in range(cb):
                src = x[n, c0 + c, h]
                for w in range(W):
                    xbuf[base + (w + pw) * C + c] = src[w]
    for j in range(N * Hp * Wp * C, xbuf.size):
        xbuf[j] = 0


_CL_BLOCK = 32


@njit(parallel=True, cache=True)
def _pad_cl_from_nchw_blocks(x, ph, pw, out):
    """out (N, Hp, Wp, C) = x (N, C, H, W) zero-padded, one task per (image, block of 32
    channels), each plane read from top to bottom: the task's stores run through the whole
    image at a stride of C floats and stay in L2 until each 128-byte run is complete.
    (_pad_cl_from_nchw_planes's row-by-row order ran 3-4x slower for 64 channels of 32x32,
    and _pad_cl_from_nchw's row tasks 2-6x slower for 128 of 16x16, depending on how the
    two buffers lie modulo 4 KB.)"""
    N, C, H, W = x.shape
    Hp, Wp = out.shape[1], out.shape[2]
    CB = _CL_BLOCK
    nb = (C + CB - 1) // CB
    for t in prange(N * nb):
        n = t // nb
        c0 = (t - n * nb) * CB
        c1 = min(C, c0 + CB)
        for hp in range(Hp):
            h = hp - ph
            if h < 0 or h >= H:
                for w in range(Wp):
                    for c in range(c0, c1):
                        out[n, hp, w, c] = 0
            else:
                for w in range(pw):
                    for c in range(c0, c1):
                        out[n, hp, w, c] = 0
                for w in range(pw + W, Wp):
                    for c in range(c0, c1):
                        out[n, hp, w, c] = 0
        for c in range(c0, c1):
            for h in range(H):
                for w in range(W):
                    out[n, h + ph, w + pw, c] = x[n, c, h, w]


@njit(parallel=True, cache=True)
def _pad_cl_from_nchw_transposed(x, ph, out):
    """out (N, H + 2*ph, W, C) = float32 x (N, C, H, W) C-contiguous, zero rows above and
    below, by small_gemm's register transposes of LANES channels x LANES pixels (C and H*W
    multiples of LANES): the blocks kernel's stores, one float at a time at a stride of C
    floats, took 0.82 ms per copy on the NCHW 3x3 stride-2 64->128 layer at batch 32 (x, 64 x
    32x32, and dY, 128 x 16x16; 2.3-10x faster here: BENCHMARKS_perf.md, change 137).  One task
    per (image, block of _CL_BLOCK channels)."""
    N, C, H, W = x.shape
    L = small_gemm.LANES
    HW = H * W
    Hp = out.shape[1]
    CB = _CL_BLOCK
    nb = (C + CB - 1) // CB
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for t in prange(N * nb):
        n = t // nb
        c0 = (t - n * nb) * CB
        c1 = min(C, c0 + CB)
        img = n * Hp * W * C
        for r in range(ph):
            for row in (r, Hp - 1 - r):
                for w in range(W):
                    d = of[img + (row * W + w) * C + c0:]
                    for c in range(c1 - c0):
                        d[c] = 0
        dst = img + ph * W * C
        for p0 in range(0, HW, L):
            for cb in range(c0, c1, L):
                _transpose_block(xf, (n * C + cb) * HW + p0, HW, of, dst + p0 * C + cb, C)


def _nchw_to_cl(x, ph, pw, xbuf, Hp, Wp):
    """Padded channels-last copy of NCHW-ordered x (contiguous, or a strided view of an
    NCHW array) into flat xbuf (zeros after the copy), by the faster kernel for the
    shape."""
    N, C, H, W = x.shape
    transposes = _transposes_apply(x, pw)
    if transposes or (C >= _CL_BLOCK and H * W * x.itemsize >= _CL_BLOCK_MIN_PLANE):
        q = N * Hp * Wp * C
        out = xbuf[:q].reshape(N, Hp, Wp, C)
        if transposes:
            _pad_cl_from_nchw_transposed(x, ph, out)
        else:
            _pad_cl_from_nchw_blocks(x, ph, pw, out)
        xbuf[q:] = 0
    elif H * W * x.itemsize >= _PLANE_TASK_BYTES:
        _pad_cl_from_nchw_planes(x, ph, pw, xbuf, Hp, Wp)
    else:
        _pad_cl_from_nchw(x, ph, pw, xbuf, Hp, Wp)


def _transposes_apply(x, pw):
    """True when _pad_cl_from_nchw_transposed converts x: float32, C-contiguous, no padding
    of the columns, channels and plane size multiples of small_gemm.LANES (on CPUs whose
    vectors small_gemm supports)."""
    N, C, H, W = x.shape
    L = small_gemm.LANES
    return (USE_TRANSPOSES and small_gemm.SUPPORTED and x.dtype == np.float32
            and x.flags.c_contiguous and pw == 0 and C % L == 0 and (H * W) % L == 0)


# NCHW -> channels-last copies by register transposes where _transposes_apply (off: the blocks
# and planes kernels below).
USE_TRANSPOSES = True
# Planes at least this big are converted by _pad_cl_from_nchw_planes (when the blocks
# kernel does not take them: fewer than 32 channels, or planes under 1 KB, where it ran
# slower: 0.62 against 0.52 ms for 32 x 16 x 32 x 32, 0.84-0.93 against 0.42-0.46 for
# 32 x 256 x 8 x 8).
_PLANE_TASK_BYTES = 4096
_CL_BLOCK_MIN_PLANE = 1024


@pjit()
def _fill_ext(gt, front, Hp, Wp, gbuf):
    """Extended channels-last gradient: gbuf[(front + (n*Hp + oh)*Wp + ow)*K + k] = gt[n, oh, ow, k],
    zeros at every other row (``gt`` is (N, OH, OW, K), any strides)."""
    N, OH, OW, K = gt.shape
    Q = N * Hp * Wp
    for j in range(front * K):
        gbuf[j] = 0
    for t in prange(N * Hp):
        n = t // Hp
        hp = t - n * Hp
        base = (front + t * Wp) * K
        row = gbuf[base:]   # views: an index like base + j is not vectorised
        if hp >= OH:
            for j in range(Wp * K):
                row[j] = 0
            continue
        for w in range(OW):
            d = row[w * K:]
            src = gt[n, hp, w]
            for k in range(K):
                d[k] = src[k]
        tail = row[OW * K:]
        for j in range((Wp - OW) * K):
            tail[j] = 0
    for j in range((front + Q) * K, gbuf.size):
        gbuf[j] = 0


@pjit()
def _fill_ext_from_nchw(g, front, Hp, Wp, gbuf):
    """As _fill_ext from an NCHW-contiguous gradient g (N, K, OH, OW)."""
    N, K, OH, OW = g.shape
    Q = N * Hp * Wp
    for j in range(front * K):
        gbuf[j] = 0
    for t in prange(N * Hp):
        n = t // Hp
        hp = t - n * Hp
        base = (front + t * Wp) * K
        row = gbuf[base:]   # views: an index like base + j is not vectorised
        if hp >= OH:
            for j in range(Wp * K):
                row[j] = 0
            continue
        for k in range(K):
            for w in range(OW):
                gbuf[base + w * K + k] = g[n, k, hp, w]
        tail = row[OW * K:]
        for j in range((Wp - OW) * K):
            tail[j] = 0
    for j in range((front + Q) * K, gbuf.size):
        gbuf[j] = 0


@pjit()
def _to_cl(xt, out):
    """out (N, H, W, C) contiguous = xt (an (N, H, W, C) view of any strides)."""
    N, H, W, C = xt.shape
    for t in prange(N * H):
        n = t // H
        h = t - n * H
        for w in range(W):
            for c in range(C):
                out[n, h, w, c] = xt[n, h, w, c]


@pjit()
def _kcx_to_xck(w, out):
    """out[x, c, k] = w[k, c, x] for w (K, C, X) contiguous (weights KCRS -> RSCK)."""
    K, C, X = w.shape
    for c in prange(C):
        for k0 in range(0, K, 16):
            k1 = min(K, k0 + 16)
            for x in range(X):
                for k in range(k0, k1):
                    out[x, c, k] = w[k, c, x]


@pjit()
def _transpose_each(a, out):
    """out[k] = a[k].T for a (K, I, J) contiguous: weights KCRS <-> KRSC, per output channel."""
    K, I, J = a.shape
    for k in prange(K):
        src = a[k]
        dst = out[k]
        for i in range(I):
            for j in range(J):
                dst[j, i] = src[i, j]


@pjit()
def _xck_to_kcx(g, out):
    """out[k, c, x] = sum_t g[t, x, c, k] (per-thread weight gradients RSCK -> KCRS)."""
    nt, X, C, K = g.shape
    for c in prange(C):
        for k0 in range(0, K, 16):
            k1 = min(K, k0 + 16)
            for k in range(k0, k1):
                for x in range(X):
                    acc = g[0, x, c, k]
                    for t in range(1, nt):
                        acc += g[t, x, c, k]
                    out[k, c, x] = acc


_TRANSPOSE_BLOCK = 32


@pjit()
def _sum_transposed(g, out):
    """out (K, C) = the sum over t of g[t].T for g (nt, C, K) (per-thread 1x1 weight
    gradients CK -> KC), in 32 x 32 blocks: both sides read and written a cache line at a
    time (_xck_to_kcx's column reads took 257 against 143 us for 256 x 512)."""
    nt, C, K = g.shape
    B = _TRANSPOSE_BLOCK
    nkb = (K + B - 1) // B
    for blk in prange(((C + B - 1) // B) * nkb):
        c0 = (blk // nkb) * B
        k0 = (blk % nkb) * B
        c1 = min(C, c0 + B)
        k1 = min(K, k0 + B)
        tile = np.empty((B, B), dtype=g.dtype)
        for c in range(c0, c1):
            row = tile[c - c0]
            src = g[0, c]
            for k in range(k0, k1):
                row[k - k0] = src[k]
            for t in range(1, nt):
                src = g[t, c]
                for k in range(k0, k1):
                    row[k - k0] += src[k]
        for k in range(k0, k1):
            dst = out[k]
            for c in range(c0, c1):
                dst[c] = tile[c - c0, k - k0]


# ---------------------------------------------------------------------------
# shifted-GEMM path (stride 1)
# ---------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _fwd_shift(xbuf, wf, b, has_b, N, Hp, Wp, C, K, R, S, dh, dw, OH, OW, T, nt, yf):
    """yf: (N, OH, OW, K) flat; wf: (R*S, C, K) flat; xbuf: padded channels-last + slack."""
    Q = N * Hp * Wp
    HW = Hp * Wp
    ntiles = (Q + T - 1) // T
    accbuf = np.empty((nt, T * K), dtype=xbuf.dtype)
    for t in prange(nt):
        acc = accbuf[t]
        for ti in range(t, ntiles, nt):
            q0 = ti * T
            tp = min(T, Q - q0)
            for rs in range(R * S):
                r = rs // S
                s = rs - r * S
                off = r * dh * Wp + s * dw
                gemm_rm(False, False, tp, K, C, 1.0, xbuf[(q0 + off) * C:], C,
                        wf[rs * C * K:], K, 0.0 if rs == 0 else 1.0, acc, K)
            for i in range(tp):
                q = q0 + i
                n = q // HW
                rem = q - n * HW
                hp = rem // Wp
                wp = rem - hp * Wp
                if hp < OH and wp < OW:
                    d = yf[((n * OH + hp) * OW + wp) * K:]
                    src = acc[i * K:]
                    if has_b:
                        for k in range(K):
                            d[k] = src[k] + b[k]
                    else:
                        for k in range(K):
                            d[k] = src[k]


@njit(parallel=True, cache=True)
def _bwd_shift(xbuf, wf, gbuf, front, N, Hp, Wp, C, K, R, S, dh, dw, ph, pw, H, W, T, nt,
               need_x, need_w, gxf, gwacc):
    """gwacc (nt, R*S*C*K) per-thread dW sums; gxf (N, H, W, C) flat dX."""
    Q = N * Hp * Wp
    HW = Hp * Wp
    ntiles = (Q + T - 1) // T
    RS = R * S
    gxbuf = np.empty((nt, T * C), dtype=xbuf.dtype)
    for t in prange(nt):
        gacc = gwacc[t]
        if need_w:
            for j in range(gacc.size):
                gacc[j] = 0
        gxt = gxbuf[t]
        for ti in range(t, ntiles, nt):
            q0 = ti * T
            tp = min(T, Q - q0)
            if need_w:
                for rs in range(RS):
                    r = rs // S
                    s = rs - r * S
                    off = r * dh * Wp + s * dw
                    gemm_rm(True, False, C, K, tp, 1.0, xbuf[(q0 + off) * C:], C,
                            gbuf[(front + q0) * K:], K, 1.0, gacc[rs * C * K:], K)
            if need_x:
                for rs in range(RS):
                    r = rs // S
                    s = rs - r * S
                    off = r * dh * Wp + s * dw
                    gemm_rm(False, True, tp, C, K, 1.0, gbuf[(front + q0 - off) * K:], K,
                            wf[rs * C * K:], K, 0.0 if rs == 0 else 1.0, gxt, C)
                for i in range(tp):
                    q = q0 + i
                    n = q // HW
                    rem = q - n * HW
                    hp = rem // Wp
                    wp = rem - hp * Wp
                    h = hp - ph
                    w = wp - pw
                    if h >= 0 and h < H and w >= 0 and w < W:
                        d = gxf[((n * H + h) * W + w) * C:]
                        src = gxt[i * C:]
                        for c in range(C):
                            d[c] = src[c]


# ---------------------------------------------------------------------------
# im2col-tile path (any stride), "pixels as rows" GEMMs, channels-last output
# ---------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _fwd_cols(xp, wd, krsc, b, has_b, R, S, sh, sw, dh, dw, OH, OW, T, direct, nt, yf):
    """yf (N*OH*OW*K,) channels-last = im2col(xp) @ W (+ b); wd: W as a flat (R*S*C, K)
    matrix (_weights_rsck), or (K, R*S*C) read transposed when ``krsc`` (_weights_krsc).

    Tiles are handed out dynamically (chunk size 1, set by the caller): a thread
    that shares its core with another process simply takes fewer tiles."""
    N = xp.shape[0]
    C = xp.shape[3]
    K = b.shape[0]
    RSC = R * S * C
    P = OH * OW
    Qo = N * P
    ntiles = (Qo + T - 1) // T
    ldw = RSC if krsc else K
    colbuf = np.empty((nt, T * RSC), dtype=xp.dtype)
    xflat = xp.reshape(-1)
    for ti in prange(ntiles):
        t = numba.get_thread_id()
        q0 = ti * T
        tp = min(T, Qo - q0)
        if direct:
            gemm_rm(False, krsc, tp, K, RSC, 1.0, xflat[q0 * C:], C, wd, ldw, 0.0,
                    yf[q0 * K:], K)
        else:
            colT = colbuf[t, :tp * RSC].reshape((tp, RSC))
            _im2col_tile(xp, q0, tp, P, OW, R, S, sh, sw, dh, dw, colT, yf, 0, 0, 0)
            gemm_rm(False, krsc, tp, K, RSC, 1.0, colbuf[t], RSC, wd, ldw, 0.0,
                    yf[q0 * K:], K)
        if has_b:
            for i in range(tp):
                d = yf[(q0 + i) * K:]
                for k in range(K):
                    d[k] += b[k]


# How _bwd_cols writes dX (its x_mode argument).
_DX_PADDED = 0
_DX_DIRECT = 1
_DX_SCATTER_ADD = 2


@njit(cache=True)
def _scatter_add_1x1(dcolT, q0, tp, P, OW, sh, sw, H, W, gxf):
    """gx[n, oh*sh, ow*sw, :] += dcolT[i, :] for the tile's pixels (an unpadded 1x1 conv)."""
    C = dcolT.shape[1]
    OH = P // OW
    n, oh, ow = _pixel_of(q0, P, OW)
    for i in range(tp):
        o = ((n * H + oh * sh) * W + ow * sw) * C
        d = gxf[o:o + C]
        src = dcolT[i]
        for c in range(C):
            d[c] += src[c]
        n, oh, ow = _next_pixel(n, oh, ow, OH, OW)


@njit(parallel=True, cache=True)
def _bwd_cols(xp, wd, krsc, RSCd, RSCw, gyf, gy_nchw, K, R, S, sh, sw, dh, dw, ph, pw, OH, OW,
              T, g, direct_w, x_mode, nt, need_x, need_w, gx4, gwacc, addf, prefetch_dy):
    """gwacc (nt, RSC*K), zeroed by the caller: per-thread dW sums, (R*S*C, K) matrices, or
    (K, RSCw) ones when RSCw > 0 (only with NCHW dY: dW^T = dY (K x pixels) @ columns
    zero-padded to RSCw, a shape small_gemm runs fast; the first R*S*C columns hold dW^T);
    gx4 (N, H, W, C) dX;
    wd: the weights for dX, a flat (K, RSCd) matrix when ``krsc`` (_weights_krsc, or
    _weights_krsc_padded when RSCd > R*S*C), else the forward's (R*S*C, K) layout
    (_weights_rsck), read transposed.  The dX GEMMs write tiles of RSCd columns.

    Work unit: a group of g whole images (handed out dynamically).  Its dX is
    scattered into the running thread's own padded buffer and the interior copied
    out, so no two threads touch the same image.  ``addf``: empty, or an (N*H*W*C,)
    array that the copy-out adds (then gx4 = dX + addf).  ``x_mode``: how dX reaches
    gx4: _DX_PADDED (through the padded buffers, as above), _DX_DIRECT (GEMM straight
    into gx4; stride-1 1x1) or _DX_SCATTER_ADD (unpadded 1x1 of any stride: each tile's
    rows are added in place at their pixels, and gx4 keeps what it held elsewhere).
    ``direct_w``: dW reads xp's rows as the column matrix (xp is then (N, OH, OW, C): a
    1x1 convolution's input, sampled at its stride).
    ``gyf``: flat dY, channels-last, or NCHW when ``gy_nchw``: then the GEMMs read each
    tile's (K x pixels) block of one image as a transposed operand, and tiles stop at
    image boundaries."""
    N = xp.shape[0]
    C = xp.shape[3]
    H = gx4.shape[1]
    W = gx4.shape[2]
    Hp = H + 2 * ph
    Wp = W + 2 * pw
    RSC = R * S * C
    P = OH * OW
    ngroups = (N + g - 1) // g
    ldw = RSCd if krsc else K
    ldcol = RSCw if RSCw > 0 else RSC
    colbuf = np.empty((nt, T * ldcol), dtype=xp.dtype)
    if RSCw > RSC:
        # the padding columns stay 0.  A serial loop: np.zeros here would be a parallel
        # loop too, run with the caller's chunk size of 1 (32,768 chunks: 2.0 -> 19 ms)
        cbf = colbuf.reshape(-1)
        for j in range(cbf.size):
            cbf[j] = 0
    dcolbuf = np.empty((nt, T * RSCd), dtype=xp.dtype)
    gpad = g if (need_x and x_mode == _DX_PADDED) else 0
    gxpbuf = np.empty((nt, gpad, Hp, Wp, C), dtype=xp.dtype)
    xflat = xp.reshape(-1)
    gxflat = gx4.reshape(-1)
    for gi in prange(ngroups):
        t = numba.get_thread_id()
        gacc = gwacc[t]
        gxp = gxpbuf[t]
        gxpf = gxp.reshape(-1)
        n_a = gi * g
        n_b = min(N, (gi + 1) * g)
        if gpad:
            for j in range(gxpf.size):
                gxpf[j] = 0
        q0 = n_a * P
        while q0 < n_b * P:
            tp = min(T, n_b * P - q0)
            if gy_nchw:
                n = q0 // P
                tp = min(tp, (n + 1) * P - q0)
                gyt = gyf[n * K * P + q0 - n * P:]
                ldg = P
            else:
                gyt = gyf[q0 * K:]
                ldg = K
            if need_w:
                if direct_w:
                    gemm_rm(True, gy_nchw, RSC, K, tp, 1.0, xflat[q0 * C:], C, gyt, ldg, 1.0,
                            gacc, K)
                else:
                    colT = colbuf[t, :tp * ldcol].reshape((tp, ldcol))
                    # the next tile's dY (channels-last, small tiles): first read by its
                    # dW GEMM, so load it from memory while this tile copies and multiplies
                    # (for NCHW dY, read as 64+ row streams, it did not pay)
                    q1 = q0 + tp
                    pf_n = min(tp, n_b * P - q1) if (prefetch_dy and not gy_nchw) else 0
                    _im2col_tile(xp, q0, tp, P, OW, R, S, sh, sw, dh, dw, colT, gyf,
                                 q1 * K, K, pf_n)
                    if RSCw > 0:
                        gemm_rm(False, False, K, RSCw, tp, 1.0, gyt, ldg, colbuf[t], RSCw, 1.0,
                                gacc, RSCw)
                    else:
                        gemm_rm(True, gy_nchw, RSC, K, tp, 1.0, colbuf[t], RSC, gyt, ldg, 1.0,
                                gacc, K)
            if need_x:
                if x_mode == _DX_DIRECT:
                    gemm_rm(gy_nchw, not krsc, tp, RSC, K, 1.0, gyt, ldg, wd, ldw, 0.0,
                            gxflat[q0 * C:], C)
                else:
                    gemm_rm(gy_nchw, not krsc, tp, RSCd, K, 1.0, gyt, ldg, wd, ldw, 0.0,
                            dcolbuf[t], RSCd)
                    dcolT = dcolbuf[t, :tp * RSCd].reshape((tp, RSCd))
                    if x_mode == _DX_SCATTER_ADD:
                        _scatter_add_1x1(dcolT, q0, tp, P, OW, sh, sw, H, W, gxflat)
                    else:
                        _col2im_tile(dcolT, q0, tp, P, OW, R, S, sh, sw, dh, dw, gxp, n_a)
            q0 += tp
        if gpad:
            crop_padded(gxpf, n_a, n_b, H, W, C, Hp, Wp, ph, pw, gxflat, addf)


@pjit(fastmath={"reassoc"})
def _bias_grad(gy, gb):
    """gb[k] = sum_{n,p} gy[n, k, p] (accumulated in float64; ``reassoc`` lets the sum
    vectorise, a strict left-to-right sum is bound by the add latency)."""
    N, K, P = gy.shape
    for k in prange(K):
        acc = 0.0
        for n in range(N):
            for p in range(P):
                acc += gy[n, k, p]
        gb[k] = acc


# ---------------------------------------------------------------------------
# direct (no GEMM) path for convolutions with few channels (LeNet-sized),
# where a GEMM with K or C*R*S in the single digits wastes BLAS and im2col
# costs more than the arithmetic.  Planes are NCHW, zero-padded.
# ---------------------------------------------------------------------------

@pjit()
def _pad_nchw(x, ph, pw, xp):
    N, C, H, W = x.shape
    Hp = xp.shape[2]
    Wp = xp.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        for hp in range(Hp):
            h = hp - ph
            if h < 0 or h >= H:
                for wq in range(Wp):
                    xp[n, c, hp, wq] = 0
            else:
                for wq in range(pw):
                    xp[n, c, hp, wq] = 0
                drow = xp[n, c, hp, pw:]
                srow = x[n, c, h]
                for w in range(W):
                    drow[w] = srow[w]
                for wq in range(pw + W, Wp):
                    xp[n, c, hp, wq] = 0


@njit(parallel=True, cache=True)
def _direct_fwd(xp, w, b, sh, sw, dh, dw, y):
    N, C, Hp, Wp = xp.shape
    K, _, R, S = w.shape
    OH = y.shape[2]
    OW = y.shape[3]
    for t in prange(N * K):
        n = t // K
        k = t - n * K
        bk = b[k]
        for oh in range(OH):
            for ow in range(OW):
                y[n, k, oh, ow] = bk
        for c in range(C):
            for r in range(R):
                for s in range(S):
                    wv = w[k, c, r, s]
                    for oh in range(OH):
                        ih = oh * sh + r * dh
                        if sw == 1:
                            for ow in range(OW):
                                y[n, k, oh, ow] += wv * xp[n, c, ih, ow + s * dw]
                        else:
                            for ow in range(OW):
                                y[n, k, oh, ow] += wv * xp[n, c, ih, ow * sw + s * dw]


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _direct_gw(xp, gy, sh, sw, dh, dw, gw):
    N, C, Hp, Wp = xp.shape
    K, _, R, S = gw.shape
    OH = gy.shape[2]
    OW = gy.shape[3]
    for t in prange(K * C):
        k = t // C
        c = t - k * C
        for r in range(R):
            for s in range(S):
                acc = 0.0
                for n in range(N):
                    for oh in range(OH):
                        ih = oh * sh + r * dh
                        if sw == 1:
                            for ow in range(OW):
                                acc += gy[n, k, oh, ow] * xp[n, c, ih, ow + s * dw]
                        else:
                            for ow in range(OW):
                                acc += gy[n, k, oh, ow] * xp[n, c, ih, ow * sw + s * dw]
                gw[k, c, r, s] = acc


@njit(parallel=True, cache=True)
def _direct_gx(w, gy, sh, sw, dh, dw, ph, pw, gxp, gx):
    N, C, H, W = gx.shape
    K, _, R, S = w.shape
    OH = gy.shape[2]
    OW = gy.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        gxp[n, c] = 0
        for k in range(K):
            for r in range(R):
                for s in range(S):
                    wv = w[k, c, r, s]
                    for oh in range(OH):
                        ih = oh * sh + r * dh
                        if sw == 1:
                            for ow in range(OW):
                                gxp[n, c, ih, ow + s * dw] += wv * gy[n, k, oh, ow]
                        else:
                            for ow in range(OW):
                                gxp[n, c, ih, ow * sw + s * dw] += wv * gy[n, k, oh, ow]
        for h in range(H):
            for wq in range(W):
                gx[n, c, h, wq] = gxp[n, c, h + ph, wq + pw]


# Extended-row forms of the direct kernels (stride 1): a plane is processed as
# one flat run of L = (OH-1)*Wp + OW positions of the padded width, so the inner
# loops are long and contiguous (they vectorise; rows of 10-28 pixels do not,
# LLVM's vector loop wants more iterations than that).  Positions with
# ow >= OW are garbage and are never copied out.

@njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _direct_fwd_ext(xp, w, b, dh, dw, y):
    # One task per image, all K output channels: the image's planes stay in L1 for
    # every channel, and each task owns its accumulator.  (A shared (threads, L) array
    # of accumulator rows put two threads' rows on one cache line: false sharing made
    # LeNet conv1's forward slower on 2 threads than on 1.)
    N, C, Hp, Wp = xp.shape
    K, _, R, S = w.shape
    OH = y.shape[2]
    OW = y.shape[3]
    L = (OH - 1) * Wp + OW
    xf = xp.reshape((N, C, Hp * Wp))
    yf = y.reshape((N, K, OH * OW))
    for n in prange(N):
        acc = np.empty(L + 64, dtype=xp.dtype)   # slack: no line shared with a neighbour
        for k in range(K):
            bk = b[k]
            for j in range(L):
                acc[j] = bk
            for c in range(C):
                xc = xf[n, c]
                for r in range(R):
                    if S == 5:
                        # 5-wide kernels (LeNet): one pass over acc per kernel row instead
                        # of one per tap (acc is loaded and stored 5x less often)
                        off = r * dh * Wp
                        w0 = w[k, c, r, 0]
                        w1 = w[k, c, r, 1]
                        w2 = w[k, c, r, 2]
                        w3 = w[k, c, r, 3]
                        w4 = w[k, c, r, 4]
                        x0 = xc[off:off + L]
                        x1 = xc[off + dw:off + dw + L]
                        x2 = xc[off + 2 * dw:off + 2 * dw + L]
                        x3 = xc[off + 3 * dw:off + 3 * dw + L]
                        x4 = xc[off + 4 * dw:off + 4 * dw + L]
                        for j in range(L):
                            acc[j] += (w0 * x0[j] + w1 * x1[j] + w2 * x2[j] + w3 * x3[j]
                                       + w4 * x4[j])
                        continue
                    for s in range(S):
                        wv = w[k, c, r, s]
                        off = r * dh * Wp + s * dw
                        xs = xc[off:off + L]
                        for j in range(L):
                            acc[j] += wv * xs[j]
            yk = yf[n, k]
            for oh in range(OH):
                src = acc[oh * Wp:oh * Wp + OW]
                dst = yk[oh * OW:oh * OW + OW]
                for ow in range(OW):
                    dst[ow] = src[ow]


@pjit()
def _gy_ext(gy, Wp, gext):
    """gext[n, k, oh*Wp + ow] = gy[n, k, oh, ow], zero in the garbage columns."""
    N, K, OH, OW = gy.shape
    L = gext.shape[2]
    gf = gy.reshape(-1)
    ef = gext.reshape(-1)
    for t in prange(N * K):
        for oh in range(OH):
            src = gf[(t * OH + oh) * OW:(t * OH + oh + 1) * OW]
            dst = ef[t * L + oh * Wp:t * L + oh * Wp + OW]
            for ow in range(OW):
                dst[ow] = src[ow]
            if oh < OH - 1:
                pad = ef[t * L + oh * Wp + OW:t * L + (oh + 1) * Wp]
                for j in range(Wp - OW):
                    pad[j] = 0


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _direct_gw_ext(xp, gext, dh, dw, zero, gw):
    N, C, Hp, Wp = xp.shape
    K, _, R, S = gw.shape
    L = gext.shape[2]
    xf = xp.reshape((N, C, Hp * Wp))
    for t in prange(K * C):
        k = t // C
        c = t - k * C
        acc = np.zeros(R * S, dtype=np.float64)
        for n in range(N):          # image outermost: its two planes stay in L1 for all taps
            g = gext[n, k]
            xc = xf[n, c]
            if S == 5:
                # 5-wide kernels (LeNet): the five taps of a row share each load of g
                # (6 loads per 5 FMAs instead of 10); 0.42 -> 0.30 ms for LeNet conv1.
                for r in range(R):
                    off = r * dh * Wp
                    x0 = xc[off:off + L]
                    x1 = xc[off + dw:off + dw + L]
                    x2 = xc[off + 2 * dw:off + 2 * dw + L]
                    x3 = xc[off + 3 * dw:off + 3 * dw + L]
                    x4 = xc[off + 4 * dw:off + 4 * dw + L]
                    d0 = zero[0]
                    d1 = zero[0]
                    d2 = zero[0]
                    d3 = zero[0]
                    d4 = zero[0]
                    for j in range(L):
                        gj = g[j]
                        d0 += gj * x0[j]
                        d1 += gj * x1[j]
                        d2 += gj * x2[j]
                        d3 += gj * x3[j]
                        d4 += gj * x4[j]
                    acc[r * 5] += d0
                    acc[r * 5 + 1] += d1
                    acc[r * 5 + 2] += d2
                    acc[r * 5 + 3] += d3
                    acc[r * 5 + 4] += d4
                continue
            for r in range(R):
                for s in range(S):
                    off = r * dh * Wp + s * dw
                    xs = xc[off:off + L]
                    d = zero[0]          # per-image dot product in the storage dtype (vectorises)
                    for j in range(L):
                        d += g[j] * xs[j]
                    acc[r * S + s] += d
        for r in range(R):
            for s in range(S):
                gw[k, c, r, s] = acc[r * S + s]


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _direct_gx_ext(w, gext, dh, dw, ph, pw, Hp, Wp, gx):
    N, C, H, W = gx.shape
    K, _, R, S = w.shape
    L = gext.shape[2]
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        acc = np.zeros(Hp * Wp, dtype=gx.dtype)
        for k in range(K):
            g = gext[n, k]
            for r in range(R):
                for s in range(S):
                    wv = w[k, c, r, s]
                    off = r * dh * Wp + s * dw
                    a = acc[off:off + L]
                    for j in range(L):
                        a[j] += wv * g[j]
        for h in range(H):
            for wq in range(W):
                gx[n, c, h, wq] = acc[(h + ph) * Wp + wq + pw]


# Use the direct path when C*K is at most this.  Measured (bench_conv.py,
# LeNet batch 128): the direct forward beats im2col+GEMM for LeNet's conv1
# (C*K = 6) but is several times slower for conv2 (C*K = 96, 10x10 planes),
# and the direct backward lost on both, so by default it is forward-only
# and for tiny C*K.  Tests force each path on all shapes.
_DIRECT_MAX_CK = 8
_DIRECT_MAX_CK_BWD = 8


# ---------------------------------------------------------------------------
# chunked im2col path: whole images per chunk, one multi-threaded BLAS call per
# GEMM (the chunk's column matrix is a few MiB, so the BLAS runs at full speed
# on both cores and the column matrix is still in the large L2/L3 when read)
# ---------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _im2col_rows(xp, q0, nq, OH, OW, R, S, sh, sw, dh, dw, col):
    """col[i, (r*S+s)*C + c] = xp[n, oh*sh + r*dh, ow*sw + s*dw, c] for output pixel q0+i.

    (Copies go through 1-D slice views: Numba then drops the negative-index checks and
    the loops vectorise, 2-3x faster than indexing the 3-D array.)"""
    N, Hp, Wp, C = xp.shape
    xf = xp.reshape(-1)
    P = OH * OW
    run = S * C
    RSC = R * S * C
    for i in prange(nq):
        n, oh, ow = _pixel_of(q0 + i, P, OW)
        base_i = i * RSC
        for r in range(R):
            row = ((n * Hp + oh * sh + r * dh) * Wp + ow * sw) * C
            if dw == 1:
                d = col[base_i + r * run:base_i + (r + 1) * run]
                src = xf[row:row + run]
                for j in range(run):
                    d[j] = src[j]
            else:
                for s in range(S):
                    d = col[base_i + (r * S + s) * C:base_i + (r * S + s + 1) * C]
                    src = xf[row + s * dw * C:row + s * dw * C + C]
                    for c in range(C):
                        d[c] = src[c]


@njit(parallel=True, cache=True)
def _col2im_gather(dcol, n0, n1, H, W, C, OH, OW, R, S, sh, sw, ph, pw, dh, dw, gxf):
    """gxf (N, H, W, C) flat: gx[n, h, w, c] = sum of dcol entries that read input (h, w).

    dcol holds rows for the output pixels of images n0..n1-1 (row (n-n0)*OH*OW + p).
    A gather, so every (n, h) row is written by one iteration (no races)."""
    P = OH * OW
    RSC = R * S * C
    for t in prange((n1 - n0) * H):
        nl = t // H
        h = t - nl * H
        hp = h + ph
        for w in range(W):
            wp = w + pw
            o = (((n0 + nl) * H + h) * W + w) * C
            out = gxf[o:o + C]
            for c in range(C):
                out[c] = 0
            for r in range(R):
                a = hp - r * dh
                if a < 0:
                    break
                if a % sh != 0:
                    continue
                oh = a // sh
                if oh >= OH:
                    continue
                for s in range(S):
                    b = wp - s * dw
                    if b < 0:
                        break
                    if b % sw != 0:
                        continue
                    ow = b // sw
                    if ow >= OW:
                        continue
                    src0 = (nl * P + oh * OW + ow) * RSC + (r * S + s) * C
                    src = dcol[src0:src0 + C]
                    for c in range(C):
                        out[c] += src[c]


@pjit()
def _fill_bias(yf, q0, q1, b):
    K = b.shape[0]
    for q in prange(q0, q1):
        d = yf[q * K:]
        for k in range(K):
            d[k] = b[k]


@njit(cache=True)
def _gemm(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """One (multi-threaded) BLAS call on 1-D views, row-major (see blas.gemm_rm)."""
    gemm_rm(transa, transb, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc)


@njit(parallel=True, cache=True)
def _gemm_rows_par(transb, m, n, k, a, lda, b, ldb, beta, c, ldc, nt):
    """C (m x n) = A (m x k) @ op(B) + beta*C with the rows of A and C split over nt
    Numba threads, each calling single-threaded BLAS (no second thread pool)."""
    chunk = (m + nt - 1) // nt
    for t in prange(nt):
        r0 = t * chunk
        r1 = min(m, r0 + chunk)
        if r1 > r0:
            gemm_rm(False, transb, r1 - r0, n, k, 1.0, a[r0 * lda:], lda, b, ldb, beta,
                    c[r0 * ldc:], ldc)


@njit(parallel=True, cache=True)
def _gemm_tn_par(m, n, k, a, lda, b, ldb, first, acc, nt):
    """acc[t] (m x n) (+)= A[rows_t]^T @ B[rows_t]: the shared dimension k (pixels) is
    split over nt threads, each accumulating into its own acc[t] (summed by the caller)."""
    chunk = (k + nt - 1) // nt
    for t in prange(nt):
        k0 = t * chunk
        k1 = min(k, k0 + chunk)
        at = acc[t]
        if k1 > k0:
            gemm_rm(True, False, m, n, k1 - k0, 1.0, a[k0 * lda:], lda, b[k0 * ldb:], ldb,
                    0.0 if first else 1.0, at, n)
        elif first:
            for j in range(at.size):
                at[j] = 0


@njit(parallel=True, cache=True)
def _gemm_tn_rows_par(col, gyf, gwt, RSC, K, NP, nt):
    """gW (K x RSC) = GY^T (K x NP) @ col (NP x RSC), the output rows split over the
    threads (no per-thread weight-sized accumulators to zero, read back and add).  This
    (K, R*S*C) result is 4% faster to compute for 256->512 3x3 than its (R*S*C, K)
    transpose, and 3.5x faster to turn into (K, C, R, S) (0.18 against 0.61 ms)."""
    chunk = (K + nt - 1) // nt
    for t in prange(nt):
        k0 = t * chunk
        k1 = min(K, k0 + chunk)
        if k1 > k0:
            gemm_rm(True, False, k1 - k0, RSC, NP, 1.0, gyf[k0:], K, col, RSC, 0.0,
                    gwt[k0 * RSC:], RSC)


_scratch_local = threading.local()


def _scratch(n, dt):
    """A reusable flat work buffer of at least n elements (one per thread and dtype).

    The column matrices are several MiB; a fresh np.empty each call costs page faults."""
    bufs = getattr(_scratch_local, "bufs", None)
    if bufs is None:
        bufs = _scratch_local.bufs = {}
    buf = bufs.get(dt)
    if buf is None or buf.size < n:
        buf = bufs[dt] = np.empty(max(n, 1), dtype=dt)
    return buf[:n]


def _chunk_images(N, P, RSC, itemsize):
    g = _CHUNK_BYTES // max(1, P * RSC * itemsize)
    return int(max(1, min(N, g)))


def _mm(transb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """C = A @ op(B) + beta*C on both cores: one multi-threaded BLAS call, or (the
    default, _CHUNK_SPLIT) rows split over the Numba threads with single-threaded BLAS."""
    if _CHUNK_SPLIT:
        with _single_blas:
            _gemm_rows_par(transb, m, n, k, a, lda, b, ldb, beta, c, ldc, numba.get_num_threads())
    else:
        _gemm(False, transb, m, n, k, a, lda, b, ldb, beta, c, ldc)


def _mm_tn(m, n, k, a, lda, b, ldb, first, acc):
    """acc (+)= A^T @ B, A (k x m), B (k x n); acc is (nt, m*n) when split, else (1, m*n)."""
    if _CHUNK_SPLIT:
        with _single_blas:
            _gemm_tn_par(m, n, k, a, lda, b, ldb, first, acc, acc.shape[0])
    else:
        _gemm(True, False, m, n, k, a, lda, b, ldb, 0.0 if first else 1.0, acc[0], n)


def _fwd_chunked(x, wf, b, has_b, N, C, H, W, K, R, S, sh, sw, ph, pw, dh, dw, OH, OW, y4):
    dt = x.dtype
    P = OH * OW
    RSC = R * S * C
    yf = y4.reshape(-1)
    direct = R == 1 and S == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    if direct:
        xf = _cl_contig(x).reshape(-1)
        if has_b:
            _fill_bias(yf, 0, N * P, b)
        _mm(False, N * P, K, C, xf, C, wf, K, 1.0 if has_b else 0.0, yf, K)
        return
    xp = _padded(x, ph, pw, 0).reshape(N, H + 2 * ph, W + 2 * pw, C)
    g = _chunk_images(N, P, RSC, dt.itemsize)
    col = _scratch(g * P * RSC, dt)
    for n0 in range(0, N, g):
        n1 = min(N, n0 + g)
        q0, nq = n0 * P, (n1 - n0) * P
        _im2col_rows(xp, q0, nq, OH, OW, R, S, sh, sw, dh, dw, col)
        if has_b:
            _fill_bias(yf, q0, q0 + nq, b)
        _mm(False, nq, K, RSC, col, RSC, wf, K, 1.0 if has_b else 0.0, yf[q0 * K:], K)


def _bwd_chunked(x, wf, gy, need_x, need_w, N, C, H, W, K, R, S, sh, sw, ph, pw, dh, dw, OH, OW,
                 gx4):
    """Returns the flat (R, S, C, K) weight gradient (or None)."""
    dt = x.dtype
    P = OH * OW
    RSC = R * S * C
    gyf = _cl_contig(gy).reshape(-1)
    nacc = numba.get_num_threads() if _CHUNK_SPLIT else 1
    gacc = np.empty((nacc, RSC * K), dtype=dt) if need_w else None
    direct = R == 1 and S == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    if direct:
        if need_w:
            xf = _cl_contig(x).reshape(-1)
            _mm_tn(C, K, N * P, xf, C, gyf, K, True, gacc)
        if need_x:
            _mm(True, N * P, C, K, gyf, K, wf, K, 0.0, gx4.reshape(-1), C)
        return gacc
    if need_w:
        xp = _padded(x, ph, pw, 0).reshape(N, H + 2 * ph, W + 2 * pw, C)
    g = _chunk_images(N, P, RSC, dt.itemsize)
    col = _scratch(g * P * RSC, dt)
    gxf = gx4.reshape(-1)
    first = True
    for n0 in range(0, N, g):
        n1 = min(N, n0 + g)
        q0, nq = n0 * P, (n1 - n0) * P
        if need_w:
            _im2col_rows(xp, q0, nq, OH, OW, R, S, sh, sw, dh, dw, col)
            _mm_tn(RSC, K, nq, col, RSC, gyf[q0 * K:], K, first, gacc)
            first = False
        if need_x:
            _mm(True, nq, RSC, K, gyf[q0 * K:], K, wf, K, 0.0, col, RSC)
            _col2im_gather(col, n0, n1, H, W, C, OH, OW, R, S, sh, sw, ph, pw, dh, dw, gxf)
    return gacc


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------

# The shifted path computes one output row per *padded* pixel: it is used for
# stride-1 convolutions when Hp*Wp / (OH*OW) is at most this (the rest is waste).
_SHIFT_MAX_WASTE = 0.0
# Rows per shifted-GEMM tile: the accumulator (T x K) plus the input rows it
# reads (T x C) should sit in L2.
_SHIFT_TILE_BYTES = 384 << 10
_SHIFT_MIN_ROWS = 64
_SHIFT_MAX_ROWS = 2048
# 3x3 stride-1 and stride-2 convolutions with at least winograd.MIN_CHANNELS channels use
# the Winograd path (minigrad/cpu/winograd.py): 2.25x (stride 1) or 1.44x fewer multiply-adds.
# MINIGRAD_WINOGRAD=0 in the environment turns it off (im2col for every layer: a shorter
# first-run compile, and the rounding of the GEMM path).
USE_WINOGRAD = os.environ.get("MINIGRAD_WINOGRAD", "1") != "0"

# Which GEMM path convolutions with many channels take: "tiles" (per-thread tiles,
# one parallel region; stride-1 convs use the shifted GEMMs when _SHIFT_MAX_WASTE
# allows) or "chunked" (whole images per chunk, several barriers per call).
_GEMM_PATH = "tiles"
# Bytes of the column matrix of one chunk.
_CHUNK_BYTES = 4 << 20
# Split each chunk's GEMMs over the Numba threads (single-threaded BLAS each) instead
# of one multi-threaded BLAS call: one thread pool, no OpenBLAS/OpenMP contention.
_CHUNK_SPLIT = True


def _pairs(stride, padding, dilation):
    return ((int(stride[0]), int(stride[1])), (int(padding[0]), int(padding[1])),
            (int(dilation[0]), int(dilation[1])))


def _float_dtype(dt):
    dt = np.dtype(dt)
    if dt in (np.float32, np.float64):
        return dt
    return np.dtype(np.float64) if dt.itemsize > 4 else np.dtype(np.float32)


# Layers with few output channels (LeNet's conv2: 16) get tiles whose column matrix (T x R*S*C)
# and dX counterpart take at most this many bytes together (likely why it helps: both then fit
# the Zen 4's 1 MB L2 beside the skinny GEMMs' packing).  LeNet conv2 (R*S*C = 150): 384
# instead of 512 pixels, forward + backward 1.12-1.27x, the LeNet step 1.08-1.09x (paired;
# BENCHMARKS_perf.md, change 112).  Wider layers lost with 384-pixel tiles (3x3 128->256
# stride 2: 0.95x; 1x1 128->256 stride 2: 0.92x), so they keep _TILE.
_NARROW_K = 32
_NARROW_TILE_BYTES = 512 << 10


def _plan(N, P, nt, RSC=0, K=0, itemsize=4):
    """Tile size T (pixels) and group size g (images per thread work unit); the layer's R*S*C,
    output channels K and element size let layers with few output channels take smaller
    tiles (_NARROW_K)."""
    T = _TILE
    if 0 < K <= _NARROW_K and RSC > 0:
        T = min(T, max(64, _NARROW_TILE_BYTES // (2 * RSC * itemsize) // 64 * 64))
    g = max(1, -(-T // P))                 # enough images to fill a tile
    g = min(g, max(1, -(-N // nt)))        # but keep every thread busy
    T = min(T, g * P)
    return int(T), int(g)


def _shift_rows(Q, C, K, itemsize, nt):
    T = _SHIFT_TILE_BYTES // max(1, (C + K) * itemsize)
    T = max(_SHIFT_MIN_ROWS, min(_SHIFT_MAX_ROWS, T))
    T = min(T, -(-Q // nt))               # at least one tile per thread
    return int(max(1, T))


def _use_shift(N, C, H, W, K, R, S, stride, padding, dilation):
    if stride != (1, 1) or (R == 1 and S == 1 and padding == (0, 0)):
        return False
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    OH = Hp - dilation[0] * (R - 1)
    OW = Wp - dilation[1] * (S - 1)
    return Hp * Wp <= _SHIFT_MAX_WASTE * OH * OW


def is_channels_last(x):
    """True when the NCHW-shaped array ``x`` is stored as a dense (N, H, W, C) buffer."""
    return x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous


def _padded(x, ph, pw, slack_rows):
    """Flat zero-padded channels-last copy of NCHW-shaped x plus slack_rows zero pixels
    (read-only for the caller: a view of x when x is already dense channels-last and
    nothing is added, as for the unpadded stride-2 1x1 convolutions)."""
    if ph == 0 and pw == 0 and slack_rows == 0 and is_channels_last(x):
        return x.transpose(0, 2, 3, 1).reshape(-1)
    N, C, H, W = x.shape
    Hp, Wp = H + 2 * ph, W + 2 * pw
    xbuf = np.empty((N * Hp * Wp + slack_rows) * C, dtype=x.dtype)
    if x.flags.c_contiguous and not is_channels_last(x):
        _nchw_to_cl(x, ph, pw, xbuf, Hp, Wp)
    elif is_channels_last(x):
        _pad_cl_dense(x.transpose(0, 2, 3, 1).reshape(-1), N, H, W, C, ph, pw, xbuf, Hp, Wp)
    else:
        _pad_cl(x.transpose(0, 2, 3, 1), ph, pw, xbuf, Hp, Wp)
    return xbuf


def _cl_contig(x):
    """(N, H, W, C) C-contiguous data of NCHW-shaped x (a view when x is channels-last)."""
    xt = x.transpose(0, 2, 3, 1)
    if xt.flags.c_contiguous:
        return xt
    out = np.empty(xt.shape, dtype=x.dtype)
    if x.flags.c_contiguous:
        _nchw_to_cl(x, 0, 0, out.reshape(-1), x.shape[2], x.shape[3])
    else:
        _to_cl(xt, out)
    return out


def _sampled_1x1(x, R, S, stride, padding):
    """True for a strided, unpadded 1x1 convolution of x not stored channels-last: it
    copies only the pixels its stride reads (_sampled_cl) instead of all of x."""
    return (R == 1 and S == 1 and stride != (1, 1) and padding == (0, 0)
            and not is_channels_last(x))


def _sampled_cl(x, sh, sw, OH, OW):
    """(N, OH, OW, C) channels-last copy of x[:, :, ::sh, ::sw] (the first OH x OW pixels)."""
    N, C = x.shape[0], x.shape[1]
    v = x[:, :, :(OH - 1) * sh + 1:sh, :(OW - 1) * sw + 1:sw]
    out = np.empty(N * OH * OW * C, dtype=x.dtype)
    if x.flags.c_contiguous:
        # the source planes decide: 4 KB planes alias in L1 whatever the stride reads
        if x.shape[2] * x.shape[3] * x.itemsize >= _PLANE_TASK_BYTES:
            _pad_cl_from_nchw_planes(v, 0, 0, out, OH, OW)
        else:
            _pad_cl_from_nchw(v, 0, 0, out, OH, OW)
    else:
        _pad_cl(v.transpose(0, 2, 3, 1), 0, 0, out, OH, OW)
    return out.reshape(N, OH, OW, C)


def _weights_rsck(w, dt):
    """Weights as a flat (R, S, C, K) array: row (r, s, c) of the GEMM B matrix.

    (A Numba blocked transpose: NumPy's strided copy of this permutation is 5-10x slower.)"""
    K, C, R, S = w.shape
    w = np.ascontiguousarray(w, dtype=dt)
    out = np.empty(R * S * C * K, dtype=dt)
    _kcx_to_xck(w.reshape(K, C, R * S), out.reshape(R * S, C, K))
    return out


def _weights_krsc(w, dt):
    """Weights as a flat (K, R, S, C) array: the (K x R*S*C) B matrix of the dX GEMMs,
    which OpenBLAS runs faster untransposed (stem: 1.6x, 3x3 stride 2: 1.04-1.07x) than
    as the transpose of the forward's (R*S*C x K) layout.  For 1x1 weights (or one input
    channel) that is w's own order: a view of w when w is contiguous in dtype dt
    (read-only for the caller)."""
    K, C, R, S = w.shape
    w = np.ascontiguousarray(w, dtype=dt)
    if R * S == 1 or C == 1:   # the same order: w itself
        return w.reshape(-1)
    out = np.empty(K * R * S * C, dtype=dt)
    _transpose_each(w.reshape(K, C, R * S), out.reshape(K, R * S, C))
    return out


def _weights_krsc_padded(w, dt, cols):
    """_weights_krsc's (K, R*S*C) matrix with zero columns appended up to ``cols``."""
    K, C, R, S = w.shape
    out = np.zeros((K, cols), dtype=dt)
    out[:, :R * S * C] = _weights_krsc(w, dt).reshape(K, R * S * C)
    return out.reshape(-1)


def _weights_grad_kcrs(gf, K, C, R, S):
    """Sum of (nt, R*S*C*K) per-thread weight gradients (or one flat one) -> (K, C, R, S)."""
    out = np.empty((K, C, R, S), dtype=gf.dtype)
    if R * S == 1:
        _sum_transposed(gf.reshape(-1, C, K), out.reshape(K, C))
    else:
        _xck_to_kcx(gf.reshape(-1, R * S, C, K), out.reshape(K, C, R * S))
    return out


def _weights_grad_from_kx(gf, K, C, R, S, ld):
    """Sum of (nt, K*ld) per-thread transposed weight gradients, whose (K, ld) rows start
    with the R*S*C values of dW[k] in (R, S, C) order -> (K, C, R, S)."""
    g = gf.sum(axis=0).reshape(K, ld)[:, :R * S * C].reshape(K, R, S, C)
    return np.ascontiguousarray(g.transpose(0, 3, 1, 2))


class Saved:
    """What a forward hands its backward: ``weights``, the (R*S*C, K) GEMM (or Winograd)
    layout of w, or ``weights_krsc``, its (K, R*S*C) layout (big weights on the im2col
    path); and ``x_cl``, the channels-last (padded) copy of x the forward made, or None
    when it made none (x already in that form, or not asked to keep it).  The NCHW 1x1
    path (``conv1x1_nchw``) keeps ``x_sampled`` instead, x at the pixels its stride
    reads, grouped ``sampled_group`` images at a time."""

    __slots__ = ("weights", "weights_krsc", "x_cl", "x_sampled", "sampled_group")

    def __init__(self):
        self.weights = None
        self.weights_krsc = None
        self.x_cl = None
        self.x_sampled = None
        self.sampled_group = 0


def conv2d(x, w, b, stride, padding, dilation, return_weights=False):
    """Cross-correlation of x (N,C,H,W) with w (K,C,R,S) plus bias b (K,) or None.

    The result is NCHW-shaped; the GEMM paths return channels-last storage.  With
    ``return_weights`` the result is ``(y, wf)``: ``wf`` is the GEMM layout of the
    weights (or None), which ``conv2d_backward(..., wf=wf)`` reuses for dX."""
    if return_weights:
        y, saved = conv2d_saving(x, w, b, stride, padding, dilation, False)
        return y, saved.weights
    return _conv2d(x, w, b, stride, padding, dilation, None, False)


def conv2d_saving(x, w, b, stride, padding, dilation, keep_x):
    """``(y, saved)``: conv2d and a :class:`Saved` for ``conv2d_backward(..., saved=saved)``;
    with ``keep_x`` it holds the channels-last copy of x the forward made, so that dW
    does not copy x again (at the cost of keeping that copy until the backward)."""
    box = Saved()
    y = _conv2d(x, w, b, stride, padding, dilation, box, keep_x)
    return y, box


def _keep_copy(box, keep_x, xc, x):
    """Record xc, the channels-last form of x, for the backward when it is a new array."""
    if keep_x and not np.may_share_memory(xc, x):
        box.x_cl = xc


def _saved_x(saved, shape, dt):
    """The kept channels-last x when it has the shape and dtype this path needs."""
    xc = saved.x_cl if saved is not None else None
    return xc if xc is not None and xc.shape == shape and xc.dtype == dt else None


def _conv2d(x, w, b, stride, padding, dilation, box, keep_x):
    (sh, sw), (ph, pw), (dh, dw) = _pairs(stride, padding, dilation)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    OH = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    dt = _float_dtype(x.dtype)
    if N * K * OH * OW == 0:
        return np.empty((N, K, OH, OW), dtype=dt)
    bb = (np.ascontiguousarray(b, dtype=dt) if b is not None else np.zeros(K, dtype=dt))
    if C == 0:
        y = np.empty((N, K, OH, OW), dtype=dt)
        y[...] = bb[None, :, None, None]
        return y
    if conv_direct_rows.forward_applies(x, w, (sh, sw), (ph, pw), (dh, dw)):
        # one input channel: the padded channels-last copy is the padded NCHW one
        xp = _padded(x, ph, pw, conv_direct_rows.SLACK)
        wf = _weights_rsck(w, dt)
        if box is not None:
            box.weights = wf
            _keep_copy(box, keep_x, xp, x)
        return conv_direct_rows.forward(xp, wf, bb, N, H + 2 * ph, W + 2 * pw, K, R, S)
    if C * K <= _DIRECT_MAX_CK:
        y = np.empty((N, K, OH, OW), dtype=dt)
        x = np.ascontiguousarray(x, dtype=dt)
        xp = np.empty((N, C, H + 2 * ph, W + 2 * pw), dtype=dt)
        _pad_nchw(x, ph, pw, xp)
        if sh == 1 and sw == 1:
            _direct_fwd_ext(xp, np.ascontiguousarray(w, dtype=dt), bb, dh, dw, y)
        else:
            _direct_fwd(xp, np.ascontiguousarray(w, dtype=dt), bb, sh, sw, dh, dw, y)
        return y
    if conv3x3_rows.forward_applies(x, w, (sh, sw), (ph, pw), (dh, dw)):
        xp = _padded(x, ph, pw, 0)
        wf = _weights_rsck(w, dt)
        if box is not None:
            box.weights = wf
            _keep_copy(box, keep_x, xp.reshape(N, H + 2 * ph, W + 2 * pw, C), x)
        y4 = conv3x3_rows.forward(xp, wf, bb, N, C, H, W, K)
        return y4.transpose(0, 3, 1, 2)
    if conv_direct_cl.forward_applies(x, w, (sh, sw), (ph, pw), (dh, dw)):
        xp = _padded(x, ph, pw, conv_direct_cl.slack_pixels(C))
        wf = _weights_rsck(w, dt)
        if box is not None:
            box.weights = wf
            _keep_copy(box, keep_x, xp, x)
        y4 = conv_direct_cl.forward(xp, wf, bb, N, C, H + 2 * ph, W + 2 * pw, K, R, S)
        return y4.transpose(0, 3, 1, 2)
    x = np.asarray(x, dtype=dt)
    if USE_WINOGRAD and winograd.applicable(N, C, K, R, S, OH, OW, (sh, sw), (dh, dw)):
        U = winograd.transform_weights(w, dt, winograd.variant(N, C, K, OH, OW, (sh, sw)))
        xc = _cl_contig(x)
        if box is not None:
            box.weights = U
            _keep_copy(box, keep_x, xc, x)
        y4 = np.empty((N, OH, OW, K), dtype=dt)
        with _single_blas, _dynamic_schedule():
            winograd.forward(xc, U, bb, ph, pw, OH, OW, y4)
        return y4.transpose(0, 3, 1, 2)
    if _nchw_1x1(x, w, (ph, pw), dt):
        return _conv1x1_nchw(x, w, bb, sh, sw, OH, OW, box, keep_x)
    if _whole_1x1(w, (ph, pw), N * OH * OW):
        return _conv1x1_cl(x, w, b, bb, sh, sw, OH, OW, box, keep_x)
    if _cl_units_1x1(x, w, (sh, sw), (ph, pw), OH * OW, dt):
        return _conv1x1_cl_units(x, w, bb, b is not None, sh, sw, OH, OW, box, keep_x)
    shift = _use_shift(N, C, H, W, K, R, S, (sh, sw), (ph, pw), (dh, dw))
    krsc = _GEMM_PATH != "chunked" and not shift and (
        _big_weights(w, dt) or (R == 1 and S == 1))
    wf = _weights_krsc(w, dt) if krsc else _weights_rsck(w, dt)
    if box is not None:
        if krsc:
            box.weights_krsc = wf
        else:
            box.weights = wf
    has_b = b is not None
    y4 = np.empty((N, OH, OW, K), dtype=dt)
    if _GEMM_PATH == "chunked":
        _fwd_chunked(x, wf, bb, has_b, N, C, H, W, K, R, S, sh, sw, ph, pw, dh, dw, OH, OW, y4)
        return y4.transpose(0, 3, 1, 2)
    nt = numba.get_num_threads()
    Hp, Wp = H + 2 * ph, W + 2 * pw
    if shift:
        max_off = (R - 1) * dh * Wp + (S - 1) * dw
        xbuf = _padded(x, ph, pw, max_off + 1)
        T = _shift_rows(N * Hp * Wp, C, K, x.itemsize, nt)
        with _single_blas:
            _fwd_shift(xbuf, wf, bb, has_b, N, Hp, Wp, C, K, R, S, dh, dw, OH, OW, T, nt,
                       y4.reshape(-1))
        return y4.transpose(0, 3, 1, 2)
    direct = R == 1 and S == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    if _sampled_1x1(x, R, S, (sh, sw), (ph, pw)):
        # only the pixels the stride reads are copied; then it is a stride-1 1x1 conv
        xp = _sampled_cl(x, sh, sw, OH, OW)
        direct, sh, sw = True, 1, 1
    elif direct:
        xp = _cl_contig(x)
    else:
        xp = _padded(x, ph, pw, 0).reshape(N, Hp, Wp, C)
    if box is not None:
        _keep_copy(box, keep_x, xp, x)
    T, _ = _plan(N, OH * OW, nt, R * S * C, K, x.itemsize)
    if R * S * C * K * x.itemsize <= _BALANCE_MAX_W:
        T = max(min(64, N * OH * OW), min(T, -(-(N * OH * OW) // (_BALANCE * nt))))
    else:
        T = min(T, -(-(N * OH * OW) // nt))
    with _single_blas, _dynamic_schedule():
        _fwd_cols(xp, wf, krsc, bb, has_b, R, S, sh, sw, dh, dw, OH, OW, T, direct, nt,
                  y4.reshape(-1))
    return y4.transpose(0, 3, 1, 2)


# Unpadded 1x1 convolutions of NCHW-contiguous input run in NCHW (conv1x1_nchw): per-image
# GEMMs on the planes, a non-transposing gather of the sampled pixels, NCHW output and dX.
# Measured against the channels-last path on the NCHW bench rows: BENCHMARKS_perf.md,
# change 72.
USE_NCHW_1X1 = True


def _nchw_1x1(x, w, padding, dt):
    """True when conv1x1_nchw computes this convolution: w 1x1, no padding, x NCHW-contiguous
    (not also channels-last) in dtype dt, enough channels for the GEMM paths."""
    return (USE_NCHW_1X1 and _GEMM_PATH != "chunked" and w.shape[2] == 1 and w.shape[3] == 1
            and tuple(padding) == (0, 0) and x.dtype == dt and x.flags.c_contiguous
            and not is_channels_last(x) and x.shape[1] * w.shape[0] > _DIRECT_MAX_CK)


def _conv1x1_nchw(x, w, bb, sh, sw, OH, OW, box, keep_x):
    """Forward of the NCHW 1x1 path (bb: the bias, zeros for none); keeps the sampled x in
    ``box`` when asked to."""
    N, C = x.shape[0], x.shape[1]
    K = w.shape[0]
    dt = x.dtype
    nt = numba.get_num_threads()
    g = conv1x1_nchw.group_size(N, OH * OW, nt)
    keep = box is not None and keep_x and not conv1x1_nchw.reads_x_in_place(sh, sw, g)
    xs = np.empty(N * C * OH * OW if keep else 0, dtype=dt)
    y = np.empty((N, K, OH, OW), dtype=dt)
    ahead, chunk = conv1x1_nchw.schedule(N, g, nt)
    with _single_blas, _dynamic_schedule(chunk):
        conv1x1_nchw.forward(x, np.ascontiguousarray(w, dtype=dt).reshape(-1), bb, sh, sw, OH,
                             OW, g, keep, xs, y, nt, conv1x1_nchw.FILL_Y_FIRST, ahead)
    if keep:
        box.x_sampled, box.sampled_group = xs, g
    return y


def _conv1x1_nchw_backward(x, w, gy, stride, need_x, need_w, saved, gx_addend, addend_writable):
    """(gx, gw, folded) of the NCHW 1x1 path: gx NCHW-contiguous, gw (K, C, 1, 1); folded
    when gx includes gx_addend (an NCHW-contiguous addend of dtype x.dtype is added by the
    kernel, into its own storage when ``addend_writable``)."""
    sh, sw = int(stride[0]), int(stride[1])
    N, C, H, W = x.shape
    K = w.shape[0]
    dt = x.dtype
    gy = np.ascontiguousarray(gy, dtype=dt)
    OH, OW = gy.shape[2], gy.shape[3]
    nt = numba.get_num_threads()
    xs = saved.x_sampled if saved is not None else None
    have_xs = xs is not None and xs.dtype == dt and xs.size == N * C * OH * OW
    if have_xs:
        g = saved.sampled_group
    else:
        xs, g = _EMPTY[dt.char], conv1x1_nchw.group_size(N, OH * OW, nt)
    fused = need_x and nchw_foldable(gx_addend, x.shape, dt)
    in_place = fused and writable_in_place(gx_addend, addend_writable, x, gy)
    if in_place:
        gx, mode, addf = gx_addend, conv1x1_nchw.DX_ADD_IN_PLACE, _EMPTY[dt.char]
    else:
        gx = np.empty((N, C, H, W) if need_x else (1, 1, 1, 1), dtype=dt)
        mode = conv1x1_nchw.DX_WRITE
        addf = gx_addend.reshape(-1) if fused else _EMPTY[dt.char]
    gwacc = np.empty((nt, K * C if need_w else 1), dtype=dt)
    gw = np.empty(K * C if need_w else 1, dtype=dt)
    ahead, chunk = conv1x1_nchw.schedule(N, g, nt)
    with _single_blas, _dynamic_schedule(chunk):
        conv1x1_nchw.backward(x, xs, have_xs, np.ascontiguousarray(w, dtype=dt).reshape(-1), gy,
                              sh, sw, g, bool(need_x), bool(need_w), mode, gx, gwacc, gw, addf,
                              conv1x1_nchw.STREAM_OPERANDS, nt, ahead)
    gw = gw.reshape(K, C, 1, 1) if need_w else None
    return (gx if need_x else None), gw, fused


# Strided unpadded 1x1 convolutions of channels-last input with at least
# conv1x1_cl_units.MIN_PIXELS output pixels an image (and more pixels in the batch than
# _whole_1x1 takes) run one image per work unit, their GEMMs prefetching the next image
# (conv1x1_cl_units; BENCHMARKS_perf.md, change 170).  False: the im2col tiles.
USE_CL_UNITS_1X1 = True


def _cl_units_1x1(x, w, stride, padding, P, dt):
    """True when conv1x1_cl_units computes this convolution: w 1x1, no padding, a stride, x
    dense channels-last in dtype dt, P >= MIN_PIXELS output pixels an image, enough channels
    for the GEMM paths, and not a convolution _whole_1x1 takes."""
    return (USE_CL_UNITS_1X1 and _GEMM_PATH != "chunked" and w.shape[2] == 1
            and w.shape[3] == 1 and tuple(padding) == (0, 0) and tuple(stride) != (1, 1)
            and x.dtype == dt and is_channels_last(x) and P >= conv1x1_cl_units.MIN_PIXELS
            and x.shape[1] * w.shape[0] > _DIRECT_MAX_CK
            and not _whole_1x1(w, padding, x.shape[0] * P))


def _conv1x1_cl_units(x, w, bb, has_b, sh, sw, OH, OW, box, keep_x):
    """Forward of conv1x1_cl_units (bb: the bias, zeros for none): y NCHW-shaped, stored
    channels-last; keeps the sampled rows of x in ``box`` (sampled_group 0:
    conv1x1_cl_units' (N, P, C) layout)."""
    N, C = x.shape[0], x.shape[1]
    K = w.shape[0]
    dt = x.dtype
    P = OH * OW
    xs = np.empty(N * P * C, dtype=dt)
    y = np.empty((N, OH, OW, K), dtype=dt)
    nt = numba.get_num_threads()
    ahead, chunk = conv1x1_nchw.schedule(N, 1, nt)
    with _single_blas, _dynamic_schedule(chunk):
        conv1x1_cl_units.forward(x.transpose(0, 2, 3, 1), _weights_rsck(w, dt), bb, has_b,
                                 sh, sw, OH, OW, xs, y.reshape(-1), ahead)
    if box is not None and keep_x:
        box.x_sampled, box.sampled_group = xs, 0
    return y.transpose(0, 3, 1, 2)


def _conv1x1_cl_units_backward(x, w, gy, stride, need_x, need_w, saved, gx_addend,
                               addend_writable):
    """(gx, gw, folded) of conv1x1_cl_units: gx NCHW-shaped, stored channels-last (gx_addend
    itself when that is channels-last and may be written in place), gw (K, C, 1, 1); folded
    when gx includes gx_addend."""
    sh, sw = int(stride[0]), int(stride[1])
    N, C, H, W = x.shape
    K = w.shape[0]
    dt = x.dtype
    OH, OW = gy.shape[2], gy.shape[3]
    P = OH * OW
    gyf = _cl_contig(np.asarray(gy, dtype=dt)).reshape(-1)
    xs = saved.x_sampled if saved is not None else None
    have_xs = (xs is not None and saved.sampled_group == 0 and xs.dtype == dt
               and xs.size == N * P * C)
    addf = _EMPTY[dt.char]
    if need_x and gx_addend is not None:
        addf = _cl_flat(gx_addend, x.shape, dt)
    if addf.size > 0 and writable_in_place(gx_addend, addend_writable, x, gy):
        gx, gxf, mode = gx_addend, addf, conv1x1_cl_units.DX_ADD_IN_PLACE
        addk = _EMPTY[dt.char]
    else:
        gx4 = np.empty((N, H, W, C) if need_x else (1, 1, 1, 1), dtype=dt)
        gx, gxf, mode = gx4.transpose(0, 3, 1, 2), gx4.reshape(-1), conv1x1_cl_units.DX_WRITE
        addk = addf
    nt = numba.get_num_threads()
    gwacc = np.empty((nt, K * C if need_w else 1), dtype=dt)
    gw = np.empty(K * C if need_w else 1, dtype=dt)
    ahead, chunk = conv1x1_nchw.schedule(N, 1, nt)
    with _single_blas, _dynamic_schedule(chunk):
        conv1x1_cl_units.backward(x.transpose(0, 2, 3, 1), xs if have_xs else _EMPTY[dt.char],
                                  have_xs, np.ascontiguousarray(w, dtype=dt).reshape(-1), gyf,
                                  sh, sw, OH, OW, bool(need_x), bool(need_w), mode, gxf, addk,
                                  gwacc, gw, nt, ahead)
    return (gx if need_x else None), (gw.reshape(K, C, 1, 1) if need_w else None), \
        bool(need_x) and addf.size > 0


# Other unpadded 1x1 convolutions with few output pixels (channels-last input above all:
# ResNet-18's last downsampling layer at batch 32) run one GEMM per thread and pass
# (conv1x1_cl).  Paired against the im2col tiles, channels-last, batch 32: 256->512 stride 2
# on 8x8 (512 rows) 1.11-1.17x, stride 1 on 4x4 (512 rows) 1.20-1.23x; 1,024 rows 1.03-1.09x;
# 2,048 rows 0.97-1.02x; 8,192 rows 0.82x, where the tiles' dW and dX, which read each dY tile
# once from cache, win (BENCHMARKS_perf.md, change 101).
USE_WHOLE_1X1 = True
_WHOLE_1X1_MAX_ROWS = 1024


def _whole_1x1(w, padding, rows):
    """True when conv1x1_cl computes this convolution (checked after the NCHW 1x1 path):
    w 1x1, no padding, at most _WHOLE_1X1_MAX_ROWS output pixels (``rows``) in the batch."""
    return (USE_WHOLE_1X1 and _GEMM_PATH != "chunked" and w.shape[2] == 1 and w.shape[3] == 1
            and tuple(padding) == (0, 0) and rows <= _WHOLE_1X1_MAX_ROWS)


def _sampled_rows(x, sh, sw, OH, OW):
    """(x4, xs, gathered) for the whole-share 1x1 path: x4 channels-last x (N, H, W, C), and
    xs the flat (N*OH*OW*C,) Xs matrix: x4's own rows at stride 1 (gathered False), else a
    new array that conv1x1_cl.forward fills (gathered True), or, for x not stored
    channels-last, the sampled pixels copied here (_sampled_cl: only those are read)."""
    N, C = x.shape[0], x.shape[1]
    if (sh, sw) == (1, 1):
        x4 = _cl_contig(x)
        return x4, x4.reshape(-1), False
    if is_channels_last(x):
        return x.transpose(0, 2, 3, 1), np.empty(N * OH * OW * C, dtype=x.dtype), True
    xs = _sampled_cl(x, sh, sw, OH, OW)
    return xs, xs.reshape(-1), False


def _conv1x1_cl(x, w, b, bb, sh, sw, OH, OW, box, keep_x):
    """Forward of the whole-share 1x1 path; channels-last output.  Keeps the sampled x (a
    copy at strides above 1) and the (K, C) weights in ``box`` when asked to."""
    N, C = x.shape[0], x.shape[1]
    K = w.shape[0]
    dt = x.dtype
    x4, xs, gathered = _sampled_rows(x, sh, sw, OH, OW)
    wk = _weights_krsc(w, dt)
    y4 = np.empty((N, OH, OW, K), dtype=dt)
    with _single_blas:
        conv1x1_cl.forward(x4, sh, sw, OH, OW, gathered, xs, wk, bb, b is not None,
                           y4.reshape(-1), numba.get_num_threads())
    if box is not None:
        box.weights_krsc = wk
        _keep_copy(box, keep_x, xs.reshape(N, OH, OW, C), x)
    return y4.transpose(0, 3, 1, 2)


def _conv1x1_cl_backward(x, w, gy, sh, sw, need_x, need_w, saved, addf, addf_writable, dt):
    """(gx, gw, folded) of the whole-share 1x1 path: gx channels-last, including ``addf``
    when ``folded`` (in addf's own storage when ``addf_writable``)."""
    N, C, H, W = x.shape
    K = w.shape[0]
    OH, OW = gy.shape[2], gy.shape[3]
    gyf = _cl_contig(gy).reshape(-1)
    xs = _EMPTY[dt.char]
    if need_w:
        xc = _saved_x(saved, (N, OH, OW, C), dt)
        if xc is not None:
            xs = xc.reshape(-1)
        else:
            x4, xs, gathered = _sampled_rows(x, sh, sw, OH, OW)
            if gathered:
                _im2col_rows(x4, 0, N * OH * OW, OH, OW, 1, 1, sh, sw, 1, 1, xs)
    kept = saved.weights_krsc if saved is not None else None
    wk = kept if kept is not None and kept.dtype == dt and kept.size == w.size else \
        _weights_krsc(w, dt)
    folded = bool(need_x) and addf.size > 0
    if not need_x:
        gx4 = np.empty((1, 1, 1, C), dtype=dt)
    elif folded:
        gx4 = (addf if addf_writable else addf.copy()).reshape(N, H, W, C)
    elif (sh, sw) == (1, 1):
        gx4 = np.empty((N, H, W, C), dtype=dt)
    else:
        gx4 = np.zeros((N, H, W, C), dtype=dt)
    strided = (sh, sw) != (1, 1)
    dxs = np.empty(N * OH * OW * C if (need_x and strided) else 0, dtype=dt)
    gw = np.empty((K, C, 1, 1) if need_w else 0, dtype=dt)
    with _single_blas:
        conv1x1_cl.backward(xs, wk, gyf, sh, sw, OH, OW, bool(need_x), bool(need_w),
                            folded or strided, gw.reshape(-1), gx4, dxs,
                            numba.get_num_threads())
    return (gx4.transpose(0, 3, 1, 2) if need_x else None), (gw if need_w else None), folded


def _bias_grad_any(gy, dt):
    N, K, OH, OW = gy.shape
    gb = np.empty(K, dtype=dt)
    if gy.size == 0:
        gb[...] = 0
    elif is_channels_last(gy):
        sum_rows(gy.transpose(0, 2, 3, 1).reshape(-1), N * OH * OW, K, gb, numba.get_num_threads())
    else:
        _bias_grad(np.ascontiguousarray(gy).reshape(N, K, OH * OW), gb)
    return gb


def conv2d_backward(x, w, gy, stride, padding, dilation, need_x, need_w, need_b, wf=None,
                    saved=None, gx_addend=None, addend_writable=False):
    """Gradients (gx, gw, gb) of conv2d; entries not needed are None.

    ``wf``: the weight layout returned by ``conv2d(..., return_weights=True)`` (saves
    one weight-sized transpose per call); computed here when None.  ``saved``: what
    ``conv2d(..., keep_x=True)`` returned (its weights stand in for ``wf``).
    ``gx_addend``: None, or an array of x's shape that gx then includes (gx = dX +
    gx_addend, a new array; gx_addend is only read).  The im2col path adds it while
    copying dX out of its padded buffers; the other paths add it afterwards.
    ``addend_writable``: gx_addend may instead be updated in place and returned, as
    unpadded 1x1 convolutions do with a gx_addend in their layout (channels-last, or NCHW on
    the NCHW 1x1 path): they add dX only at the pixels their stride reads, instead of
    writing all of gx.

    gx has the layout of the path (channels-last storage on the GEMM paths, NCHW on the
    NCHW 1x1 path)."""
    dt = _float_dtype(x.dtype)
    conf = _pairs(stride, padding, dilation)
    st, pd = conf[0], conf[1]
    if (need_x or need_w) and x.size and gy.size and _nchw_1x1(x, w, padding, dt):
        gx, gw, folded = _conv1x1_nchw_backward(x, w, gy, stride, need_x, need_w, saved,
                                                gx_addend, addend_writable)
        gb = _bias_grad_any(np.asarray(gy, dtype=dt), dt) if need_b else None
    elif (need_x or need_w) and x.size and gy.size and \
            _cl_units_1x1(x, w, st, pd, gy.shape[2] * gy.shape[3], dt):
        gx, gw, folded = _conv1x1_cl_units_backward(x, w, gy, st, need_x, need_w, saved,
                                                    gx_addend, addend_writable)
        gb = _bias_grad_any(gy, dt) if need_b else None
    elif (need_x or need_w) and conv3x3_cl.applies(x, w, gy, *conf):
        gx, gw, folded = _conv3x3_cl_backward(x, w, gy, need_x, need_w, wf, saved, gx_addend,
                                              addend_writable)
        gb = _bias_grad_any(gy, dt) if need_b else None
    elif (need_x or need_w) and conv3x3_rows.applies(x, w, gy, *conf):
        gx, gw, folded = conv3x3_rows.backward(x, w, gy, need_x, need_w, gx_addend,
                                               addend_writable)
        gb = _bias_grad_any(gy, dt) if need_b else None
    elif (need_x or need_w) and conv_direct_cl.backward_applies(x, w, gy, *conf, need_x):
        gx, gw, folded = _direct_cl_backward(x, w, gy, pd, need_x, need_w, wf, saved, gx_addend,
                                             addend_writable)
        gb = _bias_grad_any(gy, dt) if need_b else None
    elif need_w and conv_direct_rows.backward_applies(x, w, gy, *conf, need_x):
        gx, gw, folded = None, _direct_rows_backward(x, w, gy, pd, saved), False
        gb = _bias_grad_any(gy, dt) if need_b else None
    else:
        addf = _EMPTY[dt.char] if gx_addend is None or not need_x else \
            _cl_flat(gx_addend, x.shape, dt)
        writable = addf.size > 0 and writable_in_place(gx_addend, addend_writable, x, gy)
        gx, gw, gb, folded = _conv2d_backward(x, w, gy, conf, dt, need_x, need_w, need_b, wf,
                                              saved, addf, writable)
    if gx_addend is not None and gx is not None and not folded:
        _add_into(gx, gx_addend)
    return gx, gw, gb


def _conv3x3_cl_backward(x, w, gy, need_x, need_w, wf, saved, gx_addend, addend_writable):
    """conv3x3_cl's backward from x's padded channels-last copy and the (R*S*C, K) weights
    (the forward's, when kept or passed as ``wf``)."""
    N, C, H, W = x.shape
    xp = _saved_x(saved, (N, H + 2, W + 2, C), np.float32)
    xp = _padded(x, 1, 1, 0) if xp is None else xp.reshape(-1)
    if wf is None and saved is not None:
        wf = saved.weights
    if wf is None or wf.dtype != np.float32 or wf.size != w.size:
        wf = _weights_rsck(w, np.float32)
    return conv3x3_cl.backward(xp, wf, gy, N, C, H, W, w.shape[0], need_x, need_w, gx_addend,
                               addend_writable)


def _direct_cl_backward(x, w, gy, padding, need_x, need_w, wf, saved, gx_addend,
                        addend_writable):
    """conv_direct_cl's backward from x's padded channels-last copy (the forward's, when
    kept), the (R*S*C, K) weights (the forward's, when kept or passed as ``wf``) and dY
    channels-last, its rows zero-padded by S - 1 columns when dX is needed."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    ph, pw = padding
    slack = conv_direct_cl.slack_pixels(C)
    xp = _saved_x(saved, (((N * (H + 2 * ph) * (W + 2 * pw)) + slack) * C,), np.float32)
    if xp is None:
        xp = _padded(x, ph, pw, slack)
    if wf is None and saved is not None:
        wf = saved.weights
    if wf is None or wf.dtype != np.float32 or wf.size != w.size:
        wf = _weights_rsck(w, np.float32)
    gyb = _padded(gy, 0, S - 1, 0) if need_x else _cl_contig(gy).reshape(-1)
    return conv_direct_cl.backward(xp, wf, gyb, need_x, N, C, H, W, K, R, S, ph, pw, need_x,
                                   need_w, gx_addend, addend_writable)


def _direct_rows_backward(x, w, gy, padding, saved):
    """conv_direct_rows' dW from x's padded copy (the forward's, when kept) and dY."""
    N, _, H, W = x.shape
    K, _, R, S = w.shape
    ph, pw = padding
    Hp, Wp = H + 2 * ph, W + 2 * pw
    xp = _saved_x(saved, (N * Hp * Wp + conv_direct_rows.SLACK,), np.float32)
    if xp is None:
        xp = _padded(x, ph, pw, conv_direct_rows.SLACK)
    return conv_direct_rows.backward(xp, gy, N, Hp, Wp, K, R, S)


# Empty float arrays by dtype char: "no addend", and placeholders for unused array arguments.
_EMPTY = {np.dtype(t).char: np.empty(0, dtype=t) for t in (np.float32, np.float64)}


def _cl_flat(a, shape, dt):
    """a's (N*H*W*C,) channels-last storage when a (NCHW-shaped) is stored that way with
    dtype dt and the given shape; otherwise an empty array (no fused addend)."""
    if a.shape == tuple(shape) and a.dtype == dt and is_channels_last(a):
        return a.transpose(0, 2, 3, 1).reshape(-1)
    return _EMPTY[dt.char]


def _add_into(gx, a):
    """gx += a in place; gx is this call's own fresh dX."""
    if gx.dtype == a.dtype and gx.strides == a.strides and gx.shape == a.shape and \
            (gx.flags.c_contiguous or is_channels_last(gx)):
        order = (0, 1, 2, 3) if gx.flags.c_contiguous else (0, 2, 3, 1)
        flat = gx.transpose(order).reshape(-1)
        add_flat(flat, a.transpose(order).reshape(-1), flat)
    else:
        np.add(gx, a, out=gx, casting="unsafe")


def _conv2d_backward(x, w, gy, conf, dt, need_x, need_w, need_b, wf, saved, addf,
                     addf_writable):
    """conv2d_backward's work (``conf``: the int pairs of stride, padding and dilation; ``dt``:
    the float dtype computed in); also returns whether gx already includes ``addf`` (with
    ``addf_writable``, gx may be addf's own storage, updated in place)."""
    (sh, sw), (ph, pw), (dh, dw) = conf
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    gy = np.asarray(gy, dtype=dt)
    OH, OW = gy.shape[2], gy.shape[3]
    if wf is None and saved is not None:
        wf = saved.weights
    gb = _bias_grad_any(gy, dt) if need_b else None
    gx = gw = None
    if not (need_x or need_w):
        return gx, gw, gb, False
    if gy.size == 0 or x.size == 0:
        return (np.zeros((N, C, H, W), dt) if need_x else None,
                np.zeros((K, C, R, S), dt) if need_w else None, gb, False)
    if C * K <= _DIRECT_MAX_CK_BWD:
        x = np.ascontiguousarray(x, dtype=dt)
        w = np.ascontiguousarray(w, dtype=dt)
        gy4 = np.ascontiguousarray(gy)
        Hp, Wp = H + 2 * ph, W + 2 * pw
        xp = np.empty((N, C, Hp, Wp), dtype=dt)
        if sh == 1 and sw == 1:
            gext = np.empty((N, K, (OH - 1) * Wp + OW), dtype=dt)
            _gy_ext(gy4, Wp, gext)
            if need_w:
                _pad_nchw(x, ph, pw, xp)
                gw = np.empty((K, C, R, S), dtype=dt)
                _direct_gw_ext(xp, gext, dh, dw, np.zeros(1, dtype=dt), gw)
            if need_x:
                gx = np.empty((N, C, H, W), dtype=dt)
                _direct_gx_ext(w, gext, dh, dw, ph, pw, Hp, Wp, gx)
            return gx, gw, gb, False
        if need_w:
            _pad_nchw(x, ph, pw, xp)
            gw = np.empty((K, C, R, S), dtype=dt)
            _direct_gw(xp, gy4, sh, sw, dh, dw, gw)
        if need_x:
            gx = np.empty((N, C, H, W), dtype=dt)
            _direct_gx(w, gy4, sh, sw, dh, dw, ph, pw, xp, gx)
        return gx, gw, gb, False
    x = np.asarray(x, dtype=dt)
    if USE_WINOGRAD and winograd.applicable(N, C, K, R, S, OH, OW, (sh, sw), (dh, dw)):
        npos = winograd.variant(N, C, K, OH, OW, (sh, sw))
        U = wf if (wf is not None and wf.dtype == dt and wf.shape == (npos, K, C)) else \
            winograd.transform_weights(w, dt, npos)
        gx4 = np.empty((N, H, W, C) if need_x else (1, 1, 1, C), dtype=dt)
        xc = _saved_x(saved, (N, H, W, C), dt)
        with _single_blas, _dynamic_schedule():
            gw = winograd.backward(_cl_contig(x) if xc is None else xc, _cl_contig(gy), U, ph, pw,
                                   need_x, need_w, gx4, addf)
        return (gx4.transpose(0, 3, 1, 2) if need_x else None), gw, gb, addf.size > 0
    if _whole_1x1(w, (ph, pw), N * OH * OW):
        gx, gw, folded = _conv1x1_cl_backward(x, w, gy, sh, sw, need_x, need_w, saved, addf,
                                              addf_writable, dt)
        return gx, gw, gb, folded
    shift = _use_shift(N, C, H, W, K, R, S, (sh, sw), (ph, pw), (dh, dw))
    if (_GEMM_PATH == "chunked" or shift) and (wf is None or wf.dtype != dt or wf.size != w.size):
        wf = _weights_rsck(w, dt) if need_x else np.zeros(R * S * C * K, dtype=dt)
    nt = numba.get_num_threads()
    Hp, Wp = H + 2 * ph, W + 2 * pw
    RSC = R * S * C
    gx4 = np.empty((N, H, W, C) if need_x else (1, 1, 1, C), dtype=dt)
    if _GEMM_PATH == "chunked":
        gwf = _bwd_chunked(x, wf, gy, need_x, need_w, N, C, H, W, K, R, S, sh, sw, ph, pw, dh, dw,
                           OH, OW, gx4)
        if need_w:
            gw = _weights_grad_kcrs(gwf, K, C, R, S)
        if need_x:
            gx = gx4.transpose(0, 3, 1, 2)
        return gx, gw, gb, False
    gwacc = np.empty((nt, RSC * K) if need_w else (nt, 1), dtype=dt)
    RSCw = 0
    folded = False
    if shift:
        max_off = (R - 1) * dh * Wp + (S - 1) * dw
        xbuf = _padded(x, ph, pw, max_off + 1) if need_w else np.empty(1, dtype=dt)
        Q = N * Hp * Wp
        gbuf = np.empty((max_off + Q + 1) * K, dtype=dt)
        if gy.flags.c_contiguous and not is_channels_last(gy):
            _fill_ext_from_nchw(gy, max_off, Hp, Wp, gbuf)
        else:
            _fill_ext(gy.transpose(0, 2, 3, 1), max_off, Hp, Wp, gbuf)
        T = _shift_rows(Q, C, K, x.itemsize, nt)
        with _single_blas:
            _bwd_shift(xbuf, wf, gbuf, max_off, N, Hp, Wp, C, K, R, S, dh, dw, ph, pw, H, W,
                       T, nt, bool(need_x), bool(need_w), gx4.reshape(-1), gwacc)
    else:
        direct = R == 1 and S == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
        sampled = _sampled_1x1(x, R, S, (sh, sw), (ph, pw))
        xc = _saved_x(saved, (N, OH, OW, C) if sampled else (N, Hp, Wp, C), dt)
        if sampled:
            xp = (_sampled_cl(x, sh, sw, OH, OW) if xc is None else xc) if need_w else \
                np.empty((N, OH, OW, C), dtype=dt)
        elif direct:
            xp = (_cl_contig(x) if xc is None else xc) if need_w else np.empty((N, H, W, C), dtype=dt)
        elif need_w:
            xp = _padded(x, ph, pw, 0).reshape(N, Hp, Wp, C) if xc is None else xc
        else:
            xp = np.empty((N, Hp, Wp, C), dtype=dt)   # only its shape is used
        NP = N * OH * OW
        split_w = (need_w and RSC * K * x.itemsize > _GW_SPLIT_K_MIN_W
                   and NP * RSC * x.itemsize <= _GW_SPLIT_K_MAX_COL)
        gy_nchw = (not split_w and OH * OW >= _GY_NCHW_MIN_PIXELS and gy.flags.c_contiguous
                   and not is_channels_last(gy))
        gyf = gy.reshape(-1) if gy_nchw else _cl_contig(gy).reshape(-1)
        if split_w:
            # Deep layers (weights of several MB, few pixels): dW as one GEMM over the
            # whole batch's column matrix, split by output channel between the threads.
            col = _scratch(NP * RSC, dt)
            if sampled:
                _im2col_rows(xp, 0, NP, OH, OW, 1, 1, 1, 1, 1, 1, col)
            else:
                _im2col_rows(xp, 0, NP, OH, OW, R, S, sh, sw, dh, dw, col)
            gwt = np.empty(K * RSC, dtype=dt)
            with _single_blas:
                _gemm_tn_rows_par(col, gyf, gwt, RSC, K, NP, nt)
            gw = np.empty((K, C, R, S), dtype=dt)
            _transpose_each(gwt.reshape(K, R * S, C), gw.reshape(K, C, R * S))
            need_w = False
        T, g = _plan(N, OH * OW, nt, RSC, K, x.itemsize)
        if RSC * K * x.itemsize <= _BALANCE_MAX_W:
            g = min(g, max(1, -(-N // (_BALANCE * nt))))
        T = min(T, g * OH * OW)
        # With NCHW dY, dW^T = dY @ columns runs in small_gemm when the columns can be
        # zero-padded to its shape (the stem's 27 -> 32; BENCHMARKS_perf.md, change 96).
        if need_w and gy_nchw and not (direct or sampled) and dt == np.float32:
            RSCw = small_gemm.padded_columns(False, K, RSC, T)
            RSCw = RSCw if RSCw > RSC else 0
        gwacc = np.zeros((nt, max(RSC, RSCw) * K) if need_w else (nt, 1), dtype=dt)
        x_mode = _DX_DIRECT if direct else _DX_PADDED
        if need_x and addf_writable and R == 1 and S == 1 and ph == 0 and pw == 0 and not direct:
            x_mode = _DX_SCATTER_ADD
            gx4 = addf.reshape(N, H, W, C)
        # dX GEMMs with a few columns short of a multiple of 16 (the stem's 27) run faster
        # in small_gemm on zero-padded columns (BENCHMARKS_perf.md, change 93).  Big
        # weights keep the forward's unpadded (K, R*S*C) array instead.
        RSCd = RSC
        if need_x and x_mode == _DX_PADDED and dt == np.float32 and not _big_weights(w, dt):
            RSCd = small_gemm.padded_columns(gy_nchw, T, RSC, K)
        krsc = RSCd > RSC or _big_weights(w, dt) or not gy_nchw
        if not need_x:
            wd = _EMPTY[dt.char]
        elif RSCd > RSC:
            wd = _weights_krsc_padded(w, dt, RSCd)
        elif krsc:
            kept = saved.weights_krsc if saved is not None else None
            wd = kept if kept is not None and kept.dtype == dt and kept.size == w.size else \
                _weights_krsc(w, dt)
        else:
            wd = wf if wf is not None and wf.dtype == dt and wf.size == w.size else \
                _weights_rsck(w, dt)
        with _single_blas, _dynamic_schedule():
            _bwd_cols(xp, wd, krsc, RSCd, RSCw, gyf, gy_nchw, K, R, S, sh, sw, dh, dw, ph, pw,
                      OH, OW, T, g, direct or sampled, x_mode, nt, bool(need_x), bool(need_w),
                      gx4, gwacc, addf, T * K * x.itemsize <= _PREFETCH_DY_MAX_BYTES)
        folded = bool(need_x) and x_mode != _DX_DIRECT and addf.size > 0
    if need_w:
        gw = _weights_grad_kcrs(gwacc, K, C, R, S) if RSCw == 0 else \
            _weights_grad_from_kx(gwacc, K, C, R, S, RSCw)
    if need_x:
        gx = gx4.transpose(0, 3, 1, 2)
    return gx, gw, gb, folded


# Weight layouts of the im2col path.  OpenBLAS runs these GEMMs fastest with the weights
# untransposed: (R*S*C, K) for the forward, (K, R*S*C) for dX (the stem's dX GEMMs 1.6x,
# its row 1.11-1.16x).  So the forward uses _weights_rsck and the backward makes
# _weights_krsc, except with NCHW dY (itself a transposed operand: the stem row was then
# 0.95-0.97x) and for weights above this size, whose forward reads the (K, R*S*C) layout
# transposed too: it is 3.4x cheaper to make (0.39 against 1.33 ms for 256->512 3x3) and
# the backward reuses it, and for 1x1 weights, whose (K, C) layout is w itself (forward and
# backward then copy no weights; with _sum_transposed for dW, the channels-last 1x1 stride-2
# rows ran 1.11x (256->512), 1.03x (128->256), 1.02x (64->128) faster: BENCHMARKS_perf.md,
# change 98).
_KRSC_WEIGHTS_MIN = 2 << 20


def _big_weights(w, dt):
    """True when w (K, C, R, S) in dtype dt is bigger than _KRSC_WEIGHTS_MIN bytes."""
    return w.size * np.dtype(dt).itemsize > _KRSC_WEIGHTS_MIN

# _bwd_cols prefetches each next tile's channels-last dY while it copies the current
# tile's columns when a dY tile is at most this big (it must stay in L2 until used).
_PREFETCH_DY_MAX_BYTES = 128 << 10

# NCHW dY with at least this many pixels per image is read in place by _bwd_cols (tiles
# then stop at image boundaries); smaller images are copied to channels-last first.
# Measured, NCHW rows: 128->256 1x1 stride 2 (64 pixels) 1.08-1.09x faster in place; 256->512
# 1x1 stride 2 (16 pixels) 0.84x in place, so copied.
_GY_NCHW_MIN_PIXELS = 64

# dW by output-channel split over the whole batch (see conv2d_backward) when the weight
# gradient is bigger than this and the batch's column matrix is at most _MAX_COL bytes.
# Paired A/Bs (BENCHMARKS_perf.md, change 97): 3x3 128->256 stride 2 (1.2 MB of weights)
# 1.02-1.06x channels-last and 1.09-1.14x NCHW at batch 16-64 when split; 3x3 64->128
# stride 2 (0.3 MB) 0.94x / 0.82x and 1x1 256->512 (0.5 MB) 0.99-1.02x, so not below 1 MB.
_GW_SPLIT_K_MIN_W = 1 << 20
_GW_SPLIT_K_MAX_COL = 32 << 20
