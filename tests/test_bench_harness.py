"""The side-by-side benchmark harness (benchmarks/run_all.py): timing and reporting logic."""

import time

import pytest

import numpy as np

from benchmarks import ab_pairs, read_bandwidth, run_all


def test_time_pair_alternates_turns_and_takes_medians(monkeypatch):
    calls = []

    def a():
        calls.append("a")

    def b():
        calls.append("b")
        time.sleep(0.002)

    seen = []

    def turns(call_s, repeat):
        seen.append(call_s)
        return (2, 3) if call_s < 0.001 else (1, 2)

    monkeypatch.setattr(run_all, "turn_calls", turns)
    monkeypatch.setattr(run_all, "SETTLE_S", 0.0)     # the untimed calls turn_calls asks for
    row = run_all.time_pair({"workload": "w"}, a, b, repeat=4, warmup=1)
    # one warm-up pair, then turns of untimed + timed calls until both have 4 timed calls
    assert calls == ["a", "b"] + (["a"] * 5 + ["b"] * 3) * 2
    assert seen[0] < 0.001 <= 0.002 <= seen[1]        # each framework's own call time
    assert row["torch_s"] > row["minigrad_s"] and row["torch_s"] >= 0.002
    for key in ("minigrad", "torch"):
        q1, q3 = row[key + "_quartiles_s"]
        assert q1 <= row[key + "_s"] <= q3
    assert row["torch_quartiles_s"][0] >= 0.002 > row["minigrad_quartiles_s"][1]
    monkeypatch.undo()
    calls.clear()
    monkeypatch.setattr(run_all, "SHORT_CALL_S", 0.0005)   # b is now a long call
    monkeypatch.setattr(run_all, "SETTLE_S", 0.0)
    monkeypatch.setattr(run_all, "TIMED_S", 0.0)
    run_all.time_pair({"workload": "w"}, a, b, repeat=3, warmup=1)
    # a: one untimed call and two timed ones (the fewest); b alternates call by call
    assert calls == ["a", "b"] + (["a"] * 3 + ["b"]) * 3
    row = run_all.time_pair({}, a, None, repeat=3, warmup=0)
    assert "torch_s" not in row and row["minigrad_s"] >= 0


def test_quartiles():
    assert run_all.quartiles([4.0, 1.0, 3.0, 2.0, 5.0]) == (1.5, 4.5)
    assert run_all.quartiles([2.0]) == (2.0, 2.0)


def test_turns_follow_the_fastest_warm_up_call(monkeypatch):
    """A row's first call (kernels loaded, primitives built) does not make a short call count
    as a long one: the turns come from each framework's fastest warm-up call."""
    first = {"a": True, "b": True}

    def call(name, slow_s):
        def fn():
            if first[name]:
                first[name] = False
                time.sleep(slow_s)
        return fn

    seen = []

    def turns(call_s, repeat):
        seen.append(call_s)
        return (1, 2)

    monkeypatch.setattr(run_all, "turn_calls", turns)
    run_all.time_pair({}, call("a", 0.2), call("b", 0.2), repeat=2, warmup=2)
    assert len(seen) == 2 and max(seen) < 0.05


def test_turns_settle_for_settle_s_whatever_the_estimate(monkeypatch):
    """A turn's untimed calls last at least SETTLE_S, even when turn_calls (from an
    overstated call time) asked for fewer; at least as many as it asked for; at most
    MAX_SETTLE_CALLS; none for a long call."""
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.001)

    monkeypatch.setattr(run_all, "SETTLE_S", 0.02)
    t0 = time.perf_counter()
    run_all._settle(fn, 1)
    assert time.perf_counter() - t0 >= 0.02 and 2 <= len(calls) <= 21
    calls.clear()
    monkeypatch.setattr(run_all, "SETTLE_S", 0.0)
    run_all._settle(fn, 3)
    assert len(calls) == 3
    calls.clear()
    run_all._settle(fn, 0)
    assert calls == []
    monkeypatch.setattr(run_all, "SETTLE_S", 10.0)
    monkeypatch.setattr(run_all, "MAX_SETTLE_CALLS", 5)
    run_all._settle(fn, 1)
    assert len(calls) == 5


def test_turns_settle_for_a_time_then_time_calls():
    short = run_all.SHORT_CALL_S
    settle, timed = run_all.SETTLE_S, run_all.TIMED_S
    # a 1.5 ms call: ceil(30 / 1.5) = 20 untimed calls, ceil(6 / 1.5) = 4 timed ones
    assert (settle, timed) == (0.030, 0.006)
    assert run_all.turn_calls(0.0015, 10) == (20, 4)
    assert run_all.turn_calls(0.0015, 3) == (20, 3)           # never more than repeat
    assert run_all.turn_calls(0.040, 10) == (1, 2)            # at least one and two
    assert run_all.turn_calls(1e-9, 1000) == (run_all.MAX_SETTLE_CALLS, 1000)
    assert run_all.turn_calls(short, 10) == (0, 1)             # long calls alternate


def test_others_load_excludes_this_process(monkeypatch):
    """others_load subtracts this process's CPU time from the machine's.  Checked on fixed
    readings (a live check failed whenever other jobs kept the cores busy), plus a live check
    that this process's own busy time shows up in the ``own`` reading it subtracts."""
    monkeypatch.setattr(run_all, "cpu_seconds", lambda: (110.5, 23.3))
    # 0.5 s of machine CPU since the start, 0.3 s of it this process's: 0.2 s over 0.4 s
    assert run_all.others_load((110.0, 23.0), 0.4) == pytest.approx(0.5)
    assert run_all.others_load((110.0, 22.0), 1.0) == 0.0      # never negative
    monkeypatch.undo()
    total0, own0 = run_all.cpu_seconds()
    end = time.process_time() + 0.3
    while time.process_time() < end:        # busy in this process only
        pass
    total1, own1 = run_all.cpu_seconds()
    assert own1 - own0 >= 0.25
    assert total1 - total0 >= 0.2           # /proc/stat counts it too (10 ms ticks)


def test_table_notes_conv_layouts_and_ratios():
    rows = [{"workload": "conv 3->64 32x32 k3 s1 fwd+bwd, batch 32, channels-last", "minigrad_s": 0.002,
             "torch_s": 0.003, "flops": 2e8},
            {"workload": "matmul 4x4x4", "minigrad_s": 0.001}]
    text = run_all.format_table(rows, sgemm=200.0)
    assert "| 2.00 ms | 3.00 ms | 1.50x | 100 | 50% |" in text
    assert "| matmul 4x4x4 | 1.00 ms | - |" in text
    assert "channels-last in both frameworks" in text


def test_table_reports_the_read_probe_range_of_the_conv_rows():
    rows = [{"workload": "conv 64->128 32x32 k1 s2 fwd+bwd, batch 32", "minigrad_s": 0.001,
             "flops": 1e8, "read_gbps": 61.4},
            {"workload": "conv 64->128 32x32 k1 s2 fwd+bwd, batch 32, channels-last",
             "minigrad_s": 0.001, "flops": 1e8, "read_gbps": 152.6}]
    text = run_all.format_table(rows, sgemm=200.0)
    assert "Reading 24 MB (two threads) just before each conv row: 61-153 GB/s" in text
    assert "Reading" not in run_all.format_table([{"workload": "matmul 4x4x4", "minigrad_s": 0.001}], 1.0)


def test_read_probe_reads_every_element_of_its_buffer():
    a = np.arange(1000, dtype=np.float32)
    sums = np.zeros(2, dtype=np.float32)
    read_bandwidth._read(a, sums)
    assert sums.sum() == a.sum()      # both halves, once each
    assert sums[0] == a[:500].sum() and sums[1] == a[500:].sum()


def test_read_probe_reports_a_rate_for_each_size(monkeypatch):
    clock = iter(np.arange(0.0, 100.0, 0.5))   # every read takes 0.5 s
    monkeypatch.setattr(read_bandwidth.time, "perf_counter", lambda: next(clock))
    rates = read_bandwidth.probe((1, 2))
    assert rates == {1: pytest.approx((1 << 20) / 0.5 / 1e9), 2: pytest.approx((2 << 20) / 0.5 / 1e9)}
    assert read_bandwidth.describe({8: 150.2, 128: 55.0}) == "8 MB 150, 128 MB 55 GB/s"


def test_reference_call_is_timed_around_the_row_and_used_for_it(monkeypatch):
    monkeypatch.setattr(run_all, "REF_SETTLE_S", 0.0)
    monkeypatch.setattr(run_all, "SETTLE_S", 0.0)
    monkeypatch.setattr(run_all, "turn_calls", lambda call_s, repeat: (1, 2))
    calls = []

    def a():
        calls.append("a")

    def b():
        calls.append("b")

    def ref():
        calls.append("r")
        time.sleep(0.004)

    row = run_all.time_pair({"workload": "w"}, a, b, repeat=4, warmup=1, ref_fn=ref)
    assert calls == ["r"] * 3 + ["a", "b"] + (["a"] * 3 + ["b"] * 3) * 2 + ["r"] * 3
    assert row["ref_s"] >= 0.004
    calls.clear()
    row = run_all.time_pair({"workload": "w"}, a, None, repeat=2, warmup=1, ref_fn=ref)
    assert calls == ["r"] * 3 + ["a"] * 3 + ["r"] * 3
    assert "torch_s" not in row and "ref_s" in row
    # % of sgemm uses the row's own reference when it has one
    flops = run_all.SGEMM_FLOPS
    rows = [{"workload": "conv x", "minigrad_s": 2.0, "flops": flops, "ref_s": 1.0},
            {"workload": "conv y", "minigrad_s": 2.0, "flops": flops}]
    text = run_all.format_table(rows, sgemm=flops / 4.0 / 1e9)
    assert "| conv x | 2.00 s | - |  | 9 | 50% |" in text      # its own sgemm: 1 s per call
    assert "| conv y | 2.00 s | - |  | 9 | 200% |" in text     # the run's sgemm: 4 s per call
    assert "timed just before and after each row" in text


def test_paired_ratios_alternate_within_pairs():
    state, calls = {"b": False}, []

    def run():
        calls.append("B" if state["b"] else "A")
        if state["b"]:
            time.sleep(0.002)

    a, b = ab_pairs.paired_ratios(run, lambda on: state.update(b=on), pairs=4, warmup=1)
    assert calls == ["A", "B"] + ["B", "A", "A", "B"] * 2     # warm-up, then alternating order
    assert len(a) == len(b) == 4 and min(b) >= 0.002 and max(a) < min(b)
    assert state["b"] is False                                # left in state A
    line = ab_pairs.summary(a, b)
    assert line.endswith("4 pairs") and float(line.split("A/B per pair ")[1].split()[0]) < 1


def test_ab_pairs_setting_parser():
    module, attr, value = ab_pairs.setting("minigrad.cpu.conv1x1_nchw._MIN_COLUMNS=512")
    assert attr == "_MIN_COLUMNS" and value == 512 and module.__name__.endswith("conv1x1_nchw")
    for bad in ("minigrad.cpu.conv1x1_nchw._MIN_COLUMNS", "minigrad.cpu.conv1x1_nchw.nope=1",
                "minigrad.cpu.conv1x1_nchw._MIN_COLUMNS=1 << 9"):
        with pytest.raises(ValueError, match="--set|no attribute|not a Python literal"):
            ab_pairs.setting(bad)


def test_transformer_block_runs_forward_and_backward():
    """The bench's transformer block (benchmarks/transformer_block.py) in minigrad: output
    shape, and gradients for the input and every parameter (PyTorch is not needed)."""
    import numpy as np

    import minigrad as mg
    from benchmarks import transformer_block as tb

    layers = tb.make(mg, 16, seed=1)
    x = mg.tensor(np.random.default_rng(2).standard_normal((2, 5, 16)).astype(np.float32),
                  requires_grad=True)
    y = tb.block(layers, x, heads=4)
    assert y.shape == (2, 5, 16) and np.isfinite(y.numpy()).all()
    y.backward(mg.ones(y.shape))
    params = [p for m in layers.values() for p in m.parameters()]
    assert x.grad is not None and all(p.grad is not None for p in params)
    assert len(params) == 12
