"""Checkpoint files: ``save``/``load`` of nested dicts of arrays in the safetensors format, no pickle.

Layout of a file written by ``save``:

* every array (NumPy array, NumPy scalar or Tensor) found in the object is a
  safetensors tensor named by its flattened key path (``"model.conv1.weight"``,
  ``"optimizer.state.0.exp_avg"``);
* the object's structure, with every array replaced by a reference to its
  tensor name and every other value (int, float, str, bool, None, list, tuple,
  dict with any of those as keys) kept as JSON, is the ``minigrad.structure``
  metadata entry;
* ``minigrad.sha256`` is a SHA-256 over the structure and every tensor's name,
  dtype, shape and bytes; ``load`` recomputes it and refuses a file that does
  not match (tampered or truncated) with a ``ValueError`` naming the file.

Writes are atomic: a temporary file in the destination directory is written,
flushed and fsync'ed, then ``os.replace``-d over the destination.
"""

import hashlib
import io as _bytes_io
import json
import math
import os
import struct
import tempfile

import numpy as np

FORMAT_VERSION = "1"
_STRUCT_KEY = "minigrad.structure"
_SHA_KEY = "minigrad.sha256"
_FORMAT_KEY = "minigrad.format"


def _encode(obj, path, tensors):
    """JSON-able skeleton of ``obj``; arrays go into ``tensors`` under unique flattened names."""
    from .tensor import Tensor

    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return {"__float__": repr(obj)}
    if isinstance(obj, (np.ndarray, Tensor, np.generic)):
        if isinstance(obj, Tensor):
            arr, tag = obj.numpy(), "__tensor__"
        elif isinstance(obj, np.generic):
            arr, tag = np.asarray(obj), "__npscalar__"
        else:
            arr, tag = obj, "__tensor__"
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"save: array at {path or '<root>'!r} has unsupported dtype {arr.dtype}")
        name = path or "_"
        base, n = name, 1
        while name in tensors:
            name = f"{base}#{n}"
            n += 1
        tensors[name] = arr if arr.flags.c_contiguous else arr.copy(order="C")
        return {tag: name}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{path}.{i}" if path else str(i), tensors) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else {"__tuple__": items}
    if isinstance(obj, dict):
        pairs = []
        for k, v in obj.items():
            if not (k is None or isinstance(k, (str, int, float, bool, tuple))):
                raise TypeError(f"save: dict key {k!r} at {path or '<root>'!r} has unsupported type "
                                f"{type(k).__name__}")
            key = _encode(k, "", {})
            pairs.append([key, _encode(v, f"{path}.{k}" if path else str(k), tensors)])
        return {"__dict__": pairs}
    raise TypeError(f"save: value at {path or '<root>'!r} has unsupported type {type(obj).__name__} "
                    f"(use dicts, lists, numbers, strings, None, NumPy arrays or Tensors)")


def _decode(obj, tensors):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__dict__" in obj:
            return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in obj["__dict__"]}
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__npscalar__" in obj:
            return tensors[obj["__npscalar__"]][()]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
        raise ValueError(f"unknown entry {obj!r}")
    return obj


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def _digest(structure, tensors):
    h = hashlib.sha256()
    h.update(structure.encode("utf-8"))
    for name in sorted(tensors):
        arr = tensors[name]
        h.update(b"\0" + name.encode("utf-8") + b"\0" + arr.dtype.str.encode() + b"\0"
                 + repr(tuple(arr.shape)).encode() + b"\0")
        h.update(arr.tobytes(order="C"))
    return h.hexdigest()


def save(obj, path, metadata=None):
    """Write ``obj`` (a nested dict/list of arrays, Tensors and plain values) to ``path`` atomically.

    ``metadata`` is an optional dict of extra string entries stored in the file
    header (read back with ``load_metadata``).  Returns the path.
    """
    from safetensors.numpy import save as st_save

    path = os.fspath(path)
    tensors = {}
    structure = json.dumps(_encode(obj, "", tensors), separators=(",", ":"))
    meta = {}
    for k, v in (metadata or {}).items():
        if str(k).startswith("minigrad."):
            raise ValueError(f"save: metadata key {k!r} is reserved")
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    meta[_FORMAT_KEY] = FORMAT_VERSION
    meta[_STRUCT_KEY] = structure
    meta[_SHA_KEY] = _digest(structure, tensors)
    payload = st_save(tensors, metadata=meta)
    write_file_atomic(path, payload, what="save")
    return path


def write_file_atomic(path, data, what="write_file_atomic"):
    """Write the bytes ``data`` to ``path`` atomically: a temporary file in the destination
    directory is written, flushed and fsync'ed, then renamed over ``path`` (and the directory
    fsync'ed), so that a reader sees the old file or the whole new one, never a part.
    ``what`` names the caller in the error for a missing directory."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{what}: directory {directory!r} for {path!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def save_figure(fig, path, **savefig_kwargs):
    """Save the matplotlib figure ``fig`` to ``path`` atomically (``write_file_atomic``), in
    the format its extension names (PNG without one); ``savefig_kwargs`` go to
    ``fig.savefig`` (``dpi=...``).  Returns the path."""
    buffer = _bytes_io.BytesIO()
    fmt = os.path.splitext(os.fspath(path))[1][1:].lower() or "png"
    fig.savefig(buffer, format=fmt, **savefig_kwargs)
    return write_file_atomic(path, buffer.getvalue(), what="save_figure")


def _read(path):
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: not a minigrad checkpoint (file is {len(data)} bytes; truncated?)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"{path}: corrupt or truncated checkpoint (header of {n} bytes, file of {len(data)})")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}: corrupt checkpoint header ({err})") from None
    meta = header.get("__metadata__") or {}
    return path, data, meta


def load_metadata(path):
    """The user metadata entries (strings) stored by ``save(..., metadata=...)``."""
    _, _, meta = _read(path)
    return {k: v for k, v in meta.items() if not k.startswith("minigrad.")}


def load(path, device=None):
    """Read what ``save`` wrote: arrays come back as NumPy arrays, other values as saved.

    Raises ``ValueError`` naming the file when it is truncated, corrupt or its
    checksum does not match.  Nothing is unpickled.
    """
    from safetensors.numpy import load as st_load

    path, data, meta = _read(path)
    if _STRUCT_KEY not in meta or _SHA_KEY not in meta:
        raise ValueError(f"{path}: not a minigrad checkpoint (no {_STRUCT_KEY}/{_SHA_KEY} metadata)")
    try:
        tensors = st_load(data)
    except Exception as err:  # safetensors raises its own error type
        raise ValueError(f"{path}: corrupt or truncated checkpoint ({err})") from None
    structure = meta[_STRUCT_KEY]
    if _digest(structure, tensors) != meta[_SHA_KEY]:
        raise ValueError(f"{path}: checksum mismatch; the checkpoint is corrupt or was modified")
    try:
        skeleton = json.loads(structure)
        return _decode(skeleton, tensors)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path}: corrupt checkpoint structure ({err})") from None
