"""minigrad.summary: per-layer shapes, parameters, FLOPs, activation memory, padding shown."""

import json

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn as nn
import minigrad.nn.functional as F
import zoo
from minigrad.summary import Summary, SummaryError, leaf_modules, summary


def _numel(model):
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


SMALL_MODELS = [
    ("lenet5", {}, (1, 28, 28)),
    ("lenet5", {"input_size": 32, "in_channels": 3}, (3, 32, 32)),
    ("alexnet", {"variant": "cifar", "num_classes": 10}, (3, 32, 32)),
    ("vgg11", {"variant": "cifar", "num_classes": 10}, (3, 32, 32)),
    ("vgg13_bn", {"variant": "cifar", "num_classes": 10}, (3, 32, 32)),
    ("vgg16", {"variant": "cifar", "num_classes": 10}, (3, 32, 32)),
    ("vgg19_bn", {"variant": "cifar", "num_classes": 10}, (3, 32, 32)),
    ("resnet18", {"stem": "cifar", "num_classes": 10}, (3, 32, 32)),
    ("resnet18", {"stem": "cifar", "num_classes": 10, "residual": False}, (3, 32, 32)),
    ("resnet18", {"num_classes": 10}, (3, 64, 64)),
]


@pytest.mark.parametrize("name,kw,shape", SMALL_MODELS,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"
                              for n, kw, _ in SMALL_MODELS])
def test_param_totals_match_numel(name, kw, shape):
    model = zoo.get_model(name, **kw)
    s = mg.summary(model, shape, print_table=False)
    assert s.totals["params"] == _numel(model)
    assert sum(r["params"] for r in s.rows) == _numel(model)
    leaves = [n for n, _ in leaf_modules(model)]
    assert sorted(r["name"] for r in s.rows) == sorted(leaves)
    assert s.totals["output_shape"] == (1, kw.get("num_classes", 10))
    assert abs(sum(r["params_pct"] for r in s.rows) - 100) < 0.01
    assert abs(sum(r["activation_pct"] for r in s.rows) - 100) < 0.01
    # every leaf ran; every conv/linear has a FLOP count
    for r in s.rows:
        assert r["calls"] >= 1, r
        assert r["flops"] is not None, r


def test_vgg16_imagenet_params_in_fc_memory_in_first_blocks():
    model = zoo.vgg16()
    s = summary(model, (3, 224, 224), print_table=False)
    assert s.totals["params"] == 138_357_544 == _numel(model)
    fc0 = s.row("classifier.0")
    assert fc0["params"] == 25088 * 4096 + 4096
    assert fc0["params_pct"] > 70
    assert max(s.rows, key=lambda r: r["params"])["name"] == "classifier.0"
    # activation memory: the first two conv blocks (features.0-9) hold most of it
    first_blocks = sum(r["activation_bytes"] for r in s.rows
                       if r["name"].startswith("features.") and int(r["name"].split(".")[1]) <= 9)
    assert first_blocks / s.totals["activation_bytes"] > 0.6
    assert max(s.rows, key=lambda r: r["activation_bytes"])["name"] in (
        "features.0", "features.1", "features.2", "features.3")
    assert s.row("features.0")["activation_bytes"] == 64 * 224 * 224 * 4
    # 30.9 GFLOPs of conv/linear multiply-adds x 2, plus bias/ReLU/pool element ops
    conv_lin = sum(r["flops"] for r in s.rows if r["type"] in ("Conv2d", "Linear"))
    assert abs(conv_lin / 1e9 - 30.95) < 0.1
    # rows follow the forward pass: avgpool (defined after flatten) runs before it
    names = [r["name"] for r in s.rows]
    assert names.index("avgpool") < names.index("flatten") < names.index("classifier.0")
    text = str(s)
    assert "classifier.0" in text and "features.0" in text and "Total" in text


def test_conv_flops_hand_count():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    s = summary(conv, (3, 10, 12), print_table=False)
    (row,) = s.rows
    assert row["output_shape"] == (1, 8, 10, 12)
    assert row["flops"] == 2 * 3 * 3 * 3 * 8 * 10 * 12 + 8 * 10 * 12
    assert row["params"] == 8 * 3 * 9 + 8
    # strided, no bias, batch 3: FLOPs scale with the batch
    conv = nn.Conv2d(4, 5, kernel_size=(3, 5), stride=2, bias=False)
    s = summary(conv, (4, 11, 13), batch_size=3, print_table=False)
    (row,) = s.rows
    oh, ow = (11 - 3) // 2 + 1, (13 - 5) // 2 + 1
    assert row["output_shape"] == (3, 5, oh, ow)
    assert row["flops"] == 3 * 2 * 4 * 3 * 5 * 5 * oh * ow


def test_linear_flops_hand_count():
    lin = nn.Linear(20, 7)
    (row,) = summary(lin, (20,), print_table=False).rows
    assert row["flops"] == 2 * 20 * 7 + 7
    assert row["output_shape"] == (1, 7)
    lin = nn.Linear(20, 7, bias=False)
    (row,) = summary(lin, (20,), batch_size=4, print_table=False).rows
    assert row["flops"] == 4 * 2 * 20 * 7


def test_element_op_flops_documented_counts():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 3))
    s = summary(model, (2, 8, 8), print_table=False)
    f = {r["name"]: r["flops"] for r in s.rows}
    assert f["1"] == 2 * 4 * 64 and f["2"] == 4 * 64
    assert f["3"] == 4 * 4 * 16 and f["4"] == 4 * 4 * 4
    assert f["5"] == 4 * 4 + 4
    assert f["6"] == 0 and f["7"] == 0
    assert s.totals["flops"] == sum(f.values())


def test_activation_bytes_are_shape_times_itemsize():
    model = zoo.lenet5()
    s = summary(model, (1, 28, 28), batch_size=2, print_table=False)
    for r in s.rows:
        if r["calls"] == 1:
            assert r["activation_bytes"] == int(np.prod(r["output_shape"])) * 4
    # reused modules (relu, pool) are summed over their calls
    relu = s.row("relu")
    assert relu["calls"] == 4
    assert relu["activation_bytes"] == 2 * 4 * (6 * 28 * 28 + 16 * 10 * 10 + 120 + 84)
    assert s.row("conv1")["output_shape"] == (2, 6, 28, 28)
    assert s.totals["activation_bytes"] == sum(r["activation_bytes"] for r in s.rows)
    assert s.totals["input_bytes"] == 2 * 28 * 28 * 4


def test_padding_same_valid_int_shown_and_sizes():
    model = nn.Sequential(nn.Conv2d(3, 4, 5, padding="same"), nn.Conv2d(4, 4, 3, padding="valid"),
                          nn.Conv2d(4, 4, 3, padding=2), nn.Conv2d(4, 4, 1, padding="same"))
    s = summary(model, (3, 9, 11), print_table=False)
    assert [r["output_shape"][2:] for r in s.rows] == [(9, 11), (7, 9), (9, 11), (9, 11)]
    assert [r["padding"] for r in s.rows] == ["same=2", "valid=0", "2", "same=0"]
    text = str(s)
    assert "same=2" in text and "valid=0" in text


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_padding_same_keeps_size_for_odd_kernels(k):
    x = mg.randn(2, 3, 9, 10)
    conv = nn.Conv2d(3, 4, k, padding="same")
    assert conv(x).shape == (2, 4, 9, 10)
    w = mg.randn(4, 3, k, k)
    assert F.conv2d(x, w, padding="same").shape == (2, 4, 9, 10)


def test_padding_same_with_stride_is_a_clear_error():
    x = mg.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="same"):
        F.conv2d(x, mg.randn(4, 3, 3, 3), stride=2, padding="same")
    with pytest.raises(ValueError, match="same"):
        conv = nn.Conv2d(3, 4, 3, stride=2, padding="same")
        conv(x)


def test_too_small_input_names_layer_and_shape():
    model = zoo.lenet5()
    with pytest.raises(SummaryError) as info:
        summary(model, (1, 4, 4), print_table=False)
    msg = str(info.value)
    assert "conv2" in msg and "(1, 6, 2, 2)" in msg
    assert isinstance(info.value, ValueError)
    # the wrapped forwards are gone and the mode is restored even after the error
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert model.training
    vgg = zoo.vgg11(num_classes=10, variant="cifar")
    with pytest.raises(SummaryError, match=r"features\.\d+"):
        summary(vgg, (3, 8, 8), print_table=False)


def test_forward_and_mode_restored():
    model = zoo.resnet18(num_classes=10, stem="cifar")
    model.eval()
    model.layer1.train()
    flags = {n: m.training for n, m in model.named_modules()}
    s = summary(model, (3, 16, 16), print_table=False)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all("forward" not in m.__dict__ for m in model.modules())
    # BasicBlock reuses its ReLU: two calls, one row
    assert s.row("layer1.0.relu")["calls"] == 2
    # BatchNorm running statistics untouched (eval-mode pass)
    assert np.all(model.bn1.running_mean.numpy() == 0)


def test_callable_twice_and_json():
    model = zoo.lenet5()
    a = mg.summary(model, (1, 28, 28), print_table=False)
    b = mg.summary(model, (1, 28, 28), print_table=False)  # mg.summary still callable
    assert isinstance(a, Summary) and a.to_dict() == b.to_dict()
    data = json.loads(a.to_json())
    assert data["totals"]["params"] == 61_706
    assert [r["name"] for r in data["rows"]] == [r["name"] for r in a.rows]
    assert data["rows"][0]["output_shape"] == [1, 6, 28, 28]
    assert data["input_shape"] == [1, 28, 28] and data["dtype"] == "float32"


def test_prints_table(capsys):
    summary(zoo.lenet5(), (1, 28, 28))
    out = capsys.readouterr().out
    assert "conv1" in out and "61,706" in out and "Act. mem" in out


def test_bad_arguments():
    with pytest.raises(ValueError, match="input_shape"):
        summary(zoo.lenet5(), (1, 0, 28), print_table=False)
    with pytest.raises(ValueError, match="batch_size"):
        summary(zoo.lenet5(), (1, 28, 28), batch_size=0, print_table=False)


class _Scaled(nn.Module):
    """A non-leaf module owning a parameter directly, with a child that never runs."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(mg.ones(4))
        self.body = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
        self.unused = nn.Linear(4, 2)

    def forward(self, x):
        return self.body(x) * self.scale


def test_unused_leaf_and_non_leaf_parameters():
    model = _Scaled()
    s = summary(model, (3,), print_table=False)
    assert [r["name"] for r in s.rows] == ["body.0", "body.1", "unused", "(other)"]
    assert s.row("unused")["calls"] == 0 and s.row("unused")["output_shape"] is None
    assert s.row("(other)")["params"] == 4
    assert s.totals["params"] == _numel(model) == 3 * 4 + 4 + 4 * 2 + 2 + 4
    assert s.totals["output_shape"] == (1, 4)
    assert "unused" in str(s)


def test_float64_model():
    model = zoo.lenet5().to(dtype=mg.float64)
    s = summary(model, (1, 28, 28), dtype=mg.float64, print_table=False)
    assert s.row("conv1")["activation_bytes"] == 6 * 28 * 28 * 8
    assert s.dtype == "float64"
