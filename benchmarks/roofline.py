"""What share of sgemm each ResNet-18 conv row could reach at best on this machine.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.roofline [--measure] [--gemm]

The CPU issue asks every conv layer's forward + backward to run at 60% of the sgemm
GFLOP/s measured in the same run.  This script counts, for each row of ``cli.py bench``
(batch 32, NCHW and channels-last), the row's FLOPs (direct convolution, three passes)
and the bytes it must move to and from memory at the least, measures in the same process
the machine's sgemm rate and its two-thread memory bandwidth (read, write and copy, on
buffers larger than the last-level cache), and prints two bounds on the row's share of
sgemm:

- **overlapped**: compute at sgemm speed and memory traffic fully overlapped, the row
  takes max(t_compute, t_memory);
- **serial**: no overlap at all, t_compute + t_memory.

A kernel that reaches the serial bound needs nothing cleverer than computing at the
sgemm rate; between the two bounds it must also overlap its memory traffic with compute.
``--measure`` also times minigrad's own row (as ``cli.py bench`` does) to show where it
stands between them.  ``--gemm`` also times the row's three im2col products (forward
(Q x RSC) @ (RSC x K), dW (RSC x Q) @ (Q x K), dX (Q x K) @ (K x RSC), Q the batch's output
pixels, RSC = C*R*S) as whole-batch NumPy GEMMs on OpenBLAS's own threads, operands ready:
the share of sgemm a GEMM-based row gets before any layout work or memory traffic of its
own.  They run before anything else in the process: after a Numba parallel region the
OpenMP workers spin for a while, and a multi-threaded OpenBLAS call then competes with them
for the cores.

Compulsory traffic, float32, as the bench row runs (x is a leaf whose .grad accumulates,
so dX is added into existing storage):

- forward: read the cache lines of x that the convolution reads, the weights; write y;
- backward: read dY once (dW and dX from one pass over it), read x's lines again (the
  forward's y has long evicted them), read and write x.grad's same lines, read the weights
  and read and write the weight gradient.

A strided 1x1 convolution reads only every s-th row of x; within a row it skips whole
cache lines only channels-last with at least 16 channels (64-byte lines).
"""

import argparse

import numba
import numpy as np
from numba import njit, prange

from benchmarks.run_all import RESNET_CONV_SHAPES, SGEMM_FLOPS, THREADS, sgemm_call, timeit

BATCH = 32
FLOAT = 4
LINE = 64
BANDWIDTH_BYTES = 256 << 20   # larger than any last-level cache this runs on


def conv_traffic(n, cin, cout, h, k, stride, channels_last):
    """FLOPs and compulsory bytes of one forward + backward of a square conv row.

    Returns a dict with ``flops``, ``read`` and ``write`` (bytes, both passes together);
    padding is k // 2, as in the bench."""
    pad = k // 2
    oh = (h + 2 * pad - k) // stride + 1
    flops = 3 * 2 * n * cout * cin * k * k * oh * oh
    x_bytes = n * cin * h * h * FLOAT
    if k == 1 and stride > 1:
        rows = oh / h
        skips_lines = channels_last and cin * FLOAT >= LINE
        x_lines = x_bytes * rows * (oh / h if skips_lines else 1.0)
    else:
        x_lines = x_bytes
    y_bytes = n * cout * oh * oh * FLOAT
    w_bytes = cout * cin * k * k * FLOAT
    read = (x_lines + w_bytes) + (y_bytes + x_lines + x_lines + w_bytes + w_bytes)
    write = y_bytes + (x_lines + w_bytes)
    return {"flops": flops, "read": read, "write": write}


def bounds(traffic, sgemm_flops_per_s, bw):
    """(overlapped, serial) shares of sgemm the row can reach at best; ``bw`` holds the
    measured ``read``, ``write`` and ``copy`` bandwidths in bytes/s (copy counts the bytes
    read and written)."""
    t_compute = traffic["flops"] / sgemm_flops_per_s
    t_memory = max(traffic["read"] / bw["read"], traffic["write"] / bw["write"],
                   (traffic["read"] + traffic["write"]) / bw["copy"])
    return min(1.0, t_compute / t_memory), t_compute / (t_compute + t_memory)


@njit(parallel=True, fastmath=True, cache=True)
def _read(a, nt):
    part = np.zeros(nt, dtype=np.float32)
    chunk = (a.size + nt - 1) // nt
    for t in prange(nt):
        # loops over a view from index 0: an index like t * chunk + i keeps Numba's
        # negative-index check, which stops LLVM from vectorising (read 3.7 GB/s a thread
        # instead of 26; sessions 13-27 measured bandwidth that way)
        v = a[t * chunk:min(a.size, (t + 1) * chunk)]
        s = np.float32(0.0)
        for i in range(v.size):
            s += v[i]
        part[t] = s
    return part.sum()


@njit(parallel=True, cache=True)
def _write(a, nt):
    chunk = (a.size + nt - 1) // nt
    for t in prange(nt):
        v = a[t * chunk:min(a.size, (t + 1) * chunk)]    # see _read
        for i in range(v.size):
            v[i] = 1.0


@njit(parallel=True, cache=True)
def _copy(a, b, nt):
    chunk = (a.size + nt - 1) // nt
    for t in prange(nt):
        lo, hi = t * chunk, min(a.size, (t + 1) * chunk)
        u, v = a[lo:hi], b[lo:hi]    # see _read
        for i in range(v.size):
            v[i] = u[i]


def measure_bandwidth(nbytes=BANDWIDTH_BYTES, threads=THREADS, repeat=7):
    """Median read, write and copy bandwidth in bytes/s of ``threads`` Numba threads over
    float32 buffers of ``nbytes`` (copy: bytes read plus bytes written)."""
    a = np.ones(nbytes // FLOAT, dtype=np.float32)
    b = np.ones_like(a)
    return {"read": nbytes / timeit(lambda: _read(a, threads), repeat, warmup=1),
            "write": nbytes / timeit(lambda: _write(a, threads), repeat, warmup=1),
            "copy": 2 * nbytes / timeit(lambda: _copy(a, b, threads), repeat, warmup=1)}


def measure_sgemm(repeat=5):
    """NumPy's float32 GEMM rate (FLOP/s), as ``cli.py bench`` measures it."""
    return SGEMM_FLOPS / timeit(sgemm_call(), repeat, warmup=1)


def gemm_shapes(n, cin, cout, h, k, stride):
    """(Q, RSC, K) of a square conv row's im2col products: output pixels of the batch,
    reduction length of the forward, output channels (padding k // 2, as in the bench)."""
    pad = k // 2
    oh = (h + 2 * pad - k) // stride + 1
    return n * oh * oh, cin * k * k, cout


def measure_gemms(q, rsc, k, repeat=10):
    """Median seconds of the forward, dW and dX products of ``gemm_shapes`` (float32 NumPy
    GEMMs on OpenBLAS's threads, outputs preallocated)."""
    rng = np.random.default_rng(0)
    col = rng.standard_normal((q, rsc)).astype(np.float32)
    w = rng.standard_normal((rsc, k)).astype(np.float32)
    dy = rng.standard_normal((q, k)).astype(np.float32)
    y, gw, dcol = np.empty((q, k), np.float32), np.empty((rsc, k), np.float32), np.empty_like(col)
    return (timeit(lambda: np.matmul(col, w, out=y), repeat),
            timeit(lambda: np.matmul(col.T, dy, out=gw), repeat),
            timeit(lambda: np.matmul(dy, w.T, out=dcol), repeat))


def _minigrad_row(cin, cout, h, k, stride, channels_last, repeat):
    import minigrad as mg
    from benchmarks.run_all import _channels_last
    rng = np.random.default_rng(0)
    pad = k // 2
    oh = (h + 2 * pad - k) // stride + 1
    x = rng.standard_normal((BATCH, cin, h, h)).astype(np.float32)
    w = (rng.standard_normal((cout, cin, k, k)) * 0.05).astype(np.float32)
    gy = np.ones((BATCH, cout, oh, oh), np.float32)
    if channels_last:
        x, gy = _channels_last(x), _channels_last(gy)
    xm, wm, gym = mg.tensor(x, requires_grad=True), mg.tensor(w, requires_grad=True), mg.tensor(gy)
    return timeit(lambda: mg.conv2d(xm, wm, stride=stride, padding=pad).backward(gym), repeat,
                  warmup=1)


def main(argv=None):
    """Print the bounds table (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", action="store_true", help="also time minigrad's rows")
    ap.add_argument("--repeat", type=int, default=10, help="calls per measured row")
    ap.add_argument("--gemm", action="store_true",
                    help="also time each row's three products as whole-batch GEMMs")
    args = ap.parse_args(argv)
    numba.set_num_threads(THREADS)
    gemm_times = {}
    if args.gemm:   # before any Numba parallel region (see the module docstring)
        sgemm_g = measure_sgemm()
        for row in RESNET_CONV_SHAPES:
            gemm_times[row] = sum(measure_gemms(*gemm_shapes(BATCH, *row), repeat=args.repeat))
        print(f"sgemm {sgemm_g / 1e9:.0f} GFLOP/s while timing the whole-batch GEMMs")
    sgemm0 = measure_sgemm()
    bw = measure_bandwidth()
    sgemm1 = measure_sgemm()
    sgemm = (sgemm0 + sgemm1) / 2
    print(f"sgemm {sgemm0 / 1e9:.0f} / {sgemm1 / 1e9:.0f} GFLOP/s (before / after the "
          f"bandwidth runs); {THREADS}-thread bandwidth over {BANDWIDTH_BYTES >> 20} MiB: "
          f"read {bw['read'] / 1e9:.1f}, write {bw['write'] / 1e9:.1f}, "
          f"copy {bw['copy'] / 1e9:.1f} GB/s")
    head = "| row | GFLOP | MB read | MB written | bound, overlapped | bound, serial |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if args.gemm:
        head += " whole-batch GEMMs |"
        rule += "---:|"
    if args.measure:
        head += " minigrad |"
        rule += "---:|"
    print(head)
    print(rule)
    for channels_last in (False, True):
        for cin, cout, h, k, s in RESNET_CONV_SHAPES:
            tr = conv_traffic(BATCH, cin, cout, h, k, s, channels_last)
            over, serial = bounds(tr, sgemm, bw)
            name = f"conv {cin}->{cout} {h}x{h} k{k} s{s}" + (", channels-last" if channels_last else "")
            line = (f"| {name} | {tr['flops'] / 1e9:.2f} | {tr['read'] / 1e6:.1f} | "
                    f"{tr['write'] / 1e6:.1f} | {100 * over:.0f}% | {100 * serial:.0f}% |")
            if args.gemm:
                line += f" {100 * tr['flops'] / gemm_times[(cin, cout, h, k, s)] / sgemm_g:.0f}% |"
            if args.measure:
                t = _minigrad_row(cin, cout, h, k, s, channels_last, args.repeat)
                line += f" {100 * tr['flops'] / t / sgemm:.0f}% |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
