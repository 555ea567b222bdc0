"""``Module`` and ``Parameter``: the PyTorch-style container for layers and their state."""

from collections import OrderedDict, namedtuple

import numpy as np

from .. import backend as backend_registry
from ..autograd import no_grad
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a ``Module`` registers as a learnable parameter (``requires_grad=True``).

    ``Parameter(data)`` takes a Tensor (sharing its storage) or anything ``Tensor`` accepts.
    """

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            data = np.zeros((0,), dtype=np.float32)
        if isinstance(data, Tensor):
            self.data = data.data
            self.device = data.device
            self._ctx = None
            self._grad = None
            self._retains_grad = False
            self._graph_freed = False
            self.requires_grad = False
            self.requires_grad_(requires_grad)
        else:
            super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class StateDictError(RuntimeError, ValueError):
    """``load_state_dict`` failed: missing, unexpected or mis-shaped keys (listed in the message)."""


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = "Keys reported by ``load_state_dict(strict=False)``."


class _HookHandle:
    """Handle returned by ``register_forward_hook``; ``remove()`` unregisters the hook."""

    _next = 0

    def __init__(self, hooks):
        self.hooks = hooks
        self.id = _HookHandle._next
        _HookHandle._next += 1

    def remove(self):
        """Unregister the hook."""
        self.hooks.pop(self.id, None)


def _move_storage(t, device, dtype):
    """Replace ``t``'s storage (and its gradient's) by a copy on ``device`` with ``dtype``, in place."""
    if t is None:
        return
    src_be = t.be
    if dtype is not None and t.dtype.kind == "f" and np.dtype(dtype) != t.dtype:
        t.data = src_be.astype(t.data, np.dtype(dtype))
    if device is not None and device != t.device:
        dst_be = backend_registry.get(device)
        t.data = dst_be.from_numpy(src_be.to_numpy(t.data))
        t.device = device
    if t.grad is not None:
        g = t.grad
        _move_storage(g, device, dtype)


class Module:
    """Base class of every layer and model (PyTorch's ``nn.Module``).

    Assigning a ``Parameter`` or ``Module`` to an attribute registers it;
    ``register_buffer`` registers non-learnable state (e.g. running statistics).
    ``__call__`` runs ``forward``.
    """

    training = True

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    def forward(self, *args, **kwargs):
        """Compute the module's output; subclasses override this."""
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            result = hook(self, args, out)
            if result is not None:
                out = result
        return out

    def register_forward_hook(self, hook):
        """Call ``hook(module, inputs, output)`` after every forward; returns a handle with ``remove()``."""
        handle = _HookHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    # --- registration ------------------------------------------------------
    def _check_init(self):
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"cannot assign to {type(self).__name__} before Module.__init__() is called; "
                f"call super().__init__() first")

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._check_init()
            self.__dict__.pop(name, None)
            self._buffers.pop(name, None)
            self._modules.pop(name, None)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._check_init()
            self.__dict__.pop(name, None)
            self._parameters.pop(name, None)
            self._buffers.pop(name, None)
            self._modules[name] = value
        elif "_parameters" in self.__dict__ and name in self._parameters:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter {name!r} "
                                f"(nn.Parameter or None expected)")
            self._parameters[name] = None
        elif "_buffers" in self.__dict__ and name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer {name!r} "
                                f"(Tensor or None expected)")
            self._buffers[name] = value
        elif "_modules" in self.__dict__ and name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module {name!r}")
            self._modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        """Register ``param`` (a Parameter or None) under ``name``."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}): expected nn.Parameter or None, "
                            f"got {type(param).__name__}")
        self._check_init()
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        """Register a non-learnable Tensor (or None) under ``name``; in ``state_dict`` unless not persistent."""
        self._check_init()
        if "." in name or not name:
            raise KeyError(f"buffer name must be non-empty and contain no '.', got {name!r}")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer({name!r}): expected a Tensor or None, got {type(tensor).__name__}")
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name, module):
        """Register a child module under ``name``."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module({name!r}): {type(module).__name__} is not a Module")
        self._check_init()
        self._modules[str(name)] = module

    # --- traversal ----------------------------------------------------------
    def named_modules(self, memo=None, prefix=""):
        """Yield ``(name, module)`` for this module and every descendant (each once)."""
        if memo is None:
            memo = set()
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is None:
                continue
            yield from child.named_modules(memo, prefix + ("." if prefix else "") + name)

    def modules(self):
        """Yield this module and every descendant."""
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        """Yield ``(name, child)`` for the direct children."""
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self):
        """Yield the direct children."""
        for _, child in self.named_children():
            yield child

    def _named_members(self, store, recurse, persistent_only=False):
        seen = set()
        mods = self.named_modules() if recurse else [("", self)]
        for mod_prefix, mod in mods:
            for name, value in getattr(mod, store).items():
                if value is None or id(value) in seen:
                    continue
                if persistent_only and name in mod._non_persistent:
                    continue
                seen.add(id(value))
                yield (mod_prefix + "." if mod_prefix else "") + name, value

    def named_parameters(self, prefix="", recurse=True):
        """Yield ``(name, Parameter)`` with PyTorch's dotted names (shared parameters once)."""
        for name, p in self._named_members("_parameters", recurse):
            yield (prefix + "." if prefix else "") + name, p

    def parameters(self, recurse=True):
        """Yield every learnable parameter."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        """Yield ``(name, buffer)``."""
        for name, b in self._named_members("_buffers", recurse):
            yield (prefix + "." if prefix else "") + name, b

    def buffers(self, recurse=True):
        """Yield every buffer."""
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        """Call ``fn(module)`` on every descendant (children first) and on ``self``; returns ``self``."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # --- modes and devices --------------------------------------------------
    def train(self, mode=True):
        """Set training mode (``eval()`` is ``train(False)``) recursively; returns ``self``."""
        if not isinstance(mode, bool):
            raise ValueError(f"train(mode) expects a bool, got {mode!r}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        """Set evaluation mode (BatchNorm uses running statistics, Dropout is off)."""
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        """Set ``requires_grad`` on every parameter; returns ``self``."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        """Reset the gradients of every parameter (to None, or to zeros)."""
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.zero_()

    def to(self, device=None, dtype=None):
        """Move parameters and buffers (with their gradients) to ``device`` and/or float ``dtype``, in place.

        ``to("cuda")``, ``to(mg.float64)`` and ``to(device=..., dtype=...)`` all work;
        the Parameter objects stay the same, so optimizers built before keep working.
        """
        if device is not None and not isinstance(device, str):
            device, dtype = None, device if dtype is None else dtype
        if device is not None:
            backend_registry.get(device)  # clear error for an unknown device
        for t in list(self.parameters()) + list(self.buffers()):
            _move_storage(t, device, dtype)
        return self

    def cpu(self):
        """Move to the CPU."""
        return self.to("cpu")

    def cuda(self):
        """Move to the CUDA device."""
        return self.to("cuda")

    def float(self):
        """Convert floating parameters and buffers to float32."""
        return self.to(dtype=np.float32)

    def double(self):
        """Convert floating parameters and buffers to float64."""
        return self.to(dtype=np.float64)

    # --- state dict ---------------------------------------------------------
    def _state_items(self):
        """``(name, tensor)`` for every parameter and persistent buffer, PyTorch's order."""
        for mod_prefix, mod in self.named_modules():
            head = mod_prefix + "." if mod_prefix else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    yield head + name, p
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent:
                    yield head + name, b

    def state_dict(self, prefix=""):
        """``{name: NumPy array copy}`` of every parameter and persistent buffer (PyTorch's key names)."""
        out = OrderedDict()
        for name, t in self._state_items():
            out[prefix + name] = np.array(t.numpy(), copy=True)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy values (NumPy arrays or Tensors) into the parameters and buffers, in place.

        With ``strict=True`` missing or unexpected keys are an error; shape
        mismatches always are.  The error lists every problem at once.  Returns
        ``IncompatibleKeys(missing_keys, unexpected_keys)``.
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict expects a dict, got {type(state_dict).__name__}")
        own = OrderedDict(self._state_items())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        arrays, mismatched = {}, []
        for name, t in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            arr = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
            if tuple(arr.shape) != tuple(t.shape):
                mismatched.append(f"{name}: checkpoint shape {tuple(arr.shape)}, model shape {tuple(t.shape)}")
                continue
            if arr.dtype.kind not in "biuf":
                mismatched.append(f"{name}: unsupported dtype {arr.dtype}")
                continue
            arrays[name] = arr
        if mismatched or (strict and (missing or unexpected)):
            lines = [f"Error(s) in loading state_dict for {type(self).__name__}:"]
            if missing and strict:
                lines.append("  Missing key(s): " + ", ".join(repr(k) for k in missing))
            if unexpected and strict:
                lines.append("  Unexpected key(s): " + ", ".join(repr(k) for k in unexpected))
            if mismatched:
                lines.append("  Size mismatch(es): " + "; ".join(mismatched))
            raise StateDictError("\n".join(lines))
        with no_grad():
            for name, arr in arrays.items():
                t = own[name]
                be = t.be
                be.copy_(t.data, be.from_numpy(np.ascontiguousarray(arr, dtype=t.dtype)))
        return IncompatibleKeys(missing, unexpected)

    # --- repr ---------------------------------------------------------------
    def extra_repr(self):
        """Extra text inside this module's ``repr`` parentheses (layers override it)."""
        return ""

    def __repr__(self):
        lines = []
        extra = self.extra_repr()
        if extra:
            lines.extend(extra.split("\n"))
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        main = type(self).__name__ + "("
        if not self._modules and len(lines) <= 1:
            return main + (lines[0] if lines else "") + ")"
        return main + "\n  " + "\n  ".join(lines) + "\n)"

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))
