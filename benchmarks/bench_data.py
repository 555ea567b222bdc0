"""DataLoader throughput (images/s) for MNIST and CIFAR-shaped data.

    python benchmarks/bench_data.py [--data-dir ../shared/data] [--repeats 3]

Cases (batch 128, shuffle on, every epoch a full pass over the data):
  * MNIST train (60,000 x 1 x 28 x 28 from the IDX files; the shipped 10,000-image subset if
    the full set is missing), normalised with mean 0.1307 / std 0.3081;
  * CIFAR-shaped: 50,000 x 3 x 32 x 32 uint8 (random pixels, CIFAR-10 mean/std), with the
    standard augmentation (random crop, padding 4, + horizontal flip), and without it;
  * each as NumPy batches (``loader.numpy_batches()``) and as minigrad Tensors (``for x, y in
    loader``), prefetch off and on;
  * a per-sample reference (``np.stack([ds[i] ...])``), to show what vectorising buys;
  * overlap: a consumer that spends a fixed time per batch in a GIL-releasing wait
    (time.sleep, standing in for a training step); the loader's cost beyond that wait with
    and without prefetch.
Reports the best of ``--repeats`` runs after one warm-up pass (Numba compilation excluded).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minigrad.data import (CIFAR10_MEAN, CIFAR10_STD, ArrayDataset, DataLoader,  # noqa: E402
                           RandomCropFlip, load_mnist)


def _epoch(loader, tensors: bool, step_s: float = 0.0) -> int:
    n = 0
    it = iter(loader) if tensors else loader.numpy_batches()
    for x, _ in it:
        n += x.shape[0]
        if step_s:
            time.sleep(step_s)
    return n


def timed(loader, tensors=False, repeats=3, step_s=0.0, max_batches=None):
    """Best images/s over ``repeats`` full epochs (after one warm-up batch)."""
    next(iter(loader.numpy_batches()))  # compile / warm caches
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = _epoch(loader, tensors, step_s)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def per_sample(ds, batch=128, batches=100, seed=0):
    """Images/s of the naive path: index samples one by one and stack."""
    order = np.random.default_rng(seed).permutation(len(ds))
    t0 = time.perf_counter()
    for b in range(batches):
        idx = order[b * batch:(b + 1) * batch]
        np.stack([ds[int(i)][0] for i in idx])
    return batches * batch / (time.perf_counter() - t0)


def main(argv=None) -> None:
    """Run every case and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args(argv)
    B, R = args.batch_size, args.repeats

    try:
        import minigrad
        has_tensor = hasattr(minigrad, "tensor")
    except ImportError:
        has_tensor = False

    mnist = load_mnist(args.data_dir, train=True)
    rng = np.random.default_rng(0)
    cifar = ArrayDataset(rng.integers(0, 256, size=(50000, 3, 32, 32), dtype=np.uint8),
                         rng.integers(0, 10, size=50000), CIFAR10_MEAN, CIFAR10_STD)
    aug = RandomCropFlip(padding=4, flip_p=0.5)
    mname = "MNIST subset" if mnist.is_subset else "MNIST"
    rows = []

    def add(name, ds, transform, tensors, prefetch):
        L = DataLoader(ds, B, shuffle=True, seed=0, transform=transform, prefetch=prefetch)
        rows.append((name, "Tensor" if tensors else "NumPy", "on" if prefetch else "off",
                     f"{timed(L, tensors, R):,.0f}"))

    for tensors in ([False, True] if has_tensor else [False]):
        for prefetch in (False, True):
            add(f"{mname} {len(mnist)}x1x28x28", mnist, None, tensors, prefetch)
            add("CIFAR-shaped 50000x3x32x32 + crop/flip", cifar, aug, tensors, prefetch)
            add("CIFAR-shaped 50000x3x32x32, no aug", cifar, None, tensors, prefetch)

    print(f"# minigrad.data DataLoader throughput (batch {B}, shuffle, best of {R} epochs)")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} cpus, "
          f"{platform.processor() or platform.machine()}\n")
    print("| dataset | output | prefetch | images/s |\n|---|---|---|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")

    print("\nPer-sample reference (ds[i] one by one, np.stack; 100 batches):")
    print(f"- {mname}: {per_sample(mnist, B):,.0f} images/s")
    print(f"- CIFAR-shaped (no aug): {per_sample(cifar, B):,.0f} images/s")

    print("\nOverlap with a simulated 5 ms training step per batch (time.sleep), NumPy output,")
    print("CIFAR-shaped + crop/flip, 100 batches: loader cost beyond the step, ms per batch")
    sub = ArrayDataset(cifar.data[:100 * B], cifar.targets[:100 * B], CIFAR10_MEAN, CIFAR10_STD)
    for prefetch in (False, True):
        L = DataLoader(sub, B, shuffle=True, seed=0, transform=aug, prefetch=prefetch)
        next(iter(L.numpy_batches()))
        t0 = time.perf_counter()
        nb = _epoch(L, False, 0.005) // B
        extra = (time.perf_counter() - t0) / nb - 0.005
        print(f"- prefetch {'on ' if prefetch else 'off'}: {extra * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
