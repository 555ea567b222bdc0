"""DataLoader: order, reproducibility, values, prefetch, augmentation."""
import numpy as np
import pytest

from minigrad.data import (ArrayDataset, Compose, DataLoader, RandomCrop, RandomCropFlip,
                           RandomHorizontalFlip, SyntheticImages, normalize_batch)


def _ds(n=37, c=3, hw=8, normalize=True):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(n, c, hw, hw), dtype=np.uint8)
    targets = np.arange(n) % 5
    return ArrayDataset(data, targets, mean=[0.5] * c, std=[0.25] * c, normalize=normalize)


def _epoch_labels(loader, epoch=None):
    return np.concatenate([y for _, y in loader.numpy_batches(epoch)])


def test_len_and_shapes():
    ds = _ds()
    L = DataLoader(ds, batch_size=8)
    assert len(L) == 5
    batches = list(L.numpy_batches())
    assert [len(y) for _, y in batches] == [8, 8, 8, 8, 5]
    x, y = batches[0]
    assert x.shape == (8, 3, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    L2 = DataLoader(ds, batch_size=8, drop_last=True)
    assert len(L2) == 4 and [len(y) for _, y in L2.numpy_batches()] == [8] * 4
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, batch_size=0)


@pytest.mark.parametrize("normalize", [True, False])
def test_batches_equal_getitem(normalize):
    ds = _ds(normalize=normalize)
    L = DataLoader(ds, batch_size=10, shuffle=True, seed=3)
    order = L.order(0)
    xs, ys = zip(*L.numpy_batches())
    x, y = np.concatenate(xs), np.concatenate(ys)
    ref = np.stack([ds[int(i)][0] for i in order])
    np.testing.assert_array_equal(y, ds.targets[order])
    np.testing.assert_allclose(x, ref, rtol=1e-6)
    raw = ds.data[order].astype(np.float64) / 255
    exp = (raw - 0.5) / 0.25 if normalize else raw
    np.testing.assert_allclose(x, exp, rtol=1e-5, atol=1e-6)


def test_shuffle_is_permutation_and_reproducible():
    ds = _ds(n=100)
    L = DataLoader(ds, batch_size=16, shuffle=True, seed=42)
    e0, e1 = L.order(0), L.order(1)
    assert sorted(e0.tolist()) == list(range(100))
    assert not np.array_equal(e0, e1)
    y0 = _epoch_labels(L)  # epoch 0
    y1 = _epoch_labels(L)  # epoch 1
    assert L.epoch == 2
    np.testing.assert_array_equal(y0, ds.targets[e0])
    np.testing.assert_array_equal(y1, ds.targets[e1])
    # a fresh loader resumed at epoch 1 reproduces epoch 1
    R = DataLoader(ds, batch_size=16, shuffle=True, seed=42)
    R.set_epoch(1)
    np.testing.assert_array_equal(_epoch_labels(R), y1)
    # other seed, other order
    assert not np.array_equal(DataLoader(ds, 16, shuffle=True, seed=43).order(0), e0)
    # no shuffle: identity
    np.testing.assert_array_equal(DataLoader(ds, 16).order(5), np.arange(100))
    # seed=None still gives a valid, stored seed
    assert isinstance(DataLoader(ds, 16, shuffle=True).seed, int)


def test_prefetch_same_batches_and_early_exit():
    ds = _ds(n=200)
    aug = RandomCropFlip(padding=2)
    a = DataLoader(ds, 16, shuffle=True, seed=5, transform=aug)
    b = DataLoader(ds, 16, shuffle=True, seed=5, transform=aug, prefetch=True)
    for (xa, ya), (xb, yb) in zip(a.numpy_batches(), b.numpy_batches()):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    it = b.numpy_batches()
    next(it)
    it.close()  # stops the worker without hanging


def test_prefetch_propagates_errors():
    def bad(batch, rng):
        raise RuntimeError("boom in transform")
    L = DataLoader(_ds(), 8, transform=bad, prefetch=2)
    with pytest.raises(RuntimeError, match="boom in transform"):
        list(L.numpy_batches())


def test_generic_dataset_path():
    class Squares:
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return np.full((1, 2, 2), i, np.float32), i % 2

    L = DataLoader(Squares(), batch_size=3, shuffle=True, seed=0)
    xs, ys = zip(*L.numpy_batches())
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert sorted(x[:, 0, 0, 0].tolist()) == list(range(7))
    np.testing.assert_array_equal(y, x[:, 0, 0, 0].astype(np.int64) % 2)


# ------------------------------------------------------------------ augmentation

def _ref_crop_flip(batch, oy, ox, flip, pad, size):
    p = np.pad(batch, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.stack([p[i, :, oy[i]:oy[i] + size[0], ox[i]:ox[i] + size[1]] for i in range(len(batch))])
    out[flip] = out[flip][..., ::-1]
    return out


@pytest.mark.parametrize("size,pad", [(None, 4), (6, 0), ((5, 7), 2)])
def test_crop_flip_matches_reference(size, pad):
    batch = np.random.default_rng(0).integers(0, 256, size=(20, 3, 8, 8), dtype=np.uint8)
    t = RandomCropFlip(size, padding=pad, flip_p=0.5)
    out = t(batch, np.random.default_rng(9))
    # replay the same draws
    rng = np.random.default_rng(9)
    ho, wo = t.size or (8, 8)
    oy = rng.integers(0, 8 + 2 * pad - ho + 1, size=20)
    ox = rng.integers(0, 8 + 2 * pad - wo + 1, size=20)
    flip = rng.random(20) < 0.5
    np.testing.assert_array_equal(out, _ref_crop_flip(batch, oy, ox, flip, pad, (ho, wo)))
    assert out.dtype == np.uint8


def test_crop_flip_float_batches_and_compose():
    batch = np.random.default_rng(0).random((4, 2, 6, 6)).astype(np.float32)
    out = Compose([RandomCrop(6, padding=1), RandomHorizontalFlip(1.0)])(batch, np.random.default_rng(0))
    assert out.shape == batch.shape and out.dtype == np.float32
    flipped = RandomHorizontalFlip(1.0)(batch, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped, batch[..., ::-1])
    np.testing.assert_array_equal(RandomCrop(padding=0)(batch), batch)
    with pytest.raises(ValueError, match="larger than the padded image"):
        RandomCrop(20, padding=2)(batch)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        RandomCropFlip()(batch[0])


def test_augmented_loader_keeps_labels_and_is_reproducible():
    ds = SyntheticImages(300, seed=1)
    mk = lambda seed: DataLoader(ds, 64, shuffle=True, seed=seed, transform=RandomCropFlip(padding=4))
    a, b, c = mk(7), mk(7), mk(8)
    xa, ya = zip(*a.numpy_batches())
    xb, yb = zip(*b.numpy_batches())
    xc, _ = zip(*c.numpy_batches())
    for u, v in zip(xa, xb):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(np.concatenate(ya), ds.targets[a.order(0)])
    assert xa[0].shape == (64, 3, 32, 32)
    assert not np.array_equal(xa[0], xc[0])
    # next epoch draws different augmentations even for the same sample order
    plain = DataLoader(ds, 64, seed=7, transform=RandomCropFlip(padding=4))
    e0 = next(plain.numpy_batches(0))[0]
    e1 = next(plain.numpy_batches(1))[0]
    assert not np.array_equal(e0, e1)
    # padding value is 0 before normalisation -> (0 - mean)/std after
    lo = (0 - np.array(ds.mean)) / np.array(ds.std)
    allx = np.concatenate(xa)
    for ch in range(3):
        assert np.isclose(allx[:, ch].min(), lo[ch], atol=1e-5)


def test_normalize_batch_paths_agree():
    b = np.random.default_rng(0).integers(0, 256, size=(3, 2, 4, 4), dtype=np.uint8)
    u = normalize_batch(b, (0.1, 0.2), (0.3, 0.4))
    f = normalize_batch(b.astype(np.float32), (0.1, 0.2), (0.3, 0.4))
    np.testing.assert_allclose(u, f, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normalize_batch(b), b / 255.0, rtol=1e-6)


def test_tensor_iteration():
    mg = pytest.importorskip("minigrad")
    if not hasattr(mg, "tensor"):
        pytest.skip("minigrad.tensor not available yet")
    ds = _ds()
    L = DataLoader(ds, 8, shuffle=True, seed=0)
    ref = list(DataLoader(ds, 8, shuffle=True, seed=0).numpy_batches())
    got = list(L)
    assert len(got) == len(L)
    x, y = got[0]
    assert tuple(x.shape) == (8, 3, 8, 8)
    np.testing.assert_array_equal(x.numpy(), ref[0][0])
    np.testing.assert_array_equal(np.asarray(y.numpy()).astype(np.int64), ref[0][1])
