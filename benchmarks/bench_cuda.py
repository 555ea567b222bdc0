"""CUDA backend benchmarks: GEMM 4096^3 and ResNet-18 conv2d fwd+bwd at batch 128.

    python benchmarks/bench_cuda.py [--gemm-size 4096] [--batch 128] [--repeat 10]

Needs a real NVIDIA GPU (Numba's CUDA simulator is far too slow to time anything);
without one it says so and exits with status 2.  Reports GEMM GFLOP/s against the
GPU's FP32 peak (CUDA cores x 2 x boost clock) and against ``torch.matmul`` with TF32
off when PyTorch with CUDA is importable, then conv2d forward and forward+backward
GFLOP/s on the ResNet-18 (ImageNet stem) layer shapes.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# FP32 lanes per SM by compute capability major (minor where it differs)
_CORES_PER_SM = {(6, 0): 64, (6, 1): 128, (7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128,
                 (8, 7): 128, (8, 9): 128, (9, 0): 128, (10, 0): 128, (12, 0): 128}

RESNET18_CONVS = [  # (name, C_in, H, K, kernel, stride, padding)
    ("conv1", 3, 224, 64, 7, 2, 3),
    ("layer1 3x3", 64, 56, 64, 3, 1, 1),
    ("layer2.0 3x3 s2", 64, 56, 128, 3, 2, 1),
    ("layer2 3x3", 128, 28, 128, 3, 1, 1),
    ("layer2 downsample", 64, 56, 128, 1, 2, 0),
    ("layer3.0 3x3 s2", 128, 28, 256, 3, 2, 1),
    ("layer3 3x3", 256, 14, 256, 3, 1, 1),
    ("layer4.0 3x3 s2", 256, 14, 512, 3, 2, 1),
    ("layer4 3x3", 512, 7, 512, 3, 1, 1),
]


def fp32_peak_gflops():
    """Theoretical FP32 GFLOP/s of the current device (None when the core count is unknown)."""
    from numba import cuda

    dev = cuda.get_current_device()
    cc = dev.compute_capability
    cores = _CORES_PER_SM.get(cc, _CORES_PER_SM.get((cc[0], 0)))
    if cores is None:
        return None, dev.name
    sms = dev.MULTIPROCESSOR_COUNT
    clock_khz = dev.CLOCK_RATE
    return 2.0 * cores * sms * clock_khz * 1e3 / 1e9, dev.name


def timed(fn, sync, repeat):
    """Median seconds of ``fn`` over ``repeat`` runs after one warm-up (which also compiles)."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_gemm(be, n, repeat):
    """minigrad GEMM GFLOP/s for n x n x n float32 (and torch's, TF32 off, when available)."""
    rng = np.random.default_rng(0)
    a = be.from_numpy(rng.standard_normal((n, n), dtype=np.float32))
    b = be.from_numpy(rng.standard_normal((n, n), dtype=np.float32))
    flops = 2.0 * n ** 3
    t = timed(lambda: be.matmul(a, b), be.synchronize, repeat)
    rows = [("minigrad_cuda", flops / t / 1e9, t)]
    try:
        import torch

        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = False
            ta = torch.randn(n, n, device="cuda")
            tb = torch.randn(n, n, device="cuda")
            tt = timed(lambda: ta @ tb, torch.cuda.synchronize, repeat)
            rows.append(("torch.matmul (TF32 off)", flops / tt / 1e9, tt))
    except ImportError:
        pass
    return rows


def bench_convs(be, batch, repeat):
    """(name, fwd GFLOP/s, fwd+bwd GFLOP/s) for every ResNet-18 conv shape."""
    rng = np.random.default_rng(0)
    out = []
    for name, C, H, K, k, s, p in RESNET18_CONVS:
        x = be.from_numpy(rng.standard_normal((batch, C, H, H), dtype=np.float32))
        w = be.from_numpy((rng.standard_normal((K, C, k, k)) * 0.05).astype(np.float32))
        OH = (H + 2 * p - k) // s + 1
        gy = be.from_numpy(rng.standard_normal((batch, K, OH, OH), dtype=np.float32))
        flops = 2.0 * batch * K * C * k * k * OH * OH
        tf = timed(lambda: be.conv2d(x, w, None, (s, s), (p, p), (1, 1)), be.synchronize, repeat)

        def step():
            be.conv2d(x, w, None, (s, s), (p, p), (1, 1))
            be.conv2d_backward(x, w, gy, (s, s), (p, p), (1, 1), name != "conv1", True, False)

        tb = timed(step, be.synchronize, repeat)
        passes = 2 if name == "conv1" else 3
        out.append((name, flops / tf / 1e9, passes * flops / tb / 1e9, tb))
    return out


def main():
    """Parse arguments, check for a GPU, run and print the benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemm-size", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    import minigrad  # noqa: F401
    import minigrad_cuda

    if minigrad_cuda.is_simulator():
        print("bench_cuda.py needs a real GPU: NUMBA_ENABLE_CUDASIM is set (the simulator "
              "cannot be timed); unset it on a machine with an NVIDIA GPU.")
        return 2
    reason = minigrad_cuda.unavailable_reason()
    if reason is not None:
        print(f"bench_cuda.py needs a real GPU and none is usable here ({reason}); "
              f"no numbers recorded.")
        return 2
    be = minigrad_cuda.get_backend()
    peak, device = fp32_peak_gflops()
    print(f"device: {device}; FP32 peak: {peak:.0f} GFLOP/s" if peak else f"device: {device}")
    n = args.gemm_size
    print(f"\nGEMM {n}x{n}x{n} float32 (median of {args.repeat})")
    for label, gflops, t in bench_gemm(be, n, args.repeat):
        extra = f", {100 * gflops / peak:.1f}% of peak" if peak else ""
        print(f"  {label:26s} {gflops:9.1f} GFLOP/s ({t * 1e3:.2f} ms{extra})")
    print(f"\nconv2d, ResNet-18 layer shapes, batch {args.batch} (median of {args.repeat})")
    print(f"  {'layer':20s} {'fwd GFLOP/s':>12s} {'fwd+bwd GFLOP/s':>16s} {'fwd+bwd ms':>11s}")
    for name, fwd, both, tb in bench_convs(be, args.batch, args.repeat):
        print(f"  {name:20s} {fwd:12.1f} {both:16.1f} {tb * 1e3:11.2f}")
    print(f"\nmemory pool: {be.memory_stats()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
