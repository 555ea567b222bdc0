"""Numba compile time of the whole CPU kernel set: empty cache against warm cache.

    python benchmarks/compile_time.py            # runs the workload twice in fresh processes

The workload calls every CPU backend kernel family once in float32 (the training dtype):
elementwise and activation gradients, reductions, matmul/linear, conv2d forward and
backward on the LeNet and ResNet-18 paths (direct, tiled, 1x1, strided, both Winograd variants), max/avg pooling,
log-softmax, softmax cross-entropy, BatchNorm (train, eval, backward, NCHW and
channels-last), LRN, dropout, SGD/Adam/AdamW updates.  The first process gets an empty
``NUMBA_CACHE_DIR``; the second reuses it.
"""

import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOAD = r"""
import numpy as np
import minigrad as mg, minigrad.nn as nn, minigrad.nn.functional as F, minigrad.optim as optim, zoo
mg.manual_seed(0)
rng = np.random.default_rng(0)
def step(model, x, y, opt):
    loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
    return loss
lenet = zoo.lenet5()
step(lenet, mg.tensor(rng.standard_normal((128, 1, 28, 28)).astype(np.float32)),
     mg.tensor(rng.integers(0, 10, 128)), optim.SGD(lenet.parameters(), lr=0.01, momentum=0.9))
res = zoo.resnet18(num_classes=10, stem="cifar")
step(res, mg.tensor(rng.standard_normal((4, 3, 32, 32)).astype(np.float32)),
     mg.tensor(rng.integers(0, 10, 4)), optim.Adam(res.parameters()))
# batch 16: layer1 has 4096 Winograd tiles and takes the blocked variant (batch 4: whole-batch)
step(res, mg.tensor(rng.standard_normal((16, 3, 32, 32)).astype(np.float32)),
     mg.tensor(rng.integers(0, 10, 16)), optim.Adam(res.parameters()))
alex = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.LocalResponseNorm(5),
                     nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 16 * 16, 10),
                     nn.BatchNorm1d(10), nn.Sigmoid())
step(alex, mg.tensor(rng.standard_normal((4, 3, 32, 32)).astype(np.float32)),
     mg.tensor(rng.integers(0, 10, 4)), optim.AdamW(alex.parameters()))
res.eval(); alex.eval()
with mg.no_grad():
    res(mg.tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32)))
    alex(mg.tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32)))
x = mg.tensor(rng.standard_normal((64, 100)).astype(np.float32), requires_grad=True)
(mg.tanh(x).log_softmax(1).max(1).sum() + (x @ x.T).mean()).backward()
"""


def run(cache_dir):
    """Seconds for one fresh process (import + workload) with ``cache_dir`` as Numba's cache."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", WORKLOAD], cwd=ROOT, env=env, check=True)
    return time.perf_counter() - t0


def main():
    """Print empty-cache and warm-cache wall times."""
    with tempfile.TemporaryDirectory() as cache:
        cold = run(cache)
        warm = min(run(cache), run(cache))
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[0]
    print(f"whole CPU kernel set, process start to end of workload: empty cache {cold:.1f} s, "
          f"warm cache {warm:.2f} s (load {load})")


if __name__ == "__main__":
    main()
