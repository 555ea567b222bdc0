"""Seconds from process start to the end of the first CUDA train step, cold then warm cache.

    python -m benchmarks.cuda_first_step [--model lenet5|resnet18] [--cache-dir DIR]

Runs the same child process twice with one ``NUMBA_CACHE_DIR`` (a fresh temporary folder
unless ``--cache-dir`` is given): the first compiles every CUDA kernel the step launches and
writes them to the cache, the second should load them from it.  Each child times one
SGD-momentum step of the model at batch 128 (``zero_grad``, forward, cross-entropy,
backward, ``step``, then a device synchronise) from its own start, and the parent prints
both times and the number of cache index files written.  Needs a GPU (the simulator does
not compile kernels).
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys, time
t0 = float(sys.argv[1])
sys.path.insert(0, sys.argv[3])
import numpy as np
import minigrad as mg
import minigrad.nn.functional as F
import minigrad.optim as optim
import zoo
name = sys.argv[2]
if name == "lenet5":
    model, shape = zoo.lenet5(), (128, 1, 28, 28)
else:
    model, shape = zoo.resnet18(num_classes=10, stem="cifar"), (128, 3, 32, 32)
model.to("cuda")
opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
rng = np.random.default_rng(0)
x = mg.tensor(rng.standard_normal(shape, dtype=np.float32), device="cuda")
y = mg.tensor(rng.integers(0, 10, 128), device="cuda")
opt.zero_grad()
F.cross_entropy(model(x), y).backward()
opt.step()
loss = F.cross_entropy(model(x), y).item()   # waits for the device
print(json.dumps({"seconds": time.time() - t0, "loss": loss}))
"""


def first_step_seconds(model, cache_dir):
    """Seconds from a child process's start to the end of its first train step."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    out = subprocess.run([sys.executable, "-c", CHILD, str(time.time()), model, ROOT],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"cuda_first_step: the child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    """Run the child twice on one cache folder and print what each took."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("lenet5", "resnet18"), default="lenet5")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="minigrad_cuda_cache_")
    cold = first_step_seconds(args.model, cache_dir)
    index_files = len(glob.glob(os.path.join(cache_dir, "**", "*.nbi"), recursive=True))
    warm = first_step_seconds(args.model, cache_dir)
    print(f"{args.model}: first step after process start: cold cache {cold['seconds']:.1f} s, "
          f"warm cache {warm['seconds']:.1f} s ({index_files} cache index files in {cache_dir}; "
          f"losses {cold['loss']:.4f} / {warm['loss']:.4f})")
    return cold, warm


if __name__ == "__main__":
    main()
