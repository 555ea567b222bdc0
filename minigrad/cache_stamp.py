"""Drop a kernel package's Numba cache when any source file of that package has changed.

Numba checks a cached kernel against the source file that defines it, and nothing else.
Most CPU kernels inline helpers from other modules of ``minigrad.cpu`` (``blas.gemm_rm``,
``channel_tf``'s transforms, ``kernels.crop_padded``, ...), and the CUDA kernels of
``minigrad_cuda`` device functions from ``_common``: after one of those modules changes,
kernels loaded from the cache keep running the old helper until their own file changes too.
That happened while measuring (BENCHMARKS_perf.md, change 78), and it happens to anyone who
edits a helper, or pulls a change to one, with a warm cache.

:func:`check` (run by each kernel package before any of its kernels is loaded: ``minigrad.cpu``
when imported, ``minigrad_cuda`` when its backend is created) hashes each module of the package
together with the package modules it imports, directly or not (``from .blas import ...``,
``from . import channel_tf``), and compares the hashes with a stamp kept next to the cache
files.  For each module whose hash differs it deletes that module's cache files
(``<module>.*.nbi``, ``.nbc``) and then writes the new stamp, so those kernels recompile once
against the current sources; the other modules keep their cache.  ``MINIGRAD_CACHE_STAMP=0``
in the environment turns this off.
"""

import glob
import hashlib
import json
import os
import re

STAMP_NAME = "minigrad_sources.stamp"
_status = {}   # package folder -> what check() did there


_IMPORT_FROM = re.compile(r"^\s*from \.(\w+) import", re.M)
_IMPORT_NAMES = re.compile(r"^\s*from \. import ([\w ,]+)", re.M)


def module_digests(folder):
    """{module name: SHA-256 of its source and of every package module it imports,
    directly or through others} for the ``*.py`` files in ``folder``."""
    sources = {}
    for path in glob.glob(os.path.join(folder, "*.py")):
        with open(path, "rb") as f:
            sources[os.path.basename(path)[:-3]] = f.read()
    imports = {}
    for name, src in sources.items():
        text = src.decode("utf-8", "replace")
        found = set(_IMPORT_FROM.findall(text))
        for group in _IMPORT_NAMES.findall(text):
            found.update(part.split(" as ")[0].strip() for part in group.split(","))
        imports[name] = found & set(sources)
    digests = {}
    for name in sources:
        seen, todo = set(), [name]
        while todo:
            mod = todo.pop()
            if mod not in seen:
                seen.add(mod)
                todo.extend(imports[mod])
        h = hashlib.sha256()
        for mod in sorted(seen):
            h.update(mod.encode() + b"\0" + sources[mod] + b"\0")
        digests[name] = h.hexdigest()
    return digests


def cache_folder(package_dir, probe):
    """Where Numba keeps the cache files of the kernels in ``package_dir`` (``probe``: a
    function defined in that folder): its ``__pycache__`` when that is writable and
    NUMBA_CACHE_DIR is unset (asked without importing Numba), else wherever Numba's own lookup
    says."""
    if not os.environ.get("NUMBA_CACHE_DIR"):
        in_tree = os.path.join(package_dir, "__pycache__")
        try:
            os.makedirs(in_tree, exist_ok=True)
            if os.access(in_tree, os.W_OK):
                return in_tree
        except OSError:
            pass
    from numba.core.caching import CompileResultCacheImpl
    return CompileResultCacheImpl(probe).locator.get_cache_path()


def check(package_dir, probe, folder=None):
    """Delete the stale cached kernels of the package in ``package_dir`` (see the module
    docstring; ``probe``: a function defined there, ``folder``: its cache folder when known);
    returns what it did, also kept for ``status(package_dir)``."""
    _status[package_dir] = _check(folder, package_dir, probe)
    return _status[package_dir]


def _check(folder, package_dir, probe):
    if os.environ.get("MINIGRAD_CACHE_STAMP", "1") == "0":
        return "off (MINIGRAD_CACHE_STAMP=0)"
    try:
        folder = folder or cache_folder(package_dir, probe)
        digests = module_digests(package_dir)
        stamp = os.path.join(folder, STAMP_NAME)
        try:
            with open(stamp) as f:
                old = json.load(f)
            if not isinstance(old, dict):
                old = {}
        except (FileNotFoundError, ValueError):
            old = {}
        changed = sorted(m for m, d in digests.items() if old.get(m) != d)
        if not changed:
            return "cache matches the sources"
        removed = 0
        for mod in changed:
            for pattern in (f"{mod}.*.nbi", f"{mod}.*.nbc"):
                for path in glob.glob(os.path.join(folder, pattern)):
                    try:
                        os.remove(path)
                        removed += 1
                    except FileNotFoundError:   # another process got there first
                        pass
        os.makedirs(folder, exist_ok=True)
        tmp = f"{stamp}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(digests, f, indent=0, sort_keys=True)
        os.replace(tmp, stamp)
        return (f"{len(changed)} changed modules: {removed} cached kernel files dropped"
                if removed else "stamp written (no stale kernels)")
    except OSError as e:   # a read-only cache: Numba itself will not write there either
        return f"not checked ({e.strerror or e})"


def status(package_dir):
    """One line on what :func:`check` did for ``package_dir`` in this process (for
    ``cli.py info``)."""
    return _status.get(package_dir, "not checked")
