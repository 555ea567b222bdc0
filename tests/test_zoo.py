"""Model zoo: architectures, exact parameter counts, names, registry, FLOPs, smoke steps."""

import inspect

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn as nn
import zoo
from zoo.flops import Tracer, count_parameters, forward_macs, zero_init


def _params(model):
    return count_parameters(model)


# ----------------------------------------------------------------------------- big models
# Built once (with zero weights: counting needs no random numbers) and never run at full size.

@pytest.fixture(scope="module")
def alexnet_imagenet():
    with zero_init():
        return zoo.alexnet()


@pytest.fixture(scope="module")
def vgg16_imagenet():
    with zero_init():
        return zoo.vgg16()


@pytest.fixture(scope="module")
def resnet18_imagenet():
    mg.manual_seed(0)
    return zoo.resnet18()


def test_alexnet_imagenet_parameter_count(alexnet_imagenet):
    assert _params(alexnet_imagenet) == 62_378_344
    conv1 = alexnet_imagenet.features[0]
    assert isinstance(conv1, nn.Conv2d)
    assert sum(p.numel() for p in conv1.parameters()) == 34_944
    per_layer = [sum(p.numel() for p in m.parameters()) for m in alexnet_imagenet.modules()
                 if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert per_layer == [34_944, 614_656, 885_120, 1_327_488, 884_992,
                         37_752_832, 16_781_312, 4_097_000]


def test_alexnet_layout(alexnet_imagenet):
    kinds = [type(m).__name__ for m in alexnet_imagenet.features]
    assert kinds == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d",
                     "Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d",
                     "Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"]
    drops = [m for m in alexnet_imagenet.classifier if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(d.p == 0.5 for d in drops)
    t = Tracer()
    assert t.run(alexnet_imagenet, (3, 227, 227)) == (1000,)
    shapes = [out for m, _, out, _ in t.layers if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    assert shapes == [(96, 55, 55), (96, 27, 27), (256, 27, 27), (256, 13, 13),
                      (384, 13, 13), (384, 13, 13), (256, 13, 13), (256, 6, 6)]
    assert forward_macs(alexnet_imagenet, (3, 227, 227)) == 1_135_256_096


def test_alexnet_conv1_maps_227_to_55(alexnet_imagenet):
    conv1 = alexnet_imagenet.features[0]
    with mg.no_grad():
        y = conv1(mg.zeros(1, 3, 227, 227))
    assert y.shape == (1, 96, 55, 55)
    with mg.no_grad():  # 224 without padding does not give 55
        assert conv1(mg.zeros(1, 3, 224, 224)).shape == (1, 96, 54, 54)


def test_vgg16_parameter_count_and_torchvision_names(vgg16_imagenet):
    assert _params(vgg16_imagenet) == 138_357_544
    keys = list(vgg16_imagenet.state_dict())
    assert keys[:2] == ["features.0.weight", "features.0.bias"]
    assert keys[-2:] == ["classifier.6.weight", "classifier.6.bias"]
    assert "features.28.weight" in keys and "classifier.3.weight" in keys
    assert isinstance(vgg16_imagenet.avgpool, nn.AdaptiveAvgPool2d)
    assert Tracer().run(vgg16_imagenet, (3, 224, 224)) == (1000,)
    assert forward_macs(vgg16_imagenet, (3, 224, 224)) == 15_470_264_320


@pytest.mark.parametrize("name,count", [("vgg11", 132_863_336), ("vgg13", 133_047_848),
                                        ("vgg19", 143_667_240), ("vgg16_bn", 138_365_992)])
def test_other_vgg_parameter_counts(name, count):
    # ImageNet head = Linear(25088, 4096) + Linear(4096, 4096) + Linear(4096, 1000); the
    # features are those of the (small) CIFAR variant, whose head is Linear(512, 10).
    m = zoo.get_model(name, num_classes=10, variant="cifar")
    features = _params(m) - (512 * 10 + 10)
    head = 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert features + head == count
    assert f"{count:,}" in zoo.VGG.__doc__


def test_vgg_bn_names():
    with zero_init():
        m = zoo.vgg11_bn(num_classes=10, variant="cifar")
    sd = m.state_dict()
    for k in ("features.1.weight", "features.1.bias", "features.1.running_mean",
              "features.1.running_var", "features.1.num_batches_tracked", "classifier.0.weight"):
        assert k in sd
    assert zoo.get_model("vgg11", batch_norm=True, num_classes=10, variant="cifar") \
        .state_dict().keys() == sd.keys()


def test_resnet18_parameter_count(resnet18_imagenet):
    assert _params(resnet18_imagenet) == 11_689_512
    assert forward_macs(resnet18_imagenet, (3, 224, 224)) == 1_814_073_344


# torchvision.models.resnet18().state_dict().keys(), in order (written out from its naming
# scheme: stem, four layers of two BasicBlocks, projection shortcuts in layer2-4 block 0, fc).
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
TORCHVISION_RESNET18_KEYS = (
    ["conv1.weight"] + [f"bn1.{s}" for s in _BN]
    + [k for layer in (1, 2, 3, 4) for block in (0, 1) for k in (
        [f"layer{layer}.{block}.conv1.weight"] + [f"layer{layer}.{block}.bn1.{s}" for s in _BN]
        + [f"layer{layer}.{block}.conv2.weight"] + [f"layer{layer}.{block}.bn2.{s}" for s in _BN]
        + ([f"layer{layer}.{block}.downsample.0.weight"]
           + [f"layer{layer}.{block}.downsample.1.{s}" for s in _BN]
           if layer > 1 and block == 0 else []))]
    + ["fc.weight", "fc.bias"])


def test_resnet18_expected_key_list_is_torchvisions():
    keys = TORCHVISION_RESNET18_KEYS
    assert len(keys) == 122  # len(torchvision resnet18 state_dict)
    assert keys[:7] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                        "bn1.running_var", "bn1.num_batches_tracked", "layer1.0.conv1.weight"]
    assert "layer2.0.downsample.0.weight" in keys and "layer4.0.downsample.1.running_var" in keys
    assert "layer1.0.downsample.0.weight" not in keys


def test_resnet18_state_dict_names_equal_torchvision(resnet18_imagenet):
    sd = resnet18_imagenet.state_dict()
    assert list(sd) == TORCHVISION_RESNET18_KEYS
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert sd["fc.weight"].shape == (1000, 512)
    cifar = zoo.resnet18(num_classes=10, stem="cifar")
    assert list(cifar.state_dict()) == TORCHVISION_RESNET18_KEYS
    assert cifar.state_dict()["conv1.weight"].shape == (64, 3, 3, 3)


def test_resnet18_loads_a_torchvision_style_state_dict(resnet18_imagenet):
    rng = np.random.default_rng(1)
    other = {k: (rng.standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" else v)
             for k, v in resnet18_imagenet.state_dict().items()}
    m = zoo.resnet18(num_classes=10, stem="cifar")
    other = {k: v for k, v in other.items() if not k.startswith(("conv1", "fc"))}
    m.load_state_dict(other, strict=False)
    np.testing.assert_array_equal(m.state_dict()["layer3.1.bn2.running_var"],
                                  other["layer3.1.bn2.running_var"])


def test_resnet18_stems_and_plain_variant():
    mg.manual_seed(0)
    m = zoo.resnet18(num_classes=10, stem="cifar")
    assert isinstance(m.maxpool, nn.Identity)
    assert _params(m) == 11_173_962
    plain = zoo.resnet18(num_classes=10, stem="cifar", residual=False)
    assert not any("downsample" in k for k in plain.state_dict())
    assert all(b.downsample is None and not b.residual
               for layer in (plain.layer1, plain.layer2, plain.layer3, plain.layer4)
               for b in layer)
    with pytest.raises(ValueError, match="stem"):
        zoo.resnet18(stem="tiny")


def test_lenet5_counts_and_layout():
    m = zoo.lenet5()
    assert _params(m) == 61_706  # as its docstring states
    assert "61,706" in zoo.lenet5.__doc__ and "61,706" in zoo.LeNet5.__doc__
    assert _params(zoo.lenet5(in_channels=3)) == 62_006
    assert m.conv1.padding in (2, (2, 2))
    assert forward_macs(m, (1, 28, 28)) == 416_520
    assert isinstance(m.pool, nn.MaxPool2d) and isinstance(m.relu, nn.ReLU)
    with pytest.raises(ValueError, match="input_size"):
        zoo.lenet5(input_size=30)


def test_docstring_numbers_match_counts():
    assert "62,378,344" in zoo.AlexNet.__doc__ and "34,944" in zoo.AlexNet.__doc__
    assert "138,357,544" in zoo.VGG.__doc__
    assert "11,689,512" in zoo.ResNet.__doc__
    assert "1,814,073,344" in zoo.ResNet.__doc__
    assert "5,871,434" in zoo.AlexNet.__doc__
    with zero_init():
        assert _params(zoo.alexnet(num_classes=10, variant="cifar")) == 5_871_434
        for name, n in (("vgg11", 9_225_610), ("vgg13", 9_410_122), ("vgg16", 14_719_818),
                        ("vgg19", 20_029_514)):
            assert _params(zoo.get_model(name, num_classes=10, variant="cifar")) == n
            assert f"{n:,}" in zoo.VGG.__doc__
        assert _params(zoo.resnet18(stem="cifar")) == 11_681_832


# ----------------------------------------------------------------------------- registry

def test_registry_names_and_errors():
    names = zoo.list_models()
    for n in ("lenet5", "alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn",
              "vgg16_bn", "vgg19_bn", "resnet18"):
        assert n in names
    assert isinstance(zoo.get_model("lenet"), zoo.LeNet5)
    assert isinstance(zoo.get_model("LeNet5"), zoo.LeNet5)
    with pytest.raises(ValueError) as e:
        zoo.get_model("resnet50")
    assert "resnet50" in str(e.value) and "lenet5" in str(e.value) and "vgg16" in str(e.value)


def test_every_model_takes_num_classes_and_in_channels():
    for name in zoo.list_models():
        spec = zoo.get_spec(name)
        kw = spec.kwargs_for_input(32)
        with zero_init():
            m = zoo.get_model(name, num_classes=7, in_channels=2, **kw)
        assert Tracer().run(m, (2, 32, 32)) == (7,), name


# ----------------------------------------------------------------------------- forward / backward

SMALL = [
    ("lenet5", {}, (1, 28, 28)),
    ("lenet5", {"in_channels": 3, "input_size": 32}, (3, 32, 32)),
    ("alexnet", {"variant": "cifar"}, (3, 32, 32)),
    ("vgg11", {"variant": "cifar"}, (3, 32, 32)),
    ("vgg11_bn", {"variant": "cifar"}, (3, 32, 32)),
    ("resnet18", {"stem": "cifar"}, (3, 32, 32)),
    ("resnet18", {"stem": "cifar", "residual": False}, (3, 32, 32)),
]


@pytest.mark.parametrize("name,kw,shape", SMALL,
                         ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k, _ in SMALL])
def test_forward_backward_smoke(name, kw, shape):
    mg.manual_seed(0)
    m = zoo.get_model(name, num_classes=10, **kw)
    m.train()
    x = mg.randn(2, *shape)
    y = mg.tensor(np.array([3, 7]))
    logits = m(x)
    assert logits.shape == (2, 10)
    loss = nn.CrossEntropyLoss()(logits, y)
    assert np.isfinite(loss.item())
    loss.backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, pname
        assert np.all(np.isfinite(p.grad.numpy())), pname
    assert Tracer().run(m, shape) == (10,)


@pytest.mark.parametrize("name", ["vgg13", "vgg16", "vgg19"])
def test_vgg_cifar_forward_shapes(name):
    m = zoo.get_model(name, num_classes=10, variant="cifar")
    m.eval()
    with mg.no_grad():
        assert m(mg.randn(1, 3, 32, 32)).shape == (1, 10)


def test_resnet18_imagenet_stem_forward_on_small_input():
    mg.manual_seed(0)
    m = zoo.resnet18(num_classes=5)
    m.eval()
    with mg.no_grad():
        assert m(mg.randn(1, 3, 64, 64)).shape == (1, 5)


def test_resnet_residual_changes_output():
    mg.manual_seed(0)
    a = zoo.resnet18(num_classes=10, stem="cifar")
    mg.manual_seed(0)
    b = zoo.resnet18(num_classes=10, stem="cifar", residual=False)
    shared = {k: v for k, v in a.state_dict().items() if "downsample" not in k}
    b.load_state_dict(shared)
    a.eval(), b.eval()
    x = mg.randn(1, 3, 32, 32)
    with mg.no_grad():
        assert not np.allclose(a(x).numpy(), b(x).numpy())


def test_construction_is_seeded():
    mg.manual_seed(3)
    a = zoo.resnet18(num_classes=10, stem="cifar").state_dict()
    mg.manual_seed(3)
    b = zoo.resnet18(num_classes=10, stem="cifar").state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# ----------------------------------------------------------------------------- docs

def test_docstrings_on_public_names():
    import importlib

    missing = []
    for mod in [zoo] + [importlib.import_module(f"zoo.{m}") for m in (
            "lenet", "alexnet", "vgg", "resnet", "registry", "flops", "trainer")]:
        if not (mod.__doc__ or "").strip():
            missing.append(mod.__name__)
        for name, obj in vars(mod).items():
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", "") != mod.__name__:
                continue
            if not (obj.__doc__ or "").strip():
                missing.append(f"{mod.__name__}.{name}")
            if inspect.isclass(obj):
                for mname, meth in vars(obj).items():
                    if not mname.startswith("_") and inspect.isfunction(meth) \
                            and not (meth.__doc__ or "").strip():
                        missing.append(f"{mod.__name__}.{name}.{mname}")
    assert not missing, missing
