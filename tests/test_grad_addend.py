"""Gradient addends: a Function listing ``grad_addend_inputs`` (Conv2d) receives the gradient
already gathered for an input and returns its own gradient plus that addend.

The sums must equal the plain ones, in every layout the addend can come in (the CPU conv
folds a channels-last addend into its dX copy-out and adds any other layout afterwards),
and the addend, which may be another node's array or a leaf's ``.grad``, is only read.
"""

import numpy as np
import pytest

import minigrad as mg
from minigrad.autograd import Function
from minigrad.ops.conv import Conv2d

import reference


def _cl(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


# (C, K, H, kernel, stride, padding): im2col with the fused copy-out (strided 1x1, 3x3
# stride 2, 3x3 stride 1 with few channels), Winograd 3x3 stride 1 (whole-batch and
# blocked kernels, both with the fused copy-out), the direct 1x1 GEMM and the tiny
# direct kernels
SHAPES = [(8, 16, 9, 1, 2, 0), (8, 16, 9, 3, 2, 1), (8, 16, 8, 3, 1, 1), (16, 16, 8, 3, 1, 1),
          (16, 16, 24, 3, 1, 1), (8, 16, 8, 1, 1, 0), (1, 2, 5, 3, 1, 1), (3, 8, 7, 3, 1, 1),
          (3, 16, 32, 3, 1, 1)]   # the last: conv3x3_rows (NCHW) and conv3x3_cl (channels-last)


def _dx(x, w, gy, stride, padding):
    return reference.conv2d_grads(x, w, gy, (stride, stride), (padding, padding), (1, 1))[0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_leaf_grad_accumulates_through_conv(shape, layout, dtype):
    C, K, H, k, s, p = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, C, H, H)).astype(dtype)
    w = rng.standard_normal((K, C, k, k)).astype(dtype)
    OH = (H + 2 * p - k) // s + 1
    gy = rng.standard_normal((2, K, OH, OH)).astype(dtype)
    if layout == "cl":
        x = _cl(x)
    xm, wm = mg.tensor(x, requires_grad=True), mg.tensor(w, requires_grad=True)
    mg.conv2d(xm, wm, stride=s, padding=p).backward(mg.tensor(gy))
    held = xm.grad
    first = held.numpy().copy()
    mg.conv2d(xm, wm, stride=s, padding=p).backward(mg.tensor(2 * gy))
    ref = _dx(x.astype(np.float64), w.astype(np.float64), gy.astype(np.float64), s, p)
    tol = 1e-4 if dtype == np.float32 else 1e-10   # relative to the largest value
    np.testing.assert_allclose(first, ref, rtol=tol, atol=tol * np.abs(ref).max())
    np.testing.assert_allclose(xm.grad.numpy(), 3 * ref, rtol=tol, atol=3 * tol * np.abs(ref).max())
    assert xm.grad is held and xm.grad.dtype == dtype
    gw_ref = 3 * reference.conv2d_grads(x.astype(np.float64), w.astype(np.float64),
                                        gy.astype(np.float64), (s, s), (p, p), (1, 1))[1]
    np.testing.assert_allclose(wm.grad.numpy(), gw_ref, rtol=tol, atol=tol * np.abs(gw_ref).max())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("other_layout", ["nchw", "cl"])
def test_two_consumers_sum_and_the_addend_is_only_read(shape, other_layout, monkeypatch):
    """x feeds a conv and an op whose gradient reaches x first; that gradient (kept by
    the test) becomes the conv's addend and must come back unchanged."""
    C, K, H, k, s, p = shape
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, C, H, H))
    w = rng.standard_normal((K, C, k, k))
    OH = (H + 2 * p - k) // s + 1
    gy = rng.standard_normal((2, K, OH, OH))
    other = rng.standard_normal(x.shape)
    if other_layout == "cl":
        other = _cl(other)
    kept = other.copy()

    xm = mg.tensor(x, requires_grad=True)
    seen = _addends_seen(Conv2d, monkeypatch, xm, other, gy,
                         lambda t: mg.conv2d(t, mg.tensor(w), stride=s, padding=p))
    np.testing.assert_allclose(xm.grad.numpy(), _dx(x, w, gy, s, p) + kept, rtol=1e-10, atol=1e-10)
    assert len(seen) == 1 and seen[0] is other
    np.testing.assert_array_equal(other, kept)


def _addends_seen(op, monkeypatch, xm, other, gy, layer, hand_over=None, record=None):
    """Backward of sum(layer(xm) * gy) + sum(xm), where the second term's gradient reaches
    xm first as the array ``other`` itself (not a copy; or what ``hand_over()`` returns):
    what ``record(node)`` gives for each ``op`` node's backward (default: its addend)."""

    class PassThrough(Function):
        """Identity in a (b only orders the graph) whose backward hands back ``other``."""

        def forward(self, a, b):
            return a

        def backward(self, grad):
            return (other if hand_over is None else hand_over()), None

    seen = []
    plain_backward = op.backward

    def recording_backward(self, grad):
        seen.append(self.grad_addends[0] if record is None else record(self))
        return plain_backward(self, grad)

    with monkeypatch.context() as patch:
        patch.setattr(op, "backward", recording_backward)
        y = layer(xm)
        z = PassThrough.apply(xm, y)   # z consumes y: its backward runs before the layer's
        ((y * mg.tensor(gy)).sum() + z.sum()).backward()
    return seen


def test_leaf_grad_assigned_by_the_user_is_only_read():
    """The sum replaces the .grad tensor's storage (as the plain accumulation does); the
    array the user assigned is not written."""
    x = mg.tensor(np.ones((1, 2, 4, 4)), requires_grad=True)
    w = mg.tensor(np.ones((3, 2, 3, 3)))
    assigned = np.full((1, 2, 4, 4), 5.0)
    x.grad = mg.tensor(assigned)
    x.grad.data = assigned
    mg.conv2d(x, w, padding=1).sum().backward()
    np.testing.assert_array_equal(assigned, np.full((1, 2, 4, 4), 5.0))
    expected = 5.0 + reference.conv2d_grads(np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3)),
                                            np.ones((1, 3, 4, 4)), (1, 1), (1, 1), (1, 1))[0]
    np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_same_input_twice_gets_one_addend():
    """A Function whose two inputs are the same tensor must not add that tensor's
    gathered gradient twice."""

    class Both(Function):
        grad_addend_inputs = (0, 1)

        def forward(self, a, b):
            return a + b

        def backward(self, grad):
            add = self.grad_addends
            return tuple(grad if a is None else grad + a for a in add)

    x = mg.tensor(np.ones(3), requires_grad=True)
    x.grad = mg.tensor(np.full(3, 10.0))
    Both.apply(x, x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full(3, 12.0))


def test_conv_without_addends_matches(monkeypatch):
    """The same graph with the addend protocol switched off gives the same gradients."""
    rng = np.random.default_rng(3)
    x = _cl(rng.standard_normal((2, 8, 9, 9)))
    w1, w2 = rng.standard_normal((16, 8, 3, 3)), rng.standard_normal((16, 8, 1, 1))

    def grads():
        xm = mg.tensor(x, requires_grad=True)
        a = mg.conv2d(xm, mg.tensor(w1), stride=2, padding=1)
        b = mg.conv2d(xm, mg.tensor(w2), stride=2)
        ((a * b).sum() + (xm * xm).sum()).backward()
        return xm.grad.numpy().copy()

    fused = grads()
    monkeypatch.setattr(Conv2d, "grad_addend_inputs", ())
    np.testing.assert_allclose(fused, grads(), rtol=1e-12, atol=1e-12)


def test_strided_1x1_conv_adds_into_the_leaf_grad_in_place():
    """An unpadded 1x1 conv adds its dX into the leaf's channels-last .grad storage at the
    pixels its stride reads (PyTorch also accumulates .grad in place); the other pixels
    keep their values."""
    rng = np.random.default_rng(5)
    x = _cl(rng.standard_normal((2, 8, 9, 9)).astype(np.float32))
    w = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)
    gy = rng.standard_normal((2, 16, 5, 5)).astype(np.float32)
    xm, wm = mg.tensor(x, requires_grad=True), mg.tensor(w)
    mg.conv2d(xm, wm, stride=2).backward(mg.tensor(gy))
    storage = xm.grad.data
    first = storage.copy()
    mg.conv2d(xm, wm, stride=2).backward(mg.tensor(gy))
    assert np.shares_memory(xm.grad.data, storage)
    np.testing.assert_allclose(xm.grad.numpy(), 2 * first, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(xm.grad.numpy()[:, :, 1::2], 0)


def test_read_only_leaf_grad_is_not_written():
    rng = np.random.default_rng(6)
    x = _cl(rng.standard_normal((2, 8, 9, 9)))
    w = rng.standard_normal((16, 8, 1, 1))
    gy = rng.standard_normal((2, 16, 5, 5))
    xm = mg.tensor(x, requires_grad=True)
    frozen = _cl(np.ones(x.shape))
    frozen.flags.writeable = False
    xm.grad = mg.tensor(np.ones(x.shape))
    xm.grad.data = frozen
    mg.conv2d(xm, mg.tensor(w), stride=2).backward(mg.tensor(gy))
    np.testing.assert_array_equal(frozen, 1.0)
    np.testing.assert_allclose(xm.grad.numpy(), 1.0 + _dx(x, w, gy, 2, 0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,axis", [((7, 13), 1), ((7, 13), 0), ((3, 5, 4), 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_adds_the_gathered_gradient(shape, axis, dtype):
    """log_softmax's backward folds x's gathered gradient (its leaf .grad, and a second
    consumer's gradient) into its row pass."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    y = x - np.log(np.exp(x).sum(axis=axis, keepdims=True))
    ref = gy - np.exp(y) * gy.sum(axis=axis, keepdims=True)
    xm = mg.tensor(x, requires_grad=True)
    mg.log_softmax(xm, axis).backward(mg.tensor(gy))
    mg.log_softmax(xm, axis).backward(mg.tensor(gy))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(xm.grad.numpy(), 2 * ref, rtol=tol, atol=tol)
    x2 = mg.tensor(x, requires_grad=True)
    out = (mg.log_softmax(x2, axis) * mg.tensor(gy)).sum() + (x2 * 3.0).sum()
    out.backward()
    np.testing.assert_allclose(x2.grad.numpy(), ref + 3.0, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["conv", "depthwise"])
def test_addend_sharing_memory_with_x_is_not_written_in_place(kind):
    """A gradient array that is also the conv's input (possible through the backends'
    backward functions' own arguments) is read, not updated in place."""
    from minigrad.cpu import conv, depthwise

    rng = np.random.default_rng(8)
    if kind == "conv":
        x = _cl(rng.standard_normal((2, 8, 9, 9)))
        w = rng.standard_normal((16, 8, 1, 1))
        gy = rng.standard_normal((2, 16, 5, 5))
        backward, conf, dx = conv.conv2d_backward, ((2, 2), (0, 0), (1, 1)), _dx
    else:
        x = rng.standard_normal((2, 3, 7, 7))
        w = rng.standard_normal((3, 1, 3, 3))
        gy = rng.standard_normal((2, 3, 7, 7))
        backward, conf, dx = depthwise.conv2d_backward, ((1, 1), (1, 1), (1, 1)), _depthwise_dx
    before = x.copy()
    gx, _, _ = backward(x, w, gy, *conf, True, True, False, gx_addend=x, addend_writable=True)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(gx, before + dx(before, w, gy, conf[0][0], conf[1][0]),
                               rtol=1e-12, atol=1e-12)


def _depthwise_dx(x, w, gy, stride, padding):
    """dX of a depthwise conv (w (C, 1, k, k)) through the reference with a block-diagonal
    weight."""
    C = x.shape[1]
    full = np.zeros((C, C) + w.shape[2:])
    for c in range(C):
        full[c, c] = w[c, 0]
    return _dx(x, full, gy, stride, padding)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depthwise_conv_adds_into_the_leaf_grad_in_place(stride, dtype):
    """Depthwise dX adds the leaf's .grad during its copy-out, into that storage (no separate
    pass over x's size), as the conv does; the sums match the reference."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 9, 9)).astype(dtype)
    w = rng.standard_normal((4, 1, 3, 3)).astype(dtype)
    OH = (9 + 2 - 3) // stride + 1
    gy = rng.standard_normal((2, 4, OH, OH)).astype(dtype)
    xm = mg.tensor(x, requires_grad=True)
    wm = mg.tensor(w, requires_grad=True)
    mg.conv2d(xm, wm, stride=stride, padding=1, groups=4).backward(mg.tensor(gy))
    storage = xm.grad.data
    mg.conv2d(xm, wm, stride=stride, padding=1, groups=4).backward(mg.tensor(2 * gy))
    ref = _depthwise_dx(x.astype(np.float64), w.astype(np.float64), gy.astype(np.float64),
                        stride, 1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(xm.grad.numpy(), 3 * ref, rtol=tol, atol=tol)
    assert xm.grad.data is storage


def test_depthwise_conv_second_consumer_addend_is_only_read(monkeypatch):
    """x feeds a depthwise conv and an op whose gradient reaches x first: that gradient is
    the depthwise conv's addend, comes back unchanged, and the sum is right; a channels-last
    addend (not foldable) is added afterwards."""
    from minigrad.ops.conv import DepthwiseConv2d

    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 4, 8, 8))
    w = rng.standard_normal((4, 1, 3, 3))
    gy = rng.standard_normal((2, 4, 8, 8))
    for other in (rng.standard_normal(x.shape), _cl(rng.standard_normal(x.shape))):
        kept = other.copy()
        xm = mg.tensor(x, requires_grad=True)
        seen = _addends_seen(DepthwiseConv2d, monkeypatch, xm, other, gy,
                             lambda t: mg.conv2d(t, mg.tensor(w), padding=1, groups=4))
        np.testing.assert_allclose(xm.grad.numpy(), _depthwise_dx(x, w, gy, 1, 1) + kept,
                                   rtol=1e-10, atol=1e-10)
        assert len(seen) == 1 and seen[0] is other
        np.testing.assert_array_equal(other, kept)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("groups", [1, "depthwise"])
def test_another_leafs_gradient_assigned_as_grad_is_only_read(shape, layout, groups):
    """``x.grad = other.grad`` shares autograd's gradient array of ``other``: a conv's
    backward into x must give x's .grad a new sum and leave that array alone (every conv
    path, float32, the dtype whose kernels fold in place).  The new sum is then autograd's:
    the next backward may add into it (the paths that fold in place do), never into the
    other leaf's array."""
    C, K, H, k, s, p = shape
    if groups == "depthwise":
        K, groups = C, C
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, C, H, H)).astype(np.float32)
    if layout == "cl":
        x = _cl(x)
    w = rng.standard_normal((K, C // groups, k, k)).astype(np.float32)
    OH = (H + 2 * p - k) // s + 1
    gy = rng.standard_normal((2, K, OH, OH)).astype(np.float32)
    other = mg.tensor(np.zeros(x.shape, np.float32), requires_grad=True)
    (other * 2.0).sum().backward()
    others_array = other.grad.data
    xm, wm = mg.tensor(x, requires_grad=True), mg.tensor(w)
    xm.grad = other.grad
    mg.conv2d(xm, wm, stride=s, padding=p, groups=groups).backward(mg.tensor(gy))
    np.testing.assert_array_equal(others_array, 2.0)
    xr = mg.tensor(x, requires_grad=True)
    mg.conv2d(xr, wm, stride=s, padding=p, groups=groups).backward(mg.tensor(gy))
    dx = xr.grad.numpy()
    np.testing.assert_allclose(xm.grad.numpy(), 2.0 + dx, rtol=1e-6, atol=1e-5)
    mg.conv2d(xm, wm, stride=s, padding=p, groups=groups).backward(mg.tensor(gy))
    np.testing.assert_array_equal(others_array, 2.0)
    np.testing.assert_allclose(xm.grad.numpy(), 2.0 + 2 * dx, rtol=1e-5, atol=1e-4)


def _writable_flags_seen(monkeypatch, keep_other):
    """Backward of sum(conv(x) * gy) + sum(x) where the second term's gradient reaches x
    first as a fresh array from a backward (kept by the test too when ``keep_other``): the
    conv's addends' writable flags, the arrays handed over, and what they were copied from."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 9, 9))
    w = rng.standard_normal((16, 8, 3, 3))
    gy = rng.standard_normal((2, 16, 9, 9))
    other = rng.standard_normal(x.shape)
    handed = []

    def fresh_copy():
        fresh = other.copy()
        if keep_other:
            handed.append(fresh)
        return fresh

    xm = mg.tensor(x, requires_grad=True)
    flags = _addends_seen(Conv2d, monkeypatch, xm, other, gy,
                          lambda t: mg.conv2d(t, mg.tensor(w), padding=1), hand_over=fresh_copy,
                          record=lambda node: node.grad_addend_writable[0])
    np.testing.assert_allclose(xm.grad.numpy(), _dx(x, w, gy, 1, 1) + other, rtol=1e-10,
                               atol=1e-10)
    return flags, handed, other


def test_pending_sum_nothing_else_holds_is_writable(monkeypatch):
    """A pending gradient only autograd refers to is handed over writable (the conv may add
    into it); switched off by PENDING_ADDENDS_WRITABLE, read-only."""
    from minigrad import autograd

    flags, _, _ = _writable_flags_seen(monkeypatch, keep_other=False)
    assert flags == [True]
    monkeypatch.setattr(autograd, "PENDING_ADDENDS_WRITABLE", False)
    flags, _, _ = _writable_flags_seen(monkeypatch, keep_other=False)
    assert flags == [False]


def test_pending_sum_held_elsewhere_is_only_read(monkeypatch):
    """A pending gradient another object refers to is read-only, and stays unchanged."""
    flags, handed, other = _writable_flags_seen(monkeypatch, keep_other=True)
    assert flags == [False]
    np.testing.assert_array_equal(handed[0], other)


def test_pending_sum_shared_by_two_inputs_reaches_only_one():
    """Add's backward hands one array to both of its inputs; a conv that later receives it as
    one input's addend (writable only once the other input's node has consumed it) must not
    change the other input's gradient."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4, 6, 6))
    w = rng.standard_normal((4, 4, 3, 3))
    a = mg.tensor(x, requires_grad=True)
    b = mg.tensor(x[:, ::-1].copy(), requires_grad=True)
    ha, hb = a * 1.0, b * 1.0
    out = ((ha + hb) * 2.0).sum() + mg.conv2d(ha, mg.tensor(w), padding=1).sum()
    out.backward()
    twos = np.full((2, 4, 6, 6), 2.0)
    gconv = reference.conv2d_grads(x, w, np.ones((2, 4, 6, 6)), (1, 1), (1, 1), (1, 1))[0]
    np.testing.assert_allclose(a.grad.numpy(), twos + gconv, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(b.grad.numpy(), twos)
