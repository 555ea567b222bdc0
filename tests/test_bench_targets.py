"""The bench's target checks (benchmarks/targets.py) and its atomic JSON output."""

import json
import os

from benchmarks import run_all, targets


def _rows(lenet=2.0, conv_fractions=(0.7, 0.65), memory=0.8, warm_s=0.7, torch=True):
    """Rows shaped as run_all makes them; conv row i runs at conv_fractions[i] of a 300 GFLOP/s
    reference timed around it (ref_s)."""
    ref_s = targets.SGEMM_FLOPS / 300e9
    rows = [{"workload": "LeNet-5 train step, batch 128", "minigrad_s": 0.004},
            {"workload": "ResNet-18 CIFAR train step, batch 32", "minigrad_s": 0.2},
            {"workload": "ResNet-18 CIFAR train step, batch 128", "minigrad_s": 0.8}]
    if torch:
        rows[0]["torch_s"] = 0.004 * lenet
        rows[1]["torch_s"] = 0.3
        rows[2]["torch_s"] = 1.6
    for i, f in enumerate(conv_fractions):
        rows.append({"workload": f"conv {i}->64 32x32 k3 s1 fwd+bwd, batch 32",
                     "minigrad_s": 1e-3, "flops": f * 300e9 * 1e-3, "ref_s": ref_s})
    mem = {"workload": "peak RSS, ResNet-18 CIFAR step batch 32 (MB; growth over baseline)",
           "minigrad_mb": 600.0 * memory, "minigrad_growth_mb": 100.0}
    if torch:
        mem.update(torch_mb=600.0, torch_growth_mb=100.0)
    rows.append(mem)
    rows.append({"workload": "process start to first LeNet step (warm cache), s",
                 "minigrad_s": warm_s})
    return rows


def _by_target(checks):
    return {c["target"].split(" (")[0]: c for c in checks}


def test_all_targets_met():
    checks = targets.check(_rows(), sgemm=300.0)
    assert [c["met"] for c in checks] == [True] * 6
    by = _by_target(checks)
    assert by["LeNet-5 train step"]["measured"] == "2.00x"
    assert by["each conv layer fwd+bwd"]["measured"].startswith("lowest 65.0% (conv 1->64")
    assert targets.format_checks(checks).endswith("Targets: all met in this run.")


def test_each_limit_is_checked():
    by = _by_target(targets.check(_rows(lenet=0.99, conv_fractions=(0.7, 0.599), memory=1.51,
                                        warm_s=3.0), sgemm=300.0))
    assert by["LeNet-5 train step"]["met"] is False
    assert by["ResNet-18 step, batch 32"]["met"] is True
    assert by["each conv layer fwd+bwd"]["met"] is False
    assert "59.9%" in by["each conv layer fwd+bwd"]["measured"]
    assert by["peak memory, ResNet-18 step"]["met"] is False
    assert by["warm start to first LeNet step"]["met"] is False
    text = targets.format_checks(list(by.values()))
    assert "| LeNet-5 train step | 0.99x | >= 1.0x PyTorch's speed | **no** |" in text
    assert text.endswith("Targets: NOT all met in this run.")


def test_a_conv_row_without_its_own_reference_uses_the_run_sgemm():
    row = {"workload": "conv 3->64 32x32 k3 s1 fwd+bwd, batch 32", "minigrad_s": 1e-3,
           "flops": 0.2e9}
    assert abs(targets.sgemm_fraction(row, sgemm=400.0) - 0.5) < 1e-12
    assert targets.sgemm_fraction({"workload": "x", "minigrad_s": 1.0}, 400.0) is None


def test_targets_not_measured_are_not_reported_as_met():
    checks = targets.check(_rows(torch=False), sgemm=300.0)
    by = _by_target(checks)
    assert by["LeNet-5 train step"]["met"] is None
    assert "no PyTorch" in by["LeNet-5 train step"]["measured"]
    assert by["peak memory, ResNet-18 step"]["met"] is None
    assert by["each conv layer fwd+bwd"]["met"] is True
    assert targets.format_checks(checks).endswith("some were not measured in this run.")
    only_conv = [r for r in _rows() if r["workload"].startswith("conv ")]
    by = _by_target(targets.check(only_conv, sgemm=300.0))
    assert by["ResNet-18 step, batch 128"]["measured"] == "not measured (row not run)"
    assert by["warm start to first LeNet step"]["met"] is None
    cold = [{"workload": "process start to first LeNet step, EMPTY Numba cache, s",
             "minigrad_s": 9.0}]
    assert _by_target(targets.check(cold, 300.0))["warm start to first LeNet step"]["met"] is None


def test_table_percentages_match_the_checks():
    rows = _rows(conv_fractions=(0.613,))
    text = run_all.format_table(rows, sgemm=300.0)
    assert "| 1.00 ms | - |  | 184 | 61% |" in text


def test_bench_json_is_written_whole_and_replaces_the_old_file(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text("old")
    run_all.write_json(str(path), {"rows": [{"workload": "w", "q": (1.0, 2.0)}], "targets": []})
    assert json.loads(path.read_text()) == {"rows": [{"workload": "w", "q": [1.0, 2.0]}],
                                            "targets": []}
    assert os.listdir(tmp_path) == ["bench.json"]


def test_an_unknown_workload_is_refused_before_anything_is_timed(monkeypatch, capsys):
    def no_timing(*a, **k):
        raise AssertionError("timed before the arguments were checked")

    monkeypatch.setattr(run_all, "sgemm_rate", no_timing)
    try:
        run_all.main(["--only", "lenet,nope"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("main accepted an unknown workload")
    assert "unknown workload 'nope'" in capsys.readouterr().err
