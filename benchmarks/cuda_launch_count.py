"""Kernel launches and memory-pool allocations in one CUDA train step, counted without a GPU.

    python -m benchmarks.cuda_launch_count [--model lenet5|resnet18] [--batch 128] [--size N]

On a GPU minigrad's train steps are bound by the host: each launch costs a few tenths of a
millisecond in Numba's launch path (BENCHMARKS.md, "GPU"), so the number of launches a step
makes is what sets its speed.  This counts them under Numba's CUDA simulator with every
kernel replaced by a no-op (the control flow does not depend on the values, so the counts
are those of a real step, in seconds instead of the simulator's hours): one SGD-momentum
step of the model (``zero_grad``, forward, cross-entropy, backward, ``step``) after a
warm-up step, at bench_cuda.py's batch of 128 by default.  Prints the launches by kernel
(factory-made kernels by their factory) and the backend's ``empty`` calls (each one a
memory-pool allocation on a GPU).
"""

import argparse
import collections
import os
import sys

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from numba.cuda.simulator import kernel as _sim_kernel  # noqa: E402


def count_step(model_name="lenet5", batch=128, size=None):
    """{"launches": Counter of kernel names, "allocations": int} for one train step."""
    import minigrad as mg
    import minigrad.nn.functional as F
    import minigrad.optim as optim
    import zoo

    launches = collections.Counter()
    allocations = [0]
    be = mg.backend.get("cuda")
    real_getitem = _sim_kernel.FakeCUDAKernel.__getitem__
    real_empty = be.empty

    def stub_launch(kernel, config):
        launches[kernel.fn.__qualname__.replace(".<locals>", "")] += 1
        return lambda *args, **kwargs: None

    def counted_empty(shape, dtype):
        allocations[0] += 1
        return real_empty(shape, dtype)

    if model_name == "lenet5":
        model, shape = zoo.lenet5(), (batch, 1, size or 28, size or 28)
    elif model_name == "resnet18":
        model, shape = zoo.resnet18(num_classes=10, stem="cifar"), (batch, 3, size or 32, size or 32)
    else:
        raise ValueError(f"cuda_launch_count: unknown model {model_name!r}; use lenet5 or resnet18")
    rng = np.random.default_rng(0)
    x = mg.tensor(rng.standard_normal(shape, dtype=np.float32), device="cuda")
    y = mg.tensor(rng.integers(0, 10, batch), device="cuda")
    _sim_kernel.FakeCUDAKernel.__getitem__ = stub_launch
    be.empty = counted_empty
    try:
        model.to("cuda")
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for step in range(2):
            if step == 1:
                launches.clear()
                allocations[0] = 0
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    finally:
        _sim_kernel.FakeCUDAKernel.__getitem__ = real_getitem
        del be.empty
    return {"launches": launches, "allocations": allocations[0]}


def main():
    """Parse arguments, count one step, print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5", choices=("lenet5", "resnet18"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=None, help="image side (default 28 / 32)")
    args = parser.parse_args()
    counts = count_step(args.model, args.batch, args.size)
    launches = counts["launches"]
    print(f"{args.model}, batch {args.batch}: {sum(launches.values())} kernel launches, "
          f"{counts['allocations']} pool allocations in one train step")
    for name, n in launches.most_common():
        print(f"  {n:5d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
