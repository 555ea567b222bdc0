"""The click CLI (cli.py) through click's CliRunner: train (limit, resume after SIGINT, plot,
grad norms), eval, models, info, summary, errors (bad model, bad ranges, --device cuda
without a GPU)."""

import json
import os
import signal
import sys

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cli  # noqa: E402
from zoo.trainer import Trainer, load_checkpoint, read_metrics  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data")


def run(*args):
    result = CliRunner().invoke(cli.cli, [str(a) for a in args], catch_exceptions=False)
    return result


def _train_args(out, epochs=2, limit=3, extra=()):
    # tmp data dir without MNIST files: the shipped subset is used (fast, self-contained)
    return ["train", "lenet", "--epochs", epochs, "--limit", limit, "--batch-size", 32,
            "--out", out, "--data-dir", os.path.join(out, "nodata"), "--no-progress",
            *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli_ref"))
    r = run(*_train_args(out, extra=["--log-grad-norms", 2, "--plot"]))
    assert r.exit_code == 0, r.output
    return out, r.output


def test_train_limit_writes_run(uninterrupted):
    out, output = uninterrupted
    assert "epoch 1/2: train loss" in output and "epoch 2/2: train loss" in output
    assert "test loss" in output and "img/s" in output and "done in" in output
    assert "subset" in output  # says so when the shipped subset stands in
    for name in ("last.safetensors", "best.safetensors", "metrics.jsonl", "curves.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    records = read_metrics(os.path.join(out, "metrics.jsonl"))
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert [r["step"] for r in records if r["type"] == "grad_norms"] == [2, 4, 6]
    ck = load_checkpoint(os.path.join(out, "last.safetensors"))
    cfg = ck["config"]
    assert cfg["model"] == "lenet5" and cfg["dataset"] == "mnist" and cfg["limit"] == 3
    assert cfg["model_kwargs"] == {"input_size": 28, "num_classes": 10, "in_channels": 1}
    assert ck["progress"]["epoch"] == 2 and ck["progress"]["global_step"] == 6


def test_sigint_then_resume_matches_uninterrupted(uninterrupted, tmp_path, monkeypatch):
    ref_out, _ = uninterrupted
    out = str(tmp_path)
    original = Trainer.train_step

    def step_then_interrupt(self, *a, **k):
        result = original(self, *a, **k)
        if self.global_step == 2:  # mid-epoch 1 (3 batches per epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(Trainer, "train_step", step_then_interrupt)
    r = run(*_train_args(out, extra=["--log-grad-norms", 2]))
    assert r.exit_code == cli.EXIT_INTERRUPTED, r.output
    assert "resume with: python cli.py train lenet5 --resume" in r.output
    assert load_checkpoint(os.path.join(out, "last.safetensors"))["progress"]["global_step"] == 2
    monkeypatch.setattr(Trainer, "train_step", original)

    r = run("train", "lenet", "--resume", os.path.join(out, "last.safetensors"),
            "--no-progress")
    assert r.exit_code == 0, r.output
    assert "resumed" in r.output and "epoch 1, batch 2" in r.output
    a = load_checkpoint(os.path.join(ref_out, "last.safetensors"))
    b = load_checkpoint(os.path.join(out, "last.safetensors"))
    assert list(a["model"]) == list(b["model"])
    for k in a["model"]:
        np.testing.assert_array_equal(a["model"][k], b["model"][k], err_msg=k)
    assert a["rng"] == b["rng"]
    ea = [r for r in read_metrics(os.path.join(ref_out, "metrics.jsonl")) if r["type"] == "epoch"]
    eb = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["type"] == "epoch"]
    assert [r["test_acc"] for r in ea] == [r["test_acc"] for r in eb]


def test_eval(uninterrupted):
    out, _ = uninterrupted
    r = run("eval", os.path.join(out, "best.safetensors"), "--limit", 2, "--batch-size", 100)
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and "confusion matrix" in r.output and "recall" in r.output
    r = run("eval", os.path.join(out, "last.safetensors"), "--limit", 2, "--batch-size", 100,
            "--json")
    data = json.loads(r.output.strip().splitlines()[-1])
    assert data["images"] == 200 and np.array(data["confusion"]).sum() == 200
    assert 0 <= data["accuracy"] <= 1


def test_eval_rejects_non_checkpoint(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a checkpoint")
    r = run("eval", bad)
    assert r.exit_code == 2 and "error:" in r.output


def test_models_table():
    r = run("models", "lenet", "alexnet", "resnet18")
    assert r.exit_code == 0, r.output
    assert "61,706" in r.output and "62,378,344" in r.output and "11,689,512" in r.output
    r = run("models", "resnet18", "--json")
    (row,) = json.loads(r.output)
    assert row["params"] == 11_689_512 and row["flops"] == 2 * 1_814_073_344


def test_info():
    r = run("info")
    assert r.exit_code == 0, r.output
    for word in ("python", "numpy", "numba", "devices", "cuda", "threads", "cache", "malloc", "small gemm",
                 "kernels", "compiled and cached: lenet5 "):
        assert word in r.output


def test_bad_model_name():
    r = run("train", "resnet50")
    assert r.exit_code == 2
    assert "unknown model 'resnet50'" in r.output and "lenet5" in r.output


@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "--epochs"), (["--lr", "-1"], "--lr"), (["--batch-size", "0"],
                                                                 "--batch-size"),
    (["--momentum", "1.5"], "--momentum"), (["--optimizer", "lbfgs"], "--optimizer"),
    (["--schedule", "poly"], "--schedule"), (["--limit", "0"], "--limit"),
    (["--dataset", "imagenet"], "--dataset")])
def test_option_ranges(args, message):
    r = run("train", "lenet", *args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def _gpu_usable():
    try:
        import minigrad_cuda

        return bool(getattr(minigrad_cuda, "is_available", lambda: False)())
    except Exception:
        return False


@pytest.mark.skipif(_gpu_usable(), reason="a usable CUDA device (or the simulator) is present")
def test_device_cuda_without_gpu(tmp_path):
    r = run("train", "lenet", "--device", "cuda", "--out", tmp_path)
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert "Traceback" not in r.output


def test_summary_command():
    pytest.importorskip("minigrad.summary")
    r = run("summary", "lenet", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert "61706" in json.dumps(data).replace(",", "").replace("_", "")


def test_help_lists_commands():
    r = run("--help")
    for cmd in ("train", "eval", "models", "info", "bench", "summary", "gradflow", "compile"):
        assert cmd in r.output


@pytest.mark.parametrize("schedule", ["none", "step", "cosine", "onecycle"])
@pytest.mark.parametrize("warmup", [0.0, 1.0])
def test_schedules(schedule, warmup):
    import minigrad.nn as nn

    lin = nn.Linear(2, 2)
    opt = cli.build_optimizer("sgd", lin.parameters(), 0.1, 0.9, 0.0)
    sched, interval = cli.build_scheduler(schedule, opt, 0.1, epochs=4, steps_per_epoch=5,
                                          warmup_epochs=warmup)
    lrs = []
    for epoch in range(4):
        for _ in range(5):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if sched is not None and interval == "step":
                sched.step()
        if sched is not None and interval == "epoch":
            sched.step()
    assert all(0 <= v <= 0.1 + 1e-12 for v in lrs)
    if schedule in ("cosine", "onecycle"):
        assert lrs[-1] < 0.02 and max(lrs) == pytest.approx(0.1, rel=0.05)
    if schedule == "step":
        assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.001)
    if warmup and schedule in ("none", "cosine"):
        assert lrs[0] < lrs[4] and lrs[0] == pytest.approx(0.1 / 5)
    if sched is not None:  # state round trip
        state = sched.state_dict()
        sched.load_state_dict(state)


def test_train_lenet_on_synthetic_colour_images(tmp_path):
    r = run("train", "lenet", "--dataset", "synthetic", "--epochs", 1, "--limit", 2,
            "--batch-size", 16, "--optimizer", "sgd", "--schedule", "cosine", "--out",
            tmp_path, "--no-progress")
    assert r.exit_code == 0, r.output
    cfg = load_checkpoint(os.path.join(tmp_path, "last.safetensors"))["config"]
    assert cfg["model_kwargs"] == {"input_size": 32, "num_classes": 10, "in_channels": 3}
    r = run("eval", os.path.join(tmp_path, "last.safetensors"), "--limit", 1)
    assert r.exit_code == 0 and "accuracy" in r.output
