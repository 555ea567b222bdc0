"""A leaf's ``.grad`` is its own array: changing it in place (as gradient clipping does)
changes nothing else.

A leaf takes over the gradient array a backward made for it when no other object refers to
that array (autograd.TAKE_OVER_GRADIENTS, as PyTorch does), and copies it otherwise.  Most
tests build a case where a gradient array is, or could be, shared: passed through to two
inputs, two views of one array, a view of the upstream gradient, the user's
``backward(gradient)``, an array the node keeps; the last ones check that an unshared
gradient is indeed kept without a copy.
"""

import weakref

import numpy as np
import pytest

from minigrad import autograd

import minigrad as mg
import minigrad.nn.functional as F
from minigrad.autograd import Function


def leaf(*shape):
    return mg.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32),
                     requires_grad=True)


def test_gradient_is_correct_and_writable():
    x = leaf(3, 4)
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full((3, 4), 3.0, np.float32))
    x.grad.data[...] = 0
    assert x.grad.numpy().sum() == 0


def test_add_of_two_leaves_gives_separate_arrays():
    a, b = leaf(2, 3), leaf(2, 3)
    ((a + b) * 2.0).sum().backward()  # add passes its (fresh) upstream gradient to both
    assert not np.shares_memory(a.grad.data, b.grad.data)
    a.grad.data *= 5
    np.testing.assert_array_equal(b.grad.numpy(), np.full((2, 3), 2.0, np.float32))


class _TwoViews(Function):
    """a + b whose backward returns two different view objects of the same gradient."""

    def forward(self, a, b):
        return a + b

    def backward(self, grad):
        return grad.reshape(grad.shape), grad.reshape(grad.shape)


def test_two_views_of_one_gradient_are_copied():
    a, b = leaf(2, 3), leaf(2, 3)
    (_TwoViews.apply(a, b) * 2.0).sum().backward()
    assert not np.shares_memory(a.grad.data, b.grad.data)


def test_same_leaf_twice_accumulates():
    x = leaf(4)
    (x + x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full(4, 2.0, np.float32))
    y = leaf(4)
    (y * y).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), 2 * y.numpy(), rtol=1e-6)


def test_view_of_upstream_gradient_is_copied():
    x, z = leaf(2, 6), leaf(3, 4)
    out = x.reshape(3, 4) + z  # reshape's backward returns a view of add's gradient
    out.backward(mg.tensor(np.ones((3, 4), np.float32)))
    assert not np.shares_memory(x.grad.data, z.grad.data)
    x.grad.data[...] = 7
    np.testing.assert_array_equal(z.grad.numpy(), np.ones((3, 4), np.float32))


def test_user_gradient_is_never_kept():
    x = leaf(5)
    g = np.arange(5, dtype=np.float32)
    gt = mg.tensor(g)
    x.backward(gt)
    assert not np.shares_memory(x.grad.data, gt.data)
    gt.data[...] = -1
    np.testing.assert_array_equal(x.grad.numpy(), np.arange(5, dtype=np.float32))


def test_user_gradient_is_read_not_written():
    """backward(gradient) hands the caller's array to the graph without a copy: no backward
    may write into it, and leaves reached through views of it must still own their grads."""
    rng = np.random.default_rng(1)
    x = mg.tensor(rng.standard_normal((2, 3, 8, 8)).astype(np.float32), requires_grad=True)
    w = mg.tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), requires_grad=True)
    z = leaf(2, 4, 4, 4)
    out = F.max_pool2d(F.relu(mg.conv2d(x, w, padding=1)), 2) + z
    g = rng.standard_normal(out.shape).astype(np.float32)
    before = g.copy()
    gt = mg.tensor(g)
    out.backward(gt)
    np.testing.assert_array_equal(gt.numpy(), before)
    assert not np.shares_memory(z.grad.data, gt.data)
    y = leaf(2, 4, 4, 4)
    (y.reshape(8, 16) * 1.0).reshape(2, 4, 4, 4).backward(gt)
    (y.reshape(8, 16) * 1.0).reshape(2, 4, 4, 4).backward(gt)
    np.testing.assert_array_equal(y.grad.numpy(), 2 * before)
    np.testing.assert_array_equal(gt.numpy(), before)


class _ReturnsSaved(Function):
    """Returns an array it saved as the gradient (as a custom op might)."""

    def forward(self, x):
        self.k = np.full(x.shape, 2.0, x.dtype)
        self.save(self.k)
        return x * 2

    def backward(self, grad):
        return self.k


class _ReturnsAttribute(_ReturnsSaved):
    def forward(self, x):
        out = super().forward(x)
        self.save()
        return out


def test_array_kept_by_the_node_is_copied():
    for op in (_ReturnsSaved, _ReturnsAttribute):
        x = leaf(3)
        node_out = op.apply(x)
        fn = node_out._ctx
        k = fn.k
        node_out.sum().backward()
        assert not np.shares_memory(x.grad.data, k)


def test_retained_graph_keeps_copies():
    x = leaf(3)
    y = x * 2.0
    y.sum().backward(retain_graph=True)
    first = x.grad.numpy().copy()
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2 * first)


def test_retained_nonleaf_and_leaf_do_not_share():
    x = leaf(3)
    y = x * 2.0
    y.retain_grad()
    (y + 0.0).sum().backward()
    x.grad.data[...] = 100
    np.testing.assert_array_equal(y.grad.numpy(), np.ones(3, np.float32))


def test_dtype_change_still_converts():
    x = mg.tensor(np.ones(3, np.float64), requires_grad=True)
    (x.float() * 2.0).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_array_equal(x.grad.numpy(), np.full(3, 2.0))


class _FreshGradient(Function):
    """Identity whose backward returns a new array (or a view of one), remembered weakly."""

    made = []

    def forward(self, x, kind):
        self.kind = kind
        return x.copy()

    def backward(self, grad):
        if self.kind == "array":
            g = grad * 2
        elif self.kind == "view of a temporary":
            g = (grad * 2).reshape(-1).reshape(grad.shape)
        else:                          # "float64": another dtype than the leaf's
            g = grad.astype(np.float64) * 2
        _FreshGradient.made.append(weakref.ref(g))
        return g, None


@pytest.mark.parametrize("kind", ["array", "view of a temporary"])
def test_unshared_gradient_is_kept_without_a_copy(kind):
    x = leaf(3, 4)
    _FreshGradient.made.clear()
    _FreshGradient.apply(x, kind).sum().backward()
    assert x.grad.data is _FreshGradient.made[0]()
    np.testing.assert_array_equal(x.grad.numpy(), np.full((3, 4), 2.0, np.float32))


def test_gradient_of_another_dtype_is_converted():
    x = leaf(3, 4)
    _FreshGradient.apply(x, "float64").sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad.numpy(), np.full((3, 4), 2.0, np.float32))


class _ViewOfKept(Function):
    """Returns a view of an array it keeps as an attribute."""

    def forward(self, x):
        self.k = np.full(x.size, 2.0, x.dtype)
        return x * 2

    def backward(self, grad):
        return self.k.reshape(grad.shape)


def test_view_of_an_array_held_elsewhere_is_copied():
    x = leaf(2, 3)
    out = _ViewOfKept.apply(x)
    k = out._ctx.k
    out.sum().backward()
    assert not np.shares_memory(x.grad.data, k)


def test_switch_off_copies_every_gradient(monkeypatch):
    monkeypatch.setattr(autograd, "TAKE_OVER_GRADIENTS", False)
    x = leaf(3, 4)
    _FreshGradient.made.clear()
    _FreshGradient.apply(x, "array").sum().backward()
    assert x.grad.data is not _FreshGradient.made[0]()
    np.testing.assert_array_equal(x.grad.numpy(), np.full((3, 4), 2.0, np.float32))


@pytest.mark.parametrize("shape,layout", [((5,), "dense"), ((2, 3, 8, 8), "dense"),
                                          ((4, 16, 32, 32), "dense"),
                                          ((4, 16, 32, 32), "channels-last")])
def test_later_gradients_are_added_in_place(shape, layout):
    """The second backward adds into the array .grad already holds (as PyTorch's
    accumulation does): same array object, the sum of both gradients, its layout kept.
    (4, 16, 32, 32) takes the two-thread kernel, the small shapes NumPy's add."""
    rng = np.random.default_rng(5)
    data = rng.standard_normal(shape).astype(np.float32)
    if layout == "channels-last":
        data = np.ascontiguousarray(data.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    x = mg.tensor(data, requires_grad=True)
    w1 = rng.standard_normal(shape).astype(np.float32)
    w2 = rng.standard_normal(shape).astype(np.float32)
    (x * mg.tensor(w1)).sum().backward()
    first = x.grad.data
    (x * mg.tensor(w2)).sum().backward()
    assert x.grad.data is first
    np.testing.assert_allclose(x.grad.numpy(), w1 + w2, rtol=1e-6, atol=1e-6)


def test_gradient_arrays_the_user_set_are_not_written():
    """A .grad tensor, or .grad storage, the user assigned gets a new sum: the user's
    array keeps its values."""
    x = leaf(3, 4)
    mine = np.full((3, 4), 5.0, np.float32)
    x.grad = mg.tensor(mine)
    x.grad.data = mine
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(mine, np.full((3, 4), 5.0, np.float32))
    np.testing.assert_array_equal(x.grad.numpy(), np.full((3, 4), 7.0, np.float32))
    # autograd made that sum: the next gradient goes into it in place
    made = x.grad.data
    (x * 1.0).sum().backward()
    assert x.grad.data is made
    np.testing.assert_array_equal(made, np.full((3, 4), 8.0, np.float32))
    # storage swapped into autograd's .grad tensor is not written either
    other = np.zeros((3, 4), np.float32)
    x.grad.data = other
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(other, np.zeros((3, 4), np.float32))
    np.testing.assert_array_equal(x.grad.numpy(), np.full((3, 4), 2.0, np.float32))
    # nor another leaf's gradient tensor, assigned to this one
    y = leaf(3, 4)
    (y * 1.0).sum().backward()
    y_array = y.grad.data
    x.grad = y.grad
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(y_array, np.ones((3, 4), np.float32))
    np.testing.assert_array_equal(x.grad.numpy(), np.full((3, 4), 3.0, np.float32))


def test_cpu_add_into_refuses_what_it_cannot_do_in_place():
    from minigrad.cpu.backend import CPUBackend

    be = CPUBackend()
    a = np.ones(6, np.float32)
    assert not be.add_into_(a, a)                                  # shared memory
    assert not be.add_into_(a[:4], a[2:])                          # overlapping views
    assert not be.add_into_(a, np.ones(6, np.float64))             # dtypes differ
    assert not be.add_into_(a, np.ones(5, np.float32))             # shapes differ
    frozen = np.ones(6, np.float32)
    frozen.flags.writeable = False
    assert not be.add_into_(frozen, np.ones(6, np.float32))
    assert be.add_into_(a, np.full(6, 2.0, np.float32))
    np.testing.assert_array_equal(a, np.full(6, 3.0, np.float32))
