"""ResNet-18 (He, Zhang, Ren and Sun, 2015) with torchvision's parameter names."""

import minigrad.nn as nn
from minigrad.nn.layers import bn_relu


def conv3x3(in_planes, out_planes, stride=1):
    """3x3 convolution, padding 1, no bias (followed by BatchNorm)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    """1x1 convolution without bias (projection shortcut)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity (or 1x1-conv projection) shortcut:
    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``downsample`` (``Sequential(conv1x1, BatchNorm2d)``, names ``downsample.0``/``.1`` as in
    torchvision) is created when the stride or channel count changes. With
    ``residual=False`` the block is a plain two-layer stack (no shortcut, no projection):
    ``relu(bn2(conv2(relu(bn1(conv1(x))))))``.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, residual=True):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.residual = bool(residual)
        if residual and (stride != 1 or inplanes != planes):
            self.downsample = nn.Sequential(conv1x1(inplanes, planes, stride),
                                            nn.BatchNorm2d(planes))
        else:
            self.downsample = None
        self.stride = stride

    def forward(self, x):
        """Block output ``(N, planes, H/stride, W/stride)``."""
        out = bn_relu(self.bn1, self.relu, self.conv1(x))
        identity = None
        if self.residual:
            identity = x if self.downsample is None else self.downsample(x)
        return bn_relu(self.bn2, self.relu, self.conv2(out), identity)

    def trace_shapes(self, shape, visit):
        """Shape propagation for :mod:`zoo.flops`."""
        out = shape
        for m in (self.conv1, self.bn1, self.relu, self.conv2, self.bn2):
            out = visit(m, out)
        if self.downsample is not None:
            visit(self.downsample, shape)
        return visit(self.relu, out)


class ResNet(nn.Module):
    """ResNet with BasicBlocks (ResNet-18 for ``layers=(2, 2, 2, 2)``).

    Source: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
    Recognition", CVPR 2016 (arXiv:1512.03385), Table 1, 18-layer column; option B
    shortcuts (1x1 projection + BN when the shape changes), as torchvision.

    Stems: ``stem="imagenet"``: conv1 7x7/2 pad 3 (64) -> bn1 -> ReLU -> max-pool 3/2 pad 1;
    ``stem="cifar"``: conv1 3x3/1 pad 1 (64) -> bn1 -> ReLU, no max-pool (``maxpool`` is an
    Identity, so the names are unchanged). Then ``layer1..layer4`` (64, 128, 256, 512
    channels; stride 2 at the first block of layers 2-4), global average pool, ``fc``.

    Parameter and buffer names are torchvision's (``conv1.weight``, ``bn1.running_mean``,
    ``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``, ``fc.bias``, ...), so
    torchvision ``resnet18`` state dicts load with ``load_state_dict``.

    ``residual=False`` builds the "plain" network of the paper: no shortcuts and no
    projection layers (for gradient-flow comparisons); its state dict lacks the
    ``downsample`` entries.

    Parameters (1000 classes, 3 channels): 11,689,512 (imagenet stem); 11,681,832 with the
    CIFAR stem; CIFAR stem with 10 classes: 11,173,962. Forward cost at 3x224x224:
    1,814,073,344 multiply-adds = 3.63 GFLOPs; CIFAR stem at 3x32x32: 0.555 G multiply-adds
    = 1.11 GFLOPs.

    Initialisation as torchvision: convs Kaiming-normal (fan-out, ReLU gain); BN weight 1,
    bias 0; ``fc`` keeps the Linear default.
    """

    def __init__(self, block=BasicBlock, layers=(2, 2, 2, 2), num_classes=1000,
                 in_channels=3, stem="imagenet", residual=True):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"resnet: stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.stem = stem
        self.residual = bool(residual)
        self.inplanes = 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3,
                                   bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1,
                                   bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = (nn.MaxPool2d(3, 2, padding=1) if stem == "imagenet" else nn.Identity())
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _init_resnet(self)

    def _make_layer(self, block, planes, blocks, stride):
        layers = [block(self.inplanes, planes, stride, residual=self.residual)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, 1, residual=self.residual))
        return nn.Sequential(*layers)

    def forward(self, x):
        """Logits ``(N, num_classes)``."""
        x = self.maxpool(bn_relu(self.bn1, self.relu, self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))

    def trace_shapes(self, shape, visit):
        """Shape propagation for :mod:`zoo.flops`."""
        for m in (self.conv1, self.bn1, self.relu, self.maxpool, self.layer1, self.layer2,
                  self.layer3, self.layer4, self.avgpool, self.flatten, self.fc):
            shape = visit(m, shape)
        return shape


def _init_resnet(model):
    from ._init import kaiming_normal_fan_out_, ones_, zeros_

    for m in model.modules():
        kind = type(m).__name__
        if kind == "Conv2d":
            kaiming_normal_fan_out_(m.weight)
        elif kind == "BatchNorm2d":
            ones_(m.weight)
            zeros_(m.bias)


def resnet18(num_classes=1000, in_channels=3, stem="imagenet", residual=True):
    """ResNet-18 (see :class:`ResNet`): 11,689,512 parameters and 3.63 forward GFLOPs at
    3x224x224 with the ImageNet stem; ``stem="cifar"`` for 32x32 inputs;
    ``residual=False`` removes the skip connections."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels,
                  stem=stem, residual=residual)
