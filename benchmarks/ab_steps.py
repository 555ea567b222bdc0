"""A/B of whole train steps: two minigrad source trees and PyTorch, interleaved in rounds.

    python -m benchmarks.ab_steps --old /tmp/orig --rounds 3 [--threads 1 --cpu-time]

Each (round, variant) runs in a fresh subprocess (warm Numba cache): 3 warm-up steps,
then the median of ``--steps`` steps.  Interleaving rounds puts the variants under the
same background load; ``--cpu-time`` with one thread measures process CPU time, which
is nearly independent of other processes' load (for kernel-efficiency comparisons).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CODE = r"""
import json, os, statistics, sys, time
import numpy as np
fw, model_name, batch, steps, threads, cpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
clock = time.process_time if cpu else time.perf_counter
shape = (batch, 1, 28, 28) if model_name == "lenet" else (batch, 3, 32, 32)
x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
y = np.random.default_rng(0).integers(0, 10, batch)
if fw == "torch":
    import torch
    torch.set_num_threads(threads)
    sys.path.insert(0, os.environ["MG_BENCH_ROOT"])
    from benchmarks.torch_models import TorchLeNet5, TorchResNet18Cifar
    model = TorchLeNet5() if model_name == "lenet" else TorchResNet18Cifar()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    def step():
        loss = torch.nn.functional.cross_entropy(model(xt), yt); opt.zero_grad(); loss.backward(); opt.step()
else:
    import numba
    numba.set_num_threads(threads)
    import minigrad as mg, minigrad.nn.functional as F, minigrad.optim as optim, zoo
    model = zoo.lenet5() if model_name == "lenet" else zoo.resnet18(num_classes=10, stem="cifar")
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xm, ym = mg.tensor(x), mg.tensor(y)
    def step():
        loss = F.cross_entropy(model(xm), ym); opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
ts = []
for _ in range(steps):
    t0 = clock(); step(); ts.append(clock() - t0)
print(json.dumps({"median_s": statistics.median(ts), "min_s": min(ts)}))
"""


def run(variant, tree, model, batch, steps, threads, cpu):
    env = dict(os.environ, MG_BENCH_ROOT=ROOT, PYTHONPATH=tree)
    if threads == 1:
        env["OPENBLAS_NUM_THREADS"] = "1"
    fw = "torch" if variant == "torch" else "minigrad"
    out = subprocess.run([sys.executable, "-c", CODE, fw, model, str(batch), str(steps), str(threads),
                          "1" if cpu else "0"], capture_output=True, text=True, cwd=tree, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, help="root of the baseline minigrad tree")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cpu-time", action="store_true")
    p.add_argument("--only", default="lenet,resnet")
    a = p.parse_args(argv)
    with open("/proc/loadavg") as fh:
        print("load at start:", fh.read().split()[0], "threads", a.threads, "cpu-time" if a.cpu_time else "wall")
    for model in a.only.split(","):
        batch, steps = (128, 20) if model == "lenet" else (32, 5)
        res = {"old": [], "new": [], "torch": []}
        for _ in range(a.rounds):
            for variant, tree in (("old", a.old), ("new", ROOT), ("torch", ROOT)):
                res[variant].append(run(variant, tree, model, batch, steps, a.threads, a.cpu_time)["median_s"])
        med = {k: statistics.median(v) for k, v in res.items()}
        print(f"{model} batch {batch}: " + "; ".join(
            f"{k} {1e3 * med[k]:.2f} ms (rounds: {', '.join(f'{1e3 * t:.1f}' for t in v)})" for k, v in res.items()))
        print(f"   new/old speed-up {med['old'] / med['new']:.2f}x; torch/new ratio {med['torch'] / med['new']:.2f}x; "
              f"torch/old {med['torch'] / med['old']:.2f}x")
    with open("/proc/loadavg") as fh:
        print("load at end:", fh.read().split()[0])


if __name__ == "__main__":
    main()
