"""Embedding lookup: rows of a weight matrix picked by integer indices."""

import numpy as np

from ..tensor import Tensor
from .shape import getitem


def embedding(input, weight):  # noqa: A002
    """``torch.nn.functional.embedding``: ``weight[input]`` for an integer ``input`` of any
    shape; the gradient adds into the picked rows (repeated indices accumulate)."""
    idx = input.numpy() if isinstance(input, Tensor) else np.asarray(input)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got dtype {idx.dtype}")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num_embeddings, dim), got {weight.shape}")
    n = weight.shape[0]
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise ValueError(f"embedding: index {bad} is out of range for {n} embeddings")
    return getitem(weight, idx.astype(np.int64))
