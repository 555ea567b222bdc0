"""Float32 accuracy of minigrad's conv paths (im2col, Winograd F(2x2, 3x3), Winograd with
F(4x4, 3x3)) against float64, layer by layer and in a whole ResNet-18 (CIFAR stem) step.

    python benchmarks/winograd_accuracy.py [--seeds 5]

1. One conv layer (ResNet-18's 3x3 stride-1 shapes, batch 32): the relative error
   (max |e| / max |exact|) of y, dX and dW, each path in float32 against float64 im2col.
2. A whole train step at initialisation (batch 32, one input per seed): for each parameter
   gradient the relative error against float64 PyTorch (or float64 minigrad without torch),
   then the median and the worst over the parameters.  PyTorch float32 is printed as the
   yardstick when torch is installed.
3. The same forward passes: how many ReLU inputs have the other sign than in float64.

ReLU makes part 2 chaotic: a pre-activation within rounding of zero flips its mask, and one
flipped element changes the gradient sums below it by O(1/n).  So its errors jump between
about 1e-6 (no flip above a layer) and 1e-2 from seed to seed for every float32 path,
PyTorch's included; compare paths over several seeds, not on one.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np

import minigrad as mg
import minigrad.nn.functional as F
import zoo
from minigrad.cpu import conv, winograd

PATHS = {"im2col": (False, False), "Winograd F(2x2)": (True, False),
         "Winograd + F(4x4)": (True, True)}
LAYERS = [(64, 32), (128, 16), (256, 8), (512, 4)]   # (channels, side) of the 3x3 stride-1 layers


def _use(path):
    conv.USE_WINOGRAD, winograd.USE_F43 = PATHS[path]


def _rel(a, exact):
    return float(np.abs(a - exact).max() / np.abs(exact).max())


def layer_errors(path, C, H, batch=32):
    """Relative errors of y, dX, dW for one C->C 3x3 layer on side H, ``path`` in float32."""
    rng = np.random.default_rng(C)
    x = rng.standard_normal((batch, C, H, H))
    w = rng.standard_normal((C, C, 3, 3)) / np.sqrt(9 * C)
    gy = rng.standard_normal((batch, C, H, H))

    def run(dt):
        xm = mg.tensor(x.astype(dt), requires_grad=True)
        wm = mg.tensor(w.astype(dt), requires_grad=True)
        y = F.conv2d(xm, wm, None, 1, 1)
        y.backward(mg.tensor(gy.astype(dt)))
        return [a.numpy().astype(np.float64) for a in (y, xm.grad, wm.grad)]

    _use("im2col")
    exact = run(np.float64)
    _use(path)
    return [_rel(a, e) for a, e in zip(run(np.float32), exact)]


def _weights():
    mg.manual_seed(0)
    return {n: p.numpy().copy() for n, p in zoo.resnet18(num_classes=10, stem="cifar").named_parameters()}


def minigrad_step(weights, x, y, dtype, path="im2col"):
    """Parameter gradients (float64 arrays) of one minigrad train step, and the inputs of
    its ReLUs (the positive ones as a boolean mask)."""
    _use(path)
    model = zoo.resnet18(num_classes=10, stem="cifar")
    for n, p in model.named_parameters():
        p.data = weights[n].astype(dtype)
    for _, b in model.named_buffers():
        if b.dtype.kind == "f":
            b.data = b.data.astype(dtype)
    masks = []
    for m in model.modules():
        if isinstance(m, mg.nn.ReLU):
            m.register_forward_hook(lambda mod, inp, out: masks.append(inp[0].numpy() > 0))
    loss = F.cross_entropy(model(mg.tensor(x.astype(dtype))), mg.tensor(y))
    loss.backward()
    return {n: p.grad.numpy().astype(np.float64) for n, p in model.named_parameters()}, masks


def torch_step(weights, x, y, dtype):
    """The same step in PyTorch (``dtype`` a torch dtype)."""
    import torch
    from benchmarks.torch_models import TorchResNet18Cifar
    model = TorchResNet18Cifar().to(dtype)
    state = model.state_dict()
    for n, v in weights.items():
        state[n] = torch.from_numpy(v.astype(np.float64)).to(dtype)
    model.load_state_dict(state)
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x).to(dtype)), torch.from_numpy(y))
    loss.backward()
    return {n: p.grad.double().numpy() for n, p in model.named_parameters()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="inputs for the whole-step check")
    args = ap.parse_args()
    try:
        import torch
        torch.set_num_threads(2)
    except ImportError:
        torch = None

    print("1. One 3x3 stride-1 layer, batch 32: relative error of y / dX / dW in float32")
    for path in PATHS:
        cells = ["%d ch %dx%d: %.0e / %.0e / %.0e" % ((C, H, H) + tuple(layer_errors(path, C, H)))
                 for C, H in LAYERS]
        print("  %-18s %s" % (path, " | ".join(cells)))

    weights = _weights()
    ref_name = "PyTorch float64" if torch is not None else "minigrad float64 im2col"
    print("\n2. Whole ResNet-18 step, batch 32: median and worst relative gradient error "
          "against %s, one column per input seed" % ref_name)
    rows = {name: [] for name in (["PyTorch float32"] if torch is not None else []) + list(PATHS)}
    flips = {name: [] for name in PATHS}
    for seed in range(1, args.seeds + 1):
        x = np.random.default_rng(seed).standard_normal((32, 3, 32, 32))
        y = np.random.default_rng(1000 + seed).integers(0, 10, 32)
        g64, masks64 = minigrad_step(weights, x, y, np.float64)
        ref = torch_step(weights, x, y, torch.float64) if torch is not None else g64
        for name in rows:
            if name.startswith("PyTorch"):
                g = torch_step(weights, x, y, torch.float32)
            else:
                g, masks = minigrad_step(weights, x, y, np.float32, name)
                flips[name].append(sum(int(np.sum(a != b)) for a, b in zip(masks, masks64)))
            errs = [_rel(g[n], ref[n]) for n in ref]
            rows[name].append("%.0e/%.0e" % (np.median(errs), max(errs)))
    for name, cells in rows.items():
        print("  %-18s %s" % (name, "  ".join(cells)))
    print("\n3. ReLU inputs whose sign differs from float64 minigrad, one column per seed "
          "(of %d per step)" % sum(m.size for m in masks64))
    for name, counts in flips.items():
        print("  %-18s %s" % (name, "  ".join("%5d" % c for c in counts)))


if __name__ == "__main__":
    main()
