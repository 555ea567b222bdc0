"""Checkpoint files: round trips, integrity checks, atomic writes and exact training resume."""

import json
import os

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn as nn
import minigrad.optim as optim
from minigrad import io as mio


def test_round_trip_values(tmp_path):
    obj = {
        "epoch": 3, "lr": 0.125, "name": "run", "none": None, "flag": True, "big": 2 ** 100,
        "list": [1, 2.5, "x", None, [3]], "tuple": (0.9, 0.999), "nested": {"a": {"b": {}}},
        "ints": {0: "zero", 7: [1]},
        "arrays": {"i64": np.arange(5, dtype=np.int64), "zero_d": np.array(3.5), "f32": np.ones((2, 3), np.float32),
                   "empty": np.zeros((0, 4)), "bool": np.array([True, False]), "u8": np.arange(3, dtype=np.uint8),
                   "scalar": np.float32(2.5), "strided": np.arange(12.0).reshape(3, 4)[:, ::2]},
        "tensor": mg.tensor([1.0, 2.0]),
        "rng": mg.get_rng_state(),
        "nan": float("nan"), "inf": float("-inf"),
    }
    path = tmp_path / "ck.safetensors"
    mg.save(obj, path, metadata={"note": "hello", "n": 3})
    back = mg.load(path)
    for key in ("epoch", "lr", "name", "none", "flag", "big", "list", "tuple", "nested", "ints", "rng", "inf"):
        assert back[key] == obj[key], key
    assert type(back["tuple"]) is tuple and type(back["epoch"]) is int and math_isnan(back["nan"])
    for k, v in obj["arrays"].items():
        got = back["arrays"][k]
        assert np.asarray(got).dtype == np.asarray(v).dtype and np.shape(got) == np.shape(v), k
        np.testing.assert_array_equal(got, v)
    assert back["arrays"]["zero_d"].shape == () and isinstance(back["arrays"]["scalar"], np.float32)
    np.testing.assert_array_equal(back["tensor"], [1.0, 2.0])
    assert mio.load_metadata(path) == {"note": "hello", "n": "3"}
    mg.set_rng_state(back["rng"])


def math_isnan(x):
    return x != x


def test_file_is_plain_safetensors(tmp_path):
    from safetensors.numpy import load_file

    path = tmp_path / "m.safetensors"
    mg.save({"model": {"fc.weight": np.ones((2, 2), np.float32)}}, path)
    assert list(load_file(str(path))) == ["model.fc.weight"]
    raw = path.read_bytes()
    assert b"pickle" not in raw


def test_tampered_and_truncated_files_fail_clearly(tmp_path):
    path = tmp_path / "ck.safetensors"
    mg.save({"w": np.arange(100, dtype=np.float32), "step": 4}, path)
    raw = bytearray(path.read_bytes())
    bad = tmp_path / "bad.safetensors"
    raw2 = bytearray(raw)
    raw2[-5] ^= 0xFF
    bad.write_bytes(bytes(raw2))
    with pytest.raises(ValueError, match="bad.safetensors.*checksum"):
        mg.load(bad)
    bad.write_bytes(bytes(raw[:-10]))
    with pytest.raises(ValueError, match="bad.safetensors"):
        mg.load(bad)
    bad.write_bytes(bytes(raw[:5]))
    with pytest.raises(ValueError, match="bad.safetensors"):
        mg.load(bad)
    # changing the structure (e.g. the epoch) in the header is detected too
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["__metadata__"]["minigrad.structure"] = header["__metadata__"]["minigrad.structure"].replace("4", "5")
    text = json.dumps(header).encode()
    text = text + b" " * (n - len(text)) if len(text) <= n else text
    bad.write_bytes(len(text).to_bytes(8, "little") + text + bytes(raw[8 + n:]))
    with pytest.raises(ValueError, match="checksum"):
        mg.load(bad)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    mg.save({"v": 1}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        mg.save({"v": 2}, path)
    monkeypatch.undo()
    assert mg.load(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["ck.safetensors"]
    with pytest.raises(TypeError, match="object"):
        mg.save({"bad": object()}, tmp_path / "x.safetensors")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.MaxPool2d(2))
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.drop(self.features(x).flatten(1)))


def _batch(i):
    rng = np.random.default_rng(100 + i)
    return mg.tensor(rng.standard_normal((8, 1, 8, 8)).astype(np.float32)), mg.tensor(rng.integers(0, 3, 8))


def _train(model, opt, sched, steps, start):
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    for i in range(start, start + steps):
        x, y = _batch(i)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_resume_is_bit_identical(tmp_path, opt_name):
    def build():
        model = Net()
        if opt_name == "sgd":
            opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
        else:
            opt = optim.AdamW(model.parameters(), lr=0.01)
        sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10)
        return model, opt, sched

    mg.manual_seed(0)
    ref_model, ref_opt, ref_sched = build()
    _train(ref_model, ref_opt, ref_sched, 6, 0)

    mg.manual_seed(0)
    model, opt, sched = build()
    _train(model, opt, sched, 3, 0)
    path = tmp_path / "ck.safetensors"
    mg.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": 3, "rng": mg.get_rng_state()}, path)
    del model, opt, sched

    mg.manual_seed(12345)  # a fresh process would start from another state
    model, opt, sched = build()
    ck = mg.load(path)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    mg.set_rng_state(ck["rng"])
    assert ck["epoch"] == 3
    _train(model, opt, sched, 3, 3)

    for (k, a), (_, b) in zip(ref_model.state_dict().items(), model.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert sched.get_last_lr() == ref_sched.get_last_lr()


def test_write_file_atomic_replaces_whole_and_leaves_no_temporary(tmp_path):
    from minigrad.io import write_file_atomic

    path = tmp_path / "out.bin"
    path.write_bytes(b"old contents")
    assert write_file_atomic(str(path), b"new") == str(path)
    assert path.read_bytes() == b"new"
    with pytest.raises(TypeError):
        write_file_atomic(str(path), "text, not bytes")
    assert path.read_bytes() == b"new"             # a failed write leaves the old file
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        write_file_atomic(str(tmp_path / "no_such_dir" / "f"), b"x")


def test_save_figure_writes_the_format_of_the_extension(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minigrad.io import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png, svg = tmp_path / "a.png", tmp_path / "a.svg"
    save_figure(fig, png, dpi=50)
    save_figure(fig, svg)
    plt.close(fig)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:1000]
    assert sorted(os.listdir(tmp_path)) == ["a.png", "a.svg"]
