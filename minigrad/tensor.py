"""``Tensor``: an n-dimensional array on a device that records differentiable ops."""

import math
import numbers
import weakref

import numpy as np

from . import autograd
from . import backend as backend_registry

float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
int64 = np.dtype(np.int64)
int32 = np.dtype(np.int32)
uint8 = np.dtype(np.uint8)
bool_ = np.dtype(np.bool_)


def _common_device(args, what):
    """The one device shared by the Tensor arguments; a clear error if they differ."""
    device = None
    for a in args:
        if isinstance(a, Tensor):
            if device is None:
                device = a.device
            elif a.device != device:
                shapes = ", ".join(
                    f"{tuple(t.shape)} on {t.device}" for t in args if isinstance(t, Tensor))
                raise ValueError(
                    f"{what}: tensors are on different devices ({shapes}); "
                    f"move them to one device with .to(device) first")
    return device or "cpu"


def _as_numpy(data, dtype):
    if isinstance(data, Tensor):
        data = data.numpy()
    array = np.asarray(data)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    elif array.dtype == np.float64 and not isinstance(data, np.ndarray):
        array = array.astype(np.float32)
    elif array.dtype.kind == "f" and array.dtype != np.float64:
        array = array.astype(np.float32, copy=False)
    elif array.dtype.kind == "b":
        pass
    elif array.dtype.kind in "iu" and array.dtype != np.uint8:
        array = array.astype(np.int64, copy=False)
    return array


class Tensor:
    """An n-dimensional array with an optional gradient, PyTorch style.

    ``Tensor(data, requires_grad=False, device="cpu", dtype=None)`` copies
    ``data`` (a NumPy array, nested list, number or Tensor) to ``device``.
    Python floats and lists become float32; NumPy float64 arrays keep float64
    (used for reference checks); integers become int64.
    """

    __array_priority__ = 1000

    def __init__(self, data, requires_grad=False, device="cpu", dtype=None):
        be = backend_registry.get(device)
        array = _as_numpy(data, None if dtype is None else np.dtype(dtype))
        self.data = be.from_numpy(np.array(array, copy=True))
        self.device = device
        self._ctx = None
        self._grad = None
        self._retains_grad = False
        self._graph_freed = False
        self.requires_grad = False
        self.requires_grad_(requires_grad)

    @classmethod
    def _make(cls, storage, device, requires_grad=False):
        t = cls.__new__(cls)
        t.data = storage
        t.device = device
        t._ctx = None
        t._grad = None
        t._retains_grad = False
        t._graph_freed = False
        t.requires_grad = requires_grad
        return t

    # --- properties -----------------------------------------------------
    @property
    def shape(self):
        """The shape as a tuple of ints."""
        return tuple(self.data.shape)

    @property
    def dtype(self):
        """The NumPy dtype of the elements."""
        return np.dtype(self.data.dtype)

    @property
    def ndim(self):
        """Number of dimensions."""
        return len(self.data.shape)

    def dim(self):
        """Number of dimensions (PyTorch spelling)."""
        return self.ndim

    def size(self, dim=None):
        """The shape, or the length of dimension ``dim`` (PyTorch spelling)."""
        return self.shape if dim is None else self.shape[dim]

    def numel(self):
        """Number of elements."""
        return math.prod(self.data.shape)

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    @property
    def be(self):
        """The backend (kernel set) of this tensor's device."""
        return backend_registry.get(self.device)

    @property
    def is_leaf(self):
        """True for tensors not produced by a recorded op."""
        return self._ctx is None

    @property
    def grad(self):
        """The accumulated gradient (a Tensor) or None.

        backward() adds into its array in place, as PyTorch does, when that array is one
        autograd made; a .grad tensor or array the user assigned is never written (the sum
        goes to a new array, which later backward calls then add into)."""
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"grad must be a Tensor or None, got {type(value).__name__}")
        if value is not None and value.shape != self.shape:
            raise ValueError(f"grad shape {value.shape} does not match tensor shape {self.shape}")
        self._grad = value
        self._grad_made = None      # the user's tensor: backward gives it a new sum

    def requires_grad_(self, flag=True):
        """Set ``requires_grad`` in place (only floating tensors can require a gradient)."""
        if flag and self.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, not {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    def retain_grad(self):
        """Keep the gradient of this non-leaf tensor after backward."""
        self._retains_grad = True
        return self

    def _accumulate_grad(self, g, owned=False):
        """Add ``g`` to ``.grad``; the first ``g`` becomes ``.grad`` itself when ``owned``
        (nothing else refers to it) and of this tensor's dtype, else a copy of it.  Later
        gradients are added into that array in place, as PyTorch does, while ``.grad`` still
        holds the array autograd made (never one the user assigned) and the backend can."""
        be = self.be
        if self._grad is None:
            data = g if owned and g.dtype == self.dtype else be.astype(g, self.dtype)
            self._grad = Tensor._make(data, self.device)
            self._mark_grad_made(data)
        elif not (self._grad_is_autograds() and be.add_into_(self._grad.data, g)):
            self._replace_grad(be.binary("add", self._grad.data, g))

    def _grad_is_autograds(self):
        """True when ``.grad`` holds the array autograd made for this tensor (not one the
        user assigned, to it or to its ``.data``), which backward may update in place."""
        made = getattr(self, "_grad_made", None)
        return self._grad is not None and made is not None and made() is self._grad.data

    def _replace_grad(self, data):
        """Make ``data``, a new gradient sum autograd made, the storage of ``.grad``."""
        self._grad.data = data
        self._mark_grad_made(data)

    def _mark_grad_made(self, data):
        """Remember ``data`` as the ``.grad`` array autograd made (a weak reference)."""
        try:
            self._grad_made = weakref.ref(data)
        except TypeError:       # storage without weak references: always a new sum
            self._grad_made = None

    # --- conversion -----------------------------------------------------
    def numpy(self):
        """A NumPy copy of the data (for a CPU tensor, a view that must not be mutated)."""
        return self.be.to_numpy(self.data)

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.numel() != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.numpy().reshape(()).item()

    def tolist(self):
        """Nested Python lists."""
        return self.numpy().tolist()

    def detach(self):
        """A tensor sharing the data, cut from the graph."""
        return Tensor._make(self.data, self.device)

    def to(self, device=None, dtype=None):
        """Copy to another device and/or dtype (returns ``self`` when nothing changes)."""
        out = self
        if dtype is not None and np.dtype(dtype) != self.dtype:
            from .ops.elementwise import Cast

            out = Cast.apply(out, dtype=np.dtype(dtype))
        if device is not None and device != out.device:
            from .ops.shape import ToDevice

            out = ToDevice.apply(out, device=device)
        return out

    def cpu(self):
        """Copy to the CPU."""
        return self.to("cpu")

    def cuda(self):
        """Copy to the CUDA device."""
        return self.to("cuda")

    def float(self):
        """Convert to float32."""
        return self.to(dtype=float32)

    def double(self):
        """Convert to float64."""
        return self.to(dtype=float64)

    def long(self):
        """Convert to int64 (not differentiable)."""
        return Tensor._make(self.be.astype(self.data, int64), self.device)

    def clone(self):
        """A copy with its own storage; the gradient flows back to ``self`` (as torch.clone)."""
        from .ops.elementwise import Cast

        return Cast.apply(self, dtype=self.dtype)

    def contiguous(self):
        """Returns self (storage layout is the backend's concern)."""
        return self

    def __repr__(self):
        extra = f", device='{self.device}'" if self.device != "cpu" else ""
        if self.dtype != float32:
            extra += f", dtype={self.dtype}"
        if self._ctx is not None:
            extra += f", grad_fn={type(self._ctx).__name__}"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        return f"tensor({body}{extra})"

    def __bool__(self):
        if self.numel() != 1:
            raise ValueError(f"truth value of a tensor with shape {self.shape} is ambiguous")
        return bool(self.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.dtype.kind not in "iu":
            raise TypeError("only integer tensors can be used as an index")
        return int(self.item())

    def __hash__(self):
        return id(self)

    # --- autodiff -------------------------------------------------------
    def backward(self, gradient=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf requiring a gradient."""
        if not self.requires_grad:
            raise RuntimeError(
                f"backward() on a tensor of shape {self.shape} that does not require grad "
                f"(no input had requires_grad=True, or it was computed under no_grad())")
        be = self.be
        if gradient is None:
            if self.numel() != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar output, got shape {self.shape}; "
                    f"pass backward(gradient) of the same shape")
            g = be.full(self.shape, 1.0, self.dtype)
        else:
            if not isinstance(gradient, Tensor):
                gradient = Tensor(np.asarray(gradient), device=self.device, dtype=self.dtype)
            if gradient.shape != self.shape:
                raise ValueError(
                    f"backward(gradient): gradient shape {gradient.shape} does not match "
                    f"output shape {self.shape}")
            if gradient.device != self.device:
                raise ValueError(
                    f"backward(gradient): gradient on {gradient.device}, output on {self.device}")
            g = gradient.data
            if g.dtype != self.dtype:
                g = be.astype(g, self.dtype)
            # No defensive copy: backward functions never write into their incoming
            # gradient, and a leaf copies the first gradient it stores.
        autograd.run_backward(self, g, retain_graph=retain_graph)

    def zero_(self):
        """Set every element to zero in place."""
        self.be.fill_(self.data, 0)
        return self

    def fill_(self, value):
        """Set every element to ``value`` in place."""
        self.be.fill_(self.data, value)
        return self

    def copy_(self, src):
        """Copy ``src`` (same shape) into this tensor in place."""
        if not isinstance(src, Tensor):
            src = Tensor(np.asarray(src), device=self.device, dtype=self.dtype)
        if src.shape != self.shape:
            raise ValueError(f"copy_: source shape {src.shape} != destination shape {self.shape}")
        if src.device != self.device:
            src = src.to(self.device)
        self.be.copy_(self.data, self.be.astype(src.data, self.dtype))
        return self


def _install_methods():
    """Attach operators and methods; they live with the ops in ``minigrad.ops``."""
    from .ops import elementwise, reduce, shape, matmul, softmax

    for module in (elementwise, reduce, shape, matmul, softmax):
        for name, fn in getattr(module, "TENSOR_METHODS", {}).items():
            setattr(Tensor, name, fn)


def tensor(data, requires_grad=False, device="cpu", dtype=None):
    """Create a Tensor (as ``torch.tensor``)."""
    return Tensor(data, requires_grad=requires_grad, device=device, dtype=dtype)


def is_number(x):
    """True for Python/NumPy real scalars (not bools' arrays or Tensors)."""
    return isinstance(x, numbers.Number) and not isinstance(x, bool) or isinstance(x, (np.floating, np.integer))
