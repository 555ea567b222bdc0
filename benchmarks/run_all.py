"""Side-by-side CPU benchmarks: minigrad against PyTorch, same shapes, same threads, one run.

    python cli.py bench                     # everything, table to stdout
    python -m benchmarks.run_all --only lenet,resnet32 --repeat 5 --json out.json
    python -m benchmarks.run_all --only conv,conv_cl   # per-layer rows, NCHW and channels-last
    python -m benchmarks.run_all --only matmul,transformer   # 2-D and batched matmuls, a transformer block

Each workload is timed as the median of ``--repeat`` runs after warm-up, minigrad and
PyTorch in alternating turns (``time_pair``) so that both see the same machine.  PyTorch is used
only when importable (``pip install torch==2.13.0``; benchmark-only, never a dependency).
The OpenBLAS core type in the environment is printed: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE
as set on these machines halve sgemm speed, and a benchmark may unset both in its own
command (say so when recording numbers).  The table ends with the CPU-speed targets checked
against the run's rows (``benchmarks/targets.py``); ``--json`` writes the rows and those
checks atomically.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import minigrad as mg  # noqa: E402
import minigrad.nn as nn  # noqa: E402
import minigrad.nn.functional as F  # noqa: E402
import minigrad.optim as optim  # noqa: E402
from minigrad.io import write_file_atomic  # noqa: E402
from benchmarks import read_bandwidth, targets  # noqa: E402
from benchmarks.targets import SGEMM_FLOPS, SGEMM_N, sgemm_fraction  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None

THREADS = 2
RESNET_CONV_SHAPES = [  # (C_in, C_out, H, kernel, stride) of ResNet-18 with the CIFAR stem
    (3, 64, 32, 3, 1), (64, 64, 32, 3, 1), (64, 128, 32, 3, 2), (128, 128, 16, 3, 1),
    (64, 128, 32, 1, 2), (128, 256, 16, 3, 2), (256, 256, 8, 3, 1), (128, 256, 16, 1, 2),
    (256, 512, 8, 3, 2), (512, 512, 4, 3, 1), (256, 512, 8, 1, 2),
]


def timeit(fn, repeat, warmup=2):
    """Median seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_pair(row, mg_fn, torch_fn, repeat, warmup=2, ref_fn=None):
    """Time minigrad and PyTorch in alternating blocks; fills ``row["minigrad_s"]`` and
    (when ``torch_fn`` is given) ``row["torch_s"]`` with the medians of ``repeat`` calls; with a
    ``torch_fn``, also ``row["minigrad_quartiles_s"]`` / ``row["torch_quartiles_s"]`` with their
    quartiles (a minigrad-only row keeps its median alone).

    ``ref_fn``: a reference call (the sgemm of ``sgemm_call``) timed REF_CALLS times just
    before and just after the row; the median of those goes to ``row["ref_s"]``.  A row's
    rate is then compared with the machine's in the same minute: on these shared machines
    sgemm itself moved from 162 to 91 GFLOP/s between the start and the end of one run.
    Not interleaved with the row's calls: OpenBLAS's threads keep spinning for about
    0.1 s after a multi-threaded GEMM, and the calls right after it (both frameworks)
    ran up to 2-4x slower; the row starts REF_SETTLE_S after the reference.

    Alternating puts both under the same background load and clock speed, so the ratio
    does not drift with the machine the way two long blocks of runs do (seen here: the
    same LeNet code timed 8.1-11.6 ms in three consecutive runs).  Calls shorter than
    ``SHORT_CALL_S`` (each framework's fastest warm-up call) run in turns: each framework
    first runs untimed calls for at least ``SETTLE_S`` (``_settle``), then its timed calls
    (``turn_calls``).  The first calls after the other framework ran
    are slow for both and settle over about 10 ms, not one call: on the 1x1 stride-2
    64->128 row, minigrad's calls 1-6 after PyTorch's took 2.20, 1.81, 1.75, 1.58, 1.55,
    1.50 ms and its later ones 1.42-1.52 ms; PyTorch's channels-last CIFAR stem 3.01, 2.42,
    2.24, 2.13 ms, then 2.09-2.14 (BENCHMARKS_perf.md, session 31).  Counting calls 2-3 of
    each block of three, as the harness did up to session 30, timed that transient into both
    columns.  On the Intel host of session 37 the transient follows any pause in memory
    traffic (a plain 32 MB read after 20 ms of sleep or of a busy wait: 3.49, 3.27, 3.00,
    2.63, 2.49 ms, then 2.45) and lasts 15-20 ms, hence SETTLE_S.  Longer calls alternate
    one by one."""
    ref_times = []
    if ref_fn is not None:
        ref_times += _time_calls(ref_fn, REF_CALLS)
        time.sleep(REF_SETTLE_S)
    _time_row(row, mg_fn, torch_fn, repeat, warmup)
    if ref_fn is not None:
        ref_times += _time_calls(ref_fn, REF_CALLS)
        row["ref_s"] = statistics.median(ref_times)
    return row


def _time_calls(fn, n):
    """Seconds of each of n calls of fn()."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _time_row(row, mg_fn, torch_fn, repeat, warmup):
    """time_pair's work without the reference."""
    if torch_fn is None:
        row["minigrad_s"] = timeit(mg_fn, repeat, warmup)
        return row
    mg_times, torch_times = [], []
    # each framework's call time: its fastest warm-up call.  (The first call of a row loads
    # kernels and builds oneDNN primitives, 20-250 ms for 2 ms calls; the mean of the warm-up
    # calls made short calls look long, and their turns settled for 1-4 calls instead of
    # SETTLE_S: BENCHMARKS_perf.md, session 44.)
    call_s = [np.inf, np.inf]
    for _ in range(warmup):
        for i, fn in enumerate((mg_fn, torch_fn)):
            t0 = time.perf_counter()
            fn()
            call_s[i] = min(call_s[i], time.perf_counter() - t0)
    # without warm-up calls to go by, every call counts as a long one (strict alternation)
    turns = [turn_calls(c if warmup else SHORT_CALL_S, repeat) for c in call_s]
    timed = ((mg_fn, mg_times, turns[0]), (torch_fn, torch_times, turns[1]))
    while len(mg_times) < repeat or len(torch_times) < repeat:
        for fn, times, (untimed, counted) in timed:
            _settle(fn, untimed)
            for _ in range(counted):
                t1 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t1)
    for key, times in (("minigrad", mg_times[:repeat]), ("torch", torch_times[:repeat])):
        row[key + "_s"] = statistics.median(times)
        row[key + "_quartiles_s"] = quartiles(times)
    return row


def quartiles(times):
    """(first, third) quartile of ``times``, kept in the JSON beside each median so that a row's
    spread within the run can be told from its drift between runs."""
    if len(times) < 2:
        return (times[0], times[0]) if times else (float("nan"), float("nan"))
    q1, _, q3 = statistics.quantiles(times, n=4)
    return q1, q3


def _settle(fn, untimed):
    """A turn's untimed calls: at least ``untimed`` (none for a long call), and more until
    SETTLE_S has passed since the turn began (at most MAX_SETTLE_CALLS in all), so that the
    turn settles for SETTLE_S even when the warm-up calls overstated the call time (the
    second warm-up call, which follows the other framework's, ran 1.5-2x the settled time)."""
    if untimed == 0:
        return
    end = time.perf_counter() + SETTLE_S
    k = 0
    while k < MAX_SETTLE_CALLS and (k < untimed or time.perf_counter() < end):
        fn()
        k += 1


def turn_calls(call_s, repeat):
    """(untimed, timed) calls in one framework's turn of time_pair, for calls of about
    ``call_s`` seconds: enough untimed calls to fill SETTLE_S, then enough timed ones to
    fill TIMED_S (at least two, at most ``repeat``); (0, 1) for calls of SHORT_CALL_S or
    more, which alternate one by one."""
    if call_s >= SHORT_CALL_S:
        return 0, 1
    call_s = max(call_s, 1e-6)
    untimed = min(MAX_SETTLE_CALLS, max(1, int(np.ceil(SETTLE_S / call_s))))
    counted = max(2, min(repeat, int(np.ceil(TIMED_S / call_s))))
    return untimed, counted


# time_pair: calls shorter than SHORT_CALL_S (per framework) run in turns of SETTLE_S of
# untimed calls (at most MAX_SETTLE_CALLS of them), then TIMED_S of timed ones.  SETTLE_S was
# 0.012 until session 37 (BENCHMARKS_perf.md, change 152).
SHORT_CALL_S = 0.05
SETTLE_S = 0.030
TIMED_S = 0.006
MAX_SETTLE_CALLS = 64
# time_pair's reference: calls before and after the row, and the pause before the row.
REF_CALLS = 3
REF_SETTLE_S = 0.25


def _labels(n, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


# --- workloads: each returns a dict of measurements ----------------------------------

def blas_core_types():
    """The kernel set ("core type") OpenBLAS actually picked, for NumPy's and SciPy's copies
    (SciPy's is the one Numba's np.dot and minigrad.cpu.blas call)."""
    import ctypes
    import glob

    out = {}
    for label, mod, names in (("numpy", np, ("scipy_openblas_get_corename64_", "openblas_get_corename64_",
                                               "openblas_get_corename")),
                              ("scipy", None, ("scipy_openblas_get_corename", "openblas_get_corename"))):
        try:
            if mod is None:
                import scipy as mod
            base = os.path.dirname(os.path.dirname(mod.__file__))
            libs = glob.glob(os.path.join(base, mod.__name__ + ".libs", "*openblas*"))
        except Exception:  # noqa: BLE001 - informational only
            libs = []
        for lib in libs:
            try:
                handle = ctypes.CDLL(lib)
            except OSError:
                continue
            for name in names:
                fn = getattr(handle, name, None)
                if fn is not None:
                    fn.restype = ctypes.c_char_p
                    out[label] = fn().decode()
                    break
    return out


def loadavg():
    """1-minute load average (others' processes make timings meaningless above ~1.5)."""
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except OSError:
        return float("nan")


def cpu_seconds():
    """(CPU seconds all processes have used, CPU seconds this process and its children
    have used), from /proc/stat and os.times(); (nan, nan) off Linux."""
    own = os.times()
    own_s = own.user + own.system + own.children_user + own.children_system
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()[1:]
    except OSError:
        return float("nan"), float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own_s


def others_load(start, wall):
    """Average number of cores that *other* processes kept busy since ``start``
    (a cpu_seconds() reading) over ``wall`` seconds: the load average cannot tell, because
    this benchmark's own two threads push it towards 2."""
    total, own = cpu_seconds()
    return max(0.0, (total - start[0]) - (own - start[1])) / max(wall, 1e-9)


def sgemm_call():
    """A function computing one NumPy float32 GEMM SGEMM_N^3 (the machine's BLAS ceiling)."""
    a = np.random.default_rng(0).standard_normal((SGEMM_N, SGEMM_N)).astype(np.float32)
    out = np.empty_like(a)
    return lambda: np.matmul(a, a, out=out)


def sgemm_rate(repeat):
    """NumPy float32 GEMM 2048^3 in GFLOP/s: the machine's BLAS ceiling in this run."""
    return SGEMM_FLOPS / timeit(sgemm_call(), repeat) / 1e9


def mg_train_step(model, x, y):
    """A function running one minigrad SGD-momentum train step (forward, cross-entropy,
    backward, update) of ``model`` on the arrays x, y."""
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xm, ym = mg.tensor(x), mg.tensor(y)

    def step():
        loss = F.cross_entropy(model(xm), ym)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def train_step_pair(name, mg_model, torch_model, shape, classes, repeat):
    """One SGD-momentum train step (forward, loss, backward, update) in both frameworks."""
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    y = _labels(shape[0], classes)
    mg_step = mg_train_step(mg_model, x, y)

    torch_step = None
    if torch is not None and torch_model is not None:
        topt = torch.optim.SGD(torch_model.parameters(), lr=0.01, momentum=0.9)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            loss = torch.nn.functional.cross_entropy(torch_model(xt), yt)
            topt.zero_grad()
            loss.backward()
            topt.step()

    return time_pair({"workload": name, "images": shape[0]}, mg_step, torch_step, repeat)


def bench_lenet(repeat):
    import zoo

    tm = None
    if torch is not None:
        from benchmarks.torch_models import TorchLeNet5
        tm = TorchLeNet5()
    row = train_step_pair("LeNet-5 train step, batch 128", zoo.lenet5(), tm, (128, 1, 28, 28), 10,
                          max(repeat, 20))
    row["flops"] = 3 * 2 * 416_520 * 128
    return [row]


def bench_resnet(batch, repeat):
    import zoo

    tm = None
    if torch is not None:
        from benchmarks.torch_models import TorchResNet18Cifar
        tm = TorchResNet18Cifar()
    row = train_step_pair(f"ResNet-18 CIFAR train step, batch {batch}", zoo.resnet18(num_classes=10, stem="cifar"),
                          tm, (batch, 3, 32, 32), 10, repeat)
    row["flops"] = 3 * 2 * 0.5554e9 * batch  # forward multiply-adds counted by hand, x2 FLOPs, x3 for the step
    return [row]


def _channels_last(a):
    """NCHW-shaped view of a channels-last (N, H, W, C) copy of ``a``."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


# Buffer read just before each conv row (read_bandwidth): about the size of the memory-heavy
# rows' working sets, so its rate says whether the host's shared cache holds them now.
ROW_PROBE_MB = 24


def bench_convs(batch, repeat, channels_last=False):
    """conv2d forward + both backward passes on each ResNet-18 (CIFAR stem) layer shape.

    ``channels_last``: input and output gradient stored channels-last in both frameworks
    (torch.channels_last), as inside minigrad's ResNet-18, where every conv after the
    stem receives channels-last activations and gradients; otherwise NCHW-contiguous."""
    rows = []
    sgemm = sgemm_call()
    for cin, cout, h, k, s in RESNET_CONV_SHAPES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, cin, h, h)).astype(np.float32)
        w = (rng.standard_normal((cout, cin, k, k)) * 0.05).astype(np.float32)
        p = k // 2
        oh = (h + 2 * p - k) // s + 1
        flops = 3 * 2 * batch * cout * cin * k * k * oh * oh
        gy = np.ones((batch, cout, oh, oh), np.float32)
        if channels_last:
            x, gy = _channels_last(x), _channels_last(gy)
        xm, wm, gym = mg.tensor(x, requires_grad=True), mg.tensor(w, requires_grad=True), mg.tensor(gy)

        def mg_run():
            mg.conv2d(xm, wm, stride=s, padding=p).backward(gym)

        torch_run = None
        if torch is not None:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            xt = torch.from_numpy(np.ascontiguousarray(x)).to(memory_format=fmt).requires_grad_()
            wt = torch.from_numpy(w).to(memory_format=fmt).requires_grad_()
            gyt = torch.from_numpy(np.ascontiguousarray(gy)).to(memory_format=fmt)

            def torch_run():
                torch.nn.functional.conv2d(xt, wt, stride=s, padding=p).backward(gyt)

        layout = ", channels-last" if channels_last else ""
        time.sleep(REF_SETTLE_S)   # the previous row ended with a multi-threaded sgemm
        row = {"workload": f"conv {cin}->{cout} {h}x{h} k{k} s{s} fwd+bwd, batch {batch}{layout}",
               "flops": flops, "read_gbps": read_bandwidth.read_gbps(ROW_PROBE_MB)}
        rows.append(time_pair(row, mg_run, torch_run, repeat, ref_fn=sgemm))
    return rows


def bench_matmul(repeat):
    rows = []
    for n in (1024, 2048):
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
        am, bm = mg.tensor(a), mg.tensor(b)
        torch_run = None
        if torch is not None:
            at, bt = torch.from_numpy(a), torch.from_numpy(b)
            torch_run = lambda: at @ bt  # noqa: E731
        rows.append(time_pair({"workload": f"matmul {n}x{n}x{n}", "flops": 2 * n ** 3},
                              lambda: am @ bm, torch_run, repeat))
    return rows + bench_batched_matmul(repeat)


# Batched products, forward + backward (both operands leaves, a given output gradient):
# attention-sized products (heads x queries x head width), square ones, and a 2-D weight
# applied to a batch of matrices.
BATCHED_MATMULS = [((32, 128, 64), (32, 64, 128)), ((16, 256, 256), (16, 256, 256)),
                   ((64, 128, 256), (256, 256))]


def bench_batched_matmul(repeat):
    rows = []
    for sa, sb in BATCHED_MATMULS:
        rng = np.random.default_rng(0)
        a = rng.standard_normal(sa).astype(np.float32)
        b = rng.standard_normal(sb).astype(np.float32)
        gy = rng.standard_normal(np.broadcast_shapes(sa[:-2], sb[:-2]) + (sa[-2], sb[-1]))
        gy = gy.astype(np.float32)
        am, bm = mg.tensor(a, requires_grad=True), mg.tensor(b, requires_grad=True)
        gym = mg.tensor(gy)

        def mg_run():
            am.grad = bm.grad = None
            (am @ bm).backward(gym)

        torch_run = None
        if torch is not None:
            at = torch.from_numpy(a).requires_grad_()
            bt = torch.from_numpy(b).requires_grad_()
            gyt = torch.from_numpy(gy)

            def torch_run():
                at.grad = bt.grad = None
                (at @ bt).backward(gyt)

        count = int(np.prod(np.broadcast_shapes(sa[:-2], sb[:-2])))
        m, k, n = sa[-2], sa[-1], sb[-1]
        name = "x".join(map(str, sa)) + " @ " + "x".join(map(str, sb))
        rows.append(time_pair({"workload": f"batched matmul {name} fwd+bwd",
                               "flops": 3 * 2 * count * m * k * n}, mg_run, torch_run, repeat))
    return rows


def transformer_step(lib, tensor, batch=16, tokens=128, width=256, heads=4):
    """A call of benchmarks/transformer_block.py's block forward + backward in ``lib``
    (``tensor`` makes its tensors; input a leaf, a given output gradient, parameter
    gradients reset each call)."""
    from benchmarks import transformer_block as tb

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, tokens, width)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    layers = tb.make(lib, width)
    params = [p for m in layers.values() for p in m.parameters()]
    xt, gt = tensor(x), tensor(gy)
    xt.requires_grad_()

    def run():
        for p in params + [xt]:
            p.grad = None
        tb.block(layers, xt, heads).backward(gt)
    return run


def bench_transformer(repeat, batch=16, tokens=128, width=256, heads=4):
    """The bench's transformer row: transformer_step in both frameworks."""
    def runner(lib, tensor):
        return transformer_step(lib, tensor, batch, tokens, width, heads)

    # multiply-adds per token: the four Linear layers, then the attention products
    macs = batch * tokens * (width * 3 * width + width * width + 2 * 4 * width * width) \
        + 2 * batch * tokens * tokens * width
    torch_run = runner(torch, torch.from_numpy) if torch is not None else None
    return [time_pair({"workload": f"transformer block fwd+bwd, {batch}x{tokens} tokens, width {width}",
                       "flops": 3 * 2 * macs}, runner(mg, mg.tensor), torch_run, repeat)]


def bench_bn_xent(repeat):
    rows = []
    x = np.random.default_rng(0).standard_normal((32, 64, 32, 32)).astype(np.float32)
    bn = nn.BatchNorm2d(64)
    xm = mg.tensor(x, requires_grad=True)

    def mg_bn():
        out = bn(xm)
        out.backward(mg.ones(out.shape))

    torch_bn = None
    if torch is not None:
        tbn = torch.nn.BatchNorm2d(64)
        xt = torch.from_numpy(x).requires_grad_()

        def torch_bn():
            out = tbn(xt)
            out.backward(torch.ones_like(out))

    rows.append(time_pair({"workload": "BatchNorm2d fwd+bwd 32x64x32x32", "bytes": 5 * x.nbytes},
                          mg_bn, torch_bn, repeat))

    logits = np.random.default_rng(1).standard_normal((1024, 1000)).astype(np.float32)
    y = _labels(1024, 1000)
    lm, ym = mg.tensor(logits, requires_grad=True), mg.tensor(y)
    torch_xent = None
    if torch is not None:
        lt, yt = torch.from_numpy(logits).requires_grad_(), torch.from_numpy(y)
        torch_xent = lambda: torch.nn.functional.cross_entropy(lt, yt).backward()  # noqa: E731
    rows.append(time_pair({"workload": "softmax cross-entropy fwd+bwd 1024x1000"},
                          lambda: F.cross_entropy(lm, ym).backward(), torch_xent, repeat))
    torch_nll = None
    if torch is not None:
        torch_nll = lambda: torch.nn.functional.nll_loss(  # noqa: E731
            torch.log_softmax(lt, 1), yt).backward()
    rows.append(time_pair({"workload": "nll_loss(log_softmax) fwd+bwd 1024x1000"},
                          lambda: F.nll_loss(F.log_softmax(lm, dim=1), ym).backward(), torch_nll,
                          repeat))
    return rows


def bench_optimizers(repeat):
    """SGD (momentum) and Adam steps over ResNet-18's 11.2M parameters (gradients preset)."""
    import zoo

    rows = []
    model = zoo.resnet18(num_classes=10, stem="cifar")
    params = list(model.parameters())
    for p in params:
        p.grad = mg.tensor(np.full(p.shape, 1e-3, dtype=np.float32))
    tparams = None
    if torch is not None:
        tparams = [torch.zeros(p.shape, requires_grad=True) for p in params]
        for t in tparams:
            t.grad = torch.full(t.shape, 1e-3)
    for name, make, tmake in (
            ("SGD momentum step, ResNet-18 params", lambda: optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4),
             lambda: torch.optim.SGD(tparams, lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True)),
            ("Adam step, ResNet-18 params", lambda: optim.Adam(params, lr=1e-3),
             lambda: torch.optim.Adam(tparams, lr=1e-3, foreach=True))):
        opt = make()
        topt = tmake() if torch is not None else None
        rows.append(time_pair({"workload": name, "bytes": sum(p.numel() for p in params) * 4 * 4},
                              opt.step, topt.step if topt is not None else None, repeat))
    return rows


def _subprocess(code, env=None):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


PEAK_CODE = r"""
import json, resource, sys, numpy as np
sys.path.insert(0, '.')
fw = sys.argv[-1] if False else {fw!r}
x = np.random.default_rng(0).standard_normal(({batch}, 3, 32, 32)).astype(np.float32)
y = np.random.default_rng(0).integers(0, 10, {batch})
if fw == 'minigrad':
    import minigrad as mg, minigrad.nn.functional as F, minigrad.optim as optim, zoo
    model = zoo.resnet18(num_classes=10, stem='cifar'); opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xm, ym = mg.tensor(x), mg.tensor(y)
    def step():
        loss = F.cross_entropy(model(xm), ym); opt.zero_grad(); loss.backward(); opt.step()
else:
    import torch; torch.set_num_threads({threads})
    from benchmarks.torch_models import TorchResNet18Cifar
    model = TorchResNet18Cifar(); opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    def step():
        loss = torch.nn.functional.cross_entropy(model(xt), yt); opt.zero_grad(); loss.backward(); opt.step()
def _status_kb(key):
    # VmHWM/VmRSS of this process's own address space.  (ru_maxrss is NOT usable here: Linux
    # carries the parent's high-water mark across fork+exec, so every child reported the
    # benchmark driver's own peak.)
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
base = _status_kb("VmHWM")
for _ in range(3):
    step()
peak = _status_kb("VmHWM")
print(json.dumps({{"base_mb": base / 1024, "peak_mb": peak / 1024}}))
"""


def bench_memory(batch):
    """Peak resident memory of three ResNet-18 train steps, each framework in its own process."""
    row = {"workload": f"peak RSS, ResNet-18 CIFAR step batch {batch} (MB; growth over baseline)"}
    m = _subprocess(PEAK_CODE.format(fw="minigrad", batch=batch, threads=THREADS))
    row["minigrad_mb"], row["minigrad_growth_mb"] = m["peak_mb"], m["peak_mb"] - m["base_mb"]
    if torch is not None:
        t = _subprocess(PEAK_CODE.format(fw="torch", batch=batch, threads=THREADS))
        row["torch_mb"], row["torch_growth_mb"] = t["peak_mb"], t["peak_mb"] - t["base_mb"]
    return [row]


START_CODE = r"""
import time, json, sys
t0 = float(sys.argv[1])
sys.path.insert(0, '.')
import numpy as np, minigrad as mg, minigrad.nn.functional as F, minigrad.optim as optim, zoo
model = zoo.lenet5(); opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = mg.tensor(np.zeros((128, 1, 28, 28), np.float32)); y = mg.tensor(np.zeros(128, np.int64))
loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
print(json.dumps({"seconds": time.time() - t0}))
"""


def bench_coldstart():
    """Seconds from process start to the end of the first LeNet train step with an EMPTY
    Numba cache (every kernel compiled), then again with the cache just filled."""
    import tempfile

    def run(cache_dir):
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        t0 = time.time()
        out = subprocess.run([sys.executable, "-c", START_CODE, str(t0)], capture_output=True,
                             text=True, cwd=ROOT, env=env, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]

    with tempfile.TemporaryDirectory() as d:
        cold = run(d)
        warm = run(d)
    return [{"workload": "process start to first LeNet step, EMPTY Numba cache, s", "minigrad_s": cold},
            {"workload": "  same, cache just filled by that run, s", "minigrad_s": warm}]


def bench_startup():
    """Seconds from process start to the end of the first LeNet train step, warm Numba cache."""
    def run():
        t0 = time.time()
        out = subprocess.run([sys.executable, "-c", START_CODE, str(t0)], capture_output=True,
                             text=True, cwd=ROOT, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]

    run()  # fills the cache if it is cold
    return [{"workload": "process start to first LeNet step (warm cache), s", "minigrad_s": min(run(), run())}]


WORKLOADS = {
    "lenet": lambda r: bench_lenet(r),
    "resnet32": lambda r: bench_resnet(32, r),
    "resnet128": lambda r: bench_resnet(128, max(3, r // 2)),
    "conv": lambda r: bench_convs(32, r),
    "conv_cl": lambda r: bench_convs(32, r, channels_last=True),
    "matmul": lambda r: bench_matmul(r),
    "transformer": lambda r: bench_transformer(r),
    "bn_xent": lambda r: bench_bn_xent(r),
    "optim": lambda r: bench_optimizers(r),
    "memory": lambda r: bench_memory(32),
    "startup": lambda r: bench_startup(),
    "coldstart": lambda r: bench_coldstart(),
}
DEFAULT = [name for name in WORKLOADS if name != "coldstart"]   # coldstart compiles for ~a minute


def format_table(rows, sgemm):
    """Markdown table of the rows with ratios and GFLOP/s."""
    lines = ["| workload | minigrad | PyTorch | speed ratio (PyTorch time / minigrad time) | minigrad GFLOP/s | % of sgemm |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "minigrad_mb" in r:
            ratio = f"{r['minigrad_mb'] / r['torch_mb']:.2f}x memory" if "torch_mb" in r else ""
            tm = f"{r['torch_mb']:.0f} MB (+{r['torch_growth_mb']:.0f})" if "torch_mb" in r else "-"
            lines.append(f"| {r['workload']} | {r['minigrad_mb']:.0f} MB (+{r['minigrad_growth_mb']:.0f}) | {tm} | {ratio} | | |")
            continue
        ms, ts = r["minigrad_s"], r.get("torch_s")
        gf = f"{r['flops'] / ms / 1e9:.0f}" if "flops" in r else ""
        pct = f"{100 * sgemm_fraction(r, sgemm):.0f}%" if "flops" in r else ""
        unit = "s" if ms > 0.5 else "ms"
        scale = 1 if unit == "s" else 1e3
        ratio = f"{ts / ms:.2f}x" if ts else ""
        tcol = f"{ts * scale:.2f} {unit}" if ts else "-"
        lines.append(f"| {r['workload']} | {ms * scale:.2f} {unit} | {tcol} | {ratio} | {gf} | {pct} |")
    if any("flops" in r and ("conv" in r["workload"] or "ResNet" in r["workload"]) for r in rows):
        lines.append("")
        lines.append("GFLOP/s and % of sgemm count the FLOPs of a direct convolution. 3x3 stride-1 "
                     "layers with >= 16 channels run Winograd F(2x2, 3x3), or F(4x4, 3x3) on layers with "
                     "many tiles (winograd.tile_size: here 64 to 256 channels) (2.25x / 4x fewer "
                     "multiply-adds), and 3x3 stride-2 layers a stride-2 variant (1.44x fewer; "
                     "MINIGRAD_WINOGRAD=0 turns both off), so their effective rate can exceed sgemm.")
    if any(r["workload"].startswith("conv ") for r in rows):
        lines.append("conv rows: input and output gradient NCHW-contiguous, or channels-last in both "
                     "frameworks where the row says so (the layout inside minigrad's ResNet-18 after "
                     "the stem); x is a leaf, so its .grad is filled too.")
    refs = [SGEMM_FLOPS / r["ref_s"] / 1e9 for r in rows if "ref_s" in r]
    if refs:
        lines.append(f"% of sgemm: conv rows against the sgemm {SGEMM_N}^3 timed just before and after "
                     f"each row (median per row; {min(refs):.0f}-{max(refs):.0f} GFLOP/s over the rows), "
                     "other rows against the sgemm at the start of the run.")
    probes = [r["read_gbps"] for r in rows if "read_gbps" in r]
    if probes:
        lines.append(f"Reading {ROW_PROBE_MB} MB (two threads) just before each conv row: "
                     f"{min(probes):.0f}-{max(probes):.0f} GB/s (benchmarks/read_bandwidth.py; a low "
                     "rate means the shared cache does not hold the memory-heavy rows' data then).")
    return "\n".join(lines)


def main(argv=None):
    """Run the selected workloads and print the table (and optionally write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(DEFAULT),
                        help="comma-separated: " + ",".join(WORKLOADS) + " (default: all but coldstart)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when installed")
    parser.add_argument("--against", choices=("torch", "none"), default="torch",
                        help="reference framework (default torch when installed; none = --no-torch)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",")]
    for name in names:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    global torch
    if args.no_torch or args.against == "none":
        torch = None
    import numba

    numba.set_num_threads(THREADS)
    if torch is not None:
        torch.set_num_threads(THREADS)
    mg.manual_seed(0)
    if torch is not None:
        torch.manual_seed(0)
    core = os.environ.get("OPENBLAS_CORETYPE", "unset")
    l2 = os.environ.get("OPENBLAS_L2_SIZE", "unset")
    sgemm = sgemm_rate(args.repeat)
    cores = blas_core_types()
    time.sleep(REF_SETTLE_S)   # OpenBLAS's threads spin on for a while after the sgemm
    reads0 = read_bandwidth.probe()
    load0 = loadavg()
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    print(f"threads {THREADS}; OPENBLAS_CORETYPE={core} OPENBLAS_L2_SIZE={l2}; OpenBLAS core type in use: "
          + ", ".join(f"{k} {v}" for k, v in cores.items())
          + f"; NumPy sgemm 2048^3: {sgemm:.0f} GFLOP/s; torch: {torch.__version__ if torch else 'not installed'}; "
          f"load average at start {load0:.2f}; read bandwidth (two threads) {read_bandwidth.describe(reads0)}",
          flush=True)
    rows = []
    for name in names:
        new = WORKLOADS[name](args.repeat)
        rows.extend(new)
        for r in new:
            print("  done:", r["workload"], flush=True)
    sgemm_end = sgemm_rate(args.repeat)
    time.sleep(REF_SETTLE_S)
    reads1 = read_bandwidth.probe()
    load1 = loadavg()
    others = others_load(cpu0, time.perf_counter() - wall0)
    print(format_table(rows, sgemm))
    checks = targets.check(rows, sgemm)
    print()
    print(targets.format_checks(checks))
    print()
    print(f"sgemm at the end of the run: {sgemm_end:.0f} GFLOP/s; load average at the end {load1:.2f}; "
          f"other processes kept {others:.2f} cores busy on average during the run; "
          f"read bandwidth at the end {read_bandwidth.describe(reads1)}"
          + ("  (LOADED MACHINE: numbers not representative)" if others > 0.25 else ""))
    if args.json:
        write_json(args.json, {
            "sgemm_gflops": sgemm, "sgemm_gflops_end": sgemm_end, "openblas_coretype": core,
            "openblas_l2_size": l2, "openblas_core_in_use": cores, "load_start": load0,
            "load_end": load1, "others_cores": others, "read_gbps_start": reads0,
            "read_gbps_end": reads1, "rows": rows, "targets": checks})
    return rows


def write_json(path, obj):
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file beside it, then a
    rename), so that an interrupted run never leaves a truncated file."""
    write_file_atomic(path, json.dumps(obj, indent=1).encode())


if __name__ == "__main__":
    main()
