"""LeNet-5 (LeCun, Bottou, Bengio and Haffner, 1998), in its common modern form."""

import minigrad.nn as nn


class LeNet5(nn.Module):
    """LeNet-5: two conv + pool stages and three fully connected layers (120-84-classes).

    Source: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-Based Learning Applied to
    Document Recognition", Proc. IEEE 86(11), 1998.

    Modern choices (stated, not the paper's): ReLU instead of the scaled tanh, max-pooling
    instead of the trainable sub-sampling layers, a full C3 connection table (every C3 map
    sees all six S2 maps) and a plain linear output layer instead of the RBF units.

    Layout for a 28x28 input (MNIST, ``input_size=28``): the first conv pads by 2, so the
    network sees the 32x32 field of the original::

        conv1  5x5, in->6, pad 2   -> 6x28x28  -> ReLU -> max-pool 2/2 -> 6x14x14
        conv2  5x5, 6->16          -> 16x10x10 -> ReLU -> max-pool 2/2 -> 16x5x5
        flatten 400 -> fc1 120 -> ReLU -> fc2 84 -> ReLU -> fc3 num_classes

    For a 32x32 input (``input_size=32``, e.g. CIFAR-10) the first conv has no padding and
    every other shape is the same.

    Parameters (10 classes, 1 input channel): 61,706 (conv1 156, conv2 2,416, fc1 48,120,
    fc2 10,164, fc3 850); with 3 input channels 62,006.
    Forward cost at 1x28x28: 416,520 multiply-adds = 0.83 MFLOPs (conv and linear layers,
    2 FLOPs per multiply-add; activations and pooling not counted).

    Module names: ``conv1, conv2, fc1, fc2, fc3`` (``relu``/``pool`` hold no parameters).
    """

    def __init__(self, num_classes=10, in_channels=1, input_size=28):
        super().__init__()
        if input_size not in (28, 32):
            raise ValueError(f"lenet5: input_size must be 28 (padding 2) or 32, got {input_size}")
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=(32 - input_size) // 2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2)
        self.flatten = nn.Flatten()
        self.input_size = input_size

    def forward(self, x):
        """Logits ``(N, num_classes)`` for images ``(N, in_channels, S, S)``."""
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)

    def trace_shapes(self, shape, visit):
        """Propagate an input shape ``(C, H, W)`` through the layers, calling ``visit`` on each
        (used by :mod:`zoo.flops`)."""
        for layer in (self.conv1, self.relu, self.pool, self.conv2, self.relu, self.pool,
                      self.flatten, self.fc1, self.relu, self.fc2, self.relu, self.fc3):
            shape = visit(layer, shape)
        return shape


def lenet5(num_classes=10, in_channels=1, input_size=28):
    """LeNet-5 with ReLU and max-pooling (see :class:`LeNet5`): 61,706 parameters for
    MNIST (1x28x28, 10 classes), 0.83 forward MFLOPs."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
