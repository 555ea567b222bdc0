"""Big 2-D matmuls and linear layers split between the Numba threads, one BLAS thread each
(minigrad.cpu.kernels.gemm_threads, taken by CPUBackend.matmul / linear from
backend._SMALL_GEMM multiply-adds).  Checked against float64 NumPy for transposed views, both
dtypes, bias, shares with no rows or columns, and through autograd; and the context that holds
every OpenBLAS the kernels reach (SciPy's and NumPy's) to one thread."""

import numba
import numpy as np
import pytest

import minigrad as mg
from minigrad.cpu import backend, conv, kernels
from minigrad.cpu.backend import CPUBackend
from minigrad.cpu.conv import _single_blas


def tol(dt):
    return dict(rtol=2e-4, atol=2e-3) if dt == np.float32 else dict(rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(300, 200, 250), (3, 5000, 700), (700, 5000, 3)])
def test_matmul_of_views_matches_numpy(dtype, shape):
    M, K, N = shape
    assert M * K * N >= backend._SMALL_GEMM
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    be = CPUBackend()
    # C-contiguous, transposed views of C-contiguous arrays (read transposed, no copy),
    # and a strided view (copied)
    for av in (a, np.ascontiguousarray(a.T).T, np.pad(a, ((0, 0), (0, 1)))[:, :K]):
        for bv in (b, np.ascontiguousarray(b.T).T):
            out = be.matmul(av, bv)
            assert out.dtype == dtype and out.shape == (M, N)
            np.testing.assert_allclose(out, ref, **tol(dtype))


@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_numpy(bias):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((129, 2304)).astype(np.float32)
    w = rng.standard_normal((1000, 2304)).astype(np.float32)
    b = rng.standard_normal(1000).astype(np.float32) if bias else None
    out = CPUBackend().linear(x, w, b)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    if bias:
        ref += b
    np.testing.assert_allclose(out, ref, **tol(np.float32))


@pytest.mark.parametrize("nt", [1, 2, 5])
@pytest.mark.parametrize("by_rows", [True, False])
def test_kernel_with_more_threads_than_rows_or_columns(nt, by_rows):
    """The split leaves some shares empty when a dimension is shorter than nt."""
    rng = np.random.default_rng(2)
    M, K, N = (3, 40, 2) if by_rows else (2, 40, 3)   # a is the bigger operand iff by_rows
    a = rng.standard_normal((M, K))
    b = rng.standard_normal((K, N))
    bias = rng.standard_normal(N)
    for ta in (False, True):
        for tb in (False, True):
            out = np.full((M, N), np.nan)
            with _single_blas:
                kernels.gemm_threads(np.ascontiguousarray(a.T) if ta else a, ta,
                                     np.ascontiguousarray(b.T) if tb else b, tb, bias, True,
                                     out, nt)
            np.testing.assert_allclose(out, a @ b + bias, rtol=1e-12, atol=1e-12)


def test_switch_off_gives_the_same_values(monkeypatch):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((256, 300))
    b = rng.standard_normal((300, 256))
    be = CPUBackend()
    on = be.matmul(a, b)
    monkeypatch.setattr(backend, "USE_GEMM_THREADS", False)
    np.testing.assert_allclose(on, be.matmul(a, b), rtol=1e-12, atol=1e-12)


def test_linear_gradients_through_autograd():
    """Forward and both backward products of a big Linear take gemm_threads (the weight
    gradient with a transposed operand)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((128, 2304))
    w = rng.standard_normal((1024, 2304))
    b = rng.standard_normal(1024)
    g = rng.standard_normal((128, 1024))
    xm, wm, bm = (mg.tensor(v, requires_grad=True) for v in (x, w, b))
    y = mg.nn.functional.linear(xm, wm, bm)
    y.backward(mg.tensor(g))
    np.testing.assert_allclose(y.numpy(), x @ w.T + b, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(xm.grad.numpy(), g @ w, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(wm.grad.numpy(), g.T @ x, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(bm.grad.numpy(), g.sum(axis=0), rtol=1e-10, atol=1e-9)


def test_one_numba_thread():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((256, 300)).astype(np.float32)
    b = rng.standard_normal((300, 256)).astype(np.float32)
    prev = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        out = CPUBackend().matmul(a, b)
    finally:
        numba.set_num_threads(prev)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, **tol(np.float32))


def test_single_blas_holds_scipys_and_numpys_openblas_to_one_thread():
    import scipy.linalg.cython_blas as scipy_blas
    try:
        from numpy._core import _multiarray_umath as numpy_core
    except ImportError:  # NumPy 1.x
        from numpy.core import _multiarray_umath as numpy_core

    # NumPy's wheel and SciPy's each ship an OpenBLAS: np.matmul calls NumPy's
    controls = [conv._thread_controls(f) for f in (numpy_core.__file__, scipy_blas.__file__)]
    if None in controls:
        pytest.skip("NumPy or SciPy without the OpenBLAS of their wheels")
    before = [get() for get, _ in controls]
    try:
        for _, set_ in controls:
            set_(2)
        with _single_blas:
            assert [get() for get, _ in controls] == [1, 1]
        assert [get() for get, _ in controls] == [2, 2]
    finally:
        for (_, set_), n in zip(controls, before):
            set_(n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nt", [2, 3])
@pytest.mark.parametrize("transb", [False, True])
def test_weight_gradient_split_along_the_reduction(dtype, nt, transb):
    """A transposed, B the bigger operand and a reduction of at least SPLIT_K_MIN_RATIO times
    A's rows (dY^T @ x of a Linear layer with more inputs than outputs): the threads share the
    reduction (an odd length here) and their partial products are summed, bias included."""
    rng = np.random.default_rng(6)
    M, N = 40, 300
    K = kernels.SPLIT_K_MIN_RATIO * M + 7
    g = rng.standard_normal((K, M)).astype(dtype)
    x = rng.standard_normal((K, N)).astype(dtype)
    bias = rng.standard_normal(N).astype(dtype)
    ref = g.T.astype(np.float64) @ x.astype(np.float64) + bias
    out = np.full((M, N), np.nan, dtype)
    with _single_blas:
        kernels.gemm_threads(g, True, np.ascontiguousarray(x.T) if transb else x, transb, bias,
                             True, out, nt)
    np.testing.assert_allclose(out, ref, **tol(dtype))
    # the same product through the backend (the weight gradient's call)
    np.testing.assert_allclose(CPUBackend().matmul(g.T, x), ref - bias, **tol(dtype))
