"""Depthwise convolution (groups equal to the input channels) against PyTorch, side by side.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_depthwise [--repeat 20]

Forward + backward (x is a leaf, so dX, dW and no bias), batch 32, 32x32, 3x3 filters with
padding 1, NCHW, two threads for both frameworks; timed in alternating blocks in one
process (run_all.time_pair); % of sgemm is against NumPy's sgemm timed after the rows.
``--grouped`` also times minigrad's one-convolution-per-group path (what ``groups`` ran
before the depthwise kernels) by hiding the CPU backend's depthwise methods for that row.
"""

import argparse

import numpy as np

import minigrad as mg
from benchmarks.run_all import THREADS, format_table, sgemm_rate, time_pair
from minigrad.cpu.backend import CPUBackend

# (channels, channel multiplier, stride)
SHAPES = [(32, 1, 1), (64, 1, 1), (128, 1, 2), (32, 2, 1)]
BATCH = 32
SIZE = 32


def _row(torch, c, m, stride, repeat):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, c, SIZE, SIZE)).astype(np.float32)
    w = (rng.standard_normal((c * m, 1, 3, 3)) * 0.1).astype(np.float32)
    out = (SIZE + 2 - 3) // stride + 1
    gy = np.ones((BATCH, c * m, out, out), np.float32)
    xm, wm, gym = mg.tensor(x, requires_grad=True), mg.tensor(w, requires_grad=True), mg.tensor(gy)

    def mg_run():
        mg.conv2d(xm, wm, stride=stride, padding=1, groups=c).backward(gym)

    torch_run = None
    if torch is not None:
        xt = torch.from_numpy(x).requires_grad_()
        wt = torch.from_numpy(w).requires_grad_()
        gyt = torch.from_numpy(gy)

        def torch_run():
            torch.nn.functional.conv2d(xt, wt, stride=stride, padding=1, groups=c).backward(gyt)

    flops = 3 * 2 * BATCH * c * m * 9 * out * out
    name = f"depthwise 3x3 {c} channels x{m} stride {stride}, batch {BATCH} {SIZE}x{SIZE}, fwd+bwd"
    return time_pair({"workload": name, "flops": flops}, mg_run, torch_run, repeat), mg_run


def main(argv=None):
    """Print the table (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--grouped", action="store_true", help="also time the per-group path")
    args = ap.parse_args(argv)
    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        torch = None
    import numba
    numba.set_num_threads(THREADS)
    rows = []
    for c, m, stride in SHAPES:
        row, mg_run = _row(torch, c, m, stride, args.repeat)
        rows.append(row)
        if args.grouped:
            saved = CPUBackend.depthwise_conv2d
            del CPUBackend.depthwise_conv2d
            try:
                rows.append(time_pair({"workload": row["workload"] + ", per-group path",
                                       "flops": row["flops"]}, mg_run, None, max(3, args.repeat // 4)))
            finally:
                CPUBackend.depthwise_conv2d = saved
    print(format_table(rows, sgemm_rate(5)))


if __name__ == "__main__":
    main()
