"""DataLoader: vectorised batching, reproducible per-epoch shuffling, optional prefetch."""
from __future__ import annotations

import math
import queue
import threading
from typing import Any, Callable, Iterator

import numpy as np

from .transforms import make_normalize_lut, normalize_batch

__all__ = ["DataLoader"]


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


class DataLoader:
    """Iterate a dataset in batches of minigrad Tensors.

    ``DataLoader(dataset, batch_size=1, shuffle=False, drop_last=False, seed=None,
    transform=None, prefetch=False, device="cpu")`` yields ``(images, labels)``: images a
    float32 ``(B, C, H, W)`` Tensor, labels an int64 ``(B,)`` Tensor, both made with
    ``minigrad.tensor(array, device=device)``. :meth:`numpy_batches` yields the same batches
    as NumPy arrays.

    * In-memory datasets (:class:`~minigrad.data.ArrayDataset`, or anything with a uint8
      ``(N, C, H, W)`` ``.data`` and ``.targets``) take the fast path: the batch is gathered
      with one fancy index of the uint8 array (a view when not shuffling), ``transform`` is
      applied to that uint8 batch, and a Numba lookup-table kernel converts it to float32 and
      normalises it (``(v/255 - mean)/std`` with the dataset's ``mean``/``std`` when its
      ``normalize`` is True) in one pass; no per-sample Python. Values equal ``dataset[i]``.
      Other datasets are indexed per sample and stacked (``transform`` then sees that stack).
    * ``transform(batch, rng)``: a batch transform (see :mod:`minigrad.data.transforms`),
      e.g. ``RandomCropFlip(padding=4)``; ``rng`` is derived from ``(seed, epoch, batch
      index)``, so augmentation is reproducible and the same with or without prefetching.
    * Shuffling: epoch ``e`` uses the permutation ``default_rng([seed, e]).permutation(N)``.
      Every iteration uses :attr:`epoch` and then advances it by one; :meth:`set_epoch`
      sets it, so resuming at epoch k (``set_epoch(k)``) reproduces the original order.
      ``seed=None`` draws a random seed once (stored in ``.seed``).
    * ``prefetch``: False, True (2 batches ahead) or an int depth; a background thread
      prepares NumPy batches (the kernels release the GIL) while the caller trains. Tensors
      are created on the calling thread.
    * ``len(loader)``: number of batches (``ceil(N/B)``, or ``floor`` with ``drop_last``).
    """

    def __init__(self, dataset: Any, batch_size: int = 1, shuffle: bool = False,
                 drop_last: bool = False, seed: int | None = None,
                 transform: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 prefetch: bool | int = False, device: str = "cpu"):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable(batch, rng), got {transform!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(np.random.SeedSequence().entropy) if seed is None else int(seed)
        self.transform = transform
        self.prefetch = 2 if prefetch is True else int(prefetch or 0)
        self.device = device
        self._epoch = 0
        data = getattr(dataset, "data", None)
        targets = getattr(dataset, "targets", None)
        self._fast = (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4
                      and targets is not None and len(targets) == len(data))

    # ------------------------------------------------------------------ epochs and order
    @property
    def epoch(self) -> int:
        """The epoch number the next iteration will use (its shuffle and augmentation)."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (for exact resumption of training)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The int64 sample order of epoch ``epoch``: a seeded permutation when shuffling,
        else ``arange(N)``."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n).astype(np.int64)

    # ------------------------------------------------------------------ batch building
    def _make_batch(self, epoch: int, b: int, idx: np.ndarray | slice):
        ds = self.dataset
        rng = (np.random.default_rng([self.seed, int(epoch), b, 1])
               if self.transform is not None else None)
        if self._fast:
            raw = ds.data[idx]
            labels = np.array(ds.targets[idx], dtype=np.int64)
            if self.transform is not None:
                raw = self.transform(raw, rng)
            lut = ds.normalize_lut() if hasattr(ds, "normalize_lut") else None
            if lut is None:
                norm = getattr(ds, "normalize", True)
                mean = getattr(ds, "mean", None) if norm else None
                std = getattr(ds, "std", None) if norm else None
                lut = make_normalize_lut(raw.shape[1], mean, std)
            if raw.dtype == np.uint8 and raw.shape[1] == lut.shape[0]:
                images = normalize_batch(raw, lut=lut)
            else:
                norm = getattr(ds, "normalize", True)
                images = normalize_batch(raw, getattr(ds, "mean", None) if norm else None,
                                         getattr(ds, "std", None) if norm else None)
            return images, labels
        ids = np.arange(len(ds))[idx] if isinstance(idx, slice) else idx
        samples = [ds[int(i)] for i in ids]
        images = np.stack([np.asarray(s[0], dtype=np.float32) for s in samples])
        labels = np.array([int(s[1]) for s in samples], dtype=np.int64)
        if self.transform is not None:
            images = np.asarray(self.transform(images, rng), dtype=np.float32)
        return images, labels

    def _generate(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = len(self.dataset)
        order = self.order(epoch) if self.shuffle else None
        for b in range(len(self)):
            start = b * self.batch_size
            stop = min(start + self.batch_size, n)
            idx = order[start:stop] if order is not None else slice(start, stop)
            yield self._make_batch(epoch, b, idx)

    def _prefetched(self, gen: Iterator) -> Iterator:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        def worker():
            try:
                for item in gen:
                    if not put(item):
                        return
                put(_DONE)
            except BaseException as e:  # hand the error to the consumer
                put(_Failure(e))

        t = threading.Thread(target=worker, name="minigrad-data-prefetch", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
        finally:
            stop.set()
            t.join(timeout=5.0)

    def numpy_batches(self, epoch: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(images float32 (B, C, H, W), labels int64 (B,))`` NumPy batches. With
        ``epoch=None`` uses (and advances) :attr:`epoch`; with an explicit epoch it leaves
        :attr:`epoch` alone."""
        if epoch is None:
            epoch = self._epoch
            self._epoch += 1
        gen = self._generate(int(epoch))
        return self._prefetched(gen) if self.prefetch > 0 else gen

    def __iter__(self):
        try:
            import minigrad
            make = minigrad.tensor
        except (ImportError, AttributeError) as e:
            raise RuntimeError("minigrad.tensor is not available (" + str(e) + "); iterate "
                               "loader.numpy_batches() for NumPy batches") from None
        for images, labels in self.numpy_batches():
            yield make(images, device=self.device), make(labels, device=self.device)

    def __repr__(self) -> str:
        return (f"DataLoader({type(self.dataset).__name__}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed}, "
                f"transform={self.transform!r}, prefetch={self.prefetch}, device={self.device!r})")
