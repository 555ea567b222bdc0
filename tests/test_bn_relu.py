"""Batch norm with the residual add and ReLU fused in (``F.batch_norm_relu``,
``BatchNorm2d.forward_relu``, the backend's ``relu``/``residual`` arguments and
``batch_norm_relu_backward``), against float64 NumPy and the unfused ops."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigrad as mg
import minigrad.nn as nn
import minigrad.nn.functional as F
import zoo
from minigrad.backend import Backend, get as get_backend
from minigrad.cpu import norm as cpu_norm
from minigrad.nn import layers
from minigrad.nn.layers import bn_relu

import reference as ref
from gradcheck import check_grad

EPS = 1e-5


def _cl(a):
    """``a`` (N, C, H, W) stored channels-last (same values)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _reference(x, gamma, beta, res, gy):
    """float64 y = relu(bn(x) + res), and (gx, ggamma, gbeta, gres) for the output gradient gy."""
    y0, _, _, _ = ref.batch_norm(x, gamma, beta, EPS)
    s = y0 + (0.0 if res is None else np.asarray(res, np.float64))
    y = np.maximum(s, 0.0)
    gm = np.where(s > 0, np.asarray(gy, np.float64), 0.0)
    gx, gg, gb = ref.batch_norm_grads(x, gamma, gm, EPS)
    return y, gx, gg, gb, gm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_cl", [False, True])
@pytest.mark.parametrize("res_kind", [None, "nchw", "cl", "view"])
@pytest.mark.parametrize("affine", [False, True])
def test_train_matches_numpy(dtype, x_cl, res_kind, affine):
    rng = np.random.default_rng(1)
    shape = (3, 5, 4, 6)
    xs = rng.standard_normal(shape).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, 5).astype(dtype) if affine else np.ones(5, dtype)
    beta = rng.standard_normal(5).astype(dtype) if affine else np.zeros(5, dtype)
    rs = None
    if res_kind is not None:
        rs = rng.standard_normal(shape).astype(dtype)
        view = rs.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)
        rs = {"nchw": rs, "cl": _cl(rs), "view": view}[res_kind]
    x = mg.tensor(_cl(xs) if x_cl else xs, requires_grad=True)
    r = None if rs is None else mg.tensor(rs, requires_grad=True)
    w = mg.tensor(gamma, requires_grad=True) if affine else None
    b = mg.tensor(beta, requires_grad=True) if affine else None
    y = F.batch_norm_relu(x, None, None, w, b, training=True, eps=EPS, residual=r)
    y.backward(mg.tensor(gy))
    ey, egx, egg, egb, egm = _reference(xs, gamma, beta, rs, gy)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    assert y.dtype == dtype and x.grad.dtype == dtype
    np.testing.assert_allclose(y.numpy(), ey, **tol)
    np.testing.assert_allclose(x.grad.numpy(), egx, **tol)
    if affine:
        np.testing.assert_allclose(w.grad.numpy(), egg, **tol)
        np.testing.assert_allclose(b.grad.numpy(), egb, **tol)
    if r is not None:
        np.testing.assert_array_equal(r.grad.numpy(), np.where(y.numpy() > 0, gy, 0))


@pytest.mark.parametrize("x_cl", [False, True])
@pytest.mark.parametrize("with_res", [False, True])
def test_gradcheck_float64(x_cl, with_res):
    rng = np.random.default_rng(2)
    shape = (2, 3, 3, 4)
    arrays = [rng.standard_normal(shape), rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)]
    if with_res:
        arrays.append(rng.standard_normal(shape))

    def op(x, w, b, *res):
        if x_cl:
            x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        return F.batch_norm_relu(x, None, None, w, b, training=True, eps=EPS,
                                 residual=res[0] if res else None)

    check_grad(op, arrays, atol=1e-6, rtol=1e-5)


@given(n=st.integers(2, 4), c=st.integers(1, 9), h=st.integers(1, 5), w=st.integers(1, 5),
       x_cl=st.booleans(), with_res=st.booleans(), seed=st.integers(0, 2 ** 16))
@settings(max_examples=40, deadline=None)
def test_fused_equals_unfused_any_shape(n, c, h, w, x_cl, with_res, seed):
    """The fused op returns what relu(bn(x) + res) returns, values and gradients, for any shape."""
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((n, c, h, w)).astype(np.float32)
    rs = rng.standard_normal((n, c, h, w)).astype(np.float32)
    gy = rng.standard_normal((n, c, h, w)).astype(np.float32)
    results = []
    for fused in (False, True):
        bn = nn.BatchNorm2d(c)
        x = mg.tensor(_cl(xs) if x_cl else xs, requires_grad=True)
        r = mg.tensor(rs, requires_grad=True) if with_res else None
        if fused:
            y = bn.forward_relu(x, r)
        else:
            y = F.relu(bn(x) + r if with_res else bn(x))
        y.backward(mg.tensor(gy))
        results.append([y.numpy(), x.grad.numpy(), bn.weight.grad.numpy(), bn.bias.grad.numpy(),
                        bn.running_mean.numpy(), bn.running_var.numpy()]
                       + ([r.grad.numpy()] if with_res else []))
    for got, want in zip(results[1], results[0]):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("x_cl", [False, True])
@pytest.mark.parametrize("with_res", [False, True])
def test_eval_mode(x_cl, with_res):
    rng = np.random.default_rng(3)
    shape = (2, 4, 3, 5)
    xs = rng.standard_normal(shape)
    rs = rng.standard_normal(shape)
    gy = rng.standard_normal(shape)
    bn = nn.BatchNorm2d(4).double()
    bn.running_mean.data = rng.standard_normal(4)
    bn.running_var.data = rng.uniform(0.5, 2.0, 4)
    bn.weight.data = rng.uniform(0.5, 1.5, 4)
    bn.bias.data = rng.standard_normal(4)
    bn.eval()
    grads = []
    for fused in (False, True):
        x = mg.tensor(_cl(xs) if x_cl else xs, requires_grad=True)
        r = mg.tensor(rs, requires_grad=True) if with_res else None
        bn.zero_grad()
        y = bn.forward_relu(x, r) if fused else F.relu(bn(x) + r if with_res else bn(x))
        y.backward(mg.tensor(gy))
        grads.append([y.numpy(), x.grad.numpy(), bn.weight.grad.numpy(), bn.bias.grad.numpy()]
                     + ([r.grad.numpy()] if with_res else []))
    for got, want in zip(grads[1], grads[0]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert int(bn.num_batches_tracked.item()) == 0


def test_module_buffers_and_count_as_plain_call():
    rng = np.random.default_rng(4)
    x = mg.tensor(rng.standard_normal((4, 3, 5, 5)).astype(np.float32))
    a, b = nn.BatchNorm2d(3, momentum=0.3), nn.BatchNorm2d(3, momentum=0.3)
    for _ in range(2):
        F.relu(a(x))
        b.forward_relu(x)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_array_equal(getattr(a, name).numpy(), getattr(b, name).numpy())
    c, d = nn.BatchNorm2d(3, momentum=None), nn.BatchNorm2d(3, momentum=None)
    for _ in range(3):
        c(x)
        d.forward_relu(x)
    np.testing.assert_allclose(d.running_var.numpy(), c.running_var.numpy(), rtol=1e-6)
    assert int(d.num_batches_tracked.item()) == 3


def test_relu_keeps_nan_and_zero_gradient_at_zero():
    x = mg.tensor(np.array([[1.0, 2.0], [3.0, np.nan]], np.float32).reshape(2, 2, 1, 1),
                  requires_grad=True)
    y = F.batch_norm_relu(x, mg.zeros(2), mg.ones(2), training=False, eps=0.0,
                          residual=mg.tensor(np.array([-1.0, 0.0, -4.0, 0.0], np.float32)
                                             .reshape(2, 2, 1, 1)))
    np.testing.assert_array_equal(y.numpy().ravel()[:3], [0.0, 2.0, 0.0])
    assert np.isnan(y.numpy().ravel()[3])
    y.backward(mg.ones(y.shape))
    np.testing.assert_array_equal(x.grad.numpy().ravel()[:3], [0.0, 1.0, 0.0])


def test_backend_backward_masks_and_matches_the_composed_default():
    rng = np.random.default_rng(5)
    be = get_backend("cpu")
    x = rng.standard_normal((3, 4, 2, 5)).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, 4).astype(np.float32)
    beta = rng.standard_normal(4).astype(np.float32)
    res = rng.standard_normal(x.shape).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    y, mean, _, invstd = cpu_norm.batch_norm_train(x, gamma, beta, EPS, True, res)
    assert (y == 0).any() and (y > 0).any()
    gx, gg, gb, gm = cpu_norm.batch_norm_relu_backward(gy, y, x, gamma, mean, invstd, True)
    np.testing.assert_array_equal(gm, np.where(y > 0, gy, 0))
    want = cpu_norm.batch_norm_backward(gm, x, gamma, mean, invstd)
    for got, exp in zip((gx, gg, gb), want):
        np.testing.assert_allclose(got, exp, rtol=1e-6, atol=1e-6)
    assert cpu_norm.batch_norm_relu_backward(gy, y, x, gamma, mean, invstd, False)[3] is None
    composed = Backend.batch_norm_relu_backward(be, gy, y, x, gamma, mean, invstd, True)
    for got, exp in zip(composed, (gx, gg, gb, gm)):
        np.testing.assert_allclose(got, exp, rtol=1e-6, atol=1e-6)


def test_residual_of_another_dtype_promotes_as_the_unfused_sum():
    x = mg.tensor(np.random.default_rng(6).standard_normal((2, 3, 2, 2)).astype(np.float32))
    r = mg.tensor(np.full((2, 3, 2, 2), 0.25))
    y = F.batch_norm_relu(x, None, None, training=True, residual=r)
    want = F.relu(F.batch_norm(x, None, None, training=True) + r)
    assert y.dtype == want.dtype == np.float64
    np.testing.assert_allclose(y.numpy(), want.numpy())


def test_bad_residual_shape_names_both_shapes():
    x = mg.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError,
                       match=r"residual shape \(2, 3, 4, 5\) != input shape \(2, 3, 4, 4\)"):
        F.batch_norm_relu(x, None, None, training=True, residual=mg.zeros((2, 3, 4, 5)))


def test_bn_relu_fuses_only_without_hooks_and_with_a_plain_relu():
    """nn.layers.bn_relu (ResNet's blocks): the fused op, or the modules' calls when a hook or
    another activation is attached; all three give the model's output."""
    rng = np.random.default_rng(7)
    bn, relu = nn.BatchNorm2d(3), nn.ReLU()
    x = mg.tensor(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    seen = []
    fused = bn_relu(bn, relu, x)
    handle = relu.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    hooked = bn_relu(bn, relu, x)
    handle.remove()
    assert seen == [(2, 3, 4, 4)]
    np.testing.assert_allclose(hooked.numpy(), fused.numpy(), rtol=1e-6, atol=1e-6)
    swapped = bn_relu(bn, nn.Sigmoid(), x)
    np.testing.assert_allclose(swapped.numpy(), F.sigmoid(bn(x)).numpy(), rtol=1e-6)


def test_resnet18_hook_finds_each_layer():
    """The NaN finder's hooks still see every leaf module of ResNet-18's blocks."""
    model = zoo.resnet18(num_classes=10, stem="cifar")
    names = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: names.append(n))
               for n, m in model.named_modules() if n and not list(m.children())]
    with mg.no_grad():
        model(mg.tensor(np.zeros((2, 3, 8, 8), np.float32)))
    for h in handles:
        h.remove()
    assert "layer1.0.bn1" in names and "layer1.0.relu" in names and "bn1" in names


def _run(model, xs, gy, fuse, monkeypatch):
    monkeypatch.setattr(layers, "FUSE_BN_RELU", fuse)
    model.zero_grad()
    x = mg.tensor(xs, requires_grad=True)
    y = model(x)
    y.backward(mg.tensor(gy))
    return [y.numpy(), x.grad.numpy()] + [p.grad.numpy() for p in model.parameters()]


@pytest.mark.parametrize("shape, layers_", [
    ((4, 3, 6, 6), lambda: [nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                            nn.Conv2d(5, 4, 1), nn.BatchNorm2d(4), nn.ReLU()]),
    ((6, 7), lambda: [nn.Linear(7, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2)]),
])
@pytest.mark.parametrize("training", [True, False])
def test_sequential_fuses_batch_norm_then_relu(shape, layers_, training, monkeypatch):
    """Sequential runs (BatchNorm, ReLU) pairs as one op; outputs, gradients and running
    statistics equal the module-by-module run's."""
    rng = np.random.default_rng(8)
    mg.manual_seed(0)
    model = nn.Sequential(*layers_())
    model.train(training)
    xs = rng.standard_normal(shape).astype(np.float32)
    out = model(mg.tensor(xs))
    gy = rng.standard_normal(out.shape).astype(np.float32)
    state = model.state_dict()
    plain = _run(model, xs, gy, False, monkeypatch)
    plain_state = model.state_dict()
    model.load_state_dict(state)
    fused = _run(model, xs, gy, True, monkeypatch)
    for got, want in zip(fused, plain):   # float32 sums in another order (the conv bias's
        np.testing.assert_allclose(got, want, rtol=1e-5,   # gradient is rounding noise near 0)
                                   atol=1e-5 * max(1.0, np.abs(want).max()))
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(v, plain_state[k], rtol=1e-6)


def test_sequential_keeps_hooks_and_overridden_forwards():
    calls = []

    class Shifted(nn.BatchNorm2d):
        def forward(self, x):
            calls.append("shifted")
            return super().forward(x) + 1.0

    x = mg.tensor(np.random.default_rng(9).standard_normal((2, 3, 4, 4)).astype(np.float32))
    model = nn.Sequential(Shifted(3), nn.ReLU())
    np.testing.assert_allclose(model(x).numpy(), F.relu(model[0](x)).numpy(), rtol=1e-6)
    assert calls == ["shifted", "shifted"]
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU())
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(float(o.numpy().min())))
    model(x)
    assert seen == [0.0]
    assert layers.can_fuse_bn_relu(nn.BatchNorm2d(3), nn.ReLU())
    assert not layers.can_fuse_bn_relu(nn.BatchNorm2d(3), nn.LeakyReLU())


@pytest.mark.parametrize("want_masked", [False, True])
def test_channels_last_backward_same_for_either_gradient_layout(want_masked):
    """x channels-last: gy channels-last is masked inside the batch-norm passes, gy NCHW (as a
    max-pool's backward gives) while it is transposed; the results are the same."""
    rng = np.random.default_rng(10)
    x = _cl(rng.standard_normal((3, 5, 4, 6)).astype(np.float32))
    gamma = rng.uniform(0.5, 1.5, 5).astype(np.float32)
    beta = rng.standard_normal(5).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    y, mean, _, invstd = cpu_norm.batch_norm_train(x, gamma, beta, EPS, True, None)
    got_cl = cpu_norm.batch_norm_relu_backward(_cl(gy), y, x, gamma, mean, invstd, want_masked)
    got_nchw = cpu_norm.batch_norm_relu_backward(gy, y, x, gamma, mean, invstd, want_masked)
    assert cpu_norm._is_cl(got_cl[0]) and cpu_norm._is_cl(got_nchw[0])
    for a, b in zip(got_cl[:3], got_nchw[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if want_masked:
        np.testing.assert_array_equal(got_cl[3], np.where(y > 0, gy, 0))
        np.testing.assert_array_equal(got_nchw[3], np.where(y > 0, gy, 0))
    else:
        assert got_cl[3] is None and got_nchw[3] is None
    _, egx, egg, egb, _ = _reference(x, gamma, beta, None, gy)
    for a, e in zip(got_nchw[:3], (egx, egg, egb)):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)
