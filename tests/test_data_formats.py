"""IDX and CIFAR-10 binary parsing, on files the tests write."""
import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest

from minigrad.data import (CIFAR10, MNIST, DatasetNotFoundError, parse_cifar_batch, read_cifar_batch,
                           read_idx, write_idx)


def _mnist_arrays(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, size=n).astype(np.uint8))


def _write_mnist(folder, train=True, n=20, gz=True, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    imgs, labs = _mnist_arrays(n, seed)
    pre = "train" if train else "t10k"
    ext = ".gz" if gz else ""
    write_idx(folder / f"{pre}-images-idx3-ubyte{ext}", imgs)
    write_idx(folder / f"{pre}-labels-idx1-ubyte{ext}", labs)
    return imgs, labs


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_roundtrip(tmp_path, dtype, name):
    a = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    write_idx(tmp_path / name, a)
    b = read_idx(tmp_path / name)
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_idx_bad_magic(tmp_path):
    p = tmp_path / "bad-images-idx3-ubyte"
    p.write_bytes(b"\x12\x34\x08\x03" + bytes(100))
    with pytest.raises(ValueError, match=r"bad-images-idx3-ubyte.*magic number 0x12340803"):
        read_idx(p)


def test_idx_expected_magic_mismatch(tmp_path):
    p = write_idx(tmp_path / "labels.gz", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match=r"labels.gz.*0x00000801, expected 0x00000803"):
        read_idx(p, expected_magic=0x803)


def test_idx_truncated_and_wrong_size(tmp_path):
    imgs, _ = _mnist_arrays(4)
    p = write_idx(tmp_path / "x-idx3-ubyte", imgs)
    raw = p.read_bytes()
    p.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match=r"x-idx3-ubyte: truncated: header says 4x28x28 uint8 = 3136 data bytes, file has 3126"):
        read_idx(p)
    p.write_bytes(raw + b"\0")
    with pytest.raises(ValueError, match="wrong size"):
        read_idx(p)
    p.write_bytes(raw[:9])
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(p)
    p.write_bytes(b"\0\0")
    with pytest.raises(ValueError, match="too short"):
        read_idx(p)


def test_idx_truncated_gzip(tmp_path):
    p = tmp_path / "t-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(bytes(5000))[:-20])
    with pytest.raises(ValueError, match=r"t-idx3-ubyte.gz: corrupt or truncated gzip"):
        read_idx(p)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["mnist", "MNIST/raw", "."])
def test_mnist_from_written_files(tmp_path, gz, layout):
    imgs, labs = _write_mnist(tmp_path / layout, train=True, n=12, gz=gz)
    timgs, tlabs = _write_mnist(tmp_path / layout, train=False, n=5, gz=gz, seed=1)
    ds = MNIST(tmp_path, train=True, normalize=False)
    assert ds.data.shape == (12, 1, 28, 28) and ds.data.dtype == np.uint8
    assert ds.targets.dtype == np.int64 and not ds.is_subset
    np.testing.assert_array_equal(ds.data[:, 0], imgs)
    np.testing.assert_array_equal(ds.targets, labs)
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == np.float32 and y == labs[3]
    np.testing.assert_allclose(x[0], imgs[3] / 255.0, rtol=1e-6)
    test = MNIST(tmp_path, train=False)
    assert len(test) == 5
    x, _ = test[0]
    np.testing.assert_allclose(x[0], (timgs[0] / 255.0 - 0.1307) / 0.3081, rtol=1e-5, atol=1e-6)


def test_mnist_mismatched_counts_and_labels(tmp_path):
    _write_mnist(tmp_path / "mnist", n=6)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="5 labels but .* has 6 images"):
        MNIST(tmp_path)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.full(6, 11, np.uint8))
    with pytest.raises(ValueError, match="labels must be 0..9"):
        MNIST(tmp_path)
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", np.zeros((6, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="expected images of 28x28"):
        MNIST(tmp_path)


def test_mnist_missing_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as ei:
        MNIST(tmp_path, train=False)
    msg = str(ei.value)
    assert str(tmp_path / "mnist") in msg
    assert "t10k-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg


# ------------------------------------------------------------------ CIFAR-10 binary

def _cifar_bytes(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    imgs = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    rec = np.concatenate([labels[:, None], imgs.reshape(n, -1)], axis=1)
    return rec.tobytes(), imgs, labels


def _write_cifar(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    all_imgs, all_labs = [], []
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        b, imgs, labs = _cifar_bytes(n, i)
        (folder / name).write_bytes(b)
        all_imgs.append(imgs)
        all_labs.append(labs)
    return all_imgs, all_labs


def test_cifar_record_layout(tmp_path):
    # label byte, then 1024 R, 1024 G, 1024 B, row-major
    rec = bytearray(3073)
    rec[0] = 7
    rec[1 + 0 * 1024 + 2 * 32 + 5] = 11   # R at (y=2, x=5)
    rec[1 + 1 * 1024 + 31 * 32 + 0] = 22  # G at (31, 0)
    rec[1 + 2 * 1024 + 0 * 32 + 31] = 33  # B at (0, 31)
    p = tmp_path / "one.bin"
    p.write_bytes(bytes(rec))
    imgs, labs = read_cifar_batch(p)
    assert imgs.shape == (1, 3, 32, 32) and labs.tolist() == [7] and labs.dtype == np.int64
    assert imgs[0, 0, 2, 5] == 11 and imgs[0, 1, 31, 0] == 22 and imgs[0, 2, 0, 31] == 33
    assert imgs.sum() == 66


@pytest.mark.parametrize("sub", ["cifar10", "cifar10/cifar-10-batches-bin", "cifar-10-batches-bin"])
def test_cifar_folders(tmp_path, sub):
    imgs, labs = _write_cifar(tmp_path / sub)
    tr = CIFAR10(tmp_path, train=True)
    assert tr.data.shape == (15, 3, 32, 32) and tr.data.dtype == np.uint8
    np.testing.assert_array_equal(tr.data, np.concatenate(imgs[:5]))
    np.testing.assert_array_equal(tr.targets, np.concatenate(labs[:5]))
    te = CIFAR10(tmp_path, train=False, normalize=False)
    np.testing.assert_array_equal(te.data, imgs[5])
    x, y = te[1]
    assert x.shape == (3, 32, 32) and y == labs[5][1]
    np.testing.assert_allclose(x, imgs[5][1] / 255.0, rtol=1e-6)
    assert tr.classes[0] == "airplane" and tr.num_classes == 10


def test_cifar_from_tarball(tmp_path):
    src = tmp_path / "src" / "cifar-10-batches-bin"
    imgs, labs = _write_cifar(src)
    root = tmp_path / "data"
    (root / "cifar10").mkdir(parents=True)
    with tarfile.open(root / "cifar10" / "cifar-10-binary.tar.gz", "w:gz") as tf:
        tf.add(src, arcname="cifar-10-batches-bin")
    te = CIFAR10(root, train=False)
    np.testing.assert_array_equal(te.data, imgs[5])
    assert (root / "cifar10" / "test_batch.bin").is_file()  # cached extraction
    tr = CIFAR10(root, train=True)
    np.testing.assert_array_equal(tr.targets, np.concatenate(labs[:5]))


def test_cifar_bad_sizes_and_labels(tmp_path):
    _write_cifar(tmp_path / "cifar10")
    p = tmp_path / "cifar10" / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"data_batch_3.bin: wrong size: 9119 bytes is not a positive multiple of 3073"):
        CIFAR10(tmp_path, train=True)
    b, _, _ = _cifar_bytes(2, 0)
    b = bytes([12]) + b[1:]
    with pytest.raises(ValueError, match="record 0 has label 12, expected 0..9"):
        parse_cifar_batch(b, "x.bin")
    with pytest.raises(ValueError, match="empty.bin: wrong size: 0 bytes"):
        parse_cifar_batch(b"", "empty.bin")


def test_cifar_missing_lists_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as ei:
        CIFAR10(tmp_path, train=True)
    msg = str(ei.value)
    assert "cifar-10-binary.tar.gz" in msg and "data_batch_5.bin" in msg
    assert str(tmp_path / "cifar10") in msg


@pytest.mark.parametrize("evidence", ["cifar-10-python.tar.gz", "data_batch_1", "cifar-10-batches-py"])
def test_cifar_pickle_variant_refused(tmp_path, evidence):
    (tmp_path / "cifar10").mkdir()
    target = tmp_path / "cifar10" / evidence
    if evidence.endswith("-py"):
        target.mkdir()
    else:
        target.write_bytes(pickle.dumps({"data": [1, 2, 3]}))
    with pytest.raises(ValueError, match=r"python \(pickle\) version.*cifar-10-binary.tar.gz"):
        CIFAR10(tmp_path, train=True)


def test_pickle_bytes_in_bin_refused(tmp_path):
    p = tmp_path / "data_batch_1.bin"
    p.write_bytes(pickle.dumps({"labels": [1]}, protocol=2) + bytes(3073))
    with pytest.raises(ValueError, match=r"data_batch_1.bin: this is a Python pickle.*cifar-10-binary"):
        read_cifar_batch(p)


def test_tar_without_members(tmp_path):
    (tmp_path / "cifar10").mkdir()
    buf = io.BytesIO(b"hello")
    with tarfile.open(tmp_path / "cifar10" / "cifar-10-binary.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("readme.txt")
        info.size = 5
        tf.addfile(info, buf)
    with pytest.raises(ValueError, match="archive lacks test_batch.bin"):
        CIFAR10(tmp_path, train=False)
