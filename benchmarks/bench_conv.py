"""Time minigrad's CPU conv2d kernels (forward + backward) on LeNet-5 and
ResNet-18 (CIFAR stem) layer shapes, next to NumPy's sgemm measured in the
same run and, when importable, PyTorch's conv2d (2 threads).

    python benchmarks/bench_conv.py [--batch 32] [--lenet-batch 128] [--reps 5]
    python benchmarks/bench_conv.py --compile-time     # Numba compile time, cold and warm cache

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE change OpenBLAS speed; the script prints
whether they are set.  To measure without them, unset them in the command:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_conv.py
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# name, C, K, H(=W), R(=S), stride, padding, need_x   (need_x False: network input)
def lenet_shapes():
    return [
        ("lenet.conv1 1->6 5x5 p2 28", 1, 6, 28, 5, 1, 2, False),
        ("lenet.conv2 6->16 5x5 14", 6, 16, 14, 5, 1, 0, True),
    ]


def resnet_shapes():
    return [
        ("stem 3->64 3x3 32", 3, 64, 32, 3, 1, 1, False),
        ("layer1 64->64 3x3 32", 64, 64, 32, 3, 1, 1, True),
        ("layer2.0 64->128 3x3 s2 32", 64, 128, 32, 3, 2, 1, True),
        ("layer2.0.ds 64->128 1x1 s2 32", 64, 128, 32, 1, 2, 0, True),
        ("layer2 128->128 3x3 16", 128, 128, 16, 3, 1, 1, True),
        ("layer3.0 128->256 3x3 s2 16", 128, 256, 16, 3, 2, 1, True),
        ("layer3.0.ds 128->256 1x1 s2 16", 128, 256, 16, 1, 2, 0, True),
        ("layer3 256->256 3x3 8", 256, 256, 8, 3, 1, 1, True),
        ("layer4.0 256->512 3x3 s2 8", 256, 512, 8, 3, 2, 1, True),
        ("layer4.0.ds 256->512 1x1 s2 8", 256, 512, 8, 1, 2, 0, True),
        ("layer4 512->512 3x3 4", 512, 512, 4, 3, 1, 1, True),
    ]


def best_time(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), float(np.median(ts))


def sgemm_gflops(n=2048, reps=5):
    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    c = np.empty((n, n), np.float32)
    tmin, _ = best_time(lambda: np.dot(a, b, out=c), reps)
    return 2.0 * n ** 3 / tmin / 1e9


def run_bench(args):
    from minigrad.cpu import conv

    if args.chunk_bytes:
        conv._CHUNK_BYTES = args.chunk_bytes   # the "chunked" path only
    print("OPENBLAS_CORETYPE=%r OPENBLAS_L2_SIZE=%r" % (
        os.environ.get("OPENBLAS_CORETYPE"), os.environ.get("OPENBLAS_L2_SIZE")))
    print("load average at start: %.2f %.2f %.2f (other processes share the 2 cores)"
          % os.getloadavg())
    print("numpy %s, threads: NUMBA_NUM_THREADS=%s" % (
        np.__version__, os.environ.get("NUMBA_NUM_THREADS", "default")))
    try:
        import torch
        torch.set_num_threads(2)
        tf = torch.nn.functional
        print("torch %s (2 threads)" % torch.__version__)
    except Exception:  # noqa: BLE001 - torch is optional
        torch = None
        print("torch not importable: no side-by-side")

    g0 = sgemm_gflops()
    print("NumPy sgemm 2048^3: %.0f GFLOP/s" % g0)

    rng = np.random.default_rng(0)
    rows = []
    groups = [(args.lenet_batch, lenet_shapes()), (args.batch, resnet_shapes())]
    tot = {"mg": [0.0, 0.0], "torch": [0.0, 0.0]}
    for N, shapes in groups:
        for name, C, K, H, R, st, pd, need_x in shapes:
            x = rng.standard_normal((N, C, H, H), dtype=np.float32)
            w = (rng.standard_normal((K, C, R, R), dtype=np.float32) * 0.1)
            b = rng.standard_normal(K, dtype=np.float32)
            S2, P2, D2 = (st, st), (pd, pd), (1, 1)
            y = conv.conv2d(x, w, b, S2, P2, D2)
            gy = rng.standard_normal(y.shape, dtype=np.float32)
            OH, OW = y.shape[2], y.shape[3]
            f_fwd = 2.0 * N * K * C * R * R * OH * OW
            f_bwd = f_fwd * (2 if need_x else 1)

            tf_, _ = best_time(lambda: conv.conv2d(x, w, b, S2, P2, D2), args.reps)
            tb_, _ = best_time(lambda: conv.conv2d_backward(x, w, gy, S2, P2, D2,
                                                           need_x, True, True), args.reps)
            row = [name, N, tf_ * 1e3, f_fwd / tf_ / 1e9, tb_ * 1e3, f_bwd / tb_ / 1e9,
                   (f_fwd + f_bwd) / (tf_ + tb_) / 1e9]
            tot["mg"][0] += tf_ + tb_
            tot["mg"][1] += f_fwd + f_bwd
            if torch is not None:
                xt = torch.from_numpy(x).requires_grad_(need_x)
                wt = torch.from_numpy(w).requires_grad_(True)
                bt = torch.from_numpy(b).requires_grad_(True)
                gyt = torch.from_numpy(gy)

                def tfwd():
                    with torch.no_grad():
                        return tf.conv2d(xt, wt, bt, st, pd)

                def tfb():
                    yt = tf.conv2d(xt, wt, bt, st, pd)
                    yt.backward(gyt)

                ttf, _ = best_time(tfwd, args.reps)
                ttfb, _ = best_time(tfb, args.reps)
                row += [ttf * 1e3, f_fwd / ttf / 1e9, ttfb * 1e3,
                        (f_fwd + f_bwd) / ttfb / 1e9]
                tot["torch"][0] += ttfb
                tot["torch"][1] += f_fwd + f_bwd
            rows.append(row)

    hdr = "%-32s %4s %9s %7s %9s %7s %8s %6s" % (
        "layer", "N", "fwd ms", "GF/s", "bwd ms", "GF/s", "f+b GF/s", "/sgemm")
    if torch is not None:
        hdr += " | %9s %7s %10s %8s %7s" % ("torch fwd", "GF/s", "torch f+b", "GF/s", "speedup")
    print(hdr)
    for r in rows:
        line = "%-32s %4d %9.2f %7.0f %9.2f %7.0f %8.0f %5.0f%%" % (
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], 100 * r[6] / g0)
        if torch is not None:
            line += " | %9.2f %7.0f %10.2f %8.0f %6.2fx" % (
                r[7], r[8], r[9], r[10], r[9] / (r[2] + r[4]))
        print(line)
    t, f = tot["mg"]
    print("total minigrad fwd+bwd: %.1f ms, %.0f GFLOP/s (%.0f%% of sgemm)" % (
        t * 1e3, f / t / 1e9, 100 * f / t / 1e9 / g0))
    if torch is not None:
        t2, f2 = tot["torch"]
        print("total torch    fwd+bwd: %.1f ms, %.0f GFLOP/s" % (t2 * 1e3, f2 / t2 / 1e9))
    print("NumPy sgemm 2048^3 (end of run): %.0f GFLOP/s" % sgemm_gflops())
    print("load average at end: %.2f %.2f %.2f" % os.getloadavg())


_COMPILE_SNIPPET = r"""
import time, sys
sys.path.insert(0, %r)
import numpy as np
t0 = time.perf_counter()
from minigrad.cpu import conv, pool
t1 = time.perf_counter()
for dt in (np.float32, np.float64):
    x = np.ones((2, 3, 6, 6), dt); w = np.ones((4, 3, 3, 3), dt); b = np.ones(4, dt)
    y = conv.conv2d(x, w, b, (1, 1), (1, 1), (1, 1))
    conv.conv2d_backward(x, w, y, (1, 1), (1, 1), (1, 1), True, True, True)
    w1 = np.ones((4, 3, 1, 1), dt)
    y1 = conv.conv2d(x, w1, b, (1, 1), (0, 0), (1, 1))
    conv.conv2d_backward(x, w1, y1, (1, 1), (0, 0), (1, 1), True, True, True)
    y, am = pool.max_pool2d(x, (2, 2), (2, 2), (0, 0))
    pool.max_pool2d_backward(y, am, x.shape)
    y = pool.avg_pool2d(x, (2, 2), (2, 2), (1, 1), True)
    pool.avg_pool2d_backward(y, x.shape, (2, 2), (2, 2), (1, 1), True)
t2 = time.perf_counter()
print("%%.2f %%.2f" %% (t1 - t0, t2 - t1))
"""


def run_compile_time(args):
    code = _COMPILE_SNIPPET % ROOT
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d)
        res = []
        for label in ("cold (empty cache)", "warm (cache filled)"):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            wall = time.perf_counter() - t0
            res.append((label, float(out[0]), float(out[1]), wall))
    print("load average: %.2f %.2f %.2f" % os.getloadavg())
    print("Numba compile of conv+pool kernels, float32 and float64 "
          "(NUMBA_CACHE_DIR = fresh temp dir):")
    for label, imp, first, wall in res:
        print("  %-20s import %.2f s, first calls %.2f s, process wall %.2f s" % (
            label, imp, first, wall))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32, help="ResNet-18 batch size")
    ap.add_argument("--lenet-batch", type=int, default=128, help="LeNet-5 batch size")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--chunk-bytes", type=int, default=0,
                    help="override the column-chunk size (tuning)")
    ap.add_argument("--compile-time", action="store_true",
                    help="measure Numba compile time (cold and warm cache) instead")
    args = ap.parse_args()
    if args.compile_time:
        run_compile_time(args)
    else:
        run_bench(args)


if __name__ == "__main__":
    main()
