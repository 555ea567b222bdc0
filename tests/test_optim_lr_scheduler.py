"""Learning-rate schedulers against their closed forms (PyTorch's definitions)."""

import math

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn as nn
import minigrad.optim as optim
from minigrad.optim import lr_scheduler as S


def make_opt(lr=0.1, cls=optim.SGD, **kw):
    return cls([nn.Parameter(mg.ones(2))], lr=lr, **kw)


def trace(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out


def test_step_and_multistep():
    got = trace(S.StepLR(make_opt(), step_size=3, gamma=0.5), 10)
    np.testing.assert_allclose(got, [0.1 * 0.5 ** (e // 3) for e in range(10)])
    got = trace(S.MultiStepLR(make_opt(), milestones=[6, 2], gamma=0.1), 8)
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.001, 0.001])


def test_cosine():
    got = trace(S.CosineAnnealingLR(make_opt(), T_max=10, eta_min=0.01), 11)
    ref = [0.01 + 0.09 * (1 + math.cos(math.pi * e / 10)) / 2 for e in range(11)]
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_linear_and_warmup():
    got = trace(S.LinearLR(make_opt(), start_factor=0.25, total_iters=4), 7)
    np.testing.assert_allclose(got, [0.025, 0.04375, 0.0625, 0.08125, 0.1, 0.1, 0.1])
    got = trace(S.LinearWarmup(make_opt(), warmup_steps=2, start_factor=0.5), 4)
    np.testing.assert_allclose(got, [0.05, 0.075, 0.1, 0.1])


def onecycle_ref(step, total, max_lr, pct=0.3, div=25.0, final=1e4):
    initial = max_lr / div
    low = initial / final
    e1 = pct * total - 1
    cos = lambda a, b, p: b + (a - b) / 2 * (math.cos(math.pi * p) + 1)  # noqa: E731
    if step <= e1:
        return cos(initial, max_lr, step / e1), cos(0.95, 0.85, step / e1)
    p = (step - e1) / (total - 1 - e1)
    return cos(max_lr, low, p), cos(0.85, 0.95, p)


def test_onecycle_defaults_and_momentum():
    opt = make_opt(momentum=0.9)
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=20)
    for step in range(20):
        lr, mom = onecycle_ref(step, 20, 1.0)
        assert abs(sched.get_last_lr()[0] - lr) < 1e-12
        assert abs(opt.param_groups[0]["momentum"] - mom) < 1e-12
        opt.step()
        sched.step()
    with pytest.raises(ValueError):
        sched.step()
    adam = make_opt(cls=optim.Adam)
    S.OneCycleLR(adam, max_lr=0.01, epochs=2, steps_per_epoch=5)
    assert adam.param_groups[0]["betas"] == (0.95, 0.999)
    assert abs(adam.param_groups[0]["lr"] - 0.01 / 25) < 1e-15


@pytest.mark.parametrize("make", [
    lambda o: S.StepLR(o, 2), lambda o: S.CosineAnnealingLR(o, 7),
    lambda o: S.OneCycleLR(o, max_lr=0.5, total_steps=12), lambda o: S.LinearLR(o, 0.1, total_iters=4),
    lambda o: S.MultiStepLR(o, [2, 5])])
def test_state_dict_resume(make):
    opt = make_opt(momentum=0.9)
    sched = make(opt)
    full = trace(sched, 10)
    opt = make_opt(momentum=0.9)
    sched = make(opt)
    trace(sched, 4)
    sd_s, sd_o = sched.state_dict(), opt.state_dict()
    assert "optimizer" not in sd_s
    opt2 = make_opt(momentum=0.9)
    sched2 = make(opt2)
    opt2.load_state_dict(sd_o)
    sched2.load_state_dict(sd_s)
    assert trace(sched2, 6) == full[4:]
