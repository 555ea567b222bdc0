"""Batched matmuls on the CPU (CPUBackend._batched_matmul, kernels.batched_gemm): products
shared between the Numba threads, broadcast batch entries and transposed views read in
place, a 2-D right operand folded into one 2-D product, and small_gemm for the shapes
small_gemm.batched_preferred names.  Checked against float64 NumPy, forward and through
autograd (central differences)."""

import contextlib

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigrad as mg
from gradcheck import check_grad
from minigrad.cpu import backend, kernels, small_gemm
from minigrad.cpu.backend import CPUBackend
from minigrad.cpu.conv import _single_blas


@contextlib.contextmanager
def kernel_path(small=True):
    """Every product through kernels.batched_gemm (no size threshold), small_gemm on or off."""
    old = backend._SMALL_GEMM, backend._SMALL_BATCHED, backend.USE_BATCHED_SMALL_GEMM
    backend._SMALL_GEMM, backend._SMALL_BATCHED, backend.USE_BATCHED_SMALL_GEMM = 0, 0, small
    try:
        yield
    finally:
        backend._SMALL_GEMM, backend._SMALL_BATCHED, backend.USE_BATCHED_SMALL_GEMM = old


def tol(dt):
    return dict(rtol=1e-4, atol=1e-4) if dt == np.float32 else dict(rtol=1e-11, atol=1e-11)


def views(x):
    """x as stored, as a transposed view of a C-contiguous array, as a view with padded rows,
    as a slice of every other batch entry (all read in place), and with reversed columns
    (copied)."""
    t = np.ascontiguousarray(np.swapaxes(x, -1, -2)).swapaxes(-1, -2)
    pad = [(0, 0)] * (x.ndim - 1) + [(0, 1)]
    every_other = np.repeat(x, 2, axis=0)[::2] if x.ndim > 2 else x
    return x, t, np.pad(x, pad)[..., :x.shape[-1]], every_other, np.ascontiguousarray(x[..., ::-1])[..., ::-1]


batches = st.sampled_from([(), (1,), (2,), (3,), (2, 1), (1, 3), (2, 3), (4, 1, 2)])


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 20), k=st.integers(1, 20), n=st.integers(1, 40),
       ba=batches, bb=batches, dtype=st.sampled_from([np.float32, np.float64]),
       small=st.booleans(), seed=st.integers(0, 1000))
def test_matches_numpy_for_broadcast_batches_and_views(m, k, n, ba, bb, dtype, small, seed):
    try:
        np.broadcast_shapes(ba, bb)
    except ValueError:
        return
    if not ba and not bb:
        return
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(ba + (m, k)).astype(dtype)
    b = rng.standard_normal(bb + (k, n)).astype(dtype)
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    be = CPUBackend()
    with kernel_path(small):
        for av in views(a):
            for bv in views(b):
                out = be.matmul(av, bv)
                assert out.shape == ref.shape and out.dtype == dtype
                np.testing.assert_allclose(out, ref, **tol(dtype))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [((3, 7, 5), (3, 5, 9)),        # 3 products: row blocks
                                   ((1, 2, 5), (4, 5, 3)),        # 2 rows, 4 products
                                   ((1, 1, 4), (3, 4, 16)),       # one row: empty blocks
                                   ((40, 6, 5), (1, 5, 32))])     # many products
def test_thread_counts_and_row_blocks(threads, shape):
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal(s).astype(np.float32) for s in shape)
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    old = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with kernel_path():
            np.testing.assert_allclose(CPUBackend().matmul(a, b), ref, **tol(np.float32))
    finally:
        numba.set_num_threads(old)


@pytest.mark.parametrize("transa", [False, True])
@pytest.mark.parametrize("transb", [False, True])
@pytest.mark.parametrize("splits", [1, 2, 5])
@pytest.mark.parametrize("small", [False, True])
def test_kernel_offsets_leading_dimensions_transposes_and_splits(transa, transb, splits, small):
    """out[i] = op(A_i) @ op(B_i), A_i the matrix at offset ai[i] of the flat a with leading
    dimension lda (wider than the matrix: padded rows), repeated offsets included; more row
    blocks than rows leaves some blocks empty."""
    rng = np.random.default_rng(4)
    M, K, N = 4, 6, 32
    a = rng.standard_normal((2, K, M + 3) if transa else (2, M, K + 3)).astype(np.float32)
    b = rng.standard_normal((3, N, K + 1) if transb else (3, K, N + 1)).astype(np.float32)
    ai = np.array([1, 0, 1, 1], dtype=np.int64)
    bi = np.array([2, 2, 0, 1], dtype=np.int64)
    out = np.full((4, M, N), np.nan, dtype=np.float32)
    with _single_blas:
        kernels.batched_gemm(a.reshape(-1), transa, ai * a[0].size, a.shape[2], b.reshape(-1),
                             transb, bi * b[0].size, b.shape[2], K, out, splits, small)
    for i in range(4):
        x = a[ai[i], :, :M].T if transa else a[ai[i], :, :K]
        y = b[bi[i], :, :K].T if transb else b[bi[i], :, :N]
        np.testing.assert_allclose(out[i], x.astype(np.float64) @ y, **tol(np.float32))


def test_attention_views_are_read_in_place():
    """q, k and v sliced from one fused projection and split into heads (strided, permuted
    views) reach the kernel as offsets into the projection's memory, not as copies; a view
    with reversed columns is copied."""
    b, t, heads, dh = 2, 5, 3, 4
    h = np.random.default_rng(8).standard_normal((b, t, 3 * heads * dh)).astype(np.float32)
    q = h[..., :heads * dh].reshape(b, t, heads, dh).transpose(0, 2, 1, 3)
    kt = h[..., heads * dh:2 * heads * dh].reshape(b, t, heads, dh).transpose(0, 2, 3, 1)
    flat, transposed, ld, offsets = backend._batch_operand(q, (b, heads))
    assert np.shares_memory(flat, h) and not transposed and ld == 3 * heads * dh
    assert offsets.tolist() == [n * t * 3 * heads * dh + i * dh for n in range(b) for i in range(heads)]
    flat, transposed, ld, _ = backend._batch_operand(kt, (b, heads))
    assert np.shares_memory(flat, h) and transposed and ld == 3 * heads * dh
    reversed_cols = np.ascontiguousarray(q[..., ::-1])[..., ::-1]
    assert not np.shares_memory(backend._batch_operand(reversed_cols, (b, heads))[0], reversed_cols)
    ref = np.matmul(q.astype(np.float64), kt)
    with kernel_path():
        np.testing.assert_allclose(CPUBackend().matmul(q, kt), ref, **tol(np.float32))


def test_empty_and_mixed_dtypes():
    be = CPUBackend()
    rng = np.random.default_rng(5)
    with kernel_path():
        for sa, sb in [((2, 0, 3), (2, 3, 4)), ((2, 3, 0), (2, 0, 4)), ((0, 3, 2), (1, 2, 4)),
                       ((2, 3, 2), (2, 2, 0))]:
            a, b = rng.standard_normal(sa), rng.standard_normal(sb)
            out = be.matmul(a.astype(np.float32), b.astype(np.float32))
            assert out.shape == np.matmul(a, b).shape and out.dtype == np.float32
            assert not np.any(out)
        a = rng.standard_normal((3, 4, 5)).astype(np.float32)
        b = rng.standard_normal((3, 5, 6))
        out = be.matmul(a, b)
        assert out.dtype == np.float64
        np.testing.assert_allclose(out, np.matmul(a.astype(np.float64), b), rtol=1e-12)
        ints = be.matmul(np.ones((2, 2, 3), np.int64), np.ones((3, 4), np.int64))
        assert ints.dtype == np.int64 and (ints == 3).all()


def test_2d_right_operand_is_one_product(monkeypatch):
    """(..., M, K) @ (K, N) with a C-contiguous left operand runs as one 2-D product over
    all of a's rows, not as a batch."""
    calls = []
    monkeypatch.setattr(kernels, "batched_gemm", lambda *args: calls.append(args))
    be = CPUBackend()
    rng = np.random.default_rng(6)
    a = rng.standard_normal((4, 3, 50, 60))
    b = rng.standard_normal((60, 70))
    with kernel_path():
        out = be.matmul(a, b)
        np.testing.assert_allclose(out, a @ b, rtol=1e-11)
        assert out.shape == (4, 3, 50, 70) and not calls
        np.testing.assert_allclose(be.matmul(a, b[None]), a @ b, rtol=1e-11)   # (1, K, N)
        assert not calls


def test_big_products_take_the_threaded_kernel(monkeypatch):
    """Above the size threshold the products go to kernels.batched_gemm, below it to NumPy
    (on one BLAS thread)."""
    seen = []
    real = kernels.batched_gemm
    monkeypatch.setattr(kernels, "batched_gemm", lambda *args: seen.append(args[-2:]) or real(*args))
    rng = np.random.default_rng(7)
    a = rng.standard_normal((8, 128, 64)).astype(np.float32)
    b = rng.standard_normal((8, 64, 128)).astype(np.float32)
    assert 8 * 128 * 64 * 128 >= backend._SMALL_GEMM
    out = CPUBackend().matmul(a, b)
    np.testing.assert_allclose(out, np.matmul(a.astype(np.float64), b), **tol(np.float32))
    expect_small = small_gemm.SUPPORTED and small_gemm.enabled()
    nt = numba.get_num_threads()
    if nt > 1:
        assert seen == [(1 if 8 % nt == 0 else min(nt, 128), expect_small)]
    seen.clear()
    CPUBackend().matmul(a[:, :4, :4], b[:, :4, :4])
    assert not seen


@pytest.mark.skipif(small_gemm.NR != 16, reason="the AVX2 tile's rule")
def test_batched_preferred_rule_avx2_tile():
    assert small_gemm.batched_preferred(False, False, 128, 128, 64)
    assert small_gemm.batched_preferred(True, False, 64, 64, 64)
    assert small_gemm.batched_preferred(False, False, 1024, 1024, 64)
    assert not small_gemm.batched_preferred(True, False, 1024, 1024, 64)
    assert small_gemm.batched_preferred(False, True, 128, 128, 64)    # B transposed, packed
    assert not small_gemm.batched_preferred(False, True, 128, 48, 64)  # not whole panels
    assert not small_gemm.batched_preferred(False, False, 256, 256, 256)
    assert not small_gemm.batched_preferred(False, False, 197, 197, 64)   # not 16k columns


@pytest.mark.skipif(small_gemm.NR != 32, reason="the wide (AVX-512) tile's rule")
def test_batched_preferred_rule_wide_tile():
    """The wide tile's batched rule is its 2-D rule."""
    for shape in [(False, False, 128, 128, 64), (True, False, 64, 64, 256),
                  (False, False, 256, 256, 256), (False, True, 128, 128, 64),
                  (False, False, 197, 197, 64), (False, False, 64, 64, 64)]:
        assert small_gemm.batched_preferred(*shape) == bool(small_gemm.preferred(*shape))
    assert small_gemm.batched_preferred(False, False, 128, 128, 64)
    assert small_gemm.batched_preferred(False, True, 128, 128, 64)    # B transposed, packed
    assert not small_gemm.batched_preferred(False, True, 128, 48, 64)  # not whole panels


@pytest.mark.parametrize("sa, sb", [((2, 3, 4), (4, 5)),          # 2-D weight: one product
                                    ((3, 4), (2, 4, 5)),          # 2-D left operand
                                    ((2, 1, 3, 4), (1, 3, 4, 2)),  # broadcast both ways
                                    ((3, 2, 4), (3, 4, 3))])
def test_gradients_through_the_kernel(sa, sb):
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    with kernel_path():
        np.testing.assert_allclose((mg.tensor(a) @ mg.tensor(b)).numpy(), a @ b, rtol=1e-11)
        check_grad(lambda x, y: x @ y, [a, b])   # the backward reads transposed views


def test_weight_gradient_of_a_batched_linear_map_is_one_product(monkeypatch):
    """d(x @ W)/dW for x (B, M, K) and W (K, N) sums over all B*M rows in one 2-D product."""
    be = CPUBackend()
    calls = []
    real = be._batched_matmul
    monkeypatch.setattr(CPUBackend, "_batched_matmul",
                        lambda self, a, b: calls.append((a.shape, b.shape)) or real(a, b))
    rng = np.random.default_rng(9)
    x = mg.tensor(rng.standard_normal((5, 6, 7)).astype(np.float32), requires_grad=True)
    w = mg.tensor(rng.standard_normal((7, 3)).astype(np.float32), requires_grad=True)
    g = rng.standard_normal((5, 6, 3)).astype(np.float32)
    (x @ w).backward(mg.tensor(g))
    ref = x.numpy().reshape(-1, 7).T.astype(np.float64) @ g.reshape(-1, 3)
    np.testing.assert_allclose(w.grad.numpy(), ref, **tol(np.float32))
    np.testing.assert_allclose(x.grad.numpy(), g @ w.numpy().T.astype(np.float64),
                               **tol(np.float32))
    # the forward and dX only: dW is (7, 30) @ (30, 3), not (5, 7, 6) @ (5, 6, 3) summed
    assert calls == [((5, 6, 7), (7, 3)), ((5, 6, 3), (3, 7))]
