"""Reverse-mode autodiff: the ``Function`` base class, graph walking and ``no_grad``.

A ``Function`` subclass writes ``forward`` and ``backward`` side by side.  Both
receive and return *storage* (backend arrays), never Tensors: ``forward(*args)``
gets the storage of every Tensor argument and the other arguments unchanged;
``backward(grad)`` returns one gradient (or None) per positional argument.
``self.be`` is the backend of the inputs, ``self.needs_grad`` says which
positional inputs need a gradient, and ``self.save(...)`` keeps what backward
needs (released after backward).

A subclass that lists input positions in ``grad_addend_inputs`` may be handed, in
``self.grad_addends`` (one entry per positional input, None where there is none), the
gradient already gathered for that input; its backward must then return that input's
gradient *plus* the addend, so that a kernel can fold the sum into a pass it makes
anyway (CPU convolution: the copy-out of dX) instead of a separate add.  An addend is
only read, except where ``self.grad_addend_writable`` is True for it: it is then the
``.grad`` array autograd made for a leaf (never one the user assigned), or a pending sum
no other object refers to, which backward may update in place and return, as PyTorch
accumulates ``.grad`` in place.
"""

import contextlib
import sys
import threading

_state = threading.local()


def is_grad_enabled():
    """True unless inside ``no_grad()``."""
    return getattr(_state, "enabled", True)


class _GradMode(contextlib.ContextDecorator):
    """Sets grad recording to ``ENABLED`` inside a ``with`` block or a decorated function and
    restores the previous mode on exit.  A class rather than a generator-based context
    manager: entering and leaving take 0.35 instead of 0.85 us."""

    ENABLED = False

    def __enter__(self):
        self._previous = getattr(_state, "enabled", True)
        _state.enabled = self.ENABLED
        return None

    def __exit__(self, *exc):
        _state.enabled = self._previous
        return False

    def _recreate_cm(self):
        # a decorated function may call itself: each call needs its own saved mode
        return type(self)()


class no_grad(_GradMode):
    """Context manager (and decorator) that disables graph recording, as ``torch.no_grad``."""

    ENABLED = False


def is_anomaly_enabled():
    """True inside ``detect_anomaly()``."""
    return getattr(_state, "anomaly", False)


@contextlib.contextmanager
def detect_anomaly():
    """Check every op's output and every gradient for NaN/Inf and name the op that made one.

    Like ``torch.autograd.detect_anomaly``: slower (one extra pass per tensor), for debugging.
    """
    previous = is_anomaly_enabled()
    _state.anomaly = True
    try:
        yield
    finally:
        _state.anomaly = previous


class AnomalyError(RuntimeError):
    """Raised in ``detect_anomaly()`` mode when an op produces a NaN or Inf."""


def _check_finite(be, value, what):
    if value is not None and getattr(value, "dtype", None) is not None and \
            value.dtype.kind == "f" and not be.all_finite(value):
        raise AnomalyError(f"{what} produced a non-finite value (NaN or Inf) in a tensor of shape "
                           f"{tuple(value.shape)}")


class enable_grad(_GradMode):
    """Context manager (and decorator) that re-enables graph recording inside ``no_grad``."""

    ENABLED = True


class Function:
    """Base of every differentiable op; call ``MyOp.apply(*args, **kwargs)``."""

    __slots__ = ("be", "needs_grad", "parents", "saved", "grad_addends", "grad_addend_writable",
                 "__dict__")

    grad_addend_inputs = ()

    def forward(self, *args, **kwargs):
        """Compute the output storage from input storage."""
        raise NotImplementedError

    def backward(self, grad):
        """Return a tuple with one gradient storage (or None) per positional input."""
        raise NotImplementedError

    def save(self, *values):
        """Keep ``values`` for backward."""
        self.saved = values

    def grad_addend(self, i):
        """``(addend, writable)`` for positional input ``i`` inside backward: the gradient
        already gathered for it (None when there is none; see ``grad_addend_inputs``) and
        whether backward may update that array in place."""
        addends = getattr(self, "grad_addends", None)
        if not addends or addends[i] is None:
            return None, False
        return addends[i], bool(self.grad_addend_writable[i])

    @classmethod
    def apply(cls, *args, **kwargs):
        """Run forward on ``args`` and record the node when a gradient is needed."""
        # Hot path (called for every op): module lookups are cached in globals and the
        # argument scan is one loop.
        tensor_cls = _TENSOR[0]
        if tensor_cls is None:
            tensor_cls = _bind_tensor()
        device = None
        record = False
        raw = []
        needs = []
        for a in args:
            if isinstance(a, tensor_cls):
                if device is None:
                    device = a.device
                elif a.device != device:
                    _TENSOR[1](args, cls.__name__)   # raises the device-mismatch error
                if a.requires_grad:
                    record = True
                    needs.append(True)
                else:
                    needs.append(False)
                raw.append(a.data)
            else:
                raw.append(a)
                needs.append(False)
        if device is None:
            device = "cpu"
        fn = cls()
        be = _BACKENDS.get(device)   # the registry's own dict of created backends
        if be is None:
            be = _TENSOR[2](device)
        fn.be = be
        fn.saved = ()
        if record and not getattr(_state, "enabled", True):
            record = False
        if record:
            fn.needs_grad = tuple(needs)
        out = fn.forward(*raw, **kwargs)
        if getattr(_state, "anomaly", False):
            _check_finite(be, out, f"forward of {cls.__name__}")
        result = tensor_cls._make(out, device, record)
        if record:
            fn.parents = tuple([a if isinstance(a, tensor_cls) else None for a in args])
            result._ctx = fn
        return result


_TENSOR = [None, None, None]
_BACKENDS = {}


def _bind_tensor():
    global _BACKENDS
    from . import backend as backend_registry
    from .tensor import Tensor, _common_device

    _BACKENDS = backend_registry._REGISTRY
    _TENSOR[0], _TENSOR[1], _TENSOR[2] = Tensor, _common_device, backend_registry.get
    return Tensor


def _topological_order(root):
    """Nodes reachable from ``root`` (Tensors with a ``_ctx``), outputs first, without recursion."""
    order = []
    visited = set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        ctx = node._ctx
        if ctx is not None:
            for parent in ctx.parents:
                if parent is not None and parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    order.reverse()
    return order


def _addend_of(parent, grads):
    """``(addend, into_leaf, writable)``: the gradient gathered so far for ``parent``, for a
    backward that adds it into its own result (the pending sum in ``grads``, else a plain
    leaf's stored ``.grad``); whether it is that ``.grad`` (the sum then replaces it); and
    whether the backward may add into it in place: a ``.grad`` array autograd made, or (with
    PENDING_ADDENDS_WRITABLE) a pending sum that ``grads`` alone refers to and that owns its
    memory."""
    if parent is None or not parent.requires_grad:
        return None, False, False
    pending = grads.get(id(parent))
    if pending is not None:
        # held by grads and this local variable: one reference more than _UNSHARED
        writable = (PENDING_ADDENDS_WRITABLE and references(pending) <= _UNSHARED + 1
                    and parent.be.owns_memory(pending))
        return pending, False, writable
    if parent._ctx is None and not parent._graph_freed and parent._grad is not None:
        stored = parent._grad.data
        if stored.shape == parent.shape and stored.dtype == parent.dtype:
            return stored, True, parent._grad_is_autograds()
    return None, False, False


def _grad_addends(ctx, grads):
    """``(addends, into_leaf, writable)`` for ctx's ``grad_addend_inputs``: one entry per
    input in each (see ``_addend_of``)."""
    n = len(ctx.parents)
    addends, into_leaf, writable = [None] * n, [False] * n, [False] * n
    seen = set()
    for i in ctx.grad_addend_inputs:
        parent = ctx.parents[i] if i < n else None
        if parent is None or id(parent) in seen or not ctx.needs_grad[i]:
            continue
        seen.add(id(parent))
        addends[i], into_leaf[i], writable[i] = _addend_of(parent, grads)
    return tuple(addends), into_leaf, tuple(writable)


# A backward that takes gradient addends (grad_addend_inputs) may add in place into a pending
# gradient sum that nothing but autograd refers to (a fresh array some other backward returned),
# as it may into a leaf's .grad; False hands it every pending sum read-only.
PENDING_ADDENDS_WRITABLE = True

# A leaf keeps the gradient array a backward made for it, as PyTorch does, when nothing
# else refers to that array; otherwise .grad is a copy.
TAKE_OVER_GRADIENTS = True


def references(x):
    """sys.getrefcount(x) for an object the caller holds in a local variable: compare it
    with a count taken the same way for a known case (as _UNSHARED is), never with a
    constant, since interpreters count call arguments differently."""
    return sys.getrefcount(x)


def _references_when_unshared():
    """What ``references`` reports for an object held by nothing but the caller's local
    variable."""
    pending = {0: object()}
    g = pending.pop(0)
    return references(g)


_UNSHARED = _references_when_unshared()


def run_backward(root, grad, retain_graph=False):
    """Propagate ``grad`` (storage) from ``root`` to every leaf that requires a gradient;
    the backward functions run with graph recording off, as PyTorch's do."""
    previous = getattr(_state, "enabled", True)
    _state.enabled = False
    try:
        _propagate(root, grad, retain_graph)
    finally:
        _state.enabled = previous


def _propagate(root, grad, retain_graph):
    """run_backward's graph walk."""
    anomaly = is_anomaly_enabled()
    grads = {id(root): grad}
    for node in _topological_order(root):
        g = grads.pop(id(node), None)
        if g is None:
            continue
        ctx = node._ctx
        if ctx is None:
            if node._graph_freed:
                raise RuntimeError(
                    "trying to backward through the graph a second time; the graph is freed "
                    "after backward() unless backward(retain_graph=True) is used")
            # g is referenced here by the local variable alone (the loop below drops its
            # own references) unless some other object holds it: then it is copied
            owned = (TAKE_OVER_GRADIENTS and references(g) <= _UNSHARED
                     and node.be.owns_memory(g))
            node._accumulate_grad(g, owned)
            continue
        if node._retains_grad:
            node._accumulate_grad(g)
        addends = None
        if ctx.grad_addend_inputs:
            addends, into_leaf, ctx.grad_addend_writable = _grad_addends(ctx, grads)
            ctx.grad_addends = addends
        parent_grads = ctx.backward(g)
        if addends is not None:
            ctx.grad_addends = ctx.grad_addend_writable = None
        if not isinstance(parent_grads, tuple):
            parent_grads = (parent_grads,)
        if anomaly:
            for i, pg in enumerate(parent_grads):
                _check_finite(ctx.be, pg, f"backward of {type(ctx).__name__} (gradient of input {i})")
        for i, (parent, pg) in enumerate(zip(ctx.parents, parent_grads)):
            if parent is None or pg is None or not parent.requires_grad:
                continue
            key = id(parent)
            if addends is not None and addends[i] is not None:
                # pg already holds the addend: it replaces what it was added to
                if into_leaf[i]:
                    parent._replace_grad(pg if pg.dtype == parent.dtype else ctx.be.astype(pg, parent.dtype))
                else:
                    grads[key] = pg
            elif key in grads:
                grads[key] = ctx.be.binary("add", grads[key], pg)
            else:
                grads[key] = pg
        parent_grads = pg = addends = None   # no references left for the take-over test
        if not retain_graph:
            ctx.saved = ()
            ctx.parents = ()
            node._ctx = None
            node._graph_freed = True
