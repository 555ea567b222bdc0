"""Parsers for the on-disk formats: IDX (MNIST) and the CIFAR-10 binary batches.

Both parsers check everything they read (magic numbers, header, sizes, label range) and
raise :class:`ValueError` naming the file and what was expected. Nothing is ever unpickled.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "write_idx", "parse_idx", "parse_cifar_batch", "read_cifar_batch",
           "IDX_DTYPES", "CIFAR_RECORD_BYTES", "PICKLE_REFUSAL"]

#: IDX type codes (third magic byte) -> big-endian NumPy dtype.
IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

#: Bytes per record of a CIFAR-10 binary batch: 1 label byte + 3 * 32 * 32 pixel bytes.
CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32

#: Explanation appended to every refusal of the CIFAR-10 python (pickle) variant.
PICKLE_REFUSAL = ("minigrad never unpickles data (a pickle can run arbitrary code). Use the "
                  "CIFAR-10 *binary* version instead: cifar-10-binary.tar.gz from "
                  "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz "
                  "(md5 c32a1d4ab5d03f1284b67883e8d87530), or its extracted "
                  "data_batch_1.bin ... data_batch_5.bin and test_batch.bin")


def _read_maybe_gzip(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from None
    return raw


def parse_idx(buf: bytes, name: str = "<bytes>", expected_magic: int | None = None) -> np.ndarray:
    """Parse the bytes of an IDX file (uncompressed) into an array in native byte order.

    ``expected_magic`` (e.g. ``0x803`` for uint8 3-D images, ``0x801`` for uint8 labels)
    is checked when given. Raises ValueError naming ``name`` for a bad magic number, an
    unknown type code, a truncated header, or a payload whose size does not match the header.
    """
    if len(buf) < 4:
        raise ValueError(f"{name}: too short to be an IDX file ({len(buf)} bytes; "
                         f"expected a 4-byte magic number and a header)")
    magic = int.from_bytes(buf[:4], "big")
    code, ndim = buf[2], buf[3]
    if buf[0] != 0 or buf[1] != 0 or code not in IDX_DTYPES or ndim == 0:
        exp = f"0x{expected_magic:08X}" if expected_magic is not None else "0x0000TTNN"
        raise ValueError(f"{name}: not an IDX file: bad magic number 0x{magic:08X} "
                         f"(expected {exp})")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{name}: bad magic number 0x{magic:08X}, expected "
                         f"0x{expected_magic:08X} (type 0x{expected_magic >> 8 & 0xFF:02X}, "
                         f"{expected_magic & 0xFF} dimensions)")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{name}: truncated IDX header ({len(buf)} bytes, expected {header})")
    dims = tuple(int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    want = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(buf) - header
    if got != want:
        kind = "truncated" if got < want else "wrong size"
        raise ValueError(f"{name}: {kind}: header says {'x'.join(map(str, dims))} "
                         f"{dtype.name} = {want} data bytes, file has {got}")
    arr = np.frombuffer(buf, dtype=dtype, offset=header, count=want // dtype.itemsize)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file, gzip-compressed (detected by content) or raw. See :func:`parse_idx`."""
    path = Path(path)
    return parse_idx(_read_maybe_gzip(path), str(path), expected_magic)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed if ``compress`` or the name ends in
    ``.gz``). The inverse of :func:`read_idx`; used by tests and tools."""
    path = Path(path)
    array = np.asarray(array)
    codes = {v.newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    head = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    body = head + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if compress or (compress is None and path.name.endswith(".gz")):
        body = gzip.compress(body, mtime=0)
    path.write_bytes(body)
    return path


def parse_cifar_batch(buf: bytes, name: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR-10 binary batch: records of 1 label byte then 3,072 pixel bytes
    (1,024 red, 1,024 green, 1,024 blue, row-major 32x32). Returns ``(images, labels)``:
    uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``. Raises ValueError naming ``name`` when the
    size is not a positive multiple of 3,073, a label is outside 0..9, or the bytes are a
    Python pickle (the refused python variant)."""
    if buf[:1] == b"\x80":  # pickle protocol opcode; never a valid CIFAR label byte
        raise ValueError(f"{name}: this is a Python pickle (the CIFAR-10 python version), "
                         f"not the binary version. {PICKLE_REFUSAL}")
    n, rem = divmod(len(buf), CIFAR_RECORD_BYTES)
    if n == 0 or rem != 0:
        raise ValueError(f"{name}: wrong size: {len(buf)} bytes is not a positive multiple of "
                         f"{CIFAR_RECORD_BYTES} (1 label byte + 3072 pixel bytes per record; "
                         f"an official batch is 10000 records = 30730000 bytes); truncated, "
                         f"or not the CIFAR-10 binary format")
    rec = np.frombuffer(buf, dtype=np.uint8).reshape(n, CIFAR_RECORD_BYTES)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise ValueError(f"{name}: record {bad} has label {labels[bad]}, expected 0..9 "
                         f"(CIFAR-100 binary files, with 2 label bytes, are not CIFAR-10)")
    images = rec[:, 1:].reshape(n, 3, 32, 32).copy()
    return images, labels


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR-10 binary batch file (e.g. ``data_batch_1.bin``). See
    :func:`parse_cifar_batch`."""
    path = Path(path)
    return parse_cifar_batch(path.read_bytes(), str(path))
