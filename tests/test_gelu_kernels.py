"""GELU's CPU kernels (minigrad/cpu/gelu.py): float32 through the fitted erfc and the
vectorised exp, float64 through libm, against float64 references; layouts; special values;
the backends' composed default (Backend.gelu) against the kernels."""

import math

import numpy as np
import pytest
import scipy.special

import minigrad as mg
from minigrad.backend import Backend
from minigrad.cpu._jit import SERIAL_BELOW
from minigrad.cpu.backend import CPUBackend

K = math.sqrt(2 / math.pi)


def tanh_terms(x):
    """(1 + tanh(u), 1 - tanh(u)^2) of the tanh form's u, in float64 without cancellation."""
    u = K * (x + 0.044715 * x ** 3)
    e = np.exp(-2 * np.abs(u))
    return np.where(u < 0, 2 * e, 2) / (1 + e), 4 * e / (1 + e) ** 2


def ref_forward(x, approximate):
    x = x.astype(np.float64)
    if approximate == "tanh":
        return 0.5 * x * tanh_terms(x)[0]
    return x * 0.5 * scipy.special.erfc(-x / math.sqrt(2))


def ref_grad(x, approximate):
    x = x.astype(np.float64)
    if approximate == "tanh":
        one_plus, sech2 = tanh_terms(x)
        return 0.5 * one_plus + 0.5 * x * sech2 * K * (1 + 3 * 0.044715 * x * x)
    return 0.5 * scipy.special.erfc(-x / math.sqrt(2)) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def inputs(n, seed=0):
    """A sweep of [-30, 30] and normal samples: n values (float32)."""
    rng = np.random.default_rng(seed)
    sweep = np.linspace(-30, 30, n // 2)
    return np.concatenate([sweep, rng.standard_normal(n - n // 2) * 3]).astype(np.float32)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("n", [1000, SERIAL_BELOW + 1001])    # serial and parallel kernels
def test_float32_within_a_few_roundings(approximate, n):
    x = inputs(n)
    g = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    be = CPUBackend()
    y = be.gelu(x, approximate)
    want = ref_forward(x, approximate)
    assert y.dtype == np.float32
    # within 2 float32 roundings of the value (1 ulp = 6e-8 relative), or 1e-37 absolute
    np.testing.assert_allclose(y, want, rtol=2.5e-7, atol=1e-37)
    gx = be.gelu_backward(x, g, approximate)
    assert gx.dtype == np.float32
    # the gradient crosses zero (near x = -0.75): absolute error against |g| * 1e-6
    np.testing.assert_allclose(gx, g * ref_grad(x, approximate), rtol=1e-6,
                               atol=2e-7 * np.abs(g).max())


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_float64_is_exact(approximate):
    x = inputs(3000).astype(np.float64) + 1e-3
    g = np.random.default_rng(2).standard_normal(x.size)
    be = CPUBackend()
    # libm's erfc far out in the tail (values near 1e-196) is good to about 2e-13
    np.testing.assert_allclose(be.gelu(x, approximate), ref_forward(x, approximate),
                               rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(be.gelu_backward(x, g, approximate),
                               g * ref_grad(x, approximate), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_special_values_as_pytorch(dtype, approximate):
    """x * Phi(x) at +-inf: inf and NaN (-inf * 0); NaN stays NaN; -0 and tiny values."""
    x = np.array([np.inf, -np.inf, np.nan, -0.0, 1e-30, -40.0], dtype)
    y = CPUBackend().gelu(x, approximate)
    assert y[0] == np.inf and np.isnan(y[1]) and np.isnan(y[2])
    assert y[3] == 0 and y[4] == pytest.approx(5e-31, rel=1e-6) and y[5] == 0
    gx = CPUBackend().gelu_backward(x, np.ones_like(x), approximate)
    assert np.isnan(gx[2]) and gx[3] == 0.5 and gx[5] == 0


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_layouts(approximate):
    """Channels-last input keeps its storage; non-contiguous x and g are copied first; a
    gradient in another layout than x still matches."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 6, 7)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    be = CPUBackend()
    want, gwant = ref_forward(x, approximate), g * ref_grad(x, approximate)
    cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    y = be.gelu(cl, approximate)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    np.testing.assert_allclose(y, want, rtol=3e-7, atol=1e-30)
    strided = np.pad(x, ((0, 0), (0, 0), (0, 0), (0, 3)))[..., :7]
    for xv, gv in ((strided, g), (cl, g), (x, g[:, :, ::-1, :][:, :, ::-1, :])):
        np.testing.assert_allclose(be.gelu(xv, approximate), want, rtol=3e-7, atol=1e-30)
        np.testing.assert_allclose(be.gelu_backward(xv, gv, approximate), gwant, rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_composed_default_matches_the_kernels(dtype, approximate):
    """Backend.gelu / gelu_backward (what a device without its own kernel runs, e.g. CUDA)
    computed with the CPU backend's elementwise methods give the kernels' values."""
    x = inputs(2000).astype(dtype)
    g = np.random.default_rng(4).standard_normal(x.size).astype(dtype)
    be = CPUBackend()
    # the composition rounds after each of its float32 passes
    tol = dict(rtol=2e-6, atol=3e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(Backend.gelu(be, x, approximate), be.gelu(x, approximate), **tol)
    np.testing.assert_allclose(Backend.gelu_backward(be, x, g, approximate),
                               be.gelu_backward(x, g, approximate), **tol)


def test_integer_input_and_module():
    out = mg.nn.functional.gelu(mg.tensor(np.array([-1, 0, 2], np.int64)))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), ref_forward(np.array([-1.0, 0.0, 2.0]), "none"),
                               rtol=1e-6)
    x = mg.tensor(inputs(500), requires_grad=True)
    y = mg.nn.GELU("tanh")(x)
    y.backward(mg.ones(y.shape))
    np.testing.assert_allclose(x.grad.numpy(), ref_grad(x.numpy(), "tanh"), rtol=1e-6,
                               atol=1e-6)
