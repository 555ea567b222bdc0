"""Reductions and shape ops: forward vs NumPy float64, gradients vs central differences."""

import numba
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg
from gradcheck import check_grad

shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4)


@st.composite
def shape_and_axes(draw):
    shape = draw(shapes)
    axes = draw(st.none() | st.lists(st.integers(0, len(shape) - 1), unique=True, min_size=1))
    return shape, (None if axes is None else tuple(axes)), draw(st.booleans())


@given(sak=shape_and_axes(), seed=st.integers(0, 50))
def test_sum_mean(sak, seed):
    shape, axes, keep = sak
    x = np.random.default_rng(seed).standard_normal(shape)
    np.testing.assert_allclose(mg.tensor(x).sum(axes, keep).numpy(), x.sum(axes, keepdims=keep), rtol=1e-12)
    np.testing.assert_allclose(mg.tensor(x).mean(axes, keep).numpy(), x.mean(axes, keepdims=keep), rtol=1e-12)
    (g,), w = check_grad(lambda t: t.sum(axes, keep), [x], seed)
    np.testing.assert_allclose(g, np.broadcast_to(w.reshape(np.sum(x, axes, keepdims=True).shape), shape))
    check_grad(lambda t: t.mean(axes, keep), [x], seed)


@given(sak=shape_and_axes(), seed=st.integers(0, 50))
def test_max(sak, seed):
    shape, axes, keep = sak
    x = np.random.default_rng(seed).permutation(np.prod(shape)).reshape(shape).astype(float)
    np.testing.assert_allclose(mg.tensor(x).max(axes, keep).numpy(), x.max(axes, keepdims=keep))
    check_grad(lambda t: t.max(axes, keep), [x], seed)
    np.testing.assert_allclose(mg.tensor(x).min(axes, keep).numpy(), x.min(axes, keepdims=keep))


def test_torch_style_dim_keepdim_and_errors():
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(mg.tensor(x).sum(dim=1, keepdim=True).numpy(), x.sum(1, keepdims=True))
    with pytest.raises(ValueError, match="out of range"):
        mg.tensor(x).sum(2)
    np.testing.assert_allclose(mg.tensor(x).var(1).numpy(), x.var(1, ddof=1))


@given(shape=shapes, seed=st.integers(0, 50), data=st.data())
def test_argmax_argmin_match_numpy(shape, seed, data):
    x = np.random.default_rng(seed).integers(-3, 3, shape).astype(float)   # ties: first wins
    axis = data.draw(st.none() | st.integers(-len(shape), len(shape) - 1))
    keep = data.draw(st.booleans())
    for name in ("argmax", "argmin"):
        want = getattr(np, name)(x, axis=axis, keepdims=keep if axis is not None else False)
        got = getattr(mg.tensor(x), name)(dim=axis, keepdim=keep)
        assert got.dtype == mg.int64
        np.testing.assert_array_equal(got.numpy(), want)
        np.testing.assert_array_equal(getattr(mg, name)(mg.tensor(x), axis).numpy(),
                                      getattr(np, name)(x, axis=axis))


def test_argmax_errors_name_the_shape():
    with pytest.raises(ValueError, match=r"empty dimension 1 of a tensor of shape \(2, 0\)"):
        mg.zeros(2, 0).argmax(dim=1)
    with pytest.raises(ValueError, match="empty tensor"):
        mg.zeros(0).argmin()
    with pytest.raises(ValueError, match="out of range"):
        mg.zeros(2, 3).argmax(dim=2)


def test_clone_copies_storage_and_passes_gradient():
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    y = x.clone()
    y.data[0] = 5.0                      # its own storage
    assert x.numpy().tolist() == [1.0, 2.0]
    (y * 3).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])
    assert mg.tensor([1, 2]).clone().dtype == mg.int64


def test_like_factories():
    mg.manual_seed(0)
    x = mg.zeros(3, 2, dtype=mg.float64)
    for t in (mg.randn_like(x), mg.rand_like(x)):
        assert t.shape == (3, 2) and t.dtype == mg.float64 and t.device == "cpu"
    r = mg.rand_like(x).numpy()
    assert ((r >= 0) & (r < 1)).all()


@given(shape=shapes, seed=st.integers(0, 50))
def test_reshape_flatten_transpose(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    t = mg.tensor(x)
    np.testing.assert_array_equal(t.reshape(-1).numpy(), x.reshape(-1))
    np.testing.assert_array_equal(t.flatten().numpy(), x.reshape(-1))
    if len(shape) >= 2:
        np.testing.assert_array_equal(mg.flatten(t, 1).numpy(), x.reshape(x.shape[0], -1))
    perm = tuple(np.random.default_rng(seed).permutation(len(shape)))
    np.testing.assert_array_equal(t.permute(*perm).numpy(), x.transpose(perm))
    check_grad(lambda a: a.permute(perm) * a.permute(perm), [x], seed)
    check_grad(lambda a: a.reshape(-1)[::2] if a.numel() > 1 else a.reshape(-1), [x], seed)
    if len(shape) >= 2:
        np.testing.assert_array_equal(t.transpose(0, -1).numpy(), np.swapaxes(x, 0, -1))


def test_reshape_errors_name_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        mg.zeros(2, 3).reshape(4, 2)
    with pytest.raises(ValueError, match="only one dimension"):
        mg.zeros(2, 3).reshape(-1, -1)


INDEXES = [np.s_[1], np.s_[:, 1:3], np.s_[::2, ::-1], np.s_[..., 0], np.s_[None, 1:, 2],
           np.s_[np.array([0, 2, 2])], np.s_[-1, :]]


@pytest.mark.parametrize("index", INDEXES, ids=[str(i) for i in range(len(INDEXES))])
def test_getitem(index):
    x = np.random.default_rng(0).standard_normal((3, 4))
    np.testing.assert_array_equal(mg.tensor(x)[index].numpy(), x[index])
    check_grad(lambda t: t[index], [x])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", ["arange", "repeated", "reversed"])
def test_index_add_one_entry_per_row(rows, dtype):
    """The CPU backend's index_add writes x[arange(n), cols]'s gradient in one pass (NLL
    loss); other row indices (repeats add up) take NumPy's scatter; both match np.add.at,
    negative columns included."""
    from minigrad.cpu.backend import CPUBackend

    rng = np.random.default_rng(2)
    n, c = 70, 9
    r = {"arange": np.arange(n), "repeated": np.zeros(n, np.int64),
         "reversed": np.arange(n)[::-1].copy()}[rows]
    cols = rng.integers(-c, c, n)
    g = rng.standard_normal(n).astype(dtype)
    expected = np.zeros((n, c), dtype)
    np.add.at(expected, (r, cols), g)
    out = CPUBackend().index_add((n, c), (r, cols), g)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expected)
    # a broadcast gradient (a mean's) works too
    out = CPUBackend().index_add((n, c), (np.arange(n), cols), np.broadcast_to(dtype(0.5), (n,)))
    np.testing.assert_array_equal(out[np.arange(n), cols], 0.5)
    assert np.count_nonzero(out) == n
    with pytest.raises(IndexError):
        CPUBackend().index_add((n, c), (np.arange(n), np.full(n, c)), g)


def test_getitem_out_of_range():
    with pytest.raises(IndexError, match=r"\(3, 4\)"):
        mg.zeros(3, 4)[5]


@pytest.mark.parametrize("indexes", [
    (np.s_[:, :3], np.s_[:, 3:6], np.s_[:, 6:]),             # a fused QKV output split in three
    (np.s_[1:], np.s_[:, ::2], np.s_[...]),                   # overlapping slices
    (np.s_[np.array([0, 0, 2])], np.s_[1:3], np.s_[0]),       # repeated rows add up
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_slices_of_one_tensor_sum_their_gradients(indexes, dtype):
    """Several indexings of one tensor: each later GetItem adds its gradient into the one
    already gathered (GetItem's addend, in place when autograd allows); equal to the float64
    sum of the scatters, for a leaf and through a non-leaf, over two backward calls."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 9)).astype(dtype)
    ws = [rng.standard_normal(x[i].shape).astype(dtype) for i in indexes]
    expected = np.zeros((3, 9))
    for i, w in zip(indexes, ws):
        np.add.at(expected, i, w.astype(np.float64))
    tol = 1e-6 if dtype == np.float32 else 1e-12
    for through in (False, True):
        xm = mg.tensor(x, requires_grad=True)
        for _ in range(2):
            h = xm * 1.0 if through else xm
            total = sum(((h[i] * mg.tensor(w)).sum() for i, w in zip(indexes, ws)), mg.tensor(0.0))
            total.backward()
        assert xm.grad.dtype == dtype
        np.testing.assert_allclose(xm.grad.numpy(), 2 * expected, rtol=tol, atol=tol)


def test_getitem_addend_held_elsewhere_is_only_read():
    """index_add_into adds into a copy unless told it may write; a gradient array a user
    keeps (a leaf's .grad they assigned) is not changed."""
    from minigrad.cpu.backend import CPUBackend

    base = np.arange(12.0).reshape(3, 4)
    kept = base.copy()
    out = CPUBackend().index_add_into(base, np.s_[:, 1], np.ones(3), False)
    np.testing.assert_array_equal(base, kept)
    np.testing.assert_array_equal(out[:, 1], kept[:, 1] + 1)
    assert CPUBackend().index_add_into(base, np.s_[0], np.ones(4), True) is base
    np.testing.assert_array_equal(base[0], kept[0] + 1)

    x = mg.tensor(np.zeros((2, 3)), requires_grad=True)
    assigned = np.full((2, 3), 5.0)
    x.grad = mg.tensor(assigned)
    x.grad.data = assigned
    (x[0].sum() + x[:, 1].sum()).backward()
    np.testing.assert_array_equal(assigned, np.full((2, 3), 5.0))
    np.testing.assert_array_equal(x.grad.numpy(), [[6, 7, 6], [5, 6, 5]])


@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=3), seed=st.integers(0, 50),
       data=st.data())
def test_pad(shape, seed, data):
    x = np.random.default_rng(seed).standard_normal(shape)
    pads = tuple((data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in shape)
    np.testing.assert_array_equal(mg.pad(mg.tensor(x), pads, 1.5).numpy(),
                                  np.pad(x, pads, constant_values=1.5))
    check_grad(lambda t: mg.pad(t, pads), [x], seed)


def test_concatenate_stack():
    a, b = np.ones((2, 3)), np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(mg.cat([mg.tensor(a), mg.tensor(b)], 1).numpy(), np.concatenate([a, b], 1))
    check_grad(lambda x, y: mg.concatenate([x, y, x], axis=0), [a, b])
    check_grad(lambda x, y: mg.stack([x, y], 1), [a, b])
    with pytest.raises(ValueError, match=r"\(2, 3\), \(3, 3\)"):
        mg.cat([mg.tensor(a), mg.zeros(3, 3)], 1)


@st.composite
def big_leading_sum(draw):
    """A C-contiguous array large enough for the threaded leading-axis sum, with its leading
    axes (1 to ndim-1 of them)."""
    cols = draw(st.sampled_from([16, 33, 64, 256, 768]))
    rows = draw(st.integers(-(-(1 << 16) // cols), 4096))
    split = draw(st.sampled_from([(rows,), (2, -(-rows // 2)), (-(-rows // 4), 4)]))
    tails = [(cols,), (1, cols)] + ([(cols // 16, 16)] if cols % 16 == 0 else [])
    tail = draw(st.sampled_from(tails))
    return split + tail, len(split)


@pytest.mark.skipif(numba.get_num_threads() < 2, reason="the threaded sum needs two threads")
@given(case=big_leading_sum(), dtype=st.sampled_from([np.float32, np.float64]),
       keep=st.booleans(), seed=st.integers(0, 50))
def test_leading_axis_sums_on_all_threads(case, dtype, keep, seed):
    """Sums over leading axes of big arrays (a Linear layer's bias gradient) run in bands of
    rows on all threads, in float64: within half an ulp of the float64 sum (plus float64's own
    summation error), the same with either axis order and through sum_to_shape."""
    from minigrad.cpu import backend as cpu_backend, kernels

    shape, k = case
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    calls = []
    real = kernels.sum_rows
    be = cpu_backend.CPUBackend()
    axes = tuple(range(k))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "sum_rows", lambda *a: (calls.append(a[1]), real(*a)))
        got = be.sum(x, axes, keep)
    assert calls, "the threaded sum was not used"
    want = x.astype(np.float64).sum(axes, keepdims=keep)
    assert got.shape == want.shape and got.dtype == x.dtype
    rows = int(np.prod(shape[:k]))
    abs_sum = np.abs(x).astype(np.float64).sum(axes, keepdims=keep)
    tol = np.finfo(dtype).eps / 2 * np.abs(want) + rows * np.finfo(np.float64).eps * abs_sum
    assert np.all(np.abs(got - want) <= tol)
    np.testing.assert_array_equal(be.sum(x, tuple(reversed(axes)), keep), got)
    assert be.sum_to_shape(x, shape[k:]).shape == shape[k:]
    np.testing.assert_array_equal(be.sum_to_shape(x, shape[k:]), got.reshape(shape[k:]))


def test_small_or_strided_sums_stay_with_numpy(monkeypatch):
    """Small arrays, views that are not C-contiguous, integer arrays and sums over trailing
    axes are NumPy's sums."""
    from minigrad.cpu import backend as cpu_backend, kernels

    monkeypatch.setattr(kernels, "sum_rows", None)   # would raise if reached
    be = cpu_backend.CPUBackend()
    rng = np.random.default_rng(0)
    big = rng.standard_normal((512, 256)).astype(np.float32)
    for x, axes in [(big[:100], (0,)), (big[:, ::2], (0,)), (big.T, (0,)), (big, (1,)),
                    (big, None), (big.astype(np.int64), (0,)), (big[:, :8].copy(), (0,))]:
        np.testing.assert_array_equal(be.sum(x, axes, False), np.sum(x, axis=axes))


def test_linear_bias_gradient_of_many_rows():
    """The bias gradient of a Linear layer over 4096 rows (the threaded sum) against float64."""
    rng = np.random.default_rng(3)
    x = mg.tensor(rng.standard_normal((4096, 64)).astype(np.float32))
    lin = mg.nn.Linear(64, 48)
    g = rng.standard_normal((4096, 48)).astype(np.float32)
    lin(x).backward(mg.tensor(g))
    np.testing.assert_allclose(lin.bias.grad.numpy(), g.astype(np.float64).sum(0), rtol=1e-5,
                               atol=1e-4)
