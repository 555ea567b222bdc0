"""Drop the CPU kernels' Numba cache when any source file of this package has changed.

Numba checks a cached kernel against the source file that defines it, and nothing else.
Most kernels here inline helpers from other modules of the package (``blas.gemm_rm``,
``channel_tf``'s transforms, ``kernels.crop_padded``, ...): after one of those modules
changes, kernels loaded from the cache keep running the old helper until their own file
changes too.  That happened while measuring (BENCHMARKS_perf.md, change 78), and it
happens to anyone who edits a helper, or pulls a change to one, with a warm cache.

:func:`check` (run once, when ``minigrad.cpu`` is imported, before any kernel is loaded)
hashes the package's ``*.py`` files and compares the hash with a stamp kept next to the
cache files.  When they differ it deletes the package's cache files (``*.nbi``, ``*.nbc``)
and writes the new stamp, so every kernel recompiles once against the current sources.
``MINIGRAD_CACHE_STAMP=0`` in the environment turns this off.
"""

import glob
import hashlib
import os

STAMP_NAME = "minigrad_sources.stamp"
_HERE = os.path.dirname(os.path.abspath(__file__))
_state = {"status": "not checked"}


def sources_digest(folder=_HERE):
    """SHA-256 over the names and contents of the ``*.py`` files in ``folder``."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
        h.update(b"\0")
    return h.hexdigest()


def _probe():
    """A function of this package, for asking Numba where the package's cache lives."""


def cache_folder():
    """Where Numba keeps the cache files of this package's kernels: its ``__pycache__``
    when that is writable and NUMBA_CACHE_DIR is unset (asked without importing Numba),
    else wherever Numba's own lookup says."""
    if not os.environ.get("NUMBA_CACHE_DIR"):
        in_tree = os.path.join(_HERE, "__pycache__")
        try:
            os.makedirs(in_tree, exist_ok=True)
            if os.access(in_tree, os.W_OK):
                return in_tree
        except OSError:
            pass
    from numba.core.caching import CompileResultCacheImpl
    return CompileResultCacheImpl(_probe).locator.get_cache_path()


def check(folder=None):
    """Delete stale cached kernels (see the module docstring); returns what it did."""
    if os.environ.get("MINIGRAD_CACHE_STAMP", "1") == "0":
        _state["status"] = "off (MINIGRAD_CACHE_STAMP=0)"
        return _state["status"]
    try:
        folder = folder or cache_folder()
        digest = sources_digest()
        stamp = os.path.join(folder, STAMP_NAME)
        try:
            with open(stamp) as f:
                if f.read().strip() == digest:
                    _state["status"] = "cache matches the sources"
                    return _state["status"]
        except FileNotFoundError:
            pass
        removed = 0
        for pattern in ("*.nbi", "*.nbc"):
            for path in glob.glob(os.path.join(folder, pattern)):
                try:
                    os.remove(path)
                    removed += 1
                except FileNotFoundError:   # another process got there first
                    pass
        os.makedirs(folder, exist_ok=True)
        tmp = f"{stamp}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(digest + "\n")
        os.replace(tmp, stamp)
        _state["status"] = (f"sources changed: {removed} cached kernel files dropped"
                            if removed else "stamp written (no cached kernels yet)")
    except OSError as e:   # a read-only cache: Numba itself will not write there either
        _state["status"] = f"not checked ({e.strerror or e})"
    return _state["status"]


def status():
    """One line on what :func:`check` did in this process (for ``cli.py info``)."""
    return _state["status"]
