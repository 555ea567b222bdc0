"""The gradients of one LeNet-5 train step with a conv path's ``USE`` switch on and off: for
the tests of the direct conv kernels, which LeNet-5's layers take."""

import numpy as np

import minigrad as mg
import minigrad.nn.functional as F
import zoo


def gradients_with_and_without(module, monkeypatch):
    """Two lists of LeNet-5's parameter gradients for one batch of 4 random images: with
    ``module.USE`` True, then False (same seed, same weights)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    grads = []
    for use in (True, False):
        monkeypatch.setattr(module, "USE", use)
        mg.manual_seed(0)
        model = zoo.lenet5()
        F.cross_entropy(model(mg.tensor(x)), mg.tensor(labels)).backward()
        grads.append([p.grad.numpy().copy() for p in model.parameters()])
    return grads
