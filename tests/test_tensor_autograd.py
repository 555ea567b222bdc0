"""Tensor basics and the autodiff engine: accumulation, no_grad, graph freeing, errors."""

import gc
import weakref

import numpy as np
import pytest

import minigrad as mg
from minigrad import backend
from minigrad.cpu.backend import CPUBackend


class _OtherDevice(CPUBackend):
    name = "other"


backend.register("other", _OtherDevice)


def test_creation_dtype_and_properties():
    x = mg.tensor([[1, 2], [3, 4]])
    assert x.dtype == mg.int64 and x.shape == (2, 2) and x.device == "cpu"
    y = mg.tensor([1.0, 2.0], requires_grad=True)
    assert y.dtype == mg.float32 and y.requires_grad and y.grad is None
    assert mg.tensor(np.zeros(3)).dtype == mg.float64
    assert mg.zeros(2, 3).shape == (2, 3) and mg.ones((4,)).numpy().sum() == 4
    assert mg.tensor(3.5).item() == 3.5
    assert mg.arange(5).dtype == mg.int64
    with pytest.raises(TypeError, match="floating"):
        mg.tensor([1, 2], requires_grad=True)
    with pytest.raises(ValueError, match="one element"):
        mg.zeros(2).item()


def test_factories_follow_tensor_dtype_rules_and_own_their_data():
    assert mg.full((2,), 3, dtype=np.int32).dtype == mg.int64
    assert mg.ones(2, dtype=np.float16).dtype == mg.float32
    assert mg.zeros(2, dtype=np.float64).dtype == mg.float64
    a, b = mg.ones(3, requires_grad=True), mg.ones(3)
    assert a.requires_grad and not b.requires_grad
    assert not np.shares_memory(a.data, b.data)
    with pytest.raises(TypeError, match="floating"):
        mg.zeros(2, dtype=np.int64, requires_grad=True)


def test_manual_seed_reproducible():
    mg.manual_seed(3)
    a = mg.randn(4).numpy()
    mg.manual_seed(3)
    np.testing.assert_array_equal(a, mg.randn(4).numpy())


def test_gradients_accumulate_and_detach():
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [5.0, 7.0])
    d = x.detach()
    assert not d.requires_grad and d.grad is None
    x.grad = None
    (x + x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 2.0])


def test_shared_subexpression_gradient():
    x = mg.tensor([2.0], requires_grad=True, dtype=mg.float64)
    y = x * x
    z = y * y + y  # x^4 + x^2
    z.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [4 * 8 + 2 * 2])


def test_thousand_layer_chain_has_no_recursion_limit():
    x = mg.tensor([1.0], requires_grad=True, dtype=mg.float64)
    y = x
    for _ in range(3000):
        y = y * 1.001
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.001 ** 3000])


def test_no_grad():
    x = mg.tensor([1.0], requires_grad=True)
    with mg.no_grad():
        y = x * 2
        assert not mg.is_grad_enabled()
    assert not y.requires_grad and mg.is_grad_enabled()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_and_enable_grad_nest_and_restore_on_errors():
    x = mg.tensor([1.0], requires_grad=True)
    with mg.no_grad():
        with mg.enable_grad():
            assert mg.is_grad_enabled() and (x * 2).requires_grad
        assert not mg.is_grad_enabled()
        with pytest.raises(ZeroDivisionError):
            with mg.enable_grad():
                1 / 0
        assert not mg.is_grad_enabled()
    assert mg.is_grad_enabled()


def test_no_grad_as_a_decorator_of_a_recursive_function():
    @mg.no_grad()
    def depth(n):
        assert not mg.is_grad_enabled()
        return 0 if n == 0 else 1 + depth(n - 1)

    @mg.enable_grad()
    def with_grad():
        return mg.is_grad_enabled()

    assert depth(3) == 3 and mg.is_grad_enabled()
    with mg.no_grad():
        assert with_grad() and not mg.is_grad_enabled()


class _SeesGradMode(mg.Function):
    """Identity that records whether graph recording was on in its backward."""

    seen = []

    def forward(self, x):
        return x

    def backward(self, g):
        _SeesGradMode.seen.append(mg.is_grad_enabled())
        if g.size == 0:
            raise ValueError("empty gradient")
        return g


def test_backward_runs_without_recording_and_restores_the_mode():
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    _SeesGradMode.seen.clear()
    _SeesGradMode.apply(x).sum().backward()
    assert _SeesGradMode.seen == [False] and mg.is_grad_enabled()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0])
    empty = mg.tensor(np.zeros(0), requires_grad=True)
    with pytest.raises(ValueError, match="empty gradient"):
        _SeesGradMode.apply(empty).sum().backward()
    assert mg.is_grad_enabled()
    with mg.no_grad():
        with mg.enable_grad():
            _SeesGradMode.apply(x).sum().backward()
        assert not mg.is_grad_enabled()


def test_numel_counts_elements():
    assert mg.tensor(np.zeros((2, 3, 4))).numel() == 24
    assert mg.tensor(np.zeros((0, 3))).numel() == 0
    assert mg.tensor(1.5).numel() == 1


def test_graph_is_freed_after_backward():
    x = mg.tensor(np.ones(1000), requires_grad=True)
    hidden = x * 2
    ref = weakref.ref(hidden)
    loss = (hidden.exp() * 3).sum()
    del hidden
    gc.collect()
    assert ref() is not None  # still held by the graph
    loss.backward()
    gc.collect()
    assert ref() is None
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_retain_graph_allows_second_backward():
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [4.0, 8.0])


def test_backward_non_scalar_needs_gradient():
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match=r"scalar output, got shape \(2,\)"):
        y.backward()
    y.backward(mg.tensor([1.0, 10.0]))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 20.0])
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        (x * 2).backward(mg.tensor([1.0, 2.0, 3.0]))


def test_ops_between_devices_raise():
    a = mg.tensor([1.0, 2.0])
    b = a.to("other")
    assert b.device == "other"
    with pytest.raises(ValueError, match=r"different devices.*cpu.*other"):
        a + b
    with pytest.raises(ValueError, match="different devices"):
        mg.matmul(mg.zeros(2, 2), mg.zeros(2, 2).to("other"))


def test_to_device_is_differentiable():
    a = mg.tensor([1.0, 2.0], requires_grad=True)
    (a.to("other") * 3).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), [3.0, 3.0])
    with pytest.raises(ValueError, match="unknown device 'nope'"):
        a.to("nope")


def test_dtype_conversion_and_repr():
    a = mg.tensor([1.5, 2.5], requires_grad=True)
    b = a.double()
    assert b.dtype == mg.float64
    assert "grad_fn=Cast" in repr(b)
    (b * 2).sum().backward()
    assert a.grad.dtype == mg.float32
    assert "requires_grad=True" in repr(a)


def test_detect_anomaly_names_the_op():
    x = mg.tensor([1.0, 0.0], requires_grad=True)
    with mg.detect_anomaly():
        with pytest.raises(mg.AnomalyError, match="forward of Unary"):
            mg.log(x - 1.0)
        y = mg.sqrt(x)  # finite forward, infinite gradient at 0
        with pytest.raises(mg.AnomalyError, match="backward of Unary"):
            y.sum().backward()
    z = mg.log(x)  # outside anomaly mode nothing is checked
    assert not np.isfinite(z.numpy()).all()
