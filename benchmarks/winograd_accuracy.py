"""Float32 gradient error of a ResNet-18 (CIFAR stem) step against the same step in
float64, with the im2col conv path and with the Winograd path (batch 32, seed 0).

    python benchmarks/winograd_accuracy.py

Prints, per path, the loss error and the worst and median relative error
(max |g - g64| / max |g64| per parameter) over all parameter gradients.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np, minigrad as mg, minigrad.nn.functional as F, zoo
from minigrad.cpu import conv
def run(use, dt):
    conv.USE_WINOGRAD=use
    mg.manual_seed(0)
    m=zoo.resnet18(num_classes=10, stem="cifar")
    if dt==np.float64:
        for p in m.parameters(): p.data=p.data.astype(np.float64)
        for n,b in m.named_buffers():
            if b.dtype.kind=='f': b.data=b.data.astype(np.float64)
    x=mg.tensor(np.random.default_rng(1).standard_normal((32,3,32,32)).astype(dt))
    y=mg.tensor(np.random.default_rng(2).integers(0,10,32))
    loss=F.cross_entropy(m(x),y); loss.backward()
    return loss.item(), {n:p.grad.numpy().astype(np.float64) for n,p in m.named_parameters()}
ref=run(False, np.float64)
for use in (False, True):
    l, g = run(use, np.float32)
    errs=sorted(((np.abs(g[n]-ref[1][n]).max()/(np.abs(ref[1][n]).max()), n) for n in g), reverse=True)
    print("winograd" if use else "im2col  ", "loss err %.2e"%abs(l-ref[0]), "worst", errs[0], "median %.2e"%np.median([e for e,_ in errs]))
