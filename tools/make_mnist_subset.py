"""Build minigrad/data/mnist_subset.npz: a class-balanced, deterministic MNIST subset.

    python tools/make_mnist_subset.py [--data-dir ../shared/data] [--train-per-class 1000]
                                      [--test-per-class 200] [--seed 0] [--out PATH]

From each official split, a seeded permutation is walked and the first K images of each
digit are kept (K = 1000 train, 200 test); the kept images stay in their original order.
The .npz (np.savez_compressed, uint8 / int32 arrays only, loads with allow_pickle=False)
holds train_images (N, 28, 28) uint8, train_labels uint8, train_index int32 (positions in
the official file), and the same for test.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minigrad.data import MNIST  # noqa: E402


def balanced_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of the first ``per_class`` samples of every class in a seeded
    permutation of ``labels``."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    chosen = []
    for c in range(10):
        of_c = perm[labels[perm] == c][:per_class]
        if len(of_c) < per_class:
            raise SystemExit(f"class {c} has only {len(of_c)} samples, need {per_class}")
        chosen.append(of_c)
    return np.sort(np.concatenate(chosen)).astype(np.int32)


def main(argv=None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "minigrad" / "data" / "mnist_subset.npz"))
    args = ap.parse_args(argv)
    arrays = {}
    for split, train, k in (("train", True, args.train_per_class), ("test", False, args.test_per_class)):
        ds = MNIST(args.data_dir, train=train)
        idx = balanced_indices(ds.targets, k, args.seed + (0 if train else 1))
        arrays[f"{split}_images"] = ds.data[idx, 0]
        arrays[f"{split}_labels"] = ds.targets[idx].astype(np.uint8)
        arrays[f"{split}_index"] = idx
        print(f"{split}: {len(idx)} images from {ds.source}")
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
