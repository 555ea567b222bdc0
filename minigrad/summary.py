"""See inside a network: a per-layer summary (shapes, parameters, FLOPs, activation memory)
and per-layer gradient norms.

    import minigrad as mg, zoo
    s = mg.summary(zoo.vgg16(), (3, 224, 224))      # prints the table, returns a Summary
    s.rows[0]["flops"], s.totals["params"], s.to_json()

    from minigrad.summary import layer_grad_norms
    loss.backward(); norms = layer_grad_norms(model)   # {"conv1": 0.31, "bn1": ..., "fc": ...}

How the numbers are counted
---------------------------
One row per *leaf* module (a module with no children; dotted names from
``named_modules()``), in the order the forward pass first calls them (leaves that never
run come last, in definition order, with ``calls == 0``).
Output shapes come from one forward pass under ``mg.no_grad()`` on zeros of shape
``(batch_size, *input_shape)``, with the model temporarily in eval mode (so BatchNorm
running statistics are not touched); each leaf's ``forward`` is wrapped for the pass and
restored afterwards, and the model's train/eval flags are restored too. A leaf called
more than once in one forward (e.g. a ReLU module reused inside a ResNet block) gets its
FLOPs and activation memory summed over the calls (``calls`` in the row says how many).

FLOPs are forward FLOPs for the whole batch, a multiply-add counting as 2:

==================  ===========================================================
Conv2d              ``2*(Cin/groups)*KH*KW*Cout*OH*OW`` per image, ``+ Cout*OH*OW`` with bias
Linear              ``2*in*out`` per row, ``+ out`` with bias
BatchNorm1d/2d      2 per output element (normalise + affine folded into one
                    multiply-add, as at inference)
ReLU                1 per output element
MaxPool2d           ``KH*KW`` per output element (comparisons)
AvgPool2d           ``KH*KW`` per output element (adds + one divide)
AdaptiveAvgPool2d   1 per input element (adds) + 1 per output element (divide)
LocalResponseNorm   ``2*size + 3`` per element (window sum of squares, scale, power,
                    divide)
Dropout, Flatten,   0 (identity at inference / a view)
Identity
other leaf types    not counted: ``flops`` is None and the type is listed in
                    ``totals["uncounted_types"]``
==================  ===========================================================

Element-wise work done in a parent's ``forward`` rather than by a leaf module (the
residual addition of a ResNet block, a functional ``F.relu``) is not counted.
Activation memory of a row is ``prod(output shape) * itemsize`` of the output dtype,
summed over calls.
"""

import json
import math
from collections import OrderedDict

import numpy as np

from .autograd import no_grad
from .ops.conv import resolve_padding, pair

__all__ = ["summary", "Summary", "SummaryError", "layer_grad_norms", "leaf_modules"]


class SummaryError(ValueError):
    """The forward pass of :func:`summary` failed; the message names the layer and shapes."""


# ----------------------------------------------------------------------------- helpers

def leaf_modules(model):
    """``[(dotted_name, module)]`` of the modules with no children, in ``named_modules()``
    order (the model itself when it has no children; each instance once)."""
    out, seen = [], set()
    for name, m in model.named_modules():
        if id(m) in seen:
            continue
        seen.add(id(m))
        if not any(True for _ in m.children()):
            out.append((name, m))
    return out


def _type_names(module):
    return [c.__name__ for c in type(module).__mro__]


def _kind(module):
    """The first known layer type in the module's class hierarchy (or its own class name)."""
    known = ("Conv2d", "Linear", "BatchNorm2d", "BatchNorm1d", "ReLU", "MaxPool2d", "AvgPool2d",
             "AdaptiveAvgPool2d", "LocalResponseNorm", "Dropout", "Flatten", "Identity")
    for n in _type_names(module):
        if n in known:
            return n
    return type(module).__name__


def _own_parameters(module):
    """Parameters registered directly on ``module`` (not on its children)."""
    try:
        return [p for _, p in module.named_parameters(recurse=False)]
    except TypeError:  # a named_parameters without ``recurse``
        return [p for n, p in module.named_parameters() if "." not in n]


def _numel(shape):
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _tensors_in(value):
    """The tensors in a forward output (a Tensor, or a tuple/list/dict of them)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors_in(v)]
    return []


def _padding_text(module, kind):
    """For Conv2d and pools: the padding as given and the pair actually used."""
    raw = getattr(module, "padding", None)
    if raw is None or kind not in ("Conv2d", "MaxPool2d", "AvgPool2d"):
        return ""
    if kind == "Conv2d":
        kernel = getattr(module, "kernel_size", None)
        if kernel is None and getattr(module, "weight", None) is not None:
            kernel = module.weight.shape[2:]
        try:
            used = resolve_padding(raw, pair(kernel, "kernel_size"),
                                   pair(getattr(module, "stride", 1), "stride"),
                                   pair(getattr(module, "dilation", 1), "dilation"))
        except (ValueError, TypeError):
            return repr(raw)
    else:
        used = pair(raw, "padding")
    text = f"({used[0]},{used[1]})" if used[0] != used[1] else str(used[0])
    return f"{raw}={text}" if isinstance(raw, str) else text


def _layer_flops(kind, module, in_shapes, out_shapes):
    """Forward FLOPs of one call (see the module docstring), or None if not counted."""
    out = _numel(out_shapes[0]) if out_shapes else 0
    has_bias = getattr(module, "bias", None) is not None
    if kind == "Conv2d":
        cout, cin, kh, kw = module.weight.shape
        n, _, oh, ow = out_shapes[0]
        return n * (2 * cin * kh * kw * cout * oh * ow + (cout * oh * ow if has_bias else 0))
    if kind == "Linear":
        fout, fin = module.weight.shape
        rows = out // fout if fout else 0
        return rows * (2 * fin * fout + (fout if has_bias else 0))
    if kind in ("BatchNorm2d", "BatchNorm1d"):
        return 2 * out
    if kind == "ReLU":
        return out
    if kind in ("MaxPool2d", "AvgPool2d"):
        kh, kw = pair(getattr(module, "kernel_size"), "kernel_size")
        return kh * kw * out
    if kind == "AdaptiveAvgPool2d":
        return (_numel(in_shapes[0]) if in_shapes else 0) + out
    if kind == "LocalResponseNorm":
        return (2 * int(getattr(module, "size", 1)) + 3) * out
    if kind in ("Dropout", "Flatten", "Identity"):
        return 0
    return None


# ----------------------------------------------------------------------------- formatting

def _human(value, unit=""):
    """4 significant figures with a K/M/G/T suffix."""
    if value is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}{unit}"
    return f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"


def _bytes(value):
    if value is None:
        return "-"
    for scale, suffix in ((2 ** 30, "GiB"), (2 ** 20, "MiB"), (2 ** 10, "KiB")):
        if value >= scale:
            return f"{value / scale:.2f} {suffix}"
    return f"{value} B"


def _pct(part, whole):
    return 100.0 * part / whole if whole and part is not None else 0.0


class Summary:
    """What :func:`summary` returns.

    Attributes: ``rows`` (one dict per leaf layer, keys: ``name, type, input_shape,
    output_shape, padding, params, trainable_params, flops, activation_bytes, calls,
    params_pct, flops_pct, activation_pct``), ``totals`` (``params, trainable_params,
    param_bytes, flops, activation_bytes, input_bytes, output_shape, uncounted_types``),
    ``model``, ``input_shape``, ``batch_size``, ``dtype``. ``str(s)`` is the table,
    ``s.to_json()`` / ``s.to_dict()`` the machine-readable form.
    """

    def __init__(self, model_name, input_shape, batch_size, dtype, rows, totals):
        self.model = model_name
        self.input_shape = tuple(input_shape)
        self.batch_size = batch_size
        self.dtype = np.dtype(dtype).name
        self.rows = rows
        self.totals = totals

    def row(self, name):
        """The row of the layer called ``name`` (KeyError if there is none)."""
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(f"no layer named {name!r}; layers: {[r['name'] for r in self.rows]}")

    def to_dict(self):
        """A JSON-ready dict: ``model, input_shape, batch_size, dtype, rows, totals``."""
        def clean(v):
            if isinstance(v, tuple):
                return list(v)
            if isinstance(v, (np.integer,)):
                return int(v)
            if isinstance(v, (np.floating,)):
                return float(v)
            return v
        return {"model": self.model, "input_shape": list(self.input_shape),
                "batch_size": self.batch_size, "dtype": self.dtype,
                "rows": [{k: clean(v) for k, v in r.items()} for r in self.rows],
                "totals": {k: clean(v) for k, v in self.totals.items()}}

    def to_json(self, indent=2):
        """The summary as a JSON string (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent)

    def table(self):
        """The human-readable table (what ``str()`` gives)."""
        head = ("Layer", "Type", "Output shape", "Pad", "Params", "%", "FLOPs", "%",
                "Act. mem", "%")
        lines = []
        for r in self.rows:
            shape = "x".join(str(d) for d in r["output_shape"]) if r["output_shape"] else "-"
            if r["calls"] > 1:
                shape += f" (x{r['calls']})"
            lines.append((r["name"] or "(model)", r["type"], shape, r["padding"],
                          f"{r['params']:,}", f"{r['params_pct']:.1f}", _human(r["flops"]),
                          f"{r['flops_pct']:.1f}", _bytes(r["activation_bytes"]),
                          f"{r['activation_pct']:.1f}"))
        t = self.totals
        total = ("Total", "", "x".join(str(d) for d in t["output_shape"] or ()), "",
                 f"{t['params']:,}", "100", _human(t["flops"]), "100",
                 _bytes(t["activation_bytes"]), "100")
        widths = [max(len(str(x[i])) for x in [head, total] + lines) for i in range(len(head))]
        right = {4, 5, 6, 7, 8, 9}

        def fmt(cells):
            return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        rule = "-" * len(fmt(head))
        out = [f"{self.model}: input {self.batch_size}x" +
               "x".join(str(d) for d in self.input_shape) + f" {self.dtype}",
               rule, fmt(head), rule] + [fmt(x) for x in lines] + [rule, fmt(total), rule]
        out.append(f"Parameters: {t['params']:,} ({t['trainable_params']:,} trainable, "
                   f"{_bytes(t['param_bytes'])})   Forward FLOPs: {_human(t['flops'])}   "
                   f"Activations: {_bytes(t['activation_bytes'])}   "
                   f"Input: {_bytes(t['input_bytes'])}")
        if t["uncounted_types"]:
            out.append("FLOPs not counted for: " + ", ".join(t["uncounted_types"]))
        return "\n".join(out)

    def __str__(self):
        return self.table()

    def __repr__(self):
        t = self.totals
        return (f"Summary({self.model}, input={self.input_shape}, layers={len(self.rows)}, "
                f"params={t['params']:,}, flops={t['flops']:,}, "
                f"activation_bytes={t['activation_bytes']:,})")


# ----------------------------------------------------------------------------- summary

def summary(model, input_shape, device="cpu", dtype=np.float32, batch_size=1, print_table=True):
    """Per-layer table of a model: output shape, padding used, parameters, forward FLOPs and
    activation memory, with totals and each layer's share of them.

    ``input_shape`` is one sample's shape without the batch dimension, ``(C, H, W)`` for
    images. Runs one forward pass under ``no_grad`` on zeros of shape
    ``(batch_size, *input_shape)`` with the model in eval mode (restored afterwards).
    Prints the table when ``print_table`` and returns a :class:`Summary`. An input the model
    cannot take (too small, wrong channels) raises :class:`SummaryError` (a ValueError)
    naming the layer and the shape it received. See the module docstring for how FLOPs are
    counted.
    """
    from .tensor import Tensor

    if isinstance(input_shape, int):
        input_shape = (input_shape,)
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"summary: input_shape must be positive sizes, got {input_shape}")
    if int(batch_size) < 1:
        raise ValueError(f"summary: batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    dtype = np.dtype(dtype)
    model_name = type(model).__name__

    leaves = leaf_modules(model)
    records = {id(m): {"calls": 0, "in": [], "out": [], "first": None} for _, m in leaves}
    last = {"name": None, "shape": None, "count": 0}
    full_shape = (batch_size,) + input_shape

    def wrap(name, module, original):
        def forward(*args, **kwargs):
            in_shapes = [tuple(t.shape) for t in _tensors_in(list(args))]
            try:
                result = original(*args, **kwargs)
            except SummaryError:
                raise
            except Exception as exc:
                raise SummaryError(
                    f"summary: layer '{name}' ({type(module).__name__}) failed on input of "
                    f"shape {in_shapes[0] if len(in_shapes) == 1 else in_shapes} (model input "
                    f"{full_shape}); is the input too small or of the wrong shape for this "
                    f"model? {type(exc).__name__}: {exc}") from exc
            out_shapes = [tuple(t.shape) for t in _tensors_in(result)]
            for s in out_shapes:
                if 0 in s:
                    raise SummaryError(
                        f"summary: layer '{name}' ({type(module).__name__}) turned input of "
                        f"shape {in_shapes[0] if in_shapes else '?'} into an empty output "
                        f"{s} (model input {full_shape}); the input is too small for this "
                        f"model")
            rec = records[id(module)]
            rec["calls"] += 1
            if rec["first"] is None:
                rec["first"] = last["count"]
                last["count"] += 1
            rec["in"].append(in_shapes)
            rec["out"].append([(tuple(t.shape), np.dtype(t.dtype).itemsize)
                               for t in _tensors_in(result)])
            last["name"], last["shape"] = name, out_shapes
            return result
        return forward

    modes = [(m, m.training) for _, m in model.named_modules() if hasattr(m, "training")]
    saved = []
    try:
        for name, m in leaves:
            had = "forward" in m.__dict__
            saved.append((m, had, m.__dict__.get("forward")))
            object.__setattr__(m, "forward", wrap(name, m, m.forward))
        if hasattr(model, "eval"):
            model.eval()
        x = Tensor(np.zeros(full_shape, dtype=dtype), device=device)
        with no_grad():
            try:
                y = model(x)
            except SummaryError:
                raise
            except Exception as exc:
                if last["name"] is None:
                    where = "before the first layer"
                else:
                    shape = last["shape"][0] if len(last["shape"]) == 1 else last["shape"]
                    where = f"after layer '{last['name']}' (output {shape})"
                raise SummaryError(
                    f"summary: forward of {model_name} on input {full_shape} failed {where}: "
                    f"{type(exc).__name__}: {exc}") from exc
    finally:
        for m, had, fwd in reversed(saved):
            if had:
                object.__setattr__(m, "forward", fwd)
            else:
                m.__dict__.pop("forward", None)
        for m, flag in modes:
            if m.training != flag:
                object.__setattr__(m, "training", flag)

    # parameters: per leaf (own), plus any registered directly on non-leaf modules
    seen = set()
    rows = []
    uncounted = []
    never = len(leaves)  # leaves that did not run go last, in definition order
    order = sorted(leaves, key=lambda nm: (records[id(nm[1])]["first"]
                                           if records[id(nm[1])]["first"] is not None else never))
    for name, m in order:
        rec = records[id(m)]
        kind = _kind(m)
        params = trainable = 0
        for p in _own_parameters(m):
            if id(p) in seen:
                continue
            seen.add(id(p))
            params += p.numel()
            trainable += p.numel() if getattr(p, "requires_grad", True) else 0
        flops, act = 0, 0
        for ins, outs in zip(rec["in"], rec["out"]):
            f = _layer_flops(kind, m, ins, [s for s, _ in outs])
            if f is None:
                flops = None
            elif flops is not None:
                flops += f
            act += sum(_numel(s) * size for s, size in outs)
        if flops is None and kind not in uncounted:
            uncounted.append(kind)
        out_shape = rec["out"][0][0][0] if rec["out"] and rec["out"][0] else None
        in_shape = rec["in"][0][0] if rec["in"] and rec["in"][0] else None
        rows.append({"name": name, "type": type(m).__name__, "input_shape": in_shape,
                     "output_shape": out_shape, "padding": _padding_text(m, kind),
                     "params": int(params), "trainable_params": int(trainable),
                     "flops": None if flops is None else int(flops),
                     "activation_bytes": int(act), "calls": rec["calls"]})
    other = [p for p in model.parameters() if id(p) not in seen]
    if other:
        n = sum(p.numel() for p in other)
        rows.append({"name": "(other)", "type": "parameters of non-leaf modules",
                     "input_shape": None, "output_shape": None, "padding": "",
                     "params": int(n),
                     "trainable_params": int(sum(p.numel() for p in other
                                                 if getattr(p, "requires_grad", True))),
                     "flops": 0, "activation_bytes": 0, "calls": 0})
        for p in other:
            seen.add(id(p))

    all_params = []
    pids = set()
    for p in model.parameters():
        if id(p) not in pids:
            pids.add(id(p))
            all_params.append(p)
    y_shapes = [tuple(t.shape) for t in _tensors_in(y)]
    totals = {
        "params": int(sum(r["params"] for r in rows)),
        "trainable_params": int(sum(r["trainable_params"] for r in rows)),
        "param_bytes": int(sum(p.numel() * np.dtype(p.dtype).itemsize for p in all_params)),
        "flops": int(sum(r["flops"] or 0 for r in rows)),
        "activation_bytes": int(sum(r["activation_bytes"] for r in rows)),
        "input_bytes": int(_numel(full_shape) * dtype.itemsize),
        "output_shape": y_shapes[0] if len(y_shapes) == 1 else y_shapes,
        "uncounted_types": uncounted,
    }
    for r in rows:
        r["params_pct"] = round(_pct(r["params"], totals["params"]), 3)
        r["flops_pct"] = round(_pct(r["flops"], totals["flops"]), 3)
        r["activation_pct"] = round(_pct(r["activation_bytes"], totals["activation_bytes"]), 3)
    result = Summary(model_name, input_shape, batch_size, dtype, rows, totals)
    if print_table:
        print(result.table())
    return result


# ----------------------------------------------------------------------------- gradient norms

def layer_grad_norms(model, layer_types=None):
    """Per-layer gradient L2 norms: ``OrderedDict{layer_name: norm}``.

    A layer is a module owning parameters directly (``conv1``, ``layer1.0.bn2``, ``fc``);
    its norm is ``sqrt(sum of squares)`` over the gradients of all its parameters together
    (weight and bias), computed in float64. Order is definition order (that of
    ``named_parameters()``), which for the zoo models is forward order. Layers none of whose
    parameters has a gradient are left out. ``layer_types`` (class names such as
    ``("Conv2d", "Linear")``) keeps only those layers. Reads the gradients only: training is
    unchanged by calling it.
    """
    modules = dict(model.named_modules())
    groups = OrderedDict()
    seen = set()
    for pname, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        layer = pname.rsplit(".", 1)[0] if "." in pname else ""
        groups.setdefault(layer, []).append(p)
    norms = OrderedDict()
    for layer, params in groups.items():
        if layer_types is not None:
            m = modules.get(layer)
            if m is None or not set(_type_names(m)) & set(layer_types):
                continue
        total, found = 0.0, False
        for p in params:
            g = p.grad
            if g is None:
                continue
            found = True
            a = np.asarray(g.numpy(), dtype=np.float64)
            total += float(np.dot(a.ravel(), a.ravel()))
        if found:
            norms[layer or type(model).__name__] = math.sqrt(total)
    return norms
