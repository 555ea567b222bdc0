"""Process start to the end of the first ResNet-18 (CIFAR stem) train step at batch 32,
with the Winograd conv path (argument 1) or the im2col path only (argument 0).
Run it with an empty Numba cache to measure compile latency:

    NUMBA_CACHE_DIR=$(mktemp -d) python benchmarks/first_step_resnet.py 1
"""
import os
import sys
import time

t0 = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import numpy as np, minigrad as mg, minigrad.nn.functional as F, minigrad.optim as optim, zoo
from minigrad.cpu import conv
conv.USE_WINOGRAD = sys.argv[1] == "1"
m=zoo.resnet18(num_classes=10, stem="cifar")
opt=optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True)
x=mg.tensor(np.random.default_rng(0).standard_normal((32,3,32,32)).astype(np.float32)); y=mg.tensor(np.arange(32)%10)
loss=F.cross_entropy(m(x),y); opt.zero_grad(); loss.backward(); opt.step()
print("winograd" if conv.USE_WINOGRAD else "im2col", "process start to end of first ResNet-18 step (batch 32): %.1f s"%(time.perf_counter()-t0))
