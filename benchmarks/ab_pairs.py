"""Paired in-process A/B of a module setting on one conv bench row: call by call.

    python -m benchmarks.ab_pairs --row 64,128,32,1,2 [--channels-last] \\
        --set minigrad.cpu.conv1x1_nchw._MIN_COLUMNS=512 [--pairs 300] [--forward-only]

The row is the bench's conv2d forward + backward at batch 32 (``--row cin,cout,size,k,stride``;
padding k // 2, dY all ones, x a leaf).  ``--set module.attribute=value`` names a module-level
setting read at call time (a Python value: a number, True/False, a string in quotes); state A
is its current value, state B the given one.  Each pair times one call in each state, the order
alternating from pair to pair, and the report gives both medians and the median and quartiles
of the per-pair ratios A/B (above 1: B is faster).

Why pairs: on the shared 2-core machines this project is measured on, the same call moved by
up to 1.7x within minutes.  Rounds of five calls per state gave 1.03x and then 1.17x for one
change in two consecutive runs (BENCHMARKS_perf.md, session 15); pairs of single calls, whose
two halves run milliseconds apart, gave 0.99-1.01x in four runs of 300 pairs.
"""

import argparse
import ast
import importlib
import statistics
import time

import numpy as np


def paired_ratios(run, set_state, pairs, warmup=3):
    """(times in state A, times in state B): ``pairs`` calls of ``run`` in each state, the two
    calls of a pair back to back and their order alternating; ``set_state(b)`` switches to
    state B when ``b`` is True, to A when False.  Leaves state A set."""
    for state in (False, True):
        set_state(state)
        for _ in range(warmup):
            run()
    a, b = [], []
    for i in range(pairs):
        for state in ((False, True) if i % 2 else (True, False)):
            set_state(state)
            t0 = time.perf_counter()
            run()
            (b if state else a).append(time.perf_counter() - t0)
    set_state(False)
    return a, b


def summary(a, b):
    """One line: medians of A and B and the per-pair ratio A/B (median, quartiles)."""
    ratios = [x / y for x, y in zip(a, b)]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return (f"A {statistics.median(a) * 1e3:.3f} ms, B {statistics.median(b) * 1e3:.3f} ms, "
            f"A/B per pair {statistics.median(ratios):.3f} (quartiles {q1:.3f}-{q3:.3f}), "
            f"{len(ratios)} pairs")


def setting(spec):
    """(module, attribute, value) from ``package.module.attribute=value``."""
    target, sep, text = spec.partition("=")
    modname, _, attr = target.rpartition(".")
    if not sep or not modname or not attr:
        raise ValueError(f"--set wants module.attribute=value, got {spec!r}")
    module = importlib.import_module(modname)
    if not hasattr(module, attr):
        raise ValueError(f"{modname} has no attribute {attr!r}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"--set {spec!r}: {text!r} is not a Python literal "
                         "(write numbers out: 1048576, not 1 << 20)") from None
    return module, attr, value


def conv_row(cin, cout, size, k, stride, channels_last, forward_only=False):
    """The bench's conv row (batch 32) as a function of no arguments."""
    import minigrad as mg

    rng = np.random.default_rng(0)
    p = k // 2
    oh = (size + 2 * p - k) // stride + 1
    x = rng.standard_normal((32, cin, size, size)).astype(np.float32)
    w = (rng.standard_normal((cout, cin, k, k)) * 0.05).astype(np.float32)
    gy = np.ones((32, cout, oh, oh), np.float32)
    if channels_last:
        x, gy = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) for a in (x, gy))
    xm, wm, gym = mg.tensor(x, requires_grad=True), mg.tensor(w, requires_grad=True), mg.tensor(gy)
    if forward_only:
        return lambda: mg.conv2d(xm, wm, stride=stride, padding=p)
    return lambda: mg.conv2d(xm, wm, stride=stride, padding=p).backward(gym)


def main(argv=None):
    """Parse the arguments, run the pairs, print the summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", required=True, help="cin,cout,size,k,stride")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--set", required=True, dest="spec", help="module.attribute=value (state B)")
    ap.add_argument("--pairs", type=int, default=300)
    args = ap.parse_args(argv)
    cin, cout, size, k, stride = (int(v) for v in args.row.split(","))
    module, attr, value = setting(args.spec)
    old = getattr(module, attr)
    run = conv_row(cin, cout, size, k, stride, args.channels_last, args.forward_only)
    a, b = paired_ratios(run, lambda on: setattr(module, attr, value if on else old), args.pairs)
    print(f"conv {cin}->{cout} {size}x{size} k{k} s{stride}"
          f"{', channels-last' if args.channels_last else ''}: {attr} {old!r} (A) vs {value!r} (B): "
          + summary(a, b))


if __name__ == "__main__":
    main()
