"""nn.Module: registration, traversal, state dicts and their errors, modes, devices, repr."""

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn as nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(2)
        self.downsample = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))
        self.fc = nn.Linear(2, 3)
        self.register_buffer("scale", mg.ones(1))
        self.register_buffer("tmp", mg.zeros(1), persistent=False)

    def forward(self, x):
        x = self.downsample(self.bn1(self.conv1(x)))
        return self.fc(x.mean((2, 3)))


def test_registration_and_names():
    m = Block()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["conv1.weight", "bn1.weight", "bn1.bias", "downsample.0.weight", "downsample.0.bias",
                     "downsample.1.weight", "downsample.1.bias", "fc.weight", "fc.bias"]
    assert len(list(m.parameters())) == 9
    assert all(p.requires_grad for p in m.parameters())
    assert [n for n, _ in m.named_children()] == ["conv1", "bn1", "downsample", "fc"]
    assert [n for n, _ in m.named_modules()] == ["", "conv1", "bn1", "downsample", "downsample.0",
                                                 "downsample.1", "fc"]
    assert len(list(m.modules())) == 7 and len(list(m.children())) == 4
    keys = list(m.state_dict())
    assert keys[0] == "scale"  # own buffers come before children, as PyTorch
    assert keys[1:7] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                        "bn1.num_batches_tracked"]
    assert "scale" in keys and "tmp" not in keys and "conv1.bias" not in keys
    assert [n for n, _ in m.named_buffers()][0] == "scale"
    seen = []
    m.apply(lambda mod: seen.append(type(mod).__name__))
    assert seen[-1] == "Block" and seen[0] == "Conv2d"


def test_state_dict_copies_and_round_trip():
    mg.manual_seed(0)
    a = Block()
    sd = a.state_dict()
    assert isinstance(sd["fc.weight"], np.ndarray)
    sd["fc.weight"][:] = 7
    assert not (a.fc.weight.numpy() == 7).any()
    b = Block()
    res = b.load_state_dict(a.state_dict())
    assert res.missing_keys == [] and res.unexpected_keys == []
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(v, w)
    assert b.state_dict()["bn1.num_batches_tracked"].dtype == np.int64
    tensors = {k: mg.tensor(v) for k, v in a.state_dict().items()}
    b.load_state_dict(tensors)
    fw = b.fc.weight
    b.load_state_dict({**a.state_dict(), "fc.weight": np.zeros((3, 2))})
    assert b.fc.weight is fw and (fw.numpy() == 0).all() and fw.dtype == np.float32


def test_load_state_dict_errors_list_everything():
    m = Block()
    sd = m.state_dict()
    del sd["fc.bias"]
    sd["extra.weight"] = np.zeros(2)
    sd["conv1.weight"] = np.zeros((5, 1, 3, 3))
    with pytest.raises(RuntimeError) as err:
        m.load_state_dict(sd)
    msg = str(err.value)
    assert "'fc.bias'" in msg and "'extra.weight'" in msg and "conv1.weight" in msg and "(5, 1, 3, 3)" in msg
    assert isinstance(err.value, ValueError)
    sd["conv1.weight"] = np.zeros((2, 1, 3, 3))
    res = m.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["fc.bias"] and res.unexpected_keys == ["extra.weight"]
    sd["conv1.weight"] = np.zeros((1, 1, 3, 3))
    with pytest.raises(RuntimeError, match="conv1.weight"):
        m.load_state_dict(sd, strict=False)


def test_train_eval_zero_grad_to():
    m = Block()
    assert m.training and m.bn1.training
    m.eval()
    assert not m.training and not m.downsample[1].training
    m.train()
    assert m.downsample[1].training
    out = m(mg.randn(2, 1, 5, 5))
    out.sum().backward()
    assert m.fc.weight.grad is not None
    m.zero_grad(set_to_none=False)
    assert (m.fc.weight.grad.numpy() == 0).all()
    m.zero_grad()
    assert m.fc.weight.grad is None
    w = m.fc.weight
    m.to("cpu")
    assert m.fc.weight is w and w.device == "cpu"
    m.double()
    assert m.fc.weight.dtype == np.float64 and m.bn1.running_mean.dtype == np.float64
    assert m.bn1.num_batches_tracked.dtype == np.int64
    assert m(mg.randn(2, 1, 5, 5, dtype=np.float64)).dtype == np.float64
    with pytest.raises(ValueError, match="unknown device"):
        m.to("tpu")


def test_sequential_indexing_and_repr():
    s = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert len(s) == 3 and isinstance(s[-1], nn.Linear) and isinstance(s[1], nn.ReLU)
    sub = s[:2]
    assert isinstance(sub, nn.Sequential) and len(sub) == 2 and sub[0] is s[0]
    with pytest.raises(IndexError):
        s[3]
    assert [type(m).__name__ for m in s] == ["Linear", "ReLU", "Linear"]
    text = repr(s)
    assert text.splitlines()[0] == "Sequential("
    assert "(0): Linear(in_features=4, out_features=3, bias=True)" in text
    assert "(1): ReLU()" in text
    nested = repr(nn.Sequential(s))
    assert "    (2): Linear(in_features=3, out_features=2, bias=True)" in nested
    assert repr(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)) == \
        "Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)"
    assert s(mg.randn(5, 4)).shape == (5, 2)
    s.append(nn.ReLU())
    assert len(s) == 4


def test_attribute_rules_and_hooks():
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError):
        m.weight = mg.zeros(2, 2)
    m.weight = nn.Parameter(mg.zeros(2, 2))
    assert (m.state_dict()["weight"] == 0).all()
    calls = []
    h = m.register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    m(mg.randn(3, 2))
    h.remove()
    m(mg.randn(3, 2))
    assert calls == [(3, 2)]
    with pytest.raises(AttributeError):
        m.nope
    p = nn.Parameter(mg.ones(3))
    assert p.requires_grad and "Parameter containing" in repr(p)


def test_nn_and_optim_reachable_from_a_bare_import():
    """``import minigrad as mg`` alone gives mg.nn and mg.optim, as torch.nn / torch.optim."""
    import os
    import subprocess
    import sys

    code = ("import minigrad as mg; m = mg.nn.Linear(2, 1); "
            "mg.optim.SGD(m.parameters(), lr=0.1); print(mg.nn.functional.relu.__name__)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "relu"
