"""Per-layer gradient norms (minigrad.summary.layer_grad_norms) and zoo.gradflow."""

import math
import os

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn.functional as F
import minigrad.optim as optim
import zoo
from minigrad.summary import layer_grad_norms
from zoo import gradflow


def _step(model, opt, x, y):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss


def test_norms_match_manual_and_order():
    mg.manual_seed(0)
    model = zoo.lenet5()
    x = mg.randn(4, 1, 28, 28)
    y = mg.tensor(np.array([0, 1, 2, 3]))
    F.cross_entropy(model(x), y).backward()
    norms = layer_grad_norms(model)
    assert list(norms) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    for name, value in norms.items():
        layer = dict(model.named_modules())[name]
        g = np.concatenate([layer.weight.grad.numpy().ravel().astype(np.float64),
                            layer.bias.grad.numpy().ravel().astype(np.float64)])
        assert value == pytest.approx(float(np.linalg.norm(g)), rel=1e-12)
        assert value > 0


def test_norms_resnet_forward_order_and_filter():
    mg.manual_seed(0)
    model = zoo.resnet18(num_classes=10, stem="cifar")
    model(mg.randn(2, 3, 8, 8)).sum().backward()
    norms = layer_grad_norms(model)
    names = list(norms)
    assert names[:3] == ["conv1", "bn1", "layer1.0.conv1"] and names[-1] == "fc"
    assert "layer2.0.downsample.0" in names
    convs = layer_grad_norms(model, layer_types=("Conv2d", "Linear"))
    assert "bn1" not in convs and list(convs)[0] == "conv1" and len(convs) == 21
    assert all(convs[n] == norms[n] for n in convs)


def test_no_grad_layers_left_out():
    model = zoo.lenet5()
    assert layer_grad_norms(model) == {}


def test_logging_leaves_training_unchanged():
    def train(log):
        mg.manual_seed(3)
        model = zoo.lenet5()
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        rng = np.random.default_rng(1)
        for _ in range(3):
            x = mg.tensor(rng.standard_normal((8, 1, 28, 28)).astype(np.float32))
            y = mg.tensor(rng.integers(0, 10, 8))
            _step(model, opt, x, y)
            if log:
                layer_grad_norms(model)
                layer_grad_norms(model, layer_types=("Conv2d",))
            opt.step()
        return model.state_dict()

    a, b = train(False), train(True)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_run_lenet_writes_png(tmp_path):
    out = tmp_path / "lenet.png"
    r = gradflow.run("lenet5", steps=2, batch_size=4, out_png=str(out), verbose=False)
    assert os.path.getsize(out) > 1000
    assert r.layers == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert len(r.norms_per_step) == 2 and len(r.losses) == 2
    assert math.isfinite(r.ratio) and r.ratio > 0
    assert r.ratio == pytest.approx(r.norms["conv1"] / r.norms["fc3"])
    assert r.to_dict()["ratio_first_last"] == r.ratio
    with pytest.raises(ValueError, match="residual"):
        gradflow.run("lenet5", steps=1, residual=False, out_png=None, verbose=False)


def test_compare_residual_resnet18(tmp_path):
    out = tmp_path / "cmp.png"
    res = gradflow.compare_residual("resnet18", steps=1, batch_size=2, out_png=str(out),
                                    input_shape=(3, 16, 16), verbose=False)
    assert os.path.getsize(out) > 1000
    r, p = res["residual"], res["plain"]
    assert r.residual and not p.residual
    assert r.layers[0] == p.layers[0] == "conv1" and r.layers[-1] == p.layers[-1] == "fc"
    assert "layer2.0.downsample.0" in r.layers and "layer2.0.downsample.0" not in p.layers
    assert math.isfinite(r.ratio) and math.isfinite(p.ratio)
