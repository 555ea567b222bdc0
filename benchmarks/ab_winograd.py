"""In-process A/B of minigrad/cpu/winograd.py against its version at a git revision.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.ab_winograd --rev a07b5d3 \
        [--rounds 5] [--resnet-rounds 10] [--batch 32]

The old file is loaded from git as a second module (its relative imports pointed at the
current package; a version from before F(4x4, 3x3) gets the three functions conv.py now
calls, answering "F(2x2, 3x3)"), so both versions run in this process, alternately:
separate processes on these machines differ by more than the changes measured
(BENCHMARKS_perf.md, change 78).  Prints, per 3x3 stride-1 ResNet-18 layer (channels-last,
2 threads), the medians of forward and backward and the median and range of the f+b speed
ratio (old time / new time) of F(2x2, 3x3), after checking that both give the same results;
then the same ratio for a whole ResNet-18 train step, with ``conv.winograd`` switched between
them (each version then also picks its own variants: F(4x4, 3x3) where the new one would).
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.run_all import mg_train_step, timeit  # noqa: E402

SHAPES = [(64, 32), (128, 16), (256, 8), (512, 4)]   # C = K, H = W


def load_old(rev):
    """minigrad.cpu.winograd as it was at ``rev``, as a separate module.  Its source is kept
    in the temporary directory (unchanged files keep their Numba cache between runs)."""
    src = subprocess.run(["git", "show", f"{rev}:minigrad/cpu/winograd.py"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    src = src.replace("from . import ", "from minigrad.cpu import ").replace(
        "from .", "from minigrad.cpu.")
    name = "winograd_at_" + "".join(ch if ch.isalnum() else "_" for ch in rev)
    folder = os.path.join(tempfile.gettempdir(), "minigrad_ab_winograd")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".py")
    if not os.path.exists(path) or open(path).read() != src:
        with open(path + ".tmp", "w") as f:
            f.write(src)
        os.replace(path + ".tmp", path)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod   # Numba's cache re-imports a kernel's module by name
    spec.loader.exec_module(mod)
    if not hasattr(mod, "tile_size"):   # before F(4x4, 3x3): conv.py's calls into it
        plain = mod.transform_weights
        mod.tile_size = lambda N, C, K, OH, OW: 2
        mod.positions = lambda ts: 16
        mod.transform_weights = lambda w, dt, ts=2: plain(w, dt)
    return mod


def _ratio_text(old, new):
    r = np.array(old) / np.array(new)
    return f"{np.median(r):.2f}x [{r.min():.2f}-{r.max():.2f}]"


def layers(old, new, rounds, batch):
    """Per-layer A/B of forward and backward (see the module docstring)."""
    from minigrad.cpu.conv import _dynamic_schedule, _single_blas

    rng = np.random.default_rng(0)
    empty = np.empty(0, np.float32)
    for C, H in SHAPES:
        x = rng.standard_normal((batch, H, H, C)).astype(np.float32)
        gy = rng.standard_normal((batch, H, H, C)).astype(np.float32)
        w = (rng.standard_normal((C, C, 3, 3)) * 0.05).astype(np.float32)
        U = new.transform_weights(w, np.float32)
        b = np.zeros(C, np.float32)
        times = {"old": [], "new": []}
        with _single_blas, _dynamic_schedule():
            outs = {}
            for name, mod in (("old", old), ("new", new)):
                y, gx = np.empty_like(gy), np.empty_like(x)
                mod.forward(x, U, b, 1, 1, H, H, y)
                gw = mod.backward(x, gy, U, 1, 1, True, True, gx, empty)
                outs[name] = (y, gx, gw)
            for a, c in zip(outs["old"], outs["new"]):
                np.testing.assert_allclose(c, a, rtol=1e-3, atol=1e-3)
            y, gx = outs["new"][0], outs["new"][1]
            for _ in range(rounds):
                for name, mod in (("old", old), ("new", new)):
                    tf = timeit(lambda: mod.forward(x, U, b, 1, 1, H, H, y), 10)
                    tb = timeit(lambda: mod.backward(x, gy, U, 1, 1, True, True, gx, empty), 10)
                    times[name].append((tf * 1e3, tb * 1e3))
        o, n = np.array(times["old"]), np.array(times["new"])
        print(f"| {C}->{C} {H}x{H} | {np.median(o[:, 0]):.2f} / {np.median(n[:, 0]):.2f} | "
              f"{np.median(o[:, 1]):.2f} / {np.median(n[:, 1]):.2f} | "
              f"{_ratio_text(o.sum(1), n.sum(1))} |")


def resnet(old, new, rounds, batch):
    """Whole ResNet-18 train steps (SGD momentum), conv.winograd switched each round."""
    import zoo
    from minigrad.cpu import conv

    step = mg_train_step(zoo.resnet18(num_classes=10, stem="cifar"),
                         np.random.default_rng(1).standard_normal((batch, 3, 32, 32))
                         .astype(np.float32), np.random.default_rng(0).integers(0, 10, batch))

    times = {"old": [], "new": []}
    try:
        for _ in range(rounds):
            for name, mod in (("old", old), ("new", new)):
                conv.winograd = mod
                times[name].append(timeit(step, 5) * 1e3)
    finally:
        conv.winograd = new
    print(f"ResNet-18 step, batch {batch}: {np.median(times['old']):.0f} ms old, "
          f"{np.median(times['new']):.0f} ms new, ratio {_ratio_text(times['old'], times['new'])}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", required=True, help="git revision of the old winograd.py")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--resnet-rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    import numba

    from minigrad.cpu import winograd
    old = load_old(args.rev)
    print(f"old: winograd.py at {args.rev}; threads {numba.get_num_threads()}; batch {args.batch}")
    print("| layer | forward ms, old / new | backward ms, old / new | f+b ratio |")
    print("|---|---:|---:|---|")
    layers(old, winograd, args.rounds, args.batch)
    if args.resnet_rounds:
        resnet(old, winograd, args.resnet_rounds, args.batch)


if __name__ == "__main__":
    main()
