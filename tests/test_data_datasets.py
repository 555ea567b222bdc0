"""Shipped subset, real data (if present), synthetic set, helpers, data-dir resolution."""
from pathlib import Path

import numpy as np
import pytest

from minigrad.data import (MNIST, SUBSET_PATH, DatasetNotFoundError, RandomCropFlip,
                           SyntheticImages, default_cache_dir, get_dataset, load_mnist,
                           load_mnist_subset, resolve_data_dir, train_augmentation)
from minigrad.data.download import md5_gunzipped

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HAS_MNIST = (SHARED / "mnist" / "train-images-idx3-ubyte.gz").exists()


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIGRAD_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("MINIGRAD_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "minigrad" == default_cache_dir()
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_data_dir() == Path.home() / ".cache" / "minigrad"


def test_shipped_subset():
    assert SUBSET_PATH.is_file() and SUBSET_PATH.stat().st_size < 3_000_000
    for train, n in ((True, 10000), (False, 2000)):
        x, y = load_mnist_subset(train)
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
        assert np.bincount(y, minlength=10).tolist() == [n // 10] * 10


def test_subset_fallback(tmp_path, caplog):
    with pytest.raises(DatasetNotFoundError):
        MNIST(tmp_path)
    with caplog.at_level("WARNING", logger="minigrad.data"):
        ds = load_mnist(tmp_path, train=True)
    assert ds.is_subset and len(ds) == 10000 and ds.data.shape == (10000, 1, 28, 28)
    assert ds.fallback_message == (f"full MNIST not found in {tmp_path / 'mnist'}; "
                                   f"using the shipped 10,000-image subset")
    assert ds.fallback_message in caplog.text
    te = get_dataset("mnist", root=tmp_path, train=False)
    assert te.is_subset and len(te) == 2000 and "2,000-image" in te.fallback_message
    x, y = te[0]
    assert x.shape == (1, 28, 28) and x.dtype == np.float32 and 0 <= y <= 9


@pytest.mark.skipif(not HAS_MNIST, reason="shared MNIST not present")
def test_real_mnist_loads(monkeypatch):
    monkeypatch.setenv("MINIGRAD_DATA", str(SHARED))
    tr = MNIST(train=True)
    te = get_dataset("mnist", train=False)
    assert not tr.is_subset and not te.is_subset
    assert tr.data.shape == (60000, 1, 28, 28) and te.data.shape == (10000, 1, 28, 28)
    assert np.bincount(tr.targets).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(te.targets).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    f = tr.data.astype(np.float64) / 255
    assert abs(f.mean() - 0.1307) < 1e-3 and abs(f.std() - 0.3081) < 1e-3
    assert md5_gunzipped(SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz") == "27ae3e4e09519cfbb04c329615203637"
    # the subset is a true subset of the real data
    with np.load(SUBSET_PATH, allow_pickle=False) as z:
        idx = z["test_index"]
        np.testing.assert_array_equal(z["test_images"], te.data[idx, 0])
        np.testing.assert_array_equal(z["test_labels"], te.targets[idx])


def test_synthetic_deterministic_and_learnable():
    a = SyntheticImages(500, seed=3)
    b = get_dataset("synthetic", num_samples=500, seed=3)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert a.data.shape == (500, 3, 32, 32) and a.data.dtype == np.uint8
    assert not np.array_equal(a.data, SyntheticImages(500, seed=4).data)
    te = SyntheticImages(200, train=False, seed=3)
    assert not np.array_equal(a.data[:200], te.data)
    assert a.mean == te.mean and a.std == te.std
    assert np.bincount(a.targets).tolist() == [50] * 10
    # learnable: nearest class mean on raw pixels beats chance by far on the test split
    x = a.data.reshape(500, -1) / 255.0
    cent = np.stack([x[a.targets == k].mean(0) for k in range(10)])
    xt = te.data.reshape(200, -1) / 255.0
    pred = ((xt[:, None] - cent[None]) ** 2).sum(-1).argmin(1)
    assert (pred == te.targets).mean() > 0.6
    s = SyntheticImages(30, num_classes=3, image_size=16, channels=1)
    assert s.data.shape == (30, 1, 16, 16) and s.num_classes == 3 and s.in_channels == 1


def test_get_dataset_and_augmentation_names():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        get_dataset("imagenet")
    assert train_augmentation("mnist") is None
    assert isinstance(train_augmentation("cifar10"), RandomCropFlip)
    assert isinstance(train_augmentation("synthetic"), RandomCropFlip)
