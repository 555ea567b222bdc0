"""small_gemm.sgemm against single-threaded OpenBLAS (blas.gemm_rm) on convolution tile shapes.

    python -m benchmarks.bench_small_gemm [--rounds 4] [--calls 30]
    python -m benchmarks.bench_small_gemm --grid      # the grid the wide tile's rule came from

Both run in this process, alternately, one thread each (threadpoolctl); each shape reports
the best of ``rounds`` medians of ``calls`` calls.  The shapes are the per-tile GEMMs of
minigrad's convolutions (im2col tiles of 512 pixels): forward (tile x RSC @ RSC x K), weight
gradient (RSC x tile^T @ tile x K, A transposed) and column gradient (tile x K @ K x RSC);
``preferred`` is small_gemm's dispatch rule for the shape.

``--grid``: every product of m in GRID_M, n in GRID_N, k in GRID_K, untransposed, B transposed
and A transposed, each kernel called ~0.4 GFLOP's worth of times in a jitted loop on the same
operands (in cache), best of two rounds per kernel; prints the speed ratio small_gemm /
OpenBLAS as one m x n table per k and transposition (above 1: small_gemm faster), with a
``*`` where gemm_rm sends the product to small_gemm (A's rows are k or m apart).
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
    (512, 256, 1152, 0, 0, "3x3 128->256 fwd"), (1152, 256, 512, 1, 0, "3x3 128->256 dW"),
    (128, 256, 64, 0, 0, "NCHW 1x1 64->128 fwd, one image"),
    (64, 256, 128, 1, 0, "NCHW 1x1 64->128 dX, one image"),
    (1024, 256, 1024, 1, 0, "Linear 256->1024 dW, half of 2048 tokens"),
    (1024, 256, 1024, 0, 0, "Linear 256->1024 dX, half of 2048 tokens"),
    (512, 256, 512, 0, 0, "untransposed, k 512"),
    (256, 512, 2048, 0, 0, "untransposed, k 2048"),
]

GRID_M = (64, 128, 256, 512, 1024)
GRID_N = (16, 32, 64, 128, 256, 512, 1024)
GRID_K = (27, 64, 128, 256, 576, 1152, 2048)


def _small(transa, transb, m, n, k, a, lda, b, ldb, c, ldc):
    """small_gemm's sgemm called as the kernels call it (its symbol, from jitted code) where
    it is registered; elsewhere through its Python entry (which checks its arguments)."""
    if small_gemm.SUPPORTED:
        _small_loop(transa, transb, m, n, k, a, lda, b, ldb, c, ldc, 1)
    else:
        small_gemm.sgemm(transa, transb, m, n, k, a, lda, b, ldb, 0.0, c, ldc)


@njit(cache=True)
def _openblas_loop(transa, transb, m, n, k, a, lda, b, ldb, c, ldc, calls):
    """``calls`` products through gemm_rm (OpenBLAS while small_gemm's switch is off)."""
    for _ in range(calls):
        gemm_rm(transa, transb, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc)


@njit(cache=True)
def _small_loop(transa, transb, m, n, k, a, lda, b, ldb, c, ldc, calls):
    """``calls`` products through small_gemm's symbol, as the kernels call it."""
    for _ in range(calls):
        small_gemm.sgemm_entry(np.int32(transa), np.int32(transb), m, n, k, a.ctypes, lda,
                               b.ctypes, ldb, np.float32(0.0), c.ctypes, ldc)


def _dispatched(ta, tb, m, n, k, lda):
    """True when gemm_rm sends this product to small_gemm (its switch on)."""
    return bool(small_gemm.preferred(bool(ta), bool(tb), m, n, k)
                and not small_gemm.a_rows_alias(bool(ta), lda))


def _grid(rng):
    """The --grid tables (see the module docstring); small_gemm must be SUPPORTED."""
    import time

    def rate(loop, call, calls, flop):
        best = 0.0
        for _ in range(2):
            t0 = time.perf_counter()
            loop(*call, calls)
            best = max(best, flop * calls / (time.perf_counter() - t0))
        return best

    with threadpool_limits(1):
        for ta, tb in ((0, 0), (0, 1), (1, 0)):
            for k in GRID_K:
                how = "A transposed" if ta else "B transposed" if tb else "untransposed"
                print(f"\nk = {k}, {how}: small_gemm / OpenBLAS")
                print("| m \\ n | " + " | ".join(str(n) for n in GRID_N) + " |")
                print("|---|" + "---:|" * len(GRID_N))
                for m in GRID_M:
                    cells = []
                    for n in GRID_N:
                        a = rng.standard_normal(m * k).astype(np.float32)
                        b = rng.standard_normal(n * k).astype(np.float32)
                        c = np.empty(m * n, np.float32)
                        call = (bool(ta), bool(tb), m, n, k, a, m if ta else k, b,
                                k if tb else n, c, n)
                        flop = 2.0 * m * n * k
                        calls = max(1, int(0.4e9 / flop))
                        _openblas_loop(*call, 1)
                        _small_loop(*call, 1)
                        ratio = (rate(_small_loop, call, calls, flop)
                                 / rate(_openblas_loop, call, calls, flop))
                        taken = _dispatched(ta, tb, m, n, k, m if ta else k)
                        cells.append(f"{ratio:.2f}" + ("*" if taken else ""))
                    print(f"| {m} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None):
    """Print the table of OpenBLAS against small_gemm per shape (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--grid", action="store_true", help="the ratio grid instead of SHAPES")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print("small_gemm supported on this CPU:", small_gemm.SUPPORTED,
          f"(tile {small_gemm.MR} x {small_gemm.NR})")
    was = small_gemm.enabled()
    small_gemm.set_enabled(False)           # gemm_rm must reach OpenBLAS for every shape
    if args.grid:
        if not small_gemm.SUPPORTED:
            raise SystemExit("--grid needs a CPU that small_gemm supports")
        try:
            _grid(rng)
        finally:
            small_gemm.set_enabled(was)
        return
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
                t_ob.append(1e3 * timeit(lambda: _openblas_loop(*call, c.reshape(-1), n, 1), args.calls, 1))
                t_sg.append(1e3 * timeit(lambda: _small(*call, c.reshape(-1), n),
                                         args.calls, 1))
            gf = 2 * m * n * k / 1e6
            pref = _dispatched(ta, tb, m, n, k, a.shape[1])
            print(f"| {what} | {m} x {n} x {k}, {'A' if ta else ''}{'B' if tb else ''}"
                  f"{'-' if not (ta or tb) else ''} | {gf / min(t_ob):.1f} | {gf / min(t_sg):.1f} | "
                  f"{min(t_ob) / min(t_sg):.2f}x | {'yes' if pref else 'no'} |")


if __name__ == "__main__":
    main()
