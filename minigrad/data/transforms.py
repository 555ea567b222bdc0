"""Batch transforms: vectorised over a whole NCHW batch, reproducible from a NumPy Generator.

A batch transform is any callable ``t(batch, rng) -> batch`` where ``batch`` is an
``(N, C, H, W)`` array on the raw pixel scale (uint8 0..255 for the built-in datasets) and
``rng`` a :class:`numpy.random.Generator`. :class:`~minigrad.data.DataLoader` calls it on the
uint8 batch *before* converting to float and normalising, with an ``rng`` derived from
``(seed, epoch, batch index)``, so augmentation is reproducible and independent of prefetching.
Padding fills with 0 (black), as torchvision's ``RandomCrop(32, padding=4)`` does before
``Normalize``.

The crop/flip kernel and the uint8 -> normalised float32 conversion are Numba
``njit(nogil=True, cache=True)`` loops: one pass over the batch, no per-sample Python, and
they release the GIL so a prefetch thread overlaps them with the training step. They are
deliberately *not* ``parallel=True``: they may run on a background thread at the same time
as the engine's own parallel kernels.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from numba import njit

__all__ = ["RandomCrop", "RandomHorizontalFlip", "RandomCropFlip", "Compose",
           "normalize_batch", "make_normalize_lut"]


@njit(nogil=True, cache=True)
def _crop_flip_kernel(src, oy, ox, flip, pad, out):  # pragma: no cover - compiled
    n, c, h, w = src.shape
    ho, wo = out.shape[2], out.shape[3]
    for b in range(n):
        y0 = oy[b] - pad
        x0 = ox[b] - pad
        fl = flip[b]
        for ch in range(c):
            for y in range(ho):
                sy = y0 + y
                if sy < 0 or sy >= h:
                    for x in range(wo):
                        out[b, ch, y, x] = 0
                    continue
                for x in range(wo):
                    sx = x0 + (wo - 1 - x if fl else x)
                    if sx < 0 or sx >= w:
                        out[b, ch, y, x] = 0
                    else:
                        out[b, ch, y, x] = src[b, ch, sy, sx]
    return out


@njit(nogil=True, cache=True)
def _lut_kernel(src, lut, out):  # pragma: no cover - compiled
    n, c, h, w = src.shape
    for b in range(n):
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    out[b, ch, y, x] = lut[ch, src[b, ch, y, x]]
    return out


def make_normalize_lut(channels: int, mean: Sequence[float] | None,
                       std: Sequence[float] | None) -> np.ndarray:
    """A ``(channels, 256)`` float32 table mapping a uint8 pixel to ``(v/255 - mean)/std``
    per channel (or to ``v/255`` when ``mean``/``std`` are None)."""
    v = np.arange(256, dtype=np.float64) / 255.0
    if mean is None or std is None:
        return np.tile(v.astype(np.float32), (channels, 1))
    m = np.broadcast_to(np.asarray(mean, dtype=np.float64), (channels,))
    s = np.broadcast_to(np.asarray(std, dtype=np.float64), (channels,))
    return ((v[None, :] - m[:, None]) / s[:, None]).astype(np.float32)


def normalize_batch(batch: np.ndarray, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, lut: np.ndarray | None = None) -> np.ndarray:
    """Convert an ``(N, C, H, W)`` batch on the 0..255 scale to float32 ``v/255`` and, when
    ``mean``/``std`` (per channel, on the 0..1 scale) are given, to ``(v/255 - mean)/std``.
    uint8 input goes through a lookup-table kernel (pass ``lut`` from
    :func:`make_normalize_lut` to skip rebuilding it); other dtypes are computed with NumPy."""
    if batch.ndim != 4:
        raise ValueError(f"normalize_batch expects an (N, C, H, W) batch, got shape {batch.shape}")
    c = batch.shape[1]
    if batch.dtype == np.uint8:
        if lut is None:
            lut = make_normalize_lut(c, mean, std)
        out = np.empty(batch.shape, dtype=np.float32)
        return _lut_kernel(np.ascontiguousarray(batch), lut, out)
    out = batch.astype(np.float32) * np.float32(1.0 / 255.0)
    if mean is not None and std is not None:
        m = np.broadcast_to(np.asarray(mean, np.float32), (c,)).reshape(1, c, 1, 1)
        s = np.broadcast_to(np.asarray(std, np.float32), (c,)).reshape(1, c, 1, 1)
        out -= m
        out /= s
    return out


def _check_batch(batch: np.ndarray, who: str) -> np.ndarray:
    if not isinstance(batch, np.ndarray) or batch.ndim != 4:
        raise ValueError(f"{who} expects an (N, C, H, W) NumPy batch, got "
                         f"{getattr(batch, 'shape', type(batch))}")
    return np.ascontiguousarray(batch)


class RandomCropFlip:
    """Random crop after zero padding, then random horizontal flip, fused in one kernel.

    ``size``: output (H, W) or int (default: the input size); ``padding``: zeros added on
    each side before cropping (4 for the standard CIFAR-10 recipe); ``flip_p``: probability
    of mirroring each image. Call as ``t(batch, rng)``; the offsets and flips are drawn from
    ``rng`` (a fresh default Generator when None), so equal generators give equal outputs.
    Labels are untouched: the transform only sees images.
    """

    def __init__(self, size: int | tuple[int, int] | None = None, padding: int = 4,
                 flip_p: float = 0.5):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        self.size = (size, size) if isinstance(size, int) else size
        self.padding = int(padding)
        self.flip_p = float(flip_p)

    def __call__(self, batch: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Apply to an ``(N, C, H, W)`` batch; returns a new array of the same dtype."""
        batch = _check_batch(batch, type(self).__name__)
        rng = np.random.default_rng() if rng is None else rng
        n, c, h, w = batch.shape
        ho, wo = self.size if self.size is not None else (h, w)
        p = self.padding
        if ho > h + 2 * p or wo > w + 2 * p:
            raise ValueError(f"crop size {(ho, wo)} is larger than the padded image "
                             f"{(h + 2 * p, w + 2 * p)}")
        oy = rng.integers(0, h + 2 * p - ho + 1, size=n, dtype=np.int64)
        ox = rng.integers(0, w + 2 * p - wo + 1, size=n, dtype=np.int64)
        flip = (rng.random(n) < self.flip_p).astype(np.uint8)
        out = np.empty((n, c, ho, wo), dtype=batch.dtype)
        return _crop_flip_kernel(batch, oy, ox, flip, p, out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, padding={self.padding}, flip_p={self.flip_p})"


class RandomCrop(RandomCropFlip):
    """Random crop of ``size`` after zero padding by ``padding`` on each side (no flip)."""

    def __init__(self, size: int | tuple[int, int] | None = None, padding: int = 4):
        super().__init__(size, padding, flip_p=0.0)


class RandomHorizontalFlip(RandomCropFlip):
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        super().__init__(None, 0, flip_p=p)


class Compose:
    """Apply batch transforms in order: ``Compose([t1, t2])(batch, rng)``; all share ``rng``."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, batch: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Apply every transform in turn to ``batch``."""
        rng = np.random.default_rng() if rng is None else rng
        for t in self.transforms:
            batch = t(batch, rng)
        return batch

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"
