"""Resumable, verified, atomic downloads (standard library ``urllib`` + ``tqdm``).

A file is fetched into ``DEST.part`` (resumed with an HTTP ``Range`` request when a partial
file is already there or when the connection drops mid-way), checked, and only then moved
into place with :func:`os.replace`, so ``DEST`` either does not exist or is complete and
verified. Mirrors are tried in order; every failure is reported in the final error.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ._paths import DownloadError

__all__ = ["download_file", "md5_file", "md5_gunzipped", "mirrors_from_env"]

_USER_AGENT = "minigrad-data/1.0 (+python urllib)"


def md5_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of the bytes of ``path``."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def md5_gunzipped(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str | None:
    """Hex MD5 of the *decompressed* content of the gzip file ``path``; ``None`` if it is
    not a valid (complete) gzip stream."""
    h = hashlib.md5()
    try:
        with gzip.open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk_size), b""):
                h.update(block)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    return h.hexdigest()


def mirrors_from_env(var: str, default: Sequence[str]) -> list[str]:
    """The mirror list: whitespace/comma separated base URLs from the environment variable
    ``var`` if it is set and non-empty, else ``default``. Each base gets a trailing ``/``."""
    raw = os.environ.get(var, "")
    items = [m for m in raw.replace(",", " ").split() if m] or list(default)
    return [m if m.endswith("/") else m + "/" for m in items]


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200" -> 100
    if not value:
        return None
    try:
        unit, rest = value.strip().split(" ", 1)
        if unit.lower() != "bytes":
            return None
        return int(rest.split("-", 1)[0])
    except (ValueError, IndexError):
        return None


def _fetch_once(url: str, part: Path, timeout: float, progress: bool, desc: str,
                chunk_size: int) -> None:
    """One HTTP request appending to ``part`` (resuming from its size). Returns normally when
    the response was read to its end and is as long as announced; raises ``_Incomplete``
    when the stream stopped early (retryable, the partial bytes are kept), or another
    exception for a hard failure."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset > 0:
            return  # the partial file is already complete: let the checksum decide
        raise
    with resp:
        status = getattr(resp, "status", 200)
        if status == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != offset:  # server resumed from elsewhere: restart from scratch
                part.unlink(missing_ok=True)
                raise _Incomplete(f"asked for bytes from {offset}, server sent Content-Range "
                                  f"start {start}; restarting")
            mode = "ab"
        else:  # 200: server ignored Range (or none sent): start from scratch
            mode, offset = "wb", 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None and length.isdigit() else None
        from tqdm.auto import tqdm

        got = offset
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=desc, disable=not progress,
                                         leave=False) as bar:
            try:
                while True:
                    block = resp.read(chunk_size)
                    if not block:
                        break
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as e:
                raise _Incomplete(f"connection dropped after {got} bytes ({type(e).__name__})") from e
        if total is not None and got < total:
            raise _Incomplete(f"connection closed after {got} of {total} bytes")


class _Incomplete(Exception):
    """The transfer stopped early; the ``.part`` file keeps what arrived."""


def download_file(urls: Iterable[str], dest: str | os.PathLike,
                  check: Callable[[Path], bool] | None = None, *, progress: bool = True,
                  timeout: float = 30.0, max_resumes: int = 5,
                  chunk_size: int = 1 << 16) -> Path:
    """Download ``dest`` from the first working URL of ``urls``.

    The bytes go to ``dest + ".part"``; an existing partial file is resumed with an HTTP
    ``Range`` request, and a connection that drops mid-way is resumed up to ``max_resumes``
    times per URL. When complete, ``check(part_path)`` (e.g. an MD5 comparison) must return
    True, otherwise the partial file is deleted and the next URL is tried. A verified file is
    moved into place with :func:`os.replace` (atomic on the same filesystem). Shows a tqdm
    progress bar unless ``progress=False``. Returns ``Path(dest)``; raises
    :class:`DownloadError` listing every URL tried and why it failed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    urls = list(urls)
    if not urls:
        raise DownloadError(f"no URL to download {dest.name} from (empty mirror list)")
    for url in urls:
        stale = part.exists()  # a partial file left by an earlier run: maybe from other bytes
        resumes = 0
        ok = False
        while True:
            try:
                _fetch_once(url, part, timeout, progress, dest.name, chunk_size)
                ok = True
                break
            except _Incomplete as e:
                resumes += 1
                if resumes > max_resumes:
                    failures.append(f"{url}: {e}; gave up after {max_resumes} resumes "
                                    f"(partial file kept at {part})")
                    break
            except urllib.error.HTTPError as e:
                failures.append(f"{url}: HTTP {e.code} {e.reason}")
                break
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
                reason = getattr(e, "reason", e)
                failures.append(f"{url}: {type(e).__name__}: {reason}")
                break
        if not ok:
            continue
        if check is not None and not check(part):
            part.unlink(missing_ok=True)
            if stale:  # the old partial bytes may be the culprit: once more from scratch
                try:
                    _fetch_once(url, part, timeout, progress, dest.name, chunk_size)
                    if check(part):
                        os.replace(part, dest)
                        return dest
                except (_Incomplete, urllib.error.URLError, OSError,
                        http.client.HTTPException, ValueError):
                    pass
                part.unlink(missing_ok=True)
            failures.append(f"{url}: checksum mismatch (corrupt download deleted)")
            continue
        os.replace(part, dest)
        return dest
    raise DownloadError(f"could not download {dest.name}:\n  " + "\n  ".join(failures))
