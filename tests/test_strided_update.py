"""minigrad.cpu.strided: writes and adds into strided views, against NumPy's own."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigrad as mg
from minigrad.cpu import strided
from minigrad.cpu.backend import CPUBackend


def _slice(draw, n):
    start = draw(st.integers(0, n - 1))
    stop = draw(st.integers(start + 1, n))
    step = draw(st.integers(1, 3))
    return slice(start, stop, step)


@st.composite
def view_cases(draw):
    """(base shape, basic index, a Random for the source's storage order and values, dtype,
    add)."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    index = []
    for n in shape:
        kind = draw(st.sampled_from(["all", "slice", "int"]))
        index.append(slice(None) if kind == "all" else
                     _slice(draw, n) if kind == "slice" else draw(st.integers(0, n - 1)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return shape, tuple(index), draw(st.randoms()), dtype, draw(st.booleans())


@settings(deadline=None)
@given(view_cases())
def test_update_matches_numpy(case):
    """Set and add into a basic-indexed view, the source C-contiguous, stored in a permuted
    order (as a transposed gradient) or broadcast: NumPy's result, bit for bit."""
    shape, index, rnd, dtype, add = case
    rng = np.random.default_rng(rnd.randrange(1 << 30))
    base = rng.standard_normal(shape).astype(dtype)
    vshape = base[index].shape
    perm = list(range(len(vshape)))
    rnd.shuffle(perm)
    stored = rng.standard_normal(tuple(vshape[p] for p in perm)).astype(dtype)
    sources = [stored.transpose(np.argsort(perm))]
    if vshape:
        sources.append(rng.standard_normal(vshape[-1:]).astype(dtype))   # broadcast rows
    with pytest.MonkeyPatch.context() as mp:
        # the kernel on arrays of any size, the innermost axis cut into short pieces
        mp.setattr(strided, "MIN_ELEMENTS", 1)
        mp.setattr(strided, "_MIN_PIECE", 2)
        for src in sources:
            want, got = base.copy(), base.copy()
            if add:
                want[index] += src
            else:
                want[index] = src
            view = got[index]
            if isinstance(view, np.ndarray) and strided.update(view, src, add):
                np.testing.assert_array_equal(got, want)


def test_update_declines_what_it_does_not_do():
    """Fewer than MIN_ELEMENTS values, mixed dtypes, negative strides, a read-only target, a
    target repeating elements or a source overlapping it: False, and nothing written."""
    big = np.zeros((4, strided.MIN_ELEMENTS), np.float32)
    ones = np.ones_like(big)
    assert not strided.update(big[:, :10], ones[:, :10], False)
    assert not strided.update(big, ones.astype(np.float64), False)
    assert not strided.update(big[:, ::-1], ones, False)
    assert not strided.update(np.broadcast_to(big[0], big.shape), ones, False)
    assert not strided.update(big[:, 1:], big[:, :-1], True)
    repeats = np.lib.stride_tricks.as_strided(big, (2, big.shape[1]), (0, 4))
    assert not strided.update(repeats, ones[:2], True)
    assert not big.any()
    assert strided.update(big, ones, True) and (big == 1).all()


def test_merged_axes():
    """Axes ordered by the first array's strides, size-1 axes dropped, mergeable runs
    merged only where every array allows."""
    a = np.empty((16, 128, 768), np.float32)[..., 256:512]
    g = np.empty((16, 256, 128), np.float32).transpose(0, 2, 1)
    assert strided.merged_axes(a.shape, a.strides, g.strides) == (
        (16, 128, 256), [(393216, 3072, 4), (131072, 4, 512)])
    c = np.empty((16, 128, 256), np.float32)
    assert strided.merged_axes(a.shape, a.strides, c.strides) == (
        (2048, 256), [(3072, 4), (1024, 4)])
    assert strided.merged_axes((1, 5, 1), (40, 8, 8)) == ((5,), [(8,)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_qkv_slices_gradient(dtype):
    """The transformer block's case, at a size past MIN_ELEMENTS: three last-axis slices
    of one tensor, one of them used through a transpose; the gradient equals NumPy's
    scatter of the three, and the backend's index_add writes zeros elsewhere."""
    rng = np.random.default_rng(0)
    x = mg.tensor(rng.standard_normal((8, 128, 3 * 64)).astype(dtype), requires_grad=True)
    q, k, v = x[..., :64], x[..., 64:128], x[..., 128:]
    gs = [rng.standard_normal((8, 128, 64)).astype(dtype) for _ in range(3)]
    k_t = k.transpose(-1, -2) * mg.tensor(gs[1].transpose(0, 2, 1))
    ((q * mg.tensor(gs[0])).sum() + k_t.sum() + (v * mg.tensor(gs[2])).sum()).backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.concatenate(gs, axis=-1))
    out = CPUBackend().index_add((8, 128, 192), (Ellipsis, slice(64, 128)), gs[1])
    want = np.zeros((8, 128, 192), dtype)
    want[..., 64:128] = gs[1]
    np.testing.assert_array_equal(out, want)


def test_index_add_with_a_list_index():
    """A list in the index is NumPy's index array (out[index] a copy, not a view): the backend
    leaves it to NumPy, past the kernel's threshold too."""
    be = CPUBackend()
    g = np.ones((2, strided.MIN_ELEMENTS), np.float32)
    want = np.zeros((4, strided.MIN_ELEMENTS), np.float32)
    want[[0, 2]] = 1
    np.testing.assert_array_equal(be.index_add(want.shape, ([0, 2],), g), want)
    np.testing.assert_array_equal(
        be.index_add_into(np.zeros_like(want), ([0, 2],), g, True), want)


def test_flat_view_ends_at_the_last_element():
    """_flat spans exactly the view's memory (the base's values are their own offsets)."""
    base = np.arange(4 * 6 * 10, dtype=np.float64).reshape(4, 6, 10)
    for view in (base[..., 3:7], base[1:, ::2, 5:], base.transpose(2, 0, 1)[2:]):
        flat = strided._flat(view)
        assert (flat[0], flat[-1]) == (view.min(), view.max())
        assert flat.size == view.max() - view.min() + 1
