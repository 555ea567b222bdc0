"""A/B of the Winograd F(2x2, 3x3) variants against the im2col tiles path (and PyTorch)
on the 3x3 stride-1 ResNet-18 (CIFAR stem) layers, forward and forward+backward,
channels-last input, 2 threads, one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_winograd.py [--batch 32]
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.run_all import timeit  # noqa: E402

SHAPES = [  # C, K, H
    (64, 64, 32), (128, 128, 16), (256, 256, 8), (512, 512, 4),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    import numba
    numba.set_num_threads(2)
    from minigrad.cpu import conv
    try:
        import torch
        torch.set_num_threads(2)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    print(f"batch {args.batch}, load {os.getloadavg()[0]:.2f}, OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    from minigrad.cpu import winograd
    modes = {"im2col": (False, None), "blocked": (True, 1e30), "whole": (True, 0.0)}
    print("f = forward, f+b = forward + both backward passes, ms (median); im2col = the tiles "
          "path; blocked / whole = the two Winograd variants")
    print(f"{'layer':>20} | " + " ".join(f"{m + ' f':>10}" for m in modes) + f" {'torch f':>9} | "
          + " ".join(f"{m + ' f+b':>12}" for m in modes) + f" {'torch f+b':>10}")
    for C, K, H in SHAPES:
        N = args.batch
        x = rng.standard_normal((N, H, H, C)).astype(np.float32).transpose(0, 3, 1, 2)
        w = (rng.standard_normal((K, C, 3, 3)) * 0.05).astype(np.float32)
        gy = rng.standard_normal((N, H, H, K)).astype(np.float32).transpose(0, 3, 1, 2)
        res = {}
        saved = (conv.USE_WINOGRAD, winograd.WHOLE_BATCH_RATIO, winograd.MIN_TILES)
        winograd.MIN_TILES = 0
        for mode, (use, ratio) in modes.items():
            conv.USE_WINOGRAD = use
            if ratio is not None:
                winograd.WHOLE_BATCH_RATIO = ratio

            def fwd():
                return conv.conv2d(x, w, None, (1, 1), (1, 1), (1, 1), return_weights=True)

            def fb():
                y, wf = fwd()
                return conv.conv2d_backward(x, w, gy, (1, 1), (1, 1), (1, 1), True, True, False,
                                            wf=wf)
            res[mode] = (timeit(fwd, args.reps, warmup=1), timeit(fb, args.reps, warmup=1))
        conv.USE_WINOGRAD, winograd.WHOLE_BATCH_RATIO, winograd.MIN_TILES = saved
        tf = tfb = float("nan")
        if torch is not None:
            xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
            wt = torch.from_numpy(w).requires_grad_(True)
            gt = torch.from_numpy(np.ascontiguousarray(gy))

            def tfwd():
                with torch.no_grad():
                    return torch.nn.functional.conv2d(xt, wt, padding=1)

            def tfb():
                out = torch.nn.functional.conv2d(xt, wt, padding=1)
                out.backward(gt)
            tf, tfb = timeit(tfwd, args.reps, warmup=1), timeit(tfb, args.reps, warmup=1)
        ms = 1e3
        print(f"{C:>5}->{K:<5} {H:>3}x{H:<3} | " + " ".join(f"{res[m][0] * ms:10.2f}" for m in modes)
              + f" {tf * ms:9.2f} | " + " ".join(f"{res[m][1] * ms:12.2f}" for m in modes)
              + f" {tfb * ms:10.2f}")
    print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
