"""nll_loss of a log_softmax output as one graph node with its gradient taken to the logits
(minigrad.ops.loss.LogSoftmaxNLL, the CPU kernel minigrad.cpu.loss.log_softmax_nll_backward).

Checked against float64 references and central differences: every reduction, both float
dtypes, a gradient already gathered for the logits (updated in place, or only read when the
user assigned it), logp used by another term too, a logp that keeps its own gradient (not
fused), log_softmax over another axis (not fused), ignored labels and class weights (not
fused), rows of -inf log-probabilities, and the switch that turns the fusion off.
"""

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn.functional as F
import minigrad.ops.loss as ops_loss
from gradcheck import numeric_grad
from minigrad.cpu import loss as cpu_loss


def reference(x, y, reduction):
    """(loss, d loss / d x) of nll_loss(log_softmax(x, 1), y) in float64; for "none" the
    gradient is that of the summed per-sample losses."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    lp = x - x.max(1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
    per = -lp[np.arange(n), y]
    p = np.exp(lp)
    onehot = np.zeros_like(p)
    onehot[np.arange(n), y] = 1.0
    scale = 1.0 / n if reduction == "mean" else 1.0
    loss = {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]
    return loss, (p - onehot) * scale


def fused_loss(xt, y, reduction="mean"):
    out = F.nll_loss(F.log_softmax(xt, dim=1), mg.tensor(y), reduction=reduction)
    return out if reduction != "none" else out.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-6), (np.float64, 1e-12)])
def test_loss_and_gradient_match_the_reference(reduction, dtype, tol):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((37, 53)) * 3).astype(dtype)
    y = rng.integers(0, 53, 37)
    xt = mg.tensor(x, requires_grad=True)
    lp = F.log_softmax(xt, dim=1)
    out = F.nll_loss(lp, mg.tensor(y), reduction=reduction)
    assert type(out._ctx).__name__ == "LogSoftmaxNLL"
    loss_ref, grad_ref = reference(x, y, reduction)
    np.testing.assert_allclose(out.numpy(), loss_ref, rtol=tol, atol=tol)
    (out if reduction != "none" else out.sum()).backward()
    assert xt.grad.dtype == dtype
    np.testing.assert_allclose(xt.grad.numpy(), grad_ref, rtol=tol, atol=tol)


def test_gradient_matches_central_differences():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6))
    y = np.array([5, 0, 2, 2])
    xt = mg.tensor(x, requires_grad=True)
    fused_loss(xt, y).backward()

    def f(a):
        return float(fused_loss(mg.tensor(a), y).numpy())

    np.testing.assert_allclose(xt.grad.numpy(), numeric_grad(f, [x], 0), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gathered_gradient_is_updated_in_place_or_read(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 40)).astype(dtype)
    y = rng.integers(0, 40, 16)
    grad_ref = reference(x, y, "mean")[1]
    xt = mg.tensor(x, requires_grad=True)
    fused_loss(xt, y).backward()
    first = xt.grad.data
    fused_loss(xt, y).backward()                   # autograd's own .grad: added in place
    assert xt.grad.data is first
    np.testing.assert_allclose(xt.grad.numpy(), 2 * grad_ref, rtol=1e-5, atol=1e-6)
    mine = np.ones_like(x)
    xt.grad = mg.tensor(mine)                      # the user's array: only read
    fused_loss(xt, y).backward()
    np.testing.assert_array_equal(mine, np.ones_like(x))
    np.testing.assert_allclose(xt.grad.numpy(), 1 + grad_ref, rtol=1e-5, atol=1e-6)


def test_logp_used_by_another_term_gets_both_gradients():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 7))
    y = rng.integers(0, 7, 5)
    w = rng.standard_normal((5, 7))
    xt = mg.tensor(x, requires_grad=True)
    lp = F.log_softmax(xt, dim=1)
    (F.nll_loss(lp, mg.tensor(y)) + (lp * mg.tensor(w)).sum()).backward()

    def f(a):
        lpa = F.log_softmax(mg.tensor(a), dim=1)
        return float((F.nll_loss(lpa, mg.tensor(y)) + (lpa * mg.tensor(w)).sum()).numpy())

    np.testing.assert_allclose(xt.grad.numpy(), numeric_grad(f, [x], 0), rtol=1e-6, atol=1e-9)


def test_cases_left_to_nll_loss_node(monkeypatch):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 5))
    y = np.array([0, 1, 2, 3, 4, 0])
    xt = mg.tensor(x, requires_grad=True)
    lp = F.log_softmax(xt, dim=1)
    lp.retain_grad()                                # logp's own gradient asked for
    out = F.nll_loss(lp, mg.tensor(y))
    assert type(out._ctx).__name__ == "NLLLoss"
    out.backward()
    assert lp.grad is not None
    np.testing.assert_allclose(xt.grad.numpy(), reference(x, y, "mean")[1], rtol=1e-12)
    other_axis = F.log_softmax(mg.tensor(x.T.copy(), requires_grad=True), dim=0).T
    assert type(F.nll_loss(other_axis, mg.tensor(y))._ctx).__name__ != "LogSoftmaxNLL"
    ignored = F.nll_loss(F.log_softmax(xt, dim=1), mg.tensor(np.array([0, -100, 2, 3, 4, 0])))
    assert type(ignored._ctx).__name__ != "LogSoftmaxNLL"
    weighted = F.nll_loss(F.log_softmax(xt, dim=1), mg.tensor(y), weight=np.ones(5))
    assert type(weighted._ctx).__name__ != "LogSoftmaxNLL"
    monkeypatch.setattr(ops_loss, "FUSE_LOG_SOFTMAX_NLL", False)
    assert type(F.nll_loss(F.log_softmax(xt, dim=1), mg.tensor(y))._ctx).__name__ == "NLLLoss"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_with_masked_classes(dtype):
    """-inf log-probabilities (classes masked out) give exactly 0 before the label's -g."""
    lp = np.array([[np.log(0.5), np.log(0.5), -np.inf, -np.inf],
                   [-np.inf, np.log(0.25), np.log(0.75), -np.inf]], dtype=dtype)
    g = np.array([2.0, 4.0], dtype)
    y = np.array([1, 2])
    out = cpu_loss.log_softmax_nll_backward(lp, y, g)
    np.testing.assert_allclose(out, [[1.0, -1.0, 0.0, 0.0], [0.0, 1.0, -1.0, 0.0]], atol=1e-6)
    assert out[0, 2] == 0.0 and out[1, 3] == 0.0
