"""Depthwise convolution (groups equal to the input channels) against PyTorch, side by side.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_depthwise [--repeat 20]
    python -m benchmarks.bench_depthwise --device cuda     # on a GPU, against cuDNN

Forward + backward (x is a leaf, so dX, dW and no bias), batch 32, 32x32 (``--batch``,
``--size``), 3x3 filters with padding 1, NCHW; on the CPU two threads for both frameworks,
with ``--device cuda`` both on the GPU (each call synchronised).  Timed in alternating
blocks in one process (run_all.time_pair); on the CPU, % of sgemm is against NumPy's sgemm
timed after the rows.  ``--grouped`` also times minigrad's one-convolution-per-group path
(what ``groups`` ran before the depthwise kernels) by hiding the backend's depthwise methods
for that row.
"""

import argparse

import numpy as np

import minigrad as mg
from benchmarks.run_all import THREADS, format_table, sgemm_rate, time_pair

# (channels, channel multiplier, stride)
SHAPES = [(32, 1, 1), (64, 1, 1), (128, 1, 2), (32, 2, 1)]


def _row(torch, c, m, stride, batch, size, device, repeat):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c, size, size)).astype(np.float32)
    w = (rng.standard_normal((c * m, 1, 3, 3)) * 0.1).astype(np.float32)
    out = (size + 2 - 3) // stride + 1
    gy = np.ones((batch, c * m, out, out), np.float32)
    xm = mg.tensor(x, requires_grad=True, device=device)
    wm = mg.tensor(w, requires_grad=True, device=device)
    gym = mg.tensor(gy, device=device)
    be = mg.backend.get(device)
    sync = getattr(be, "synchronize", lambda: None)

    def mg_run():
        mg.conv2d(xm, wm, stride=stride, padding=1, groups=c).backward(gym)
        sync()

    torch_run = None
    if torch is not None:
        tdev = "cuda" if device == "cuda" else "cpu"
        xt = torch.from_numpy(x).to(tdev).requires_grad_()
        wt = torch.from_numpy(w).to(tdev).requires_grad_()
        gyt = torch.from_numpy(gy).to(tdev)
        tsync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def torch_run():
            torch.nn.functional.conv2d(xt, wt, stride=stride, padding=1, groups=c).backward(gyt)
            tsync()

    name = f"depthwise 3x3 {c} channels x{m} stride {stride}, batch {batch} {size}x{size}, fwd+bwd"
    row = {"workload": name}
    if device == "cpu":   # GFLOP/s and % of sgemm only against this CPU's sgemm
        row["flops"] = 3 * 2 * batch * c * m * 9 * out * out
    return time_pair(row, mg_run, torch_run, repeat), mg_run


def _torch(device):
    """PyTorch for the comparison: None when missing, or without CUDA on a CUDA run."""
    try:
        import torch
    except ImportError:
        return None
    if device == "cuda":
        return torch if torch.cuda.is_available() else None
    torch.set_num_threads(THREADS)
    return torch


def main(argv=None):
    """Print the table (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--grouped", action="store_true", help="also time the per-group path")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=32, help="input height and width")
    args = ap.parse_args(argv)
    torch = _torch(args.device)
    import numba
    numba.set_num_threads(THREADS)
    be_class = type(mg.backend.get(args.device))
    rows = []
    for c, m, stride in SHAPES:
        row, mg_run = _row(torch, c, m, stride, args.batch, args.size, args.device, args.repeat)
        rows.append(row)
        if args.grouped:
            saved = be_class.depthwise_conv2d
            del be_class.depthwise_conv2d
            try:
                grouped = {k: v for k, v in row.items() if k in ("workload", "flops")}
                grouped["workload"] += ", per-group path"
                rows.append(time_pair(grouped, mg_run, None, max(3, args.repeat // 4)))
            finally:
                be_class.depthwise_conv2d = saved
    print(format_table(rows, sgemm_rate(5) if args.device == "cpu" else 0.0))


if __name__ == "__main__":
    main()
