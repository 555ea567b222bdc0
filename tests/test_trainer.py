"""Trainer: learning, checkpoints, exact resumption (mid-epoch and at epoch ends), metrics,
gradient-norm logging that leaves results unchanged, curves."""

import json
import os

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn as nn
import minigrad.optim as optim
import zoo
from minigrad.data import DataLoader, SyntheticImages, get_dataset
from zoo.trainer import Trainer, load_checkpoint, plot_metrics, read_metrics


class TinyNet(nn.Module):
    """A small conv net with BatchNorm and dropout (exercises buffers and the RNG)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.drop(self.flat(self.pool(nn.functional.relu(self.bn(self.conv(x)))))))


def _data(seed=0):
    train = SyntheticImages(num_samples=96, train=True, image_size=8, seed=0)
    test = SyntheticImages(num_samples=32, train=False, image_size=8, seed=0)
    from minigrad.data import train_augmentation

    return (DataLoader(train, batch_size=16, shuffle=True, seed=seed,
                       transform=train_augmentation("synthetic")),
            DataLoader(test, batch_size=16))


def _trainer(out_dir, log_grad_norms=0, epochs=3, limit=None):
    mg.manual_seed(0)
    model = TinyNet()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    train, test = _data()
    steps = min(len(train), limit) if limit else len(train)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=epochs * steps)
    return Trainer(model, opt, train, test, scheduler=sched, out_dir=out_dir,
                   config={"model": "tiny"}, log_grad_norms=log_grad_norms, progress=False,
                   echo=lambda *a, **k: None, limit=limit)


def _assert_same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch run."""
    out = tmp_path_factory.mktemp("ref")
    t = _trainer(out)
    t.fit(3)
    return t, out


def test_fit_writes_metrics_and_checkpoints(reference):
    t, out = reference
    assert not t.stopped
    names = sorted(os.listdir(out))
    assert names == ["best.safetensors", "last.safetensors", "metrics.jsonl"]  # no temp files
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["type"] == "epoch"
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1
        assert r["train_loss"] > 0 and r["images_per_s"] > 0
    state = load_checkpoint(out / "last.safetensors")
    assert set(state) >= {"model", "optimizer", "scheduler", "rng", "config", "progress"}
    assert state["progress"]["epoch"] == 3 and state["config"] == {"model": "tiny"}
    assert state["rng"] == mg.get_rng_state() or isinstance(state["rng"], dict)
    best = load_checkpoint(out / "best.safetensors")
    assert best["progress"]["best_acc"] == max(r["test_acc"] for r in records)
    assert records[-1]["train_loss"] < records[0]["train_loss"]


@pytest.mark.parametrize("stop_after", [4, 6, 13])  # mid-epoch, epoch end (6 batches/epoch)
def test_resume_is_exact(reference, tmp_path, stop_after):
    ref, _ = reference
    t = _trainer(tmp_path)
    step = t.train_step

    def stopping_step(*a, **k):
        r = step(*a, **k)
        if t.global_step == stop_after:
            t.request_stop()
        return r

    t.train_step = stopping_step
    t.fit(3)
    assert t.stopped
    ck = load_checkpoint(tmp_path / "last.safetensors")
    assert ck["progress"]["global_step"] == stop_after
    # a fresh process-like start: different RNG state, new objects, then resume
    mg.manual_seed(12345)
    mg.randn(7)
    t2 = _trainer(tmp_path)
    mg.manual_seed(999)
    t2.resume(tmp_path / "last.safetensors")
    t2.fit(3)
    assert not t2.stopped and t2.global_step == ref.global_step
    _assert_same_params(ref.model, t2.model)
    assert [r["test_acc"] for r in t2.history] == [r["test_acc"] for r in ref.history]
    assert [r["train_loss"] for r in t2.history] == [r["train_loss"] for r in ref.history]
    o1, o2 = ref.optimizer.state_dict(), t2.optimizer.state_dict()
    assert json.dumps(o1["param_groups"], default=str) == json.dumps(o2["param_groups"],
                                                                     default=str)


def test_grad_norm_logging_does_not_change_training(reference, tmp_path):
    ref, _ = reference
    t = _trainer(tmp_path, log_grad_norms=2)
    t.fit(3)
    _assert_same_params(ref.model, t.model)
    records = read_metrics(tmp_path / "metrics.jsonl")
    norms = [r for r in records if r["type"] == "grad_norms"]
    assert [r["step"] for r in norms] == list(range(2, 19, 2))
    assert list(norms[0]["norms"]) == ["conv", "bn", "fc"]
    assert all(v > 0 and np.isfinite(v) for r in norms for v in r["norms"].values())


def test_limit_and_evaluate_confusion(tmp_path):
    t = _trainer(tmp_path, limit=2, epochs=1)
    t.fit(1)
    assert t.global_step == 2
    loss, acc, matrix = t.evaluate(confusion=True)
    assert matrix.shape == (10, 10) and matrix.sum() == 32  # limit 2 batches of 16
    assert acc == pytest.approx(np.trace(matrix) / matrix.sum())


def test_plot(reference, tmp_path):
    pytest.importorskip("matplotlib")
    _, out = reference
    png = plot_metrics(out / "metrics.jsonl", tmp_path / "curves.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_lenet_learns_mnist_subset_in_one_short_epoch(tmp_path):
    # tmp_path holds no MNIST files, so the shipped 10,000-image subset is used
    train = get_dataset("mnist", root=tmp_path, train=True)
    test = get_dataset("mnist", root=tmp_path, train=False)
    assert train.is_subset and len(train) == 10_000
    mg.manual_seed(0)
    model = zoo.lenet5()
    opt = optim.Adam(model.parameters(), lr=4e-3)
    steps = 80  # of 157 batches: about half an epoch of the subset (measured: 93.2%)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps, pct_start=0.2)
    t = Trainer(model, opt, DataLoader(train, batch_size=64, shuffle=True, seed=0),
                DataLoader(test, batch_size=500), scheduler=sched, limit=steps,
                progress=False, echo=lambda *a, **k: None)
    history = t.fit(1)
    t.limit = None  # evaluate on the whole 2,000-image test subset
    loss, acc = t.evaluate()
    assert acc > 0.90, (history, acc)
