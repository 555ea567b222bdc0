"""Long runs: resident memory stays flat over 2,000 LeNet-5 training steps (no graph or buffer leak)."""

import gc
import resource

import numpy as np

import minigrad as mg
import minigrad.nn.functional as F
import minigrad.optim as optim
import zoo


def _rss_mb():
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def test_rss_is_flat_over_2000_lenet_steps():
    mg.manual_seed(0)
    model = zoo.lenet5()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = mg.tensor(rng.standard_normal((16, 1, 28, 28)).astype(np.float32))
    y = mg.tensor(rng.integers(0, 10, 16))
    samples = {}
    for step in range(2000):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in (200, 1999):
            gc.collect()
            samples[step] = _rss_mb()
    growth = samples[1999] - samples[200]
    assert np.isfinite(loss.item())
    # 1,800 steps each allocate ~1 MB of activations; a leak of even one activation per step
    # would grow RSS by far more than this bound.
    assert growth < 8.0, f"RSS grew by {growth:.1f} MB between step 200 and step 2000"
