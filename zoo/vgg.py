"""VGG-11/13/16/19 (Simonyan and Zisserman, 2014), torchvision layout, plus CIFAR heads."""

import minigrad.nn as nn

#: Configurations A, B, D, E of the paper (numbers: 3x3 conv output channels, "M": max-pool).
CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


def make_features(config, in_channels=3, batch_norm=False):
    """The ``features`` Sequential of a VGG configuration: 3x3 pad-1 convs (each followed by
    BatchNorm2d when ``batch_norm``) with ReLU, and 2x2 stride-2 max-pools; module indices as
    torchvision's ``make_layers``."""
    layers = []
    c = in_channels
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(c, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU())
        c = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG network: ``features`` (conv stack), ``avgpool``, ``classifier``.

    Source: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale
    Image Recognition", ICLR 2015 (arXiv:1409.1556); configurations A (VGG-11), B (VGG-13),
    D (VGG-16) and E (VGG-19), optionally with batch normalisation after every conv (as
    torchvision's ``vgg16_bn``).

    ``variant="imagenet"`` is torchvision's layout, so parameter names match its state
    dicts: ``features.<i>`` (conv / BN / ReLU / max-pool indices of ``make_layers``),
    ``avgpool`` = AdaptiveAvgPool2d(7x7) (identity at a 224x224 input; minigrad's adaptive
    pool needs the output size to divide the input, e.g. 224 or 448), ``classifier`` =
    Linear(25088, 4096), ReLU, Dropout(0.5), Linear(4096, 4096), ReLU, Dropout(0.5),
    Linear(4096, num_classes).

    ``variant="cifar"``: same ``features``; a 32x32 input leaves 512x1x1 after the five
    pools, ``avgpool`` is AdaptiveAvgPool2d(1) and ``classifier`` is one Linear(512, classes)
    (``classifier.0``).

    Parameters, 1000 classes / 3 channels (imagenet): VGG-11 132,863,336; VGG-13 133,047,848;
    VGG-16 138,357,544; VGG-19 143,667,240 (with BN: 132,868,840; 133,053,736; 138,365,992;
    143,678,248). Forward cost at 3x224x224 (multiply-adds x 2): VGG-11 15.2, VGG-13 22.6,
    VGG-16 30.9, VGG-19 39.3 GFLOPs. CIFAR variant, 10 classes: VGG-11 9,225,610;
    VGG-13 9,410,122; VGG-16 14,719,818; VGG-19 20,029,514 parameters; forward 0.31, 0.46,
    0.63, 0.80 GFLOPs at 3x32x32.

    Initialisation as torchvision: convs Kaiming-normal (fan-out, ReLU gain), zero bias;
    BN weight 1, bias 0; linear N(0, 0.01), zero bias.
    """

    def __init__(self, config, num_classes=1000, in_channels=3, batch_norm=False,
                 variant="imagenet", dropout=0.5):
        super().__init__()
        if isinstance(config, str):
            if config not in CONFIGS:
                raise ValueError(f"vgg: unknown configuration {config!r}; known: "
                                 f"{', '.join(CONFIGS)}")
            config = CONFIGS[config]
        if variant not in ("imagenet", "cifar"):
            raise ValueError(f"vgg: variant must be 'imagenet' or 'cifar', got {variant!r}")
        self.variant = variant
        self.features = make_features(config, in_channels, batch_norm)
        last = [v for v in config if v != "M"][-1]
        self.flatten = nn.Flatten()
        if variant == "imagenet":
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(last * 7 * 7, 4096), nn.ReLU(), nn.Dropout(dropout),
                nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout),
                nn.Linear(4096, num_classes))
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        _init_vgg(self)

    def forward(self, x):
        """Logits ``(N, num_classes)``."""
        return self.classifier(self.flatten(self.avgpool(self.features(x))))

    def trace_shapes(self, shape, visit):
        """Shape propagation for :mod:`zoo.flops`."""
        for m in (self.features, self.avgpool, self.flatten, self.classifier):
            shape = visit(m, shape)
        return shape


def _init_vgg(model):
    from ._init import kaiming_normal_fan_out_, normal_, ones_, zeros_

    for m in model.modules():
        kind = type(m).__name__
        if kind == "Conv2d":
            kaiming_normal_fan_out_(m.weight)
            if m.bias is not None:
                zeros_(m.bias)
        elif kind in ("BatchNorm2d", "BatchNorm1d"):
            ones_(m.weight)
            zeros_(m.bias)
        elif kind == "Linear":
            normal_(m.weight, 0.0, 0.01)
            zeros_(m.bias)


def _vgg(name, num_classes, in_channels, batch_norm, variant):
    return VGG(name, num_classes=num_classes, in_channels=in_channels, batch_norm=batch_norm,
               variant=variant)


def vgg11(num_classes=1000, in_channels=3, batch_norm=False, variant="imagenet"):
    """VGG-11 (configuration A; see :class:`VGG`)."""
    return _vgg("vgg11", num_classes, in_channels, batch_norm, variant)


def vgg13(num_classes=1000, in_channels=3, batch_norm=False, variant="imagenet"):
    """VGG-13 (configuration B; see :class:`VGG`)."""
    return _vgg("vgg13", num_classes, in_channels, batch_norm, variant)


def vgg16(num_classes=1000, in_channels=3, batch_norm=False, variant="imagenet"):
    """VGG-16 (configuration D; see :class:`VGG`): 138,357,544 parameters at 1000 classes."""
    return _vgg("vgg16", num_classes, in_channels, batch_norm, variant)


def vgg19(num_classes=1000, in_channels=3, batch_norm=False, variant="imagenet"):
    """VGG-19 (configuration E; see :class:`VGG`)."""
    return _vgg("vgg19", num_classes, in_channels, batch_norm, variant)


def vgg11_bn(num_classes=1000, in_channels=3, variant="imagenet"):
    """VGG-11 with batch normalisation."""
    return _vgg("vgg11", num_classes, in_channels, True, variant)


def vgg13_bn(num_classes=1000, in_channels=3, variant="imagenet"):
    """VGG-13 with batch normalisation."""
    return _vgg("vgg13", num_classes, in_channels, True, variant)


def vgg16_bn(num_classes=1000, in_channels=3, variant="imagenet"):
    """VGG-16 with batch normalisation."""
    return _vgg("vgg16", num_classes, in_channels, True, variant)


def vgg19_bn(num_classes=1000, in_channels=3, variant="imagenet"):
    """VGG-19 with batch normalisation."""
    return _vgg("vgg19", num_classes, in_channels, True, variant)
