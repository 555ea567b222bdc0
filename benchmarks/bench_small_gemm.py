"""small_gemm.sgemm against single-threaded OpenBLAS (blas.gemm_rm) on convolution tile shapes.

    python -m benchmarks.bench_small_gemm [--rounds 4] [--calls 30]

Both run in this process, alternately, one thread each (threadpoolctl); each shape reports
the best of ``rounds`` medians of ``calls`` calls.  The shapes are the per-tile GEMMs of
minigrad's convolutions (im2col tiles of 512 pixels): forward (tile x RSC @ RSC x K), weight
gradient (RSC x tile^T @ tile x K, A transposed) and column gradient (tile x K @ K x RSC);
``preferred`` is small_gemm's dispatch rule for the shape.
"""

import argparse

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from benchmarks.run_all import timeit
from minigrad.cpu import small_gemm
from minigrad.cpu.blas import gemm_rm

# (m, n, k, transa, transb, what)
SHAPES = [
    (512, 64, 27, 0, 0, "stem fwd"), (27, 64, 512, 1, 0, "stem dW, dY channels-last"),
    (27, 64, 512, 1, 1, "stem dW, dY NCHW"), (512, 27, 64, 0, 1, "stem dcol"),
    (512, 27, 64, 1, 1, "stem dcol, dY NCHW"),
    (512, 16, 150, 0, 0, "LeNet conv2 fwd"), (150, 16, 512, 1, 0, "LeNet conv2 dW"),
    (150, 16, 512, 1, 1, "LeNet conv2 dW, dY NCHW"), (512, 150, 16, 0, 1, "LeNet conv2 dcol"),
    (512, 150, 16, 1, 1, "LeNet conv2 dcol, dY NCHW"),
    (512, 128, 64, 0, 0, "1x1 64->128 fwd"), (64, 128, 512, 1, 0, "1x1 64->128 dW"),
    (512, 64, 128, 0, 1, "1x1 64->128 dX"),
    (256, 256, 128, 0, 0, "1x1 128->256 fwd"), (128, 256, 256, 1, 0, "1x1 128->256 dW"),
    (256, 128, 256, 0, 1, "1x1 128->256 dX"),
    (512, 128, 576, 0, 0, "3x3 64->128 fwd"), (576, 128, 512, 1, 0, "3x3 64->128 dW"),
    (512, 576, 128, 0, 1, "3x3 64->128 dcol"),
    (256, 16, 32, 0, 0, "n 16, k 32"), (512, 32, 32, 0, 0, "n 32, k 32"),
    (512, 48, 27, 0, 0, "n 48, k 27"), (512, 8, 64, 0, 0, "n 8"),
    (64, 64, 512, 1, 0, "64 x 64 dW"), (96, 96, 512, 1, 0, "96 x 96 dW"),
    (128, 128, 512, 1, 0, "128 x 128 dW"),
]


@njit(cache=True)
def _openblas(transa, transb, m, n, k, a, lda, b, ldb, c, ldc):
    gemm_rm(transa, transb, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc)


@njit(cache=True)
def _small_entry(transa, transb, m, n, k, a, lda, b, ldb, c, ldc):
    small_gemm.sgemm_entry(np.int32(transa), np.int32(transb), m, n, k, a.ctypes, lda, b.ctypes,
                           ldb, np.float32(0.0), c.ctypes, ldc)


def _small(transa, transb, m, n, k, a, lda, b, ldb, c, ldc):
    """small_gemm's sgemm called as the kernels call it (its symbol, from jitted code) where
    it is registered; elsewhere through its Python entry (which checks its arguments)."""
    if small_gemm.SUPPORTED:
        _small_entry(transa, transb, m, n, k, a, lda, b, ldb, c, ldc)
    else:
        small_gemm.sgemm(transa, transb, m, n, k, a, lda, b, ldb, 0.0, c, ldc)


def main(argv=None):
    """Print the table of OpenBLAS against small_gemm per shape (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print("small_gemm supported on this CPU:", small_gemm.SUPPORTED)
    was = small_gemm.enabled()
    small_gemm.set_enabled(False)           # gemm_rm must reach OpenBLAS for every shape
    print("| shape | m x n x k, transposed | OpenBLAS GFLOP/s | small_gemm GFLOP/s | speed ratio | preferred |")
    print("|---|---|---:|---:|---:|---|")
    try:
        _table(rng, args)
    finally:
        small_gemm.set_enabled(was)


def _table(rng, args):
    with threadpool_limits(1):
        for m, n, k, ta, tb, what in SHAPES:
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
            c = np.empty((m, n), np.float32)
            call = (bool(ta), bool(tb), m, n, k, a.reshape(-1), a.shape[1], b.reshape(-1),
                    b.shape[1])
            ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
            _small(*call, c.reshape(-1), n)
            err = np.abs(c - ref).max() / max(1.0, np.abs(ref).max())
            assert err < 1e-5, (what, err)
            t_ob, t_sg = [], []
            for _ in range(args.rounds):
                t_ob.append(1e3 * timeit(lambda: _openblas(*call, c.reshape(-1), n), args.calls, 1))
                t_sg.append(1e3 * timeit(lambda: _small(*call, c.reshape(-1), n),
                                         args.calls, 1))
            gf = 2 * m * n * k / 1e6
            pref = small_gemm.preferred(bool(ta), bool(tb), m, n, k)
            print(f"| {what} | {m} x {n} x {k}, {'A' if ta else ''}{'B' if tb else ''}"
                  f"{'-' if not (ta or tb) else ''} | {gf / min(t_ob):.1f} | {gf / min(t_sg):.1f} | "
                  f"{min(t_ob) / min(t_sg):.2f}x | {'yes' if pref else 'no'} |")


if __name__ == "__main__":
    main()
