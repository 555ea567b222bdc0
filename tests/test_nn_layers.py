"""Layers and functional forms against NumPy float64 references and central differences."""

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn as nn
import minigrad.nn.functional as F
from gradcheck import numeric_grad


def _t(a, grad=True):
    return mg.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def numgrad(f, arrays, eps=1e-6):
    """Central-difference gradients of the scalar f(*arrays) w.r.t. each array."""
    return [numeric_grad(f, arrays, i, eps) for i in range(len(arrays))]


def check_grads(fn, arrays, rtol=1e-5, atol=1e-7, seed_w=0):
    """Compare autodiff gradients of sum(fn(*tensors) * W) with central differences."""
    rng = np.random.default_rng(seed_w)
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    out0 = fn(*[_t(a, False) for a in arrays]).numpy()
    w = rng.standard_normal(out0.shape)

    def scalar(*arrs):
        return float((fn(*[_t(a, False) for a in arrs]).numpy() * w).sum())

    ts = [_t(a) for a in arrays]
    (fn(*ts) * _t(w, False)).sum().backward()
    num = numgrad(scalar, arrays)
    for t, n in zip(ts, num):
        np.testing.assert_allclose(t.grad.numpy(), n, rtol=rtol, atol=atol)


# --- batch norm ------------------------------------------------------------------

def bn_ref(x, g, b, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mu = x.mean(axes, keepdims=True)
    var = x.var(axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g.reshape(shape) + b.reshape(shape), mu.ravel(), var.ravel()


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (2, 3, 4, 5)])
def test_batch_norm_train_forward_backward(shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 2 + 1
    g = rng.standard_normal(shape[1])
    b = rng.standard_normal(shape[1])
    y = F.batch_norm(_t(x, False), None, None, _t(g, False), _t(b, False), training=True, eps=1e-5)
    np.testing.assert_allclose(y.numpy(), bn_ref(x, g, b, 1e-5)[0], rtol=1e-10, atol=1e-10)
    check_grads(lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True), [x, g, b], rtol=1e-4)


def test_batch_norm_eval_grad():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 2, 2))
    rm, rv = mg.tensor(rng.standard_normal(4)), mg.tensor(rng.random(4) + 0.5)
    g, b = rng.standard_normal(4), rng.standard_normal(4)
    y = F.batch_norm(_t(x, False), rm, rv, _t(g, False), _t(b, False), training=False)
    ref = (x - rm.numpy().reshape(1, -1, 1, 1)) / np.sqrt(rv.numpy().reshape(1, -1, 1, 1) + 1e-5) \
        * g.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-10)
    check_grads(lambda x, g, b: F.batch_norm(x, rm, rv, g, b, training=False), [x, g, b])


def test_batch_norm_float32_matches_float64():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 5, 6, 6)).astype(np.float32) * 3 + 2
    bn = nn.BatchNorm2d(5)
    y = bn(mg.tensor(x, requires_grad=True))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), bn_ref(x.astype(np.float64), np.ones(5), np.zeros(5), 1e-5)[0],
                               rtol=1e-4, atol=1e-4)


def test_batchnorm_running_stats_several_steps():
    rng = np.random.default_rng(4)
    bn = nn.BatchNorm2d(3, momentum=0.2)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(5):
        x = rng.standard_normal((4, 3, 5, 5)) * (step + 1) + step
        bn(mg.tensor(x.astype(np.float32)))
        _, mu, var = bn_ref(x, np.ones(3), np.zeros(3), 1e-5)
        m = x.size // 3
        rm = 0.8 * rm + 0.2 * mu
        rv = 0.8 * rv + 0.2 * var * m / (m - 1)
    np.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), rv, rtol=1e-5)
    assert bn.num_batches_tracked.item() == 5
    bn.eval()
    x = rng.standard_normal((2, 3, 4, 4))
    y = bn(mg.tensor(x.astype(np.float32))).numpy()
    ref = (x - rm.reshape(1, -1, 1, 1)) / np.sqrt(rv.reshape(1, -1, 1, 1) + 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    assert bn.num_batches_tracked.item() == 5


def test_cpu_mix_into_converts_src_and_names_bad_shapes():
    """The running-statistics update dst = keep * dst + take * src, in place, with a float64
    src rounded to dst's float32 before it is scaled (as the update always did)."""
    be = mg.backend.get("cpu")
    dst = np.array([1.0, -2.0, 3.0], np.float32)
    before = dst.copy()
    src = np.array([0.1, 0.2, 1e-9], np.float64)
    be.mix_into_(dst, 0.9, src, 0.3)
    want = np.float32(0.9) * before + np.float32(0.3) * src.astype(np.float32)
    np.testing.assert_array_equal(dst, want)
    assert dst.dtype == np.float32
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        be.mix_into_(dst, 0.5, np.ones(2), 0.5)


def test_batchnorm_counts_batches_in_place_and_functional_counts_none():
    """A training step adds one to num_batches_tracked in its own storage (as PyTorch's add_),
    eval steps and F.batch_norm leave it alone; batch_norm_counted takes it as an argument."""
    bn = nn.BatchNorm2d(2)
    storage = bn.num_batches_tracked.data
    x = mg.tensor(np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2))
    bn(x)
    bn(x)
    assert bn.num_batches_tracked.data is storage and int(storage) == 2
    bn.eval()
    bn(x)
    F.batch_norm(x, bn.running_mean, bn.running_var, training=True)
    assert int(storage) == 2
    from minigrad.ops.norm import batch_norm_counted
    counter = mg.tensor(np.array(7, np.int64))
    batch_norm_counted(x, None, None, training=True, num_batches_tracked=counter)
    assert counter.item() == 8


def test_batchnorm_cumulative_momentum_none_and_1d():
    rng = np.random.default_rng(5)
    bn = nn.BatchNorm1d(2, momentum=None)
    xs = [rng.standard_normal((6, 2)) for _ in range(3)]
    for x in xs:
        bn(mg.tensor(x.astype(np.float32)))
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([x.mean(0) for x in xs], 0), rtol=1e-5)
    with pytest.raises(ValueError, match="more than 1 value"):
        bn(mg.tensor(np.ones((1, 2), np.float32)))
    with pytest.raises(ValueError, match="channels"):
        bn(mg.tensor(np.ones((4, 3), np.float32)))


# --- local response norm -----------------------------------------------------

def lrn_ref(x, n, alpha, beta, k):
    c = x.shape[1]
    sq = x ** 2
    out = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - n // 2), min(c, ch + (n - 1) // 2 + 1)
        s = k + alpha / n * sq[:, lo:hi].sum(1)
        out[:, ch] = x[:, ch] * s ** -beta
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_lrn_forward_backward(size):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 6, 3, 3)) * 3
    y = F.local_response_norm(_t(x, False), size, alpha=0.3, beta=0.75, k=2.0)
    np.testing.assert_allclose(y.numpy(), lrn_ref(x, size, 0.3, 0.75, 2.0), rtol=1e-12)
    check_grads(lambda t: F.local_response_norm(t, size, 0.3, 0.75, 2.0), [x])
    m = nn.LocalResponseNorm(size, alpha=1e-4, beta=0.75, k=1.0)
    np.testing.assert_allclose(m(mg.tensor(x.astype(np.float32))).numpy(), lrn_ref(x, size, 1e-4, 0.75, 1.0),
                               rtol=1e-5)


# --- cross-entropy -----------------------------------------------------------

def ce_ref(x, y, eps, reduction):
    ls = x - x.max(1, keepdims=True)
    ls = ls - np.log(np.exp(ls).sum(1, keepdims=True))
    c = x.shape[1]
    loss = -(1 - eps) * ls[np.arange(len(y)), y] - eps / c * ls.sum(1)
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy(reduction, eps):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4)) * 3
    y = np.array([0, 3, 1, 1, 2])
    out = F.cross_entropy(_t(x, False), mg.tensor(y), reduction=reduction, label_smoothing=eps)
    np.testing.assert_allclose(out.numpy(), ce_ref(x, y, eps, reduction), rtol=1e-12)
    check_grads(lambda t: F.cross_entropy(t, y, reduction=reduction, label_smoothing=eps), [x])
    loss = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=eps)
    np.testing.assert_allclose(loss(mg.tensor(x.astype(np.float32)), mg.tensor(y)).numpy(),
                               ce_ref(x, y, eps, reduction), rtol=1e-5)


def test_cross_entropy_extreme_logits_and_errors():
    x = mg.tensor(np.array([[1000.0, -1000.0, 0.0]], np.float32))
    assert np.isfinite(F.cross_entropy(x, mg.tensor([1])).item())
    with pytest.raises(ValueError, match="target value 3"):
        F.cross_entropy(x, mg.tensor([3]))
    with pytest.raises(ValueError, match="target value -1"):
        F.cross_entropy(x, [-1])
    with pytest.raises(TypeError, match="integer"):
        F.cross_entropy(x, mg.tensor([1.0]))
    with pytest.raises(ValueError, match="shape"):
        F.cross_entropy(x, mg.tensor([1, 2]))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, mg.tensor([1]), reduction="avg")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_with_masked_logits(dtype):
    """A -inf logit (a masked class, not the target) leaves the loss finite and its gradient
    0 there, as in PyTorch (the unused smoothing term once made it NaN); with label
    smoothing the mean over classes of -log p includes +inf, so the loss is +inf (PyTorch:
    inf too)."""
    x = np.array([[1.0, 2.0, -np.inf, 0.5], [0.1, -np.inf, 0.3, 0.2]], dtype)
    y = np.array([1, 3])
    t = mg.tensor(x, requires_grad=True)
    loss = F.cross_entropy(t, mg.tensor(y))
    loss.backward()
    logp = x - np.log(np.exp(x.astype(np.float64)).sum(1, keepdims=True))
    np.testing.assert_allclose(loss.item(), -logp[[0, 1], y].mean(), rtol=1e-6)
    want = np.exp(logp)
    want[[0, 1], y] -= 1.0
    np.testing.assert_allclose(t.grad.numpy(), want / 2, rtol=1e-5, atol=1e-7)
    assert t.grad.numpy()[0, 2] == 0 and t.grad.numpy()[1, 1] == 0
    assert F.cross_entropy(mg.tensor(x), mg.tensor(y), label_smoothing=0.1).item() == np.inf


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_cross_entropy_and_nll_ignore_index(reduction, eps):
    """Ignored targets add nothing; "mean" averages over the others (PyTorch's rule)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((6, 4)) * 2
    y = np.array([0, -100, 3, 1, -100, 2])
    keep = y != -100
    per = ce_ref(x[keep], y[keep], eps, "none")
    if reduction == "none":
        want = np.zeros(6)
        want[keep] = per
    else:
        want = per.sum() if reduction == "sum" else per.mean()
    out = F.cross_entropy(_t(x, False), mg.tensor(y), reduction=reduction, label_smoothing=eps)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12)
    check_grads(lambda t: F.cross_entropy(t, y, reduction=reduction, label_smoothing=eps), [x])
    xt = _t(x, True)
    F.cross_entropy(xt, y, reduction=reduction, label_smoothing=eps).sum().backward()
    assert not xt.grad.numpy()[~keep].any()            # no gradient through ignored rows
    loss = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=eps, ignore_index=7)
    np.testing.assert_allclose(loss(mg.tensor(x), mg.tensor(np.where(keep, y, 7))).numpy(), want,
                               rtol=1e-12)
    if eps == 0.0:
        lp = F.log_softmax(_t(x, False), 1)
        np.testing.assert_allclose(F.nll_loss(lp, y, reduction=reduction).numpy(), want, rtol=1e-12)
        check_grads(lambda t: F.nll_loss(t, y, reduction=reduction), [x])
        np.testing.assert_allclose(
            nn.NLLLoss(reduction=reduction, ignore_index=5)(lp, np.where(keep, y, 5)).numpy(), want,
            rtol=1e-12)


def weighted_ce_ref(x, y, w, eps, reduction, ignore=-100):
    """PyTorch's documented class-weighted, label-smoothed cross-entropy in float64."""
    lp = x - x.max(1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
    keep = y != ignore
    yk = np.where(keep, y, 0)
    wy = w[yk] * keep
    per = -(1 - eps) * wy * lp[np.arange(len(y)), yk] - eps / x.shape[1] * (lp * w).sum(1) * keep
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.sum() / wy.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_cross_entropy_and_nll_class_weights(reduction, eps):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((7, 4)) * 2
    y = np.array([0, 3, -100, 1, 3, 2, 0])
    w = np.array([0.5, 2.0, 1.0, 3.0])
    want = weighted_ce_ref(x, y, w, eps, reduction)
    out = F.cross_entropy(_t(x, False), y, reduction=reduction, label_smoothing=eps, weight=w)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12)
    check_grads(lambda t: F.cross_entropy(t, y, reduction=reduction, label_smoothing=eps,
                                          weight=mg.tensor(w)), [x])
    loss = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=eps, weight=w)
    assert set(loss.state_dict()) == {"weight"}
    np.testing.assert_allclose(loss(mg.tensor(x.astype(np.float32)), mg.tensor(y)).numpy(), want,
                               rtol=1e-5, atol=1e-6)
    if eps == 0.0:
        lp = F.log_softmax(_t(x, False), 1)
        np.testing.assert_allclose(F.nll_loss(lp, y, reduction=reduction, weight=w).numpy(), want,
                                   rtol=1e-12)
        check_grads(lambda t: F.nll_loss(t, y, reduction=reduction, weight=w), [x])
        np.testing.assert_allclose(nn.NLLLoss(reduction=reduction, weight=w)(lp, y).numpy(), want,
                                   rtol=1e-12)
    with pytest.raises(ValueError, match=r"one number per class, shape \(4,\); got shape \(3,\)"):
        F.cross_entropy(_t(x, False), y, weight=w[:3])


def test_ignore_index_edge_cases():
    x = mg.tensor(np.zeros((2, 3), np.float32))
    assert np.isnan(F.cross_entropy(x, [-100, -100]).item())           # as PyTorch: 0 / 0
    assert F.cross_entropy(x, [-100, -100], reduction="sum").item() == 0.0
    with pytest.raises(ValueError, match=r"target value -1 .* or -100 \(ignore_index\)"):
        F.cross_entropy(x, [-1, -100])
    with pytest.raises(ValueError, match="target value -100"):
        F.cross_entropy(x, [-100, 0], ignore_index=None)


def test_nll_and_mse_loss():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 3))
    y = np.array([2, 0, 1, 2])
    lp = F.log_softmax(_t(x, False), 1)
    np.testing.assert_allclose(F.nll_loss(lp, y).numpy(), ce_ref(x, y, 0.0, "mean"), rtol=1e-12)
    check_grads(lambda t: F.nll_loss(t, y, reduction="sum"), [x])
    check_grads(lambda t: F.nll_loss(t, y), [x])
    check_grads(lambda t: F.nll_loss(t, y, reduction="none"), [x])
    lpx = lp.numpy()
    np.testing.assert_array_equal(F.nll_loss(lp, y, reduction="none").numpy(), -lpx[np.arange(4), y])
    assert np.isnan(F.nll_loss(mg.zeros(0, 3), np.zeros(0, np.int64)).item())
    t = rng.standard_normal((4, 3))
    np.testing.assert_allclose(F.mse_loss(_t(x, False), _t(t, False)).numpy(), ((x - t) ** 2).mean())
    check_grads(lambda a: F.mse_loss(a, _t(t, False), reduction="sum"), [x])


# --- layer norm and embedding --------------------------------------------------

@pytest.mark.parametrize("shape,norm", [((4, 5), (5,)), ((2, 3, 4), (3, 4)), ((3, 6), 6)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(shape, norm, affine):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape) * 3 + 1
    ns = (norm,) if isinstance(norm, int) else norm
    w, b = rng.standard_normal(ns), rng.standard_normal(ns)
    axes = tuple(range(len(shape) - len(ns), len(shape)))
    ref = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + 1e-5)
    if affine:
        ref = ref * w + b
        args, fn = [x, w, b], lambda a, g, c: F.layer_norm(a, norm, g, c)
    else:
        args, fn = [x], lambda a: F.layer_norm(a, norm)
    np.testing.assert_allclose(fn(*[_t(a, False) for a in args]).numpy(), ref, rtol=1e-10, atol=1e-12)
    check_grads(fn, args)
    m = nn.LayerNorm(norm, elementwise_affine=affine)
    assert [n for n, _ in m.named_parameters()] == (["weight", "bias"] if affine else [])
    y = m(mg.tensor(x.astype(np.float32)))
    assert y.dtype == mg.float32
    np.testing.assert_allclose(y.numpy(), (ref - b) / w if affine else ref, rtol=1e-4, atol=1e-4)


def test_layer_norm_errors_name_shapes():
    with pytest.raises(ValueError, match=r"normalized_shape \(4,\) .* \(2, 3\)"):
        F.layer_norm(mg.zeros(2, 3), 4)
    with pytest.raises(ValueError, match=r"weight shape \(2,\)"):
        F.layer_norm(mg.zeros(2, 3), 3, mg.ones(2))


def test_embedding_lookup_gradient_and_errors():
    mg.manual_seed(0)
    emb = nn.Embedding(5, 3)
    assert emb.weight.shape == (5, 3) and repr(emb) == "Embedding(5, 3)"
    idx = mg.tensor([[1, 4, 1], [0, 1, 2]])
    out = emb(idx)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out.numpy(), emb.weight.numpy()[idx.numpy()])
    out.sum().backward()
    counts = np.bincount(idx.numpy().ravel(), minlength=5)      # repeated rows accumulate
    np.testing.assert_array_equal(emb.weight.grad.numpy(), np.repeat(counts[:, None], 3, 1))
    check_grads(lambda w: F.embedding(np.array([3, 0, 3]), w), [np.arange(8.0).reshape(4, 2)])
    with pytest.raises(ValueError, match="index 5 is out of range for 5"):
        emb(mg.tensor([5]))
    with pytest.raises(ValueError, match="index -1"):
        emb(mg.tensor([-1]))
    with pytest.raises(TypeError, match="integers"):
        emb(mg.tensor([1.0]))


# --- dropout -----------------------------------------------------------------

def test_dropout_train_eval_and_determinism():
    x = mg.ones(200, 100, requires_grad=True)
    d = nn.Dropout(0.3)
    mg.manual_seed(0)
    y = d(x)
    yn = y.numpy()
    assert set(np.unique(yn).tolist()) <= {0.0, np.float32(1 / 0.7)}
    assert abs((yn == 0).mean() - 0.3) < 0.01
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), yn)
    mg.manual_seed(0)
    np.testing.assert_array_equal(d(x).numpy(), yn)
    assert not np.array_equal(d(x).numpy(), yn)
    d.eval()
    assert d(x) is x
    assert (F.dropout(x, 1.0).numpy() == 0).all()
    with pytest.raises(ValueError):
        nn.Dropout(1.5)


# --- linear, conv, pooling, activations --------------------------------------

def test_linear_and_conv_forward_backward():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal((2, 4))
    b = rng.standard_normal(2)
    np.testing.assert_allclose(F.linear(_t(x), _t(w), _t(b)).numpy(), x @ w.T + b, rtol=1e-12)
    check_grads(F.linear, [x, w, b])
    xi = rng.standard_normal((2, 2, 5, 5))
    wi = rng.standard_normal((3, 2, 3, 3))
    bi = rng.standard_normal(3)
    check_grads(lambda a, c, d: F.conv2d(a, c, d, stride=2, padding=1), [xi, wi, bi])
    conv = nn.Conv2d(2, 3, 3, padding="same").double()
    assert conv(_t(xi)).shape == (2, 3, 5, 5)
    assert nn.Conv2d(2, 3, 3, padding="valid")(mg.tensor(xi.astype(np.float32))).shape == (2, 3, 3, 3)


def test_pool_and_activation_layers():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(nn.MaxPool2d(2)(_t(x)).numpy(), x.reshape(2, 3, 2, 2, 2, 2).max((3, 5)))
    np.testing.assert_allclose(nn.AvgPool2d(2)(_t(x)).numpy(), x.reshape(2, 3, 2, 2, 2, 2).mean((3, 5)))
    np.testing.assert_allclose(nn.AdaptiveAvgPool2d(1)(_t(x)).numpy(), x.mean((2, 3), keepdims=True))
    np.testing.assert_allclose(nn.ReLU()(_t(x)).numpy(), np.maximum(x, 0))
    assert nn.Flatten()(_t(x)).shape == (2, 48)
    assert nn.Identity()(_t(x)).shape == x.shape
    check_grads(lambda t: F.avg_pool2d(t, 2), [x])
    sm = F.softmax(_t(x[:, :, 0, 0]), 1).numpy()
    np.testing.assert_allclose(sm, np.exp(x[:, :, 0, 0]) / np.exp(x[:, :, 0, 0]).sum(1, keepdims=True))


def test_functional_pad_last_dim_first():
    x = np.arange(6.0).reshape(1, 2, 3)
    y = F.pad(_t(x), (1, 2))
    np.testing.assert_array_equal(y.numpy(), np.pad(x, ((0, 0), (0, 0), (1, 2))))
    y = F.pad(_t(x), (1, 0, 0, 2), value=5.0)
    np.testing.assert_array_equal(y.numpy(), np.pad(x, ((0, 0), (0, 2), (1, 0)), constant_values=5.0))
    check_grads(lambda t: F.pad(t, (1, 1, 2, 0)), [x])
    with pytest.raises(ValueError):
        F.pad(_t(x), (1,))


# --- initialisation ----------------------------------------------------------

def test_default_init_bounds_and_determinism():
    mg.manual_seed(3)
    a = nn.Conv2d(16, 8, 3)
    mg.manual_seed(3)
    b = nn.Conv2d(16, 8, 3)
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    bound = 1 / np.sqrt(16 * 9)
    assert np.abs(a.weight.numpy()).max() <= bound and np.abs(a.weight.numpy()).max() > 0.8 * bound
    assert np.abs(a.bias.numpy()).max() <= bound
    lin = nn.Linear(100, 50)
    assert np.abs(lin.weight.numpy()).max() <= 0.1 and lin.weight.dtype == np.float32
    bn = nn.BatchNorm2d(4)
    assert (bn.weight.numpy() == 1).all() and (bn.bias.numpy() == 0).all()


def test_init_functions():
    mg.manual_seed(0)
    w = mg.zeros(200, 300)
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    assert abs(w.numpy().std() - np.sqrt(2 / 200)) < 0.002
    nn.init.kaiming_uniform_(w, a=0, nonlinearity="relu")
    assert np.abs(w.numpy()).max() <= np.sqrt(6 / 300)
    nn.init.xavier_uniform_(w)
    assert np.abs(w.numpy()).max() <= np.sqrt(6 / 500)
    nn.init.xavier_normal_(w, gain=2.0)
    assert abs(w.numpy().std() - 2 * np.sqrt(2 / 500)) < 0.003
    nn.init.normal_(w, 1.0, 0.5)
    assert abs(w.numpy().mean() - 1.0) < 0.01
    nn.init.uniform_(w, -2, -1)
    assert w.numpy().max() <= -1
    nn.init.constant_(w, 3.0)
    assert (w.numpy() == 3).all()
    nn.init.zeros_(w)
    assert (w.numpy() == 0).all()
    nn.init.ones_(w)
    assert (w.numpy() == 1).all()


def test_clip_grad_norm():
    a = nn.Parameter(np.zeros(3, np.float32))
    b = nn.Parameter(np.zeros(4, np.float32))
    a.grad = mg.tensor([3.0, 0.0, 0.0])
    b.grad = mg.tensor([0.0, 4.0, 0.0, 0.0])
    total = nn.utils.clip_grad_norm_([a, b], 1.0)
    assert abs(total.item() - 5.0) < 1e-6
    np.testing.assert_allclose(a.grad.numpy(), [0.6, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(b.grad.numpy(), [0, 0.8, 0, 0], rtol=1e-5)
    total = nn.utils.clip_grad_norm_([a, b], 10.0)
    np.testing.assert_allclose(a.grad.numpy(), [0.6, 0, 0], rtol=1e-5)
