"""CUDA backend benchmarks: GEMM 4096^3, ResNet-18 conv2d fwd+bwd at batch 128, train steps.

    python benchmarks/bench_cuda.py [--gemm-size 4096] [--batch 128] [--repeat 10]
                                    [--only gemm,conv,train] [--profile]

Needs a real NVIDIA GPU (Numba's CUDA simulator is far too slow to time anything);
without one it says so and exits with status 2.  Reports GEMM GFLOP/s against the
GPU's FP32 peak (CUDA cores x 2 x boost clock) and against ``torch.matmul`` with TF32
off when PyTorch with CUDA is importable; conv2d forward and forward+backward GFLOP/s
on the ResNet-18 (ImageNet stem) layer shapes next to cuDNN (float32, TF32 off); and
the LeNet-5 (MNIST-shaped epoch of 469 batches of 128, each batch copied from the host)
and ResNet-18 CIFAR (batch 128) train steps next to the same PyTorch models on the same
GPU.  ``--profile`` prints where the host time of minigrad's LeNet step goes.
"""

import argparse
import cProfile
import os
import pstats
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


def cuda_torch():
    """``torch`` with TF32 off and cuDNN autotuning on, or None when it has no usable GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    return torch


def bench_gemm(be, n, repeat):
    """minigrad GEMM GFLOP/s for n x n x n float32 (and torch's, TF32 off, when available)."""
    rng = np.random.default_rng(0)
    a = be.from_numpy(rng.standard_normal((n, n), dtype=np.float32))
    b = be.from_numpy(rng.standard_normal((n, n), dtype=np.float32))
    flops = 2.0 * n ** 3
    t = timed(lambda: be.matmul(a, b), be.synchronize, repeat)
    rows = [("minigrad_cuda", flops / t / 1e9, t)]
    torch = cuda_torch()
    if torch is not None:
        ta = torch.randn(n, n, device="cuda")
        tb = torch.randn(n, n, device="cuda")
        tt = timed(lambda: ta @ tb, torch.cuda.synchronize, repeat)
        rows.append(("torch.matmul (TF32 off)", flops / tt / 1e9, tt))
    return rows


def torch_conv_time(torch, x, w, gy, s, p, need_x, repeat):
    """cuDNN forward+backward seconds for the same shapes (None without a CUDA torch)."""
    if torch is None:
        return None
    tx = torch.from_numpy(x).cuda().requires_grad_(need_x)
    tw = torch.from_numpy(w).cuda().requires_grad_(True)
    tgy = torch.from_numpy(gy).cuda()

    def step():
        y = torch.nn.functional.conv2d(tx, tw, None, s, p)
        y.backward(tgy)

    return timed(step, torch.cuda.synchronize, repeat)


def bench_convs(be, batch, repeat):
    """(name, fwd GFLOP/s, fwd+bwd GFLOP/s, fwd+bwd s, cuDNN fwd+bwd s) per ResNet-18 conv."""
    rng = np.random.default_rng(0)
    torch = cuda_torch()
    out = []
    for name, C, H, K, k, s, p in RESNET18_CONVS:
        xh = rng.standard_normal((batch, C, H, H), dtype=np.float32)
        wh = (rng.standard_normal((K, C, k, k)) * 0.05).astype(np.float32)
        OH = (H + 2 * p - k) // s + 1
        gyh = rng.standard_normal((batch, K, OH, OH), dtype=np.float32)
        x, w, gy = be.from_numpy(xh), be.from_numpy(wh), be.from_numpy(gyh)
        flops = 2.0 * batch * K * C * k * k * OH * OH
        tf = timed(lambda: be.conv2d(x, w, None, (s, s), (p, p), (1, 1)), be.synchronize, repeat)

        def step():
            be.conv2d(x, w, None, (s, s), (p, p), (1, 1))
            be.conv2d_backward(x, w, gy, (s, s), (p, p), (1, 1), name != "conv1", True, False)

        tb = timed(step, be.synchronize, repeat)
        passes = 2 if name == "conv1" else 3
        tt = torch_conv_time(torch, xh, wh, gyh, s, p, name != "conv1", repeat)
        out.append((name, flops / tf / 1e9, passes * flops / tb / 1e9, tb, tt))
        del x, w, gy
    return out


def _train_pair(mg_model, torch_model, shape, steps, upload_each_step):
    """Seconds for ``steps`` SGD-momentum train steps in minigrad and (when given) PyTorch.

    With ``upload_each_step`` every step copies its batch from host memory, as a data
    loader does; otherwise the batch stays on the GPU.  One untimed warm-up step each.
    """
    import minigrad as mg
    import minigrad.nn.functional as F
    import minigrad.optim as optim

    rng = np.random.default_rng(1)
    xh = rng.standard_normal(shape, dtype=np.float32)
    yh = rng.integers(0, 10, shape[0])
    mg_model.to("cuda")
    opt = optim.SGD(mg_model.parameters(), lr=0.01, momentum=0.9)
    be = mg.backend.get("cuda")
    xd, yd = mg.tensor(xh, device="cuda"), mg.tensor(yh, device="cuda")

    def mg_step():
        x, y = (mg.tensor(xh, device="cuda"), mg.tensor(yh, device="cuda")) if upload_each_step else (xd, yd)
        loss = F.cross_entropy(mg_model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def run(step, sync):
        step()
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        return time.perf_counter() - t0

    mg_t = run(mg_step, be.synchronize)
    torch = cuda_torch()
    if torch is None or torch_model is None:
        return mg_t, None
    torch_model.cuda()
    topt = torch.optim.SGD(torch_model.parameters(), lr=0.01, momentum=0.9)
    txd, tyd = torch.from_numpy(xh).cuda(), torch.from_numpy(yh).cuda()

    def torch_step():
        x, y = ((torch.from_numpy(xh).cuda(), torch.from_numpy(yh).cuda()) if upload_each_step
                else (txd, tyd))
        loss = torch.nn.functional.cross_entropy(torch_model(x), y)
        topt.zero_grad()
        loss.backward()
        topt.step()

    return mg_t, run(torch_step, torch.cuda.synchronize)


def bench_train(repeat):
    """(workload, images, minigrad s, torch s) for the LeNet-5 epoch and ResNet-18 steps."""
    import zoo

    try:
        from benchmarks.torch_models import TorchLeNet5, TorchResNet18Cifar
    except ImportError:
        TorchLeNet5 = TorchResNet18Cifar = None
    with_torch = cuda_torch() is not None and TorchLeNet5 is not None
    rows = []
    mg_t, t_t = _train_pair(zoo.lenet5(), TorchLeNet5() if with_torch else None,
                            (128, 1, 28, 28), 469, True)
    rows.append(("LeNet-5 MNIST-shaped epoch (469 x 128)", 469 * 128, mg_t, t_t))
    steps = max(repeat, 5)
    mg_t, t_t = _train_pair(zoo.resnet18(num_classes=10, stem="cifar"),
                            TorchResNet18Cifar() if with_torch else None, (128, 3, 32, 32), steps, False)
    rows.append((f"ResNet-18 CIFAR, {steps} steps of 128", steps * 128, mg_t, t_t))
    return rows


def profile_lenet(steps=100, top=25):
    """cProfile of ``steps`` minigrad LeNet-5 train steps on the GPU (host-side time)."""
    import zoo

    _train_pair(zoo.lenet5(), None, (128, 1, 28, 28), 3, True)
    prof = cProfile.Profile()
    prof.enable()
    _train_pair(zoo.lenet5(), None, (128, 1, 28, 28), steps, True)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main():
    """Parse arguments, check for a GPU, run and print the benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemm-size", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--only", default="gemm,conv,train",
                        help="comma-separated sections: gemm, conv, train")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of minigrad's LeNet-5 steps and exit")
    args = parser.parse_args()
    only = set(args.only.split(","))

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
    if args.profile:
        profile_lenet()
        return 0
    peak, device = fp32_peak_gflops()
    print(f"device: {device}; FP32 peak: {peak:.0f} GFLOP/s" if peak else f"device: {device}")
    torch = cuda_torch()
    print(f"PyTorch: {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, TF32 off"
          if torch is not None else "PyTorch with CUDA: not available (no reference columns)")
    n = args.gemm_size
    if "gemm" in only:
        print(f"\nGEMM {n}x{n}x{n} float32 (median of {args.repeat})")
        for label, gflops, t in bench_gemm(be, n, args.repeat):
            extra = f", {100 * gflops / peak:.1f}% of peak" if peak else ""
            print(f"  {label:26s} {gflops:9.1f} GFLOP/s ({t * 1e3:.2f} ms{extra})")
    if "conv" in only:
        print(f"\nconv2d, ResNet-18 layer shapes, batch {args.batch} (median of {args.repeat})")
        print(f"  {'layer':20s} {'fwd GFLOP/s':>12s} {'fwd+bwd GFLOP/s':>16s} {'fwd+bwd ms':>11s}"
              f" {'cuDNN ms':>9s} {'ratio':>6s}")
        for name, fwd, both, tb, tt in bench_convs(be, args.batch, args.repeat):
            ref = f" {tt * 1e3:9.2f} {tt / tb:6.2f}" if tt else ""
            print(f"  {name:20s} {fwd:12.1f} {both:16.1f} {tb * 1e3:11.2f}{ref}")
    if "train" in only:
        print("\ntrain steps (SGD momentum), images/s; ratio = minigrad / PyTorch")
        for name, images, mg_t, t_t in bench_train(args.repeat):
            ref = (f"  PyTorch {images / t_t:9.0f} img/s ({t_t:.3f} s)  ratio {t_t / mg_t:.3f}"
                   if t_t else "")
            print(f"  {name:40s} minigrad {images / mg_t:9.0f} img/s ({mg_t:.3f} s){ref}")
    print(f"\nmemory pool: {be.memory_stats()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
