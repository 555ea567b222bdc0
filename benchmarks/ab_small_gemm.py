"""In-process A/B of small_gemm: each workload timed with the switch on and off, alternately.

    python -m benchmarks.ab_small_gemm [--rounds 5] [--workloads lenet,stem,...]

Each round times ``--steps`` calls of the workload with small_gemm on, then off (the order
alternates between rounds), after warm-up calls in both states; the table gives the median
over rounds of each state's per-round median and the ratio off / on (above 1: small_gemm
faster).  Workloads: LeNet-5 train step (batch 128), ResNet-18 CIFAR train step (batch 32),
conv2d forward + backward rows of the bench (batch 32): the stem 3->64 3x3 in NCHW and
channels-last, the 1x1 stride-2 64->128 in channels-last; and the bench's transformer block.
"""

import argparse
import statistics

import numpy as np

import minigrad as mg
import zoo
from benchmarks.ab_pairs import conv_row
from benchmarks.run_all import mg_train_step, timeit, transformer_step
from minigrad.cpu import small_gemm


def _train_step(model_name):
    batch = 128 if model_name == "lenet" else 32
    rng = np.random.default_rng(0)
    shape = (batch, 1, 28, 28) if model_name == "lenet" else (batch, 3, 32, 32)
    model = zoo.lenet5() if model_name == "lenet" else zoo.resnet18(num_classes=10, stem="cifar")
    return mg_train_step(model, rng.standard_normal(shape).astype(np.float32),
                         rng.integers(0, 10, batch))


WORKLOADS = {
    "lenet": ("LeNet-5 train step, batch 128", lambda: _train_step("lenet"), 30),
    "resnet": ("ResNet-18 CIFAR train step, batch 32", lambda: _train_step("resnet"), 3),
    "stem": ("conv 3->64 32x32 k3 s1 fwd+bwd", lambda: conv_row(3, 64, 32, 3, 1, False), 30),
    "stem-cl": ("conv 3->64 32x32 k3 s1 fwd+bwd, channels-last",
                lambda: conv_row(3, 64, 32, 3, 1, True), 30),
    "1x1-cl": ("conv 64->128 32x32 k1 s2 fwd+bwd, channels-last",
               lambda: conv_row(64, 128, 32, 1, 2, True), 30),
    "transformer": ("transformer block fwd+bwd, 16x128 tokens, width 256",
                    lambda: transformer_step(mg, mg.tensor), 10),
}


def main(argv=None):
    """Print the on/off table per workload (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=0, help="calls per round (0: per workload)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    args = ap.parse_args(argv)
    if not small_gemm.SUPPORTED:
        raise SystemExit("small_gemm is not used on this CPU (needs AVX2 and FMA, or AVX-512)")
    was = small_gemm.enabled()
    print("| workload | small_gemm on | off | ratio off / on (rounds) |")
    print("|---|---:|---:|---|")
    try:
        for name in args.workloads.split(","):
            title, make, steps = WORKLOADS[name]
            steps = args.steps or steps
            fn = make()
            times = {True: [], False: []}
            for on in (True, False):
                small_gemm.set_enabled(on)
                for _ in range(3):
                    fn()
            for r in range(args.rounds):
                for on in ((True, False) if r % 2 == 0 else (False, True)):
                    small_gemm.set_enabled(on)
                    times[on].append(timeit(fn, steps, warmup=0))
            ratios = [off / on for on, off in zip(times[True], times[False])]
            print(f"| {title} | {statistics.median(times[True]) * 1e3:.2f} ms | "
                  f"{statistics.median(times[False]) * 1e3:.2f} ms | "
                  f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")
    finally:
        small_gemm.set_enabled(was)


if __name__ == "__main__":
    main()
