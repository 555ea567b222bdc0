"""Shape ops: reshape/view, transpose/permute, flatten, indexing, pad, concatenate, device moves."""

import numpy as np

from .. import backend as backend_registry
from ..autograd import Function
from ..tensor import Tensor


def _resolve_shape(shape, numel, what):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    shape = [int(s) for s in shape]
    if shape.count(-1) > 1:
        raise ValueError(f"{what}: only one dimension can be -1, got {tuple(shape)}")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        if known == 0 or numel % known:
            raise ValueError(f"{what}: cannot reshape {numel} elements into {tuple(shape)}")
        shape[shape.index(-1)] = numel // known
    if int(np.prod(shape, dtype=np.int64)) != numel:
        raise ValueError(f"{what}: cannot reshape {numel} elements into shape {tuple(shape)}")
    return tuple(shape)


class Reshape(Function):
    """New shape, same elements in row-major order."""

    def forward(self, x, shape):
        self.x_shape = x.shape
        return self.be.reshape(x, shape)

    def backward(self, g):
        return (self.be.reshape(g, self.x_shape),)


class Permute(Function):
    """Axes reordered."""

    def forward(self, x, axes):
        self.inverse = tuple(np.argsort(axes))
        return self.be.transpose(x, axes)

    def backward(self, g):
        return (self.be.transpose(g, self.inverse),)


class GetItem(Function):
    """Basic slicing and integer-array indexing.

    The gradient is g placed at the index in zeros of x's shape; when x already has a
    gradient gathered (several slices of one tensor, as a fused QKV projection's three), g is
    added at the index into that gradient instead (``index_add_into``: on the CPU in place
    when autograd allows, else into a copy of it)."""

    grad_addend_inputs = (0,)

    def forward(self, x, index):
        self.x_shape, self.index = x.shape, index
        return self.be.getitem(x, index)

    def backward(self, g):
        addend, writable = self.grad_addend(0)
        if addend is None:
            return (self.be.index_add(self.x_shape, self.index, g),)
        if addend.dtype != g.dtype or tuple(addend.shape) != tuple(self.x_shape):
            return (self.be.binary("add", addend, self.be.index_add(self.x_shape, self.index, g)),)
        return (self.be.index_add_into(addend, self.index, g, writable),)


class Pad(Function):
    """Constant padding with one ``(before, after)`` pair per axis."""

    def forward(self, x, pads, value):
        self.pads = pads
        return self.be.pad(x, pads, value)

    def backward(self, g):
        index = tuple(slice(b, g.shape[i] - a) for i, (b, a) in enumerate(self.pads))
        return (self.be.getitem(g, index),)


class Concatenate(Function):
    """Join tensors along an axis."""

    def forward(self, *xs, axis):
        self.axis = axis
        self.sizes = [x.shape[axis] for x in xs]
        return self.be.concatenate(xs, axis)

    def backward(self, g):
        grads, start = [], 0
        for size in self.sizes:
            index = [slice(None)] * len(g.shape)
            index[self.axis] = slice(start, start + size)
            grads.append(self.be.getitem(g, tuple(index)))
            start += size
        return tuple(grads)


class ToDevice(Function):
    """Copy between devices; the gradient goes back the other way."""

    def forward(self, x, device):
        self.dst = backend_registry.get(device)
        return self.dst.from_numpy(self.be.to_numpy(x))

    def backward(self, g):
        return (self.be.from_numpy(self.dst.to_numpy(g)),)

    @classmethod
    def apply(cls, x, device):
        out = super().apply(x, device=device)
        out.device = device
        return out


# --- public functions ------------------------------------------------------

def reshape(x, *shape):
    """Same elements, new shape (one dimension may be -1)."""
    shape = _resolve_shape(shape, x.numel(), f"reshape of {x.shape}")
    if shape == x.shape:
        return x
    return Reshape.apply(x, shape=shape)


def permute(x, *axes):
    """Reorder the axes (as ``torch.permute``)."""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    axes = tuple(int(a) % max(x.ndim, 1) for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"permute: {axes} is not a permutation of the {x.ndim} axes of {x.shape}")
    return Permute.apply(x, axes=axes)


def transpose(x, dim0=None, dim1=None):
    """Swap two axes (PyTorch); with no arguments reverse all axes (NumPy ``.T``)."""
    if dim0 is None and dim1 is None:
        return Permute.apply(x, axes=tuple(reversed(range(x.ndim))))
    if isinstance(dim0, (tuple, list)):
        return permute(x, dim0)
    if dim1 is None:
        raise ValueError("transpose(dim0, dim1) needs two axes")
    axes = list(range(x.ndim))
    d0, d1 = dim0 % x.ndim, dim1 % x.ndim
    axes[d0], axes[d1] = axes[d1], axes[d0]
    return Permute.apply(x, axes=tuple(axes))


def flatten(x, start_dim=0, end_dim=-1):
    """Merge dimensions ``start_dim..end_dim`` into one."""
    if x.ndim == 0:
        return reshape(x, 1)
    s, e = start_dim % x.ndim, end_dim % x.ndim
    merged = int(np.prod(x.shape[s:e + 1], dtype=np.int64))
    return reshape(x, x.shape[:s] + (merged,) + x.shape[e + 1:])


def unsqueeze(x, dim):
    """Insert a size-1 dimension at ``dim``."""
    dim = dim % (x.ndim + 1)
    return reshape(x, x.shape[:dim] + (1,) + x.shape[dim:])


def squeeze(x, dim=None):
    """Drop size-1 dimensions (only ``dim`` if given)."""
    if dim is None:
        return reshape(x, tuple(n for n in x.shape if n != 1))
    dim = dim % x.ndim
    if x.shape[dim] != 1:
        return x
    return reshape(x, x.shape[:dim] + x.shape[dim + 1:])


def _check_index(x, index):
    items = index if isinstance(index, tuple) else (index,)
    converted = []
    for item in items:
        if isinstance(item, Tensor):
            item = item.numpy()
        if isinstance(item, (list, np.ndarray)):
            item = np.asarray(item)
            if item.dtype.kind not in "iub":
                raise TypeError(f"index arrays must be integer or bool, got {item.dtype}")
        converted.append(item)
    index = tuple(converted)
    try:
        np.empty(x.shape, dtype=np.bool_)[index]  # cheap bounds and shape check with NumPy's message
    except IndexError as err:
        raise IndexError(f"index {index!r} is invalid for a tensor of shape {x.shape}: {err}") from None
    return index


def getitem(x, index):
    """``x[index]`` for ints, slices, None, Ellipsis and integer arrays."""
    return GetItem.apply(x, index=_check_index(x, index))


def pad(x, pad_width, value=0.0):
    """Constant padding; ``pad_width`` is one ``(before, after)`` pair per axis (NumPy style)."""
    pads = tuple((int(b), int(a)) for b, a in pad_width)
    if len(pads) != x.ndim:
        raise ValueError(f"pad: need one (before, after) pair per axis of {x.shape}, got {len(pads)}")
    if any(b < 0 or a < 0 for b, a in pads):
        raise ValueError(f"pad: negative padding {pads}")
    return Pad.apply(x, pads=pads, value=value)


def concatenate(tensors, axis=0):
    """Join tensors along ``axis`` (all other dimensions must match)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concatenate needs at least one tensor")
    ref = tensors[0]
    axis = axis % ref.ndim
    for t in tensors[1:]:
        if t.ndim != ref.ndim or any(
                a != b for i, (a, b) in enumerate(zip(t.shape, ref.shape)) if i != axis):
            shapes = ", ".join(str(t.shape) for t in tensors)
            raise ValueError(f"concatenate along axis {axis}: shapes do not match: {shapes}")
    return Concatenate.apply(*tensors, axis=axis)


def cat(tensors, dim=0):
    """PyTorch name for ``concatenate``."""
    return concatenate(tensors, axis=dim)


def stack(tensors, dim=0):
    """Join tensors along a new axis."""
    return concatenate([unsqueeze(t, dim) for t in tensors], axis=dim)


def expand(x, *shape):
    """Broadcast ``x`` to ``shape`` (differentiable)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    zeros = Tensor._make(x.be.full(shape, 0, x.dtype), x.device)
    return x + zeros


TENSOR_METHODS = {
    "reshape": reshape, "view": reshape, "permute": permute, "transpose": transpose,
    "flatten": flatten, "unsqueeze": unsqueeze, "squeeze": squeeze, "__getitem__": getitem,
    "expand": expand, "T": property(lambda x: transpose(x)),
}
