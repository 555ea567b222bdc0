"""Layer norm as one backend call each way (ops.norm.LayerNorm; CPU kernels in
minigrad/cpu/norm.py, the composed Backend default for other devices): against float64
references, with and without weight and bias, one value per row, many rows on two threads,
non-contiguous input, and the composed fallback for mixed dtypes."""

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn.functional as F
from gradcheck import check_grad
from minigrad.backend import Backend
from minigrad.cpu.backend import CPUBackend


def reference(x, w, b, g, eps=1e-5):
    """(y, gx, gw, gb) in float64 for 2-D x (rows, D)."""
    x, g = x.astype(np.float64), g.astype(np.float64)
    w = np.ones(x.shape[1]) if w is None else w.astype(np.float64)
    m = x.mean(1, keepdims=True)
    rstd = 1 / np.sqrt(((x - m) ** 2).mean(1, keepdims=True) + eps)
    xhat = (x - m) * rstd
    y = xhat * w + (0 if b is None else b.astype(np.float64))
    gh = g * w
    gx = rstd * (gh - gh.mean(1, keepdims=True) - xhat * (gh * xhat).mean(1, keepdims=True))
    return y, gx, (g * xhat).sum(0), g.sum(0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, D", [(4097, 256), (3, 1), (1, 7), (65, 33)])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_kernels_match_float64(dtype, rows, D, affine):
    rng = np.random.default_rng(rows + D)
    x = (rng.standard_normal((rows, D)) * 3 + 2).astype(dtype)
    g = rng.standard_normal((rows, D)).astype(dtype)
    w = rng.standard_normal(D).astype(dtype) if affine in ("both", "weight") else None
    b = rng.standard_normal(D).astype(dtype) if affine in ("both", "bias") else None
    be = CPUBackend()
    y, mean, rstd = be.layer_norm(x, w, b, 1e-5)
    gx, gw, gb = be.layer_norm_backward(g, x, w, mean, rstd)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for got, want in zip((y, gx, gw, gb), reference(x, w, b, g)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **tol)
    # the composed default gives the same values (to its float32 sums' rounding over 4097 rows)
    yd, md, rd = Backend.layer_norm(be, x, w, b, 1e-5)
    np.testing.assert_allclose(yd, y, **tol)
    loose = dict(rtol=3e-4, atol=3e-4) if dtype == np.float32 else tol
    for got, want in zip(Backend.layer_norm_backward(be, g, x, w, md, rd), (gx, gw, gb)):
        np.testing.assert_allclose(got, want, **loose)


@pytest.mark.parametrize("norm", [(6,), (4, 6)])
def test_gradients_by_central_differences(norm):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 6)) * 2
    w, b = rng.standard_normal(norm), rng.standard_normal(norm)
    check_grad(lambda a, c, d: F.layer_norm(a, norm, c, d), [x, w, b])
    check_grad(lambda a, d: F.layer_norm(a, norm, None, d), [x, b])
    check_grad(lambda a: F.layer_norm(a, norm), [x[:, ::-1, :]])


def test_non_contiguous_input_and_module():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 16, 5)).astype(np.float32)
    xt = mg.tensor(x, requires_grad=True)
    m = mg.nn.LayerNorm(8)
    y = m(xt.permute(1, 2, 0))            # (16, 5, 8), not contiguous
    y.backward(mg.ones(y.shape))
    xv = x.transpose(1, 2, 0).reshape(-1, 8)
    want_y, want_gx, want_gw, want_gb = reference(xv, None, None, np.ones_like(xv))
    np.testing.assert_allclose(y.numpy().reshape(-1, 8), want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xt.grad.numpy().transpose(1, 2, 0).reshape(-1, 8), want_gx,
                               atol=1e-5)
    np.testing.assert_allclose(m.weight.grad.numpy(), want_gw, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(m.bias.grad.numpy(), want_gb, rtol=1e-6)


def test_mixed_dtypes_use_the_composed_ops():
    """float32 input with a float64 weight promotes as the elementwise ops do."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    w = rng.standard_normal(4)
    y = F.layer_norm(mg.tensor(x), 4, mg.tensor(w))
    assert y.dtype == np.float64
    np.testing.assert_allclose(y.numpy(), reference(x, w, None, x)[0], rtol=1e-5, atol=1e-5)
