"""Weight initialisers used by the zoo (torchvision's schemes), drawing from minigrad's
global generator so ``mg.manual_seed`` makes model construction reproducible."""

import math

import numpy as np

from minigrad import random as _random


def _fill(param, array):
    with _no_grad():
        param.copy_(np.asarray(array, dtype=param.dtype))


def _no_grad():
    import minigrad

    return minigrad.no_grad()


def kaiming_normal_fan_out_(weight):
    """He-normal with fan-out mode and ReLU gain: N(0, 2 / (out_channels * kh * kw))."""
    shape = weight.shape
    fan_out = shape[0] * int(np.prod(shape[2:], dtype=np.int64))
    std = math.sqrt(2.0 / fan_out)
    _fill(weight, _random.generator().standard_normal(shape, dtype=np.float32) * np.float32(std))


def normal_(param, mean=0.0, std=1.0):
    """Fill with N(mean, std^2)."""
    values = _random.generator().standard_normal(param.shape, dtype=np.float32)
    _fill(param, values * np.float32(std) + np.float32(mean))


def ones_(param):
    """Fill with ones."""
    _fill(param, np.ones(param.shape, np.float32))


def zeros_(param):
    """Fill with zeros."""
    _fill(param, np.zeros(param.shape, np.float32))
