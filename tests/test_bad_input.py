"""Bad input everywhere gives a clear error naming the shapes or values at fault."""

import gzip
import os

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn as nn
import minigrad.nn.functional as F
import zoo


def test_int_input_to_conv():
    conv = nn.Conv2d(1, 2, 3)
    with pytest.raises(TypeError, match="int64"):
        conv(mg.tensor(np.zeros((1, 1, 5, 5), dtype=np.int64)))


def test_float_labels_for_the_loss():
    with pytest.raises(TypeError, match="float32"):
        F.cross_entropy(mg.zeros(2, 3), mg.tensor([0.0, 1.0]))


@pytest.mark.parametrize("bad", [3, -1, 100])
def test_labels_out_of_range(bad):
    with pytest.raises(ValueError, match=str(bad)):
        F.cross_entropy(mg.zeros(2, 3), mg.tensor([0, bad]))


def test_labels_with_wrong_shape():
    with pytest.raises(ValueError, match=r"\(2, 1\)"):
        F.cross_entropy(mg.zeros(2, 3), mg.tensor([[0], [1]]))


def test_state_dict_from_another_model_lists_keys():
    lenet = zoo.lenet5()
    other = zoo.lenet5(num_classes=7)
    with pytest.raises(ValueError, match=r"fc3\.weight.*\(7, 84\).*\(10, 84\)"):
        lenet.load_state_dict(other.state_dict())
    state = lenet.state_dict()
    state.pop("conv1.bias")
    state["extra.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"conv1\.bias[\s\S]*extra\.weight"):
        lenet.load_state_dict(state)


def test_tampered_and_truncated_checkpoint(tmp_path):
    path = str(tmp_path / "ck.safetensors")
    mg.save({"model": zoo.lenet5().state_dict()}, path)
    data = bytearray(open(path, "rb").read())
    data[-10] ^= 0xFF
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="tampered.safetensors"):
        mg.load(str(tampered))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ValueError, match="truncated.safetensors"):
        mg.load(str(truncated))


def test_corrupt_dataset_file(tmp_path):
    from minigrad.data import MNIST

    root = tmp_path / "mnist"
    root.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(root / f"{name}.gz", "wb") as fh:
            fh.write(b"\x00\x00\x08\x03garbage")
    with pytest.raises(ValueError, match="train-(images|labels)"):
        MNIST(root=str(tmp_path), train=True)


def test_matmul_and_broadcast_errors_name_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 3\)"):
        mg.zeros(2, 3) @ mg.zeros(2, 3)
    with pytest.raises(ValueError, match="broadcast"):
        mg.zeros(2, 3) + mg.zeros(4)


def test_linear_with_wrong_features():
    with pytest.raises(ValueError, match="5 features"):
        nn.Linear(4, 2)(mg.zeros(3, 5))


def test_checkpoint_does_not_unpickle(tmp_path):
    import pickle

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"model": 1}))
    with pytest.raises(ValueError, match="evil.safetensors"):
        mg.load(str(path))
    assert os.path.exists(path)
