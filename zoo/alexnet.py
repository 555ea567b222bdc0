"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012), single-tower, plus a CIFAR variant."""

import minigrad.nn as nn

#: Local response normalisation of the paper: k=2, n=5, alpha=1e-4, beta=0.75 in
#: b = a / (k + alpha * sum_{n neighbours} a^2)^beta. minigrad (like PyTorch) divides alpha
#: by the size, b = a / (k + alpha/n * sum a^2)^beta, so the paper's alpha is passed as
#: alpha * n = 5e-4 here to compute exactly the paper's formula.
LRN_SIZE, LRN_ALPHA_PAPER, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


def _lrn():
    return nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA_PAPER * LRN_SIZE, beta=LRN_BETA, k=LRN_K)


class AlexNet(nn.Module):
    """AlexNet with ``features`` (conv stack) and ``classifier`` (FC stack) submodules.

    Source: A. Krizhevsky, I. Sutskever, G. E. Hinton, "ImageNet Classification with Deep
    Convolutional Neural Networks", NeurIPS 2012.

    ``variant="imagenet"`` is the paper's network as one tower (no channel groups; the
    paper split conv2, conv4 and conv5 across two GPUs), input 3x227x227::

        conv1 11x11/4, 96          -> 96x55x55  -> ReLU -> LRN -> max-pool 3/2 -> 96x27x27
        conv2 5x5, pad 2, 256      -> 256x27x27 -> ReLU -> LRN -> max-pool 3/2 -> 256x13x13
        conv3 3x3, pad 1, 384 -> ReLU; conv4 3x3, pad 1, 384 -> ReLU;
        conv5 3x3, pad 1, 256      -> 256x13x13 -> ReLU -> max-pool 3/2 -> 256x6x6
        flatten 9216 -> dropout 0.5 -> fc6 4096 -> ReLU -> dropout 0.5 -> fc7 4096 -> ReLU
        -> fc8 num_classes

    Section 3.5 of the paper puts the response normalisation after the ReLU of conv1 and
    conv2 and the max-pooling after the normalisation; this follows the paper (some
    re-implementations, e.g. CaffeNet, pool before normalising; the parameter count is the
    same). LRN: size 5, alpha 1e-4 (paper convention; passed as 5e-4 to
    ``nn.LocalResponseNorm``, which divides by the size), beta 0.75, k 2.

    The paper quotes a 224x224 input, but with an 11x11 stride-4 kernel and no padding
    only a 227x227 input gives the 55x55 conv1 output: (227 - 11)/4 + 1 = 55. A 224x224
    input would need 3 pixels of padding in total (e.g. pad 2 on conv1 gives
    (224 + 4 - 11)//4 + 1 = 55).

    Parameters (1000 classes, 3 channels): 62,378,344 (conv1 34,944, conv2 614,656,
    conv3 885,120, conv4 1,327,488, conv5 884,992, fc6 37,752,832, fc7 16,781,312,
    fc8 4,097,000). Forward cost at 3x227x227: 1,135,256,096 multiply-adds = 2.27 GFLOPs.

    ``variant="cifar"`` keeps the layout for 3x32x32 inputs: conv1 5x5 pad 2, 64 ->
    ReLU -> LRN -> max-pool 3/2 (15x15); conv2 5x5 pad 2, 192 -> ReLU -> LRN -> max-pool
    3/2 (7x7); conv3 384, conv4 256, conv5 256 (3x3 pad 1) -> ReLU -> max-pool 3/2 (3x3);
    flatten 2304 -> dropout -> fc 1024 -> ReLU -> dropout -> fc 1024 -> ReLU -> fc classes.
    Parameters (10 classes): 5,871,434; forward cost 182,220,800 multiply-adds = 0.36 GFLOPs.
    """

    def __init__(self, num_classes=1000, in_channels=3, variant="imagenet", dropout=0.5):
        super().__init__()
        if variant == "imagenet":
            c = (96, 256, 384, 384, 256)
            k1, s1, p1, k2 = 11, 4, 0, 5
            hidden, spatial = 4096, 6
        elif variant == "cifar":
            c = (64, 192, 384, 256, 256)
            k1, s1, p1, k2 = 5, 1, 2, 5
            hidden, spatial = 1024, 3
        else:
            raise ValueError(f"alexnet: variant must be 'imagenet' or 'cifar', got {variant!r}")
        self.variant = variant
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c[0], kernel_size=k1, stride=s1, padding=p1),
            nn.ReLU(),
            _lrn(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c[0], c[1], kernel_size=k2, padding=k2 // 2),
            nn.ReLU(),
            _lrn(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c[1], c[2], kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c[2], c[3], kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c[3], c[4], kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(c[4] * spatial * spatial, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        """Logits ``(N, num_classes)`` for images ``(N, C, 227, 227)`` (imagenet) or
        ``(N, C, 32, 32)`` (cifar)."""
        return self.classifier(self.flatten(self.features(x)))

    def trace_shapes(self, shape, visit):
        """Shape propagation for :mod:`zoo.flops`."""
        for m in (self.features, self.flatten, self.classifier):
            shape = visit(m, shape)
        return shape


def alexnet(num_classes=1000, in_channels=3, variant="imagenet"):
    """AlexNet (see :class:`AlexNet`): ImageNet variant 62,378,344 parameters and 2.27 forward
    GFLOPs at 3x227x227; ``variant="cifar"`` for 32x32 inputs."""
    return AlexNet(num_classes=num_classes, in_channels=in_channels, variant=variant)
