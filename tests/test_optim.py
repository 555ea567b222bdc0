"""Optimizers: 20 steps on a fixed problem against NumPy implementations of PyTorch's published rules."""

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn as nn
import minigrad.optim as optim

A = np.random.default_rng(0).standard_normal((6, 4))
T = np.random.default_rng(1).standard_normal(6)


def grad_of(w):
    """Gradient of 0.5 * ||A w - t||^2 + sum(sin(w))."""
    return A.T @ (A @ w - T) + np.cos(w)


def run_mg(opt_cls, steps=20, dtype=np.float64, **kw):
    w = nn.Parameter(mg.tensor(np.linspace(-1, 1, 4).astype(dtype)))
    opt = opt_cls([w], **kw)
    for _ in range(steps):
        opt.zero_grad()
        w.grad = mg.tensor(grad_of(w.numpy().astype(np.float64)).astype(dtype))
        opt.step()
    return w.numpy()


def ref_sgd(lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, steps=20):
    w = np.linspace(-1, 1, 4)
    buf = None
    for _ in range(steps):
        d = grad_of(w) + weight_decay * w
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        w = w - lr * d
    return w


def ref_adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False, steps=20):
    w = np.linspace(-1, 1, 4)
    m = np.zeros(4)
    v = np.zeros(4)
    for t in range(1, steps + 1):
        g = grad_of(w)
        if decoupled:
            w = w * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * w
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        mhat = m / (1 - betas[0] ** t)
        vhat = v / (1 - betas[1] ** t)
        w = w - lr * mhat / (np.sqrt(vhat) + eps)
    return w


@pytest.mark.parametrize("kw", [
    dict(lr=0.01), dict(lr=0.01, momentum=0.9), dict(lr=0.01, momentum=0.9, dampening=0.3),
    dict(lr=0.01, momentum=0.9, nesterov=True), dict(lr=0.01, momentum=0.5, weight_decay=0.1),
    dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=1e-2)])
def test_sgd_matches_reference(kw):
    np.testing.assert_allclose(run_mg(optim.SGD, **kw), ref_sgd(**kw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(lr=0.05), dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6),
                                dict(lr=0.05, weight_decay=0.1)])
def test_adam_matches_reference(kw):
    np.testing.assert_allclose(run_mg(optim.Adam, **kw), ref_adam(**kw), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(lr=0.05), dict(lr=0.05, weight_decay=0.3)])
def test_adamw_matches_reference(kw):
    np.testing.assert_allclose(run_mg(optim.AdamW, **kw),
                               ref_adam(decoupled=True, **{"weight_decay": 1e-2, **kw}), rtol=1e-10, atol=1e-12)


def test_float32_close_to_float64():
    np.testing.assert_allclose(run_mg(optim.Adam, dtype=np.float32, lr=0.05), ref_adam(lr=0.05), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(run_mg(optim.SGD, dtype=np.float32, lr=0.01, momentum=0.9),
                               ref_sgd(lr=0.01, momentum=0.9), rtol=1e-4, atol=1e-5)


def test_param_groups_zero_grad_and_skip_none():
    a = nn.Parameter(mg.ones(3))
    b = nn.Parameter(mg.ones(2))
    c = nn.Parameter(mg.ones(1))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 1.0}, {"params": [c]}], lr=0.1, momentum=0.0)
    assert opt.param_groups[1]["lr"] == 1.0 and opt.param_groups[0]["lr"] == 0.1
    a.grad = mg.ones(3)
    b.grad = mg.ones(2)
    opt.step()
    np.testing.assert_allclose(a.numpy(), 0.9)
    np.testing.assert_allclose(b.numpy(), 0.0)
    np.testing.assert_allclose(c.numpy(), 1.0)
    opt.zero_grad(set_to_none=False)
    assert (a.grad.numpy() == 0).all() and c.grad is None
    opt.zero_grad()
    assert a.grad is None
    with pytest.raises(ValueError, match="more than one"):
        optim.SGD([{"params": [a]}, {"params": [a]}], lr=0.1)
    with pytest.raises(ValueError):
        optim.SGD([a], lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        optim.Adam([a], betas=(1.0, 0.9))


@pytest.mark.parametrize("cls,kw", [(optim.SGD, dict(lr=0.01, momentum=0.9)), (optim.Adam, dict(lr=0.05)),
                                    (optim.AdamW, dict(lr=0.05))])
def test_state_dict_resume_is_exact(cls, kw):
    full = run_mg(cls, steps=20, **kw)
    w = nn.Parameter(mg.tensor(np.linspace(-1, 1, 4)))
    opt = cls([w], **kw)
    for _ in range(10):
        w.grad = mg.tensor(grad_of(w.numpy()))
        opt.step()
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"} and sd["param_groups"][0]["params"] == [0]
    assert all(isinstance(v, (np.ndarray, int, float)) for v in sd["state"][0].values())
    w2 = nn.Parameter(mg.tensor(w.numpy()))
    opt2 = cls([w2], lr=123.0)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == kw["lr"]
    for _ in range(10):
        w2.grad = mg.tensor(grad_of(w2.numpy()))
        opt2.step()
    np.testing.assert_array_equal(w2.numpy(), full)
    with pytest.raises(ValueError, match="parameter"):
        cls([w2, nn.Parameter(mg.ones(1))], **kw).load_state_dict(sd)
