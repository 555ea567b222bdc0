"""Datasets: MNIST (IDX), CIFAR-10 (binary batches), a synthetic colour set, and helpers.

Every dataset here is an :class:`ArrayDataset`: the whole split lives in memory as

* ``.data``    uint8 ``(N, C, H, W)`` (MNIST: ``(N, 1, 28, 28)``, CIFAR-10 and synthetic:
  ``(N, 3, 32, 32)``; note torchvision keeps MNIST as ``(N, 28, 28)`` and CIFAR as NHWC),
* ``.targets`` int64 ``(N,)``,

and ``ds[i]`` returns ``(image, label)`` with ``image`` a float32 ``(C, H, W)`` array,
normalised as ``(v/255 - mean)/std`` with the dataset's per-channel ``mean``/``std`` (or just
``v/255`` in [0, 1] when constructed with ``normalize=False``), and ``label`` a Python int.
:class:`~minigrad.data.DataLoader` produces exactly the same values, batched and vectorised.
"""
from __future__ import annotations

import logging
import os
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ._paths import DatasetNotFoundError, DownloadError, resolve_data_dir
from .download import download_file, md5_file, md5_gunzipped, mirrors_from_env
from .formats import PICKLE_REFUSAL, parse_cifar_batch, read_cifar_batch, read_idx
from .transforms import RandomCropFlip, make_normalize_lut

__all__ = ["ArrayDataset", "MNIST", "CIFAR10", "SyntheticImages", "get_dataset", "load_mnist",
           "load_mnist_subset", "train_augmentation", "DATASET_NAMES", "MNIST_MIRRORS",
           "CIFAR10_MIRRORS", "MNIST_MEAN", "MNIST_STD", "CIFAR10_MEAN", "CIFAR10_STD",
           "SUBSET_PATH"]

logger = logging.getLogger("minigrad.data")

#: Names accepted by :func:`get_dataset`.
DATASET_NAMES = ("mnist", "cifar10", "synthetic")

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
#: Per-channel mean/std of the CIFAR-10 training set (pixel values scaled to [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

#: Base URLs tried in order for the MNIST files; override with ``$MINIGRAD_MNIST_MIRRORS``
#: (space/comma separated) or by assigning this list.
MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
#: Base URLs tried in order for ``cifar-10-binary.tar.gz``; override with
#: ``$MINIGRAD_CIFAR10_MIRRORS`` or by assigning this list.
CIFAR10_MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]

# file -> (MD5 of the published .gz, MD5 of the decompressed IDX bytes)
_MNIST_MD5 = {
    "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
}
_MNIST_SPLIT = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = ("test_batch.bin",)
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                  "ship", "truck")

#: The shipped MNIST subset (10,000 train + 2,000 test images, class-balanced).
SUBSET_PATH = Path(__file__).with_name("mnist_subset.npz")


class ArrayDataset:
    """An in-memory image-classification dataset.

    ``ArrayDataset(data, targets, mean=None, std=None, classes=None, normalize=True)``:
    ``data`` uint8 ``(N, C, H, W)``, ``targets`` integer ``(N,)`` (stored as int64),
    ``mean``/``std`` per-channel on the [0, 1] scale (None: no normalisation). ``ds[i]``
    gives ``(float32 (C, H, W) image, int label)``; ``len(ds)`` is N.
    Attributes: ``data``, ``targets``, ``mean``, ``std``, ``normalize``, ``classes``,
    ``num_classes``, ``in_channels``, ``image_shape``.
    """

    def __init__(self, data: np.ndarray, targets: np.ndarray, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, classes: Sequence[str] | None = None,
                 normalize: bool = True):
        self._set_arrays(data, targets)
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(s) for s in std) if std is not None else None
        self.classes = tuple(classes) if classes is not None else tuple(
            str(i) for i in range(int(self.targets.max()) + 1 if len(self.targets) else 0))
        self.normalize = normalize

    def _set_arrays(self, data: np.ndarray, targets: np.ndarray) -> None:
        data = np.asarray(data)
        targets = np.asarray(targets)
        if data.dtype != np.uint8 or data.ndim != 4:
            raise ValueError(f"data must be uint8 (N, C, H, W), got {data.dtype} {data.shape}")
        if targets.ndim != 1 or len(targets) != len(data):
            raise ValueError(f"targets must have shape ({len(data)},), got {targets.shape}")
        if not np.issubdtype(targets.dtype, np.integer):
            raise ValueError(f"targets must be integers, got {targets.dtype}")
        self.data = np.ascontiguousarray(data)
        self.targets = targets.astype(np.int64, copy=False)
        self._lut = None

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """Image channels C."""
        return int(self.data.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(int(s) for s in self.data.shape[1:])

    def normalize_lut(self) -> np.ndarray:
        """The ``(C, 256)`` float32 table uint8 -> normalised value used by ``__getitem__``
        and the DataLoader (honours ``normalize``)."""
        key = (self.normalize, self.mean, self.std)
        if self._lut is None or self._lut[0] != key:
            mean, std = (self.mean, self.std) if self.normalize else (None, None)
            self._lut = (key, make_normalize_lut(self.in_channels, mean, std))
        return self._lut[1]

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"index {index} out of range for dataset of size {n}")
        lut = self.normalize_lut()
        img = self.data[i]
        return lut[np.arange(img.shape[0])[:, None, None], img], int(self.targets[i])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={len(self)}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes})")


# ----------------------------------------------------------------------------- MNIST

def _mnist_candidates(root: Path) -> list[Path]:
    return [root / "mnist", root / "MNIST" / "raw", root]


def _find_mnist_file(folder: Path, stem: str) -> Path | None:
    alt = stem.replace("-idx", ".idx")  # e.g. "train-images.idx3-ubyte" (Windows unzip names)
    for name in (stem + ".gz", stem, alt + ".gz", alt):
        p = folder / name
        if p.is_file():
            return p
    return None


def _mnist_check(stem: str):
    gz_md5, raw_md5 = _MNIST_MD5[stem]

    def check(path: Path) -> bool:
        if md5_file(path) in (gz_md5, raw_md5):
            return True
        return md5_gunzipped(path) == raw_md5  # same content, different gzip wrapping
    return check


def _mnist_missing_message(root: Path, train: bool, extra: str = "") -> str:
    stems = _MNIST_SPLIT[train]
    split = "train" if train else "test"
    mirrors = mirrors_from_env("MINIGRAD_MNIST_MIRRORS", MNIST_MIRRORS)
    return (f"MNIST ({split} split) not found in {root / 'mnist'}.\n"
            f"Put these files (gzip-compressed or decompressed IDX) into {root / 'mnist'}/:\n"
            + "".join(f"  {s}.gz\n" for s in stems)
            + f"They are published at {mirrors[0]}{stems[0]}.gz (and siblings); or pass "
              f"download=True, or point root= / --data-dir / $MINIGRAD_DATA at a directory "
              f"holding mnist/ with these files." + (f"\n{extra}" if extra else ""))


def _load_full_mnist(root: Path, train: bool, download: bool, progress: bool):
    stems = _MNIST_SPLIT[train]
    found = None
    for folder in _mnist_candidates(root):
        paths = [_find_mnist_file(folder, s) for s in stems]
        if all(paths):
            found = paths
            break
    if found is None:
        if not download:
            raise DatasetNotFoundError(_mnist_missing_message(root, train))
        mirrors = mirrors_from_env("MINIGRAD_MNIST_MIRRORS", MNIST_MIRRORS)
        found = []
        for s in stems:
            existing = _find_mnist_file(root / "mnist", s)
            if existing is not None:
                found.append(existing)
                continue
            try:
                found.append(download_file([m + s + ".gz" for m in mirrors],
                                           root / "mnist" / (s + ".gz"), _mnist_check(s),
                                           progress=progress))
            except DownloadError as e:
                raise DatasetNotFoundError(_mnist_missing_message(root, train, str(e))) from None
    img_path, lab_path = found
    images = read_idx(img_path, expected_magic=0x00000803)
    labels = read_idx(lab_path, expected_magic=0x00000801)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{img_path}: expected images of 28x28, got {images.shape[1:]}")
    if len(images) != len(labels):
        raise ValueError(f"{lab_path}: {len(labels)} labels but {img_path} has "
                         f"{len(images)} images")
    if len(labels) and labels.max() > 9:
        raise ValueError(f"{lab_path}: labels must be 0..9, found {labels.max()}")
    return images, labels, img_path.parent


def load_mnist_subset(train: bool = True, path: str | os.PathLike | None = None):
    """The shipped class-balanced MNIST subset as ``(images uint8 (N, 28, 28), labels int64)``:
    10,000 training / 2,000 test images drawn from the official splits by
    ``tools/make_mnist_subset.py``. Loaded with ``allow_pickle=False``."""
    path = Path(path) if path is not None else SUBSET_PATH
    if not path.is_file():
        raise DatasetNotFoundError(f"the shipped MNIST subset {path} is missing "
                                   f"(rebuild it with tools/make_mnist_subset.py)")
    split = "train" if train else "test"
    with np.load(path, allow_pickle=False) as z:
        return z[f"{split}_images"], z[f"{split}_labels"].astype(np.int64)


class MNIST(ArrayDataset):
    """MNIST handwritten digits from the four IDX files.

    ``MNIST(root=None, train=True, download=False, subset_fallback=False, normalize=True,
    progress=True)``. The files are looked up in ``DIR/mnist/`` (also ``DIR/MNIST/raw/``
    and ``DIR`` itself), ``DIR`` from :func:`resolve_data_dir` (``root``, then
    ``$MINIGRAD_DATA``, then ``~/.cache/minigrad``); each may be ``.gz`` or decompressed.
    With ``download=True`` missing files are fetched from :data:`MNIST_MIRRORS` into
    ``DIR/mnist/`` (resumable, MD5-verified, atomic). When the full set is unavailable and
    ``subset_fallback=True``, the shipped 10,000/2,000-image subset is used instead:
    ``is_subset`` becomes True and ``fallback_message`` says so (also logged as a warning on
    the ``minigrad.data`` logger). Otherwise :class:`DatasetNotFoundError` lists the files to
    put where.

    ``.data``: uint8 ``(N, 1, 28, 28)``; ``.targets``: int64 ``(N,)``; ``ds[i]``: float32
    ``(1, 28, 28)`` normalised with mean 0.1307, std 0.3081 (``normalize=False``: [0, 1]).
    ``.source``: the folder or file the images came from.
    """

    def __init__(self, root: str | os.PathLike | None = None, train: bool = True,
                 download: bool = False, subset_fallback: bool = False, normalize: bool = True,
                 progress: bool = True):
        self.root = resolve_data_dir(root)
        self.train = bool(train)
        self.is_subset = False
        self.fallback_message: str | None = None
        try:
            images, labels, self.source = _load_full_mnist(self.root, self.train, download, progress)
        except DatasetNotFoundError as e:
            if not subset_fallback:
                raise
            images, labels = load_mnist_subset(self.train)
            self.is_subset = True
            self.source = SUBSET_PATH
            self.fallback_message = (f"full MNIST not found in {self.root / 'mnist'}; using the "
                                     f"shipped {len(images):,}-image subset")
            self.fallback_reason = str(e)
            logger.warning(self.fallback_message)
        super().__init__(images.reshape(len(images), 1, 28, 28), labels, MNIST_MEAN, MNIST_STD,
                         tuple(str(i) for i in range(10)), normalize)


def load_mnist(data_dir: str | os.PathLike | None = None, train: bool = True,
               allow_subset: bool = True, download: bool = False, normalize: bool = True) -> MNIST:
    """The full MNIST split if found in the data directory, else (``allow_subset``) the
    shipped subset; check ``.is_subset`` / ``.fallback_message`` on the result."""
    return MNIST(data_dir, train=train, download=download, subset_fallback=allow_subset,
                 normalize=normalize)


# ----------------------------------------------------------------------------- CIFAR-10

def _cifar_candidates(root: Path) -> list[Path]:
    c = root / "cifar10"
    return [c, c / "cifar-10-batches-bin", root / "cifar-10-batches-bin", root]


def _cifar_pickle_evidence(root: Path) -> list[Path]:
    found = []
    for folder in [root / "cifar10", root]:
        for name in ("cifar-10-python.tar.gz", "cifar-10-batches-py", "data_batch_1", "test_batch"):
            if (folder / name).exists():
                found.append(folder / name)
    return sorted(set(found))


def _cifar_missing_message(root: Path, names: Sequence[str], extra: str = "") -> str:
    mirrors = mirrors_from_env("MINIGRAD_CIFAR10_MIRRORS", CIFAR10_MIRRORS)
    return (f"CIFAR-10 (binary version) not found in {root / 'cifar10'}.\n"
            f"Put {CIFAR10_ARCHIVE} (from {mirrors[0]}{CIFAR10_ARCHIVE}, md5 "
            f"{CIFAR10_ARCHIVE_MD5}) into {root / 'cifar10'}/, or its extracted files\n"
            + "".join(f"  {n}\n" for n in names)
            + f"into {root / 'cifar10'}/ (a cifar-10-batches-bin/ subfolder is fine too); or "
              f"pass download=True, or point root= / --data-dir / $MINIGRAD_DATA at a "
              f"directory holding cifar10/." + (f"\n{extra}" if extra else ""))


def _extract_cifar(archive: Path, names: Sequence[str], dest: Path):
    """Read the wanted members from the archive (regular files only, matched by base name;
    nothing else is ever written). Tries to cache them extracted in ``dest``."""
    wanted = set(names)
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tf:
            for m in tf:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in wanted and base not in blobs:
                    blobs[base] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{archive}: corrupt or truncated tar.gz archive ({e})") from None
    missing = [n for n in names if n not in blobs]
    if missing:
        raise ValueError(f"{archive}: archive lacks {', '.join(missing)}; expected the "
                         f"CIFAR-10 binary archive ({CIFAR10_ARCHIVE}) with "
                         f"cifar-10-batches-bin/{{data_batch_1..5,test_batch}}.bin")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for n, b in blobs.items():
            tmp = dest / (n + ".tmp")
            tmp.write_bytes(b)
            os.replace(tmp, dest / n)
    except OSError as e:  # read-only data directory: fine, parse from memory
        logger.info("could not cache extracted CIFAR-10 batches in %s (%s)", dest, e)
    return [parse_cifar_batch(blobs[n], f"{archive}:{n}") for n in names]


class CIFAR10(ArrayDataset):
    """CIFAR-10 from its official *binary* layout (never the python/pickle variant).

    ``CIFAR10(root=None, train=True, download=False, normalize=True, progress=True)``.
    Looks in ``DIR/cifar10/`` (also ``DIR/cifar10/cifar-10-batches-bin/``,
    ``DIR/cifar-10-batches-bin/``, ``DIR``) for ``data_batch_1.bin`` .. ``data_batch_5.bin``
    (train) or ``test_batch.bin`` (test), else for ``cifar-10-binary.tar.gz``, which is
    extracted (safely, only those members) next to it. ``download=True`` fetches the
    archive from :data:`CIFAR10_MIRRORS` (resumable, MD5 c32a1d4a..., atomic). The python
    variant (``cifar-10-python.tar.gz``, ``data_batch_1`` without ``.bin``) is refused with a
    ValueError naming the binary one.

    ``.data``: uint8 ``(N, 3, 32, 32)`` RGB planes; ``.targets``: int64; ``ds[i]``: float32
    ``(3, 32, 32)`` normalised with :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD`.
    """

    def __init__(self, root: str | os.PathLike | None = None, train: bool = True,
                 download: bool = False, normalize: bool = True, progress: bool = True):
        self.root = resolve_data_dir(root)
        self.train = bool(train)
        names = _CIFAR_TRAIN if self.train else _CIFAR_TEST
        parts = None
        for folder in _cifar_candidates(self.root):
            if all((folder / n).is_file() for n in names):
                parts = [read_cifar_batch(folder / n) for n in names]
                self.source = folder
                break
        if parts is None:
            archive = next((p for p in (self.root / "cifar10" / CIFAR10_ARCHIVE,
                                        self.root / CIFAR10_ARCHIVE) if p.is_file()), None)
            if archive is None:
                pickles = _cifar_pickle_evidence(self.root)
                if not download:
                    if pickles:
                        raise ValueError(f"found the CIFAR-10 python (pickle) version at "
                                         f"{', '.join(map(str, pickles))}; {PICKLE_REFUSAL}, "
                                         f"placed in {self.root / 'cifar10'}/.")
                    raise DatasetNotFoundError(_cifar_missing_message(self.root, names))
                mirrors = mirrors_from_env("MINIGRAD_CIFAR10_MIRRORS", CIFAR10_MIRRORS)
                try:
                    archive = download_file(
                        [m + CIFAR10_ARCHIVE for m in mirrors],
                        self.root / "cifar10" / CIFAR10_ARCHIVE,
                        lambda p: md5_file(p) == CIFAR10_ARCHIVE_MD5, progress=progress)
                except DownloadError as e:
                    raise DatasetNotFoundError(
                        _cifar_missing_message(self.root, names, str(e))) from None
            parts = _extract_cifar(archive, names, self.root / "cifar10")
            self.source = archive
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        super().__init__(images, labels, CIFAR10_MEAN, CIFAR10_STD, _CIFAR_CLASSES, normalize)


# ----------------------------------------------------------------------------- synthetic

class SyntheticImages(ArrayDataset):
    """A learnable synthetic colour dataset, deterministic by ``seed`` (no files needed).

    ``SyntheticImages(num_samples=None, train=True, num_classes=10, image_size=32,
    channels=3, seed=0, noise=0.2, normalize=True)``. Each class has a fixed random prototype
    (two colours mixed by an oriented sinusoidal stripe pattern of class-specific frequency
    and direction); a sample is its class prototype, circularly shifted by up to 4 pixels,
    scaled in brightness (0.75..1.25) and with Gaussian noise of std ``noise`` (on the [0, 1]
    scale), stored as uint8. Prototypes depend only on ``seed``, so train and test share them;
    the samples of the two splits are drawn independently. Labels are balanced (within ±1
    per 1,024-image chunk). Default size: 10,000 (train) / 2,000 (test).
    ``.data`` uint8 ``(N, C, S, S)``; ``mean``/``std`` are measured on the first training
    chunk, so they are the same for both splits.
    """

    _CHUNK = 1024

    def __init__(self, num_samples: int | None = None, train: bool = True, num_classes: int = 10,
                 image_size: int = 32, channels: int = 3, seed: int = 0, noise: float = 0.2,
                 normalize: bool = True):
        if num_samples is None:
            num_samples = 10000 if train else 2000
        if num_samples < 0 or num_classes < 1 or image_size < 1 or channels < 1:
            raise ValueError("num_samples >= 0, num_classes >= 1, image_size >= 1, channels >= 1 "
                             f"required; got {num_samples}, {num_classes}, {image_size}, {channels}")
        self.train, self.seed, self.noise = bool(train), int(seed), float(noise)
        self._k, self._s, self._c = int(num_classes), int(image_size), int(channels)
        self._protos = self._prototypes()
        split = 0 if train else 1
        data = np.empty((num_samples, channels, image_size, image_size), np.uint8)
        targets = np.empty(num_samples, np.int64)
        for ci, start in enumerate(range(0, num_samples, self._CHUNK)):
            stop = min(start + self._CHUNK, num_samples)
            data[start:stop], targets[start:stop] = self._chunk(split, ci, start, stop - start)
        stats, _ = self._chunk(0, 0, 0, self._CHUNK)
        f = stats.astype(np.float64) / 255.0
        mean = f.mean(axis=(0, 2, 3))
        std = f.std(axis=(0, 2, 3)) + 1e-6
        super().__init__(data, targets, mean, std,
                         tuple(f"class{i}" for i in range(num_classes)), normalize)

    def _prototypes(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 7919])
        k, s, c = self._k, self._s, self._c
        col_a = rng.uniform(0.05, 0.95, size=(k, c))
        col_b = rng.uniform(0.05, 0.95, size=(k, c))
        angle = rng.uniform(0, np.pi, size=k)
        freq = rng.uniform(1.0, 4.0, size=k)
        phase = rng.uniform(0, 2 * np.pi, size=k)
        yy, xx = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
        proj = (np.cos(angle)[:, None, None] * yy + np.sin(angle)[:, None, None] * xx) / s
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])
        protos = (col_a[:, :, None, None] * mix[:, None] +
                  col_b[:, :, None, None] * (1 - mix[:, None]))
        return protos.astype(np.float32)  # (K, C, S, S) in [0, 1]

    def _chunk(self, split: int, chunk: int, start: int, n: int):
        rng = np.random.default_rng([self.seed, split, chunk])
        labels = rng.permutation((np.arange(n) + start) % self._k).astype(np.int64)
        s = self._s
        shift = min(4, s // 4)
        dy = rng.integers(-shift, shift + 1, size=n)
        dx = rng.integers(-shift, shift + 1, size=n)
        ys = (np.arange(s)[None, :] - dy[:, None]) % s
        xs = (np.arange(s)[None, :] - dx[:, None]) % s
        img = self._protos[labels[:, None, None, None], np.arange(self._c)[None, :, None, None],
                           ys[:, None, :, None], xs[:, None, None, :]]
        img *= rng.uniform(0.75, 1.25, size=(n, 1, 1, 1)).astype(np.float32)
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(self.noise)
        np.clip(img, 0.0, 1.0, out=img)
        return (img * 255.0 + 0.5).astype(np.uint8), labels


# ----------------------------------------------------------------------------- helpers

def get_dataset(name: str, root: str | os.PathLike | None = None, train: bool = True,
                download: bool = False, **kwargs) -> ArrayDataset:
    """Build a dataset by name: ``"mnist"`` (:class:`MNIST`, with ``subset_fallback=True``
    unless given), ``"cifar10"`` (:class:`CIFAR10`) or ``"synthetic"``
    (:class:`SyntheticImages`; ``root``/``download`` ignored). Extra keyword arguments go to
    the class. Raises ValueError for an unknown name."""
    key = name.lower().replace("-", "").replace("_", "")
    if key == "mnist":
        kwargs.setdefault("subset_fallback", True)
        return MNIST(root, train=train, download=download, **kwargs)
    if key in ("cifar10", "cifar"):
        return CIFAR10(root, train=train, download=download, **kwargs)
    if key == "synthetic":
        return SyntheticImages(train=train, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")


def train_augmentation(name: str):
    """The standard training augmentation for a dataset name, as a batch transform for
    :class:`~minigrad.data.DataLoader`: random crop (padding 4) + horizontal flip for
    ``"cifar10"`` and ``"synthetic"``, None for ``"mnist"``."""
    key = name.lower().replace("-", "").replace("_", "")
    if key == "mnist":
        return None
    if key in ("cifar10", "cifar", "synthetic"):
        return RandomCropFlip(padding=4, flip_p=0.5)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
