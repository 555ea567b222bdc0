"""conv2d and pooling through the public ops: autodiff wiring, gradients, and input errors.

The kernels themselves are tested exhaustively in test_cpu_conv_pool_kernels.py; here the
reference is a NumPy float64 implementation and central differences through ``mg.conv2d``.
"""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minigrad as mg
import reference
from gradcheck import check_grad


def ref_pool(x, k, s, p, mode):
    fn = reference.max_pool2d if mode == "max" else reference.avg_pool2d
    args = (x, k, s, p) if mode == "max" else (x, k, s, p, True)
    return fn(*args)[0]


@given(n=st.integers(1, 2), c=st.integers(1, 3), k=st.integers(1, 3), size=st.integers(3, 7),
       ks=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 2),
       dilation=st.integers(1, 2), bias=st.booleans(), seed=st.integers(0, 50))
def test_conv2d_forward_and_gradients(n, c, k, size, ks, stride, padding, dilation, bias, seed):
    if dilation * (ks - 1) + 1 > size + 2 * padding:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, size, size + 1))
    w = rng.standard_normal((k, c, ks, ks))
    b = rng.standard_normal(k)
    conf = dict(stride=stride, padding=padding, dilation=dilation)
    args = [x, w, b] if bias else [x, w]
    out = mg.conv2d(*[mg.tensor(a) for a in args], **conf).numpy()
    ref = reference.conv2d(x, w, b if bias else None, (stride,) * 2, (padding,) * 2, (dilation,) * 2)
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-9)
    check_grad(lambda *t: mg.conv2d(*t, **conf), args, seed, atol=1e-5, rtol=1e-4)


def test_conv2d_non_contiguous_input_and_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 2, 6)).transpose(2, 1, 3, 0)  # (2, 3, 6, 5) view
    w = rng.standard_normal((4, 3, 3, 3))
    ref = reference.conv2d(x, w, None, (1, 1), (1, 1), (1, 1))
    np.testing.assert_allclose(mg.conv2d(mg.tensor(x), mg.tensor(w), padding=1).numpy(), ref, rtol=1e-9)
    check_grad(lambda a, b: mg.conv2d(a, b, padding=1), [x, w], atol=1e-5, rtol=1e-4)
    out32 = mg.conv2d(mg.tensor(x.astype(np.float32)), mg.tensor(w.astype(np.float32)), padding=1)
    assert out32.dtype == mg.float32
    np.testing.assert_allclose(out32.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_conv2d_padding_same_and_valid():
    x = mg.randn(1, 2, 7, 7)
    w = mg.randn(3, 2, 3, 3)
    assert mg.conv2d(x, w, padding="same").shape == (1, 3, 7, 7)
    assert mg.conv2d(x, w, padding="valid").shape == (1, 3, 5, 5)
    assert mg.conv2d(x, mg.randn(3, 2, 5, 5), padding="same", dilation=2).shape == (1, 3, 7, 7)
    with pytest.raises(ValueError, match="not supported for strided"):
        mg.conv2d(x, w, padding="same", stride=2)


def test_conv2d_errors_name_shapes():
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\) has 3 channels.*\(4, 2, 3, 3\)"):
        mg.conv2d(mg.zeros(1, 3, 8, 8), mg.zeros(4, 2, 3, 3))
    with pytest.raises(ValueError, match="larger than the padded input"):
        mg.conv2d(mg.zeros(1, 1, 2, 2), mg.zeros(1, 1, 5, 5), padding=1)
    with pytest.raises(ValueError, match="4-D"):
        mg.conv2d(mg.zeros(3, 8, 8), mg.zeros(4, 3, 3, 3))
    with pytest.raises(TypeError, match="floating point"):
        mg.conv2d(mg.tensor(np.zeros((1, 1, 4, 4), dtype=np.int64)), mg.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"groups=2 must divide.*\(1, 3, 4, 4\)"):
        mg.conv2d(mg.zeros(1, 3, 4, 4), mg.zeros(2, 1, 3, 3), groups=2)
    with pytest.raises(ValueError, match=r"with groups=2 expects 4"):
        mg.conv2d(mg.zeros(1, 2, 4, 4), mg.zeros(2, 2, 3, 3), groups=2)
    with pytest.raises(ValueError, match="positive int"):
        mg.conv2d(mg.zeros(1, 2, 4, 4), mg.zeros(2, 2, 3, 3), groups=0)


def _block_diagonal(w, groups, c):
    """The (K, C, R, S) weight of ungrouped conv equal to a grouped one."""
    k, cg = w.shape[:2]
    full = np.zeros((k, c) + w.shape[2:])
    kg = k // groups
    for g in range(groups):
        full[g * kg:(g + 1) * kg, g * cg:(g + 1) * cg] = w[g * kg:(g + 1) * kg]
    return full


@given(groups=st.integers(1, 3), cg=st.integers(1, 2), kg=st.integers(1, 2), ks=st.integers(1, 3),
       stride=st.integers(1, 2), padding=st.integers(0, 1), bias=st.booleans(),
       seed=st.integers(0, 50))
def test_grouped_conv2d_matches_block_diagonal_weight(groups, cg, kg, ks, stride, padding, bias,
                                                      seed):
    rng = np.random.default_rng(seed)
    c, k = groups * cg, groups * kg
    x = rng.standard_normal((2, c, 5, 4))
    w = rng.standard_normal((k, cg, ks, ks))
    b = rng.standard_normal(k)
    conf = dict(stride=stride, padding=padding, groups=groups)
    args = [x, w, b] if bias else [x, w]
    out = mg.conv2d(*[mg.tensor(a) for a in args], **conf).numpy()
    ref = reference.conv2d(x, _block_diagonal(w, groups, c), b if bias else None, (stride,) * 2,
                           (padding,) * 2, (1, 1))
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-9)
    check_grad(lambda *t: mg.conv2d(*t, **conf), args, seed, atol=1e-5, rtol=1e-4)


def test_grouped_conv2d_module_shapes_init_and_float32():
    mg.manual_seed(0)
    depthwise = mg.nn.Conv2d(4, 8, 3, padding=1, groups=4)
    assert depthwise.weight.shape == (8, 1, 3, 3) and "groups=4" in repr(depthwise)
    bound = 1 / np.sqrt(9)                      # fan_in = in_channels / groups * 3 * 3
    assert np.abs(depthwise.bias.numpy()).max() <= bound
    x = mg.randn(2, 4, 6, 6)
    y = depthwise(x)
    ref = reference.conv2d(x.numpy(), _block_diagonal(depthwise.weight.numpy(), 4, 4),
                           depthwise.bias.numpy(), (1, 1), (1, 1), (1, 1))
    assert y.dtype == mg.float32
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="dividing in_channels=3"):
        mg.nn.Conv2d(3, 6, 3, groups=2)
    assert mg.nn.Conv2d(2, 2, 3, 1, 0, 1, 2, False).bias is None   # PyTorch's positional order


@pytest.mark.parametrize("mode", ["max", "avg"])
@given(k=st.integers(1, 3), stride=st.integers(1, 3), padding=st.integers(0, 1), size=st.integers(3, 6),
       seed=st.integers(0, 50))
def test_pooling(mode, k, stride, padding, size, seed):
    if padding > k // 2:
        return
    x = np.random.default_rng(seed).permutation(2 * 2 * size * (size + 1)).reshape(2, 2, size, size + 1) / 7.0
    fn = mg.max_pool2d if mode == "max" else mg.avg_pool2d
    out = fn(mg.tensor(x), k, stride, padding)
    if mode == "max" or padding == 0:
        np.testing.assert_allclose(out.numpy(), ref_pool(x, (k, k), (stride, stride), (padding, padding), mode),
                                   rtol=1e-12)
    check_grad(lambda t: fn(t, k, stride, padding), [x], seed)


def test_avg_pool_count_include_pad():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    incl = mg.avg_pool2d(mg.tensor(x), 3, 1, 1).numpy()
    excl = mg.avg_pool2d(mg.tensor(x), 3, 1, 1, count_include_pad=False).numpy()
    assert incl[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 9)
    assert excl[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
    check_grad(lambda t: mg.avg_pool2d(t, 3, 1, 1, count_include_pad=False), [x])


def test_adaptive_avg_pool():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 6))
    np.testing.assert_allclose(mg.adaptive_avg_pool2d(mg.tensor(x), 1).numpy(), x.mean((2, 3), keepdims=True))
    np.testing.assert_allclose(mg.adaptive_avg_pool2d(mg.tensor(x), (2, 3)).numpy(),
                               x.reshape(2, 3, 2, 2, 3, 2).mean((3, 5)))
    check_grad(lambda t: mg.adaptive_avg_pool2d(t, 1), [x])
    with pytest.raises(ValueError, match="must divide"):
        mg.adaptive_avg_pool2d(mg.tensor(x), 5)


def test_pool_errors():
    with pytest.raises(ValueError, match="larger than the padded input"):
        mg.max_pool2d(mg.zeros(1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match="half the kernel"):
        mg.max_pool2d(mg.zeros(1, 1, 8, 8), 2, padding=2)
