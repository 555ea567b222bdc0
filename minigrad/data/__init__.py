"""minigrad.data: datasets (MNIST, CIFAR-10, synthetic), download + cache, DataLoader,
batch transforms.

Data directory: ``root=`` / CLI ``--data-dir``, else ``$MINIGRAD_DATA``, else
``~/.cache/minigrad``; it holds one folder per dataset (``DIR/mnist/``, ``DIR/cifar10/``).

    from minigrad.data import get_dataset, DataLoader, train_augmentation
    train = get_dataset("mnist", root="../shared/data", train=True)   # falls back to subset
    if train.is_subset: print(train.fallback_message)
    loader = DataLoader(train, batch_size=128, shuffle=True, seed=0, prefetch=True)
    for images, labels in loader: ...      # minigrad Tensors, float32 NCHW / int64

Images are stored uint8 ``(N, C, H, W)`` in ``.data``; samples and batches are float32
normalised with the dataset's mean/std. No pickle is ever loaded.
"""
from ._paths import DatasetNotFoundError, DownloadError, default_cache_dir, resolve_data_dir
from .datasets import (CIFAR10, CIFAR10_MEAN, CIFAR10_MIRRORS, CIFAR10_STD, DATASET_NAMES, MNIST,
                       MNIST_MEAN, MNIST_MIRRORS, MNIST_STD, SUBSET_PATH, ArrayDataset,
                       SyntheticImages, get_dataset, load_mnist, load_mnist_subset,
                       train_augmentation)
from .download import download_file, md5_file
from .formats import parse_cifar_batch, parse_idx, read_cifar_batch, read_idx, write_idx
from .loader import DataLoader
from .transforms import (Compose, RandomCrop, RandomCropFlip, RandomHorizontalFlip,
                         make_normalize_lut, normalize_batch)

#: Alias: the synthetic colour dataset (``get_dataset("synthetic")``).
Synthetic = SyntheticImages

__all__ = [
    "ArrayDataset", "MNIST", "CIFAR10", "SyntheticImages", "Synthetic", "DataLoader",
    "get_dataset", "load_mnist", "load_mnist_subset", "train_augmentation", "DATASET_NAMES",
    "resolve_data_dir", "default_cache_dir", "DatasetNotFoundError", "DownloadError",
    "download_file", "md5_file", "read_idx", "parse_idx", "write_idx", "read_cifar_batch",
    "parse_cifar_batch", "RandomCrop", "RandomHorizontalFlip", "RandomCropFlip", "Compose",
    "normalize_batch", "make_normalize_lut", "MNIST_MIRRORS", "CIFAR10_MIRRORS", "MNIST_MEAN",
    "MNIST_STD", "CIFAR10_MEAN", "CIFAR10_STD", "SUBSET_PATH",
]
