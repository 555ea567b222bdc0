"""BLAS ``gemm`` with ``beta`` and leading dimensions, callable from Numba ``njit`` code.

Numba's ``np.dot`` always overwrites its output and needs contiguous operands; the
convolution kernels need ``C += A @ B`` on strided row blocks (shifted views of a
padded channels-last image).  SciPy ships the Fortran BLAS through
``scipy.linalg.cython_blas``; its ``sgemm``/``dgemm`` entry points are registered
with LLVM under private names (``llvmlite.binding.add_symbol``) and declared as
Numba external functions, so jitted code calls them directly and the functions
that use them stay cacheable (the address is resolved when the code is linked,
in every process, not baked into the cache).

``gemm_rm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`` is the
*row-major* interface: ``C[m, n] = alpha * op(A) @ op(B) + beta * C`` where the
arrays are 1-D views whose first element is the top-left of each matrix and
``lda``/``ldb``/``ldc`` are row strides in elements.
"""

import ctypes

import llvmlite.binding as _llvm
import numpy as np
from numba import njit, types
from numba.extending import overload

from . import small_gemm

_SYMBOLS = {"sgemm": "minigrad_cblas_sgemm", "dgemm": "minigrad_cblas_dgemm"}


def _register():
    import scipy.linalg.cython_blas as cb

    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype = ctypes.c_void_p
    get_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    for name, sym in _SYMBOLS.items():
        cap = cb.__pyx_capi__[name]
        addr = get_ptr(cap, get_name(cap))
        _llvm.add_symbol(sym, addr)


_register()

_P = types.voidptr
_sig = types.void(_P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P)
_sgemm = types.ExternalFunction(_SYMBOLS["sgemm"], _sig)
_dgemm = types.ExternalFunction(_SYMBOLS["dgemm"], _sig)


def gemm_rm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Row-major GEMM on 1-D array views (see the module docstring); jitted code only."""
    raise NotImplementedError("gemm_rm is callable from njit code only")


def _make_impl(fn, dt):
    def impl(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        # Row-major C (m x n) = op(A) op(B)  <=>  column-major C^T (n x m) = op(B)^T op(A)^T,
        # so Fortran gets (B, A) swapped with m and n swapped.
        ch = np.empty(2, np.uint8)
        ch[0] = 84 if transb else 78   # 'T' / 'N'
        ch[1] = 84 if transa else 78
        iv = np.empty(6, np.int32)
        iv[0] = n
        iv[1] = m
        iv[2] = k
        iv[3] = ldb
        iv[4] = lda
        iv[5] = ldc
        sv = np.empty(2, dt)
        sv[0] = alpha
        sv[1] = beta
        fn(ch[0:1].ctypes, ch[1:2].ctypes, iv[0:1].ctypes, iv[1:2].ctypes, iv[2:3].ctypes,
           sv[0:1].ctypes, b.ctypes, iv[3:4].ctypes, a.ctypes, iv[4:5].ctypes,
           sv[1:2].ctypes, c.ctypes, iv[5:6].ctypes)
    return impl


@overload(gemm_rm, jit_options={"cache": True})
def _gemm_rm_overload(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    if not isinstance(c, types.Array):
        return None
    if c.dtype == types.float32:
        if not small_gemm.SUPPORTED:
            return _make_impl(_sgemm, np.float32)

        def impl(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
            _sgemm_either(small_gemm.preferred(transa, transb, m, n, k), transa, transb, m, n,
                          k, alpha, a, lda, b, ldb, beta, c, ldc)
        return impl
    if c.dtype == types.float64:
        return _make_impl(_dgemm, np.float64)
    return None


if small_gemm.SUPPORTED:
    _sgemm_openblas = njit(inline="always")(_make_impl(_sgemm, np.float32))

    @njit(inline="always")
    def _sgemm_either(small, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                      pack_a=False):
        """float32 gemm_rm in small_gemm when ``small`` (and alpha is 1, its switch is on
        and A's rows do not alias in L1: small_gemm.a_rows_alias), else in OpenBLAS;
        ``pack_a``: small_gemm packs a transposed A first (small_gemm.PACK_A)."""
        if (small and alpha == 1.0 and small_gemm.switch_on()
                and not small_gemm.a_rows_alias(transa, lda)):
            code = small_gemm.PACK_A if (pack_a and transa) else (1 if transa else 0)
            small_gemm.sgemm_entry(np.int32(code), np.int32(transb), m, n, k, a.ctypes,
                                   lda, b.ctypes, ldb, np.float32(beta), c.ctypes, ldc)
        else:
            _sgemm_openblas(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


def gemm_rm_select(small, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """gemm_rm with the caller's choice of kernel instead of small_gemm.preferred's:
    small_gemm when ``small`` is true (float32, on CPUs small_gemm supports, while its
    switch is on), else OpenBLAS; for products whose shapes were measured apart from the
    im2col tiles (kernels.batched_gemm); jitted code only."""
    raise NotImplementedError("gemm_rm_select is callable from njit code only")


@overload(gemm_rm_select, jit_options={"cache": True})
def _gemm_rm_select_overload(small, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c,
                             ldc):
    if not isinstance(c, types.Array):
        return None
    if c.dtype == types.float32 and small_gemm.SUPPORTED:
        def impl(small, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
            _sgemm_either(small, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return impl
    if c.dtype in (types.float32, types.float64):
        def impl_blas(small, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
            gemm_rm_blas(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return impl_blas
    return None


def gemm_rm_whole(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """gemm_rm for a whole product or a thread's share of one (kernels.gemm_threads,
    conv1x1_cl), not an im2col tile: small_gemm where ``small_gemm.preferred_whole`` says
    so (packing a transposed A first where ``small_gemm.packs_a`` does), else OpenBLAS;
    jitted code only."""
    raise NotImplementedError("gemm_rm_whole is callable from njit code only")


@overload(gemm_rm_whole, jit_options={"cache": True})
def _gemm_rm_whole_overload(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    if not isinstance(c, types.Array):
        return None
    if c.dtype == types.float32 and small_gemm.SUPPORTED:
        def impl(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
            _sgemm_either(small_gemm.preferred_whole(transa, transb, m, n, k), transa, transb,
                          m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                          small_gemm.packs_a(transa, n, lda))
        return impl
    if c.dtype in (types.float32, types.float64):
        def impl_blas(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
            gemm_rm_blas(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return impl_blas
    return None


def gemm_rm_blas(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """gemm_rm always through OpenBLAS, never small_gemm: gemm_rm_select's path when its
    caller chose OpenBLAS; jitted code only."""
    raise NotImplementedError("gemm_rm_blas is callable from njit code only")


@overload(gemm_rm_blas, jit_options={"cache": True})
def _gemm_rm_blas_overload(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    if not isinstance(c, types.Array):
        return None
    if c.dtype == types.float32:
        return _make_impl(_sgemm, np.float32)
    if c.dtype == types.float64:
        return _make_impl(_dgemm, np.float64)
    return None


@njit(cache=True)
def _selftest(a, b, c):
    m, k = a.shape
    n = b.shape[1]
    gemm_rm(False, False, m, n, k, 1.0, a.reshape(-1), k, b.reshape(-1), n, 1.0, c.reshape(-1), n)


def selftest():
    """Check C += A @ B against NumPy for both dtypes (used by the tests)."""
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        a = rng.standard_normal((5, 3)).astype(dt)
        b = rng.standard_normal((3, 4)).astype(dt)
        c = rng.standard_normal((5, 4)).astype(dt)
        ref = c + a @ b
        _selftest(a, b, c)
        assert np.allclose(c, ref, rtol=1e-5, atol=1e-5), (c, ref)
    return True
