"""Fill the Numba cache of the CPU kernels in several processes at once.

Numba compiles one function at a time per process (a global compiler lock), so the first
LeNet-5 step of a fresh install spends about 26 s compiling on this 2-core machine, one
kernel after the other.  The kernels a training run needs are listed in
``kernel_manifest.json`` (module, name, argument types, measured compile seconds; made by
``tools/make_kernel_manifest.py``).  :func:`warm` compiles the entries that are not in the
on-disk cache yet in a pool of processes, costliest first; each writes its result to the
cache (``cache=True``), and the training process then only loads them.

``python cli.py compile`` runs it, and ``cli.py train`` does so by itself on a CPU run when
most of the manifest is not cached (BENCHMARKS.md, "Numba compile time").
"""

import importlib
import json
import os
import time
from collections import namedtuple
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel_manifest.json")
MODULE_PREFIX = "minigrad.cpu."


def encode_type(t):
    """A JSON-able description of a Numba argument type (arrays and scalars only)."""
    from numba.core import types

    if isinstance(t, types.Array):
        return ["array", str(t.dtype), t.ndim, t.layout, bool(t.mutable), bool(t.aligned)]
    if isinstance(t, (types.Integer, types.Float, types.Boolean)) and not isinstance(t, types.Literal):
        return ["scalar", str(t)]
    raise TypeError(f"precompile: argument type {t} is neither an array nor a (non-literal) scalar")


def decode_type(e):
    """Inverse of :func:`encode_type`."""
    from numba.core import types

    if e[0] == "array":
        return types.Array(_scalar(e[1]), int(e[2]), e[3], readonly=not e[4], aligned=e[5])
    if e[0] == "scalar":
        return _scalar(e[1])
    raise ValueError(f"precompile: unknown type entry {e!r}")


def _scalar(name):
    from numba.core import types

    t = types.boolean if name == "bool" else getattr(types, name, None)
    if not isinstance(t, (types.Integer, types.Float, types.Boolean)):
        raise ValueError(f"precompile: {name!r} is not a scalar type name")
    return t


def dispatchers(module):
    """``{name: Numba dispatcher}`` of the kernels a module defines (not those it imports); a
    ``pjit`` kernel gives two entries, ``name.parallel`` and ``name.serial``."""
    from numba.core.registry import CPUDispatcher

    found = {}
    for name, obj in vars(module).items():
        if isinstance(obj, CPUDispatcher) and obj.__module__ == module.__name__:
            found[name] = obj
        elif (isinstance(getattr(obj, "parallel", None), CPUDispatcher)
              and obj.py_func.__module__ == module.__name__):
            found[name + ".parallel"] = obj.parallel
            found[name + ".serial"] = obj.serial
    return found


def resolve(entry):
    """The dispatcher an entry names."""
    if not entry["module"].startswith(MODULE_PREFIX):
        raise ValueError(f"precompile: {entry['module']} is not a minigrad.cpu module")
    obj = importlib.import_module(entry["module"])
    for part in entry["name"].split("."):
        obj = getattr(obj, part)
    return obj


def signature(entry):
    """The argument-type tuple of an entry."""
    return tuple(decode_type(e) for e in entry["args"])


def load_manifest(models=None, path=MANIFEST):
    """The manifest's entries (those used by any of ``models`` when given), costliest first."""
    with open(path, encoding="utf-8") as fh:
        entries = json.load(fh)["kernels"]
    if models is not None:
        recorded = {m for e in entries for m in e.get("models", ())}
        unknown = set(models) - recorded
        if unknown:
            raise ValueError(f"precompile: no kernels recorded for {', '.join(sorted(unknown))} "
                             f"(recorded: {', '.join(sorted(recorded))})")
        entries = [e for e in entries if set(models) & set(e.get("models", ()))]
    return sorted(entries, key=lambda e: -e.get("seconds", 0.0))


def save_manifest(entries, path, made_by):
    """Write ``entries`` (as :func:`record` returns them) for :func:`load_manifest`, one per
    line, atomically (temp file, then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"made_by": made_by})[:-1] + ', "kernels": [\n')
        fh.write(",\n".join(json.dumps(e) for e in entries))
        fh.write("\n]}\n")
    os.replace(tmp, path)


def is_cached(entry):
    """True when the on-disk Numba cache holds this entry's compiled code (None: unknown)."""
    try:
        d = resolve(entry)
        cache = d._cache
        key = cache._index_key(signature(entry), d.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # Numba internals moved: do not guess
        return None


def missing(entries=None):
    """The entries whose compiled code is not in the cache."""
    entries = load_manifest() if entries is None else entries
    return [e for e in entries if is_cached(e) is False]


def _compile_entry(entry):
    """Compile one entry; returns None, or a one-line reason it could not be compiled (a
    manifest older than the kernel's code must not stop the other entries)."""
    try:
        resolve(entry).compile(signature(entry))
    except Exception as e:  # noqa: BLE001 - reported to the caller, who carries on
        return f"{entry['module']}.{entry['name']}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return None


def _compile_group(entries):
    """Compile entries one after the other in this process; returns their failure lines."""
    return [err for err in map(_compile_entry, entries) if err]


def _cache_file_key(entry):
    """What names the entry's on-disk Numba cache index: entries with the same key share
    one index file."""
    try:
        return resolve(entry)._cache._cache_file._index_path
    except Exception:  # Numba internals moved, or no such kernel: one file per dispatcher
        return (entry["module"], entry["name"])


def compile_groups(entries):
    """``entries`` split into the tasks :func:`warm` hands to its processes: all entries whose
    compiled code goes into the same Numba cache index are one task, costliest task first.

    Numba's cache is not safe for two processes adding signatures of one function at once:
    each reads the index, both pick the same free data-file number, and the index can end
    up naming one signature's code under the other's key (seen in CI: a float64 call loaded
    float32 code and failed with "can't unbox array").  Within one task the signatures are
    compiled one after the other."""
    groups = {}
    for e in entries:
        groups.setdefault(_cache_file_key(e), []).append(e)
    return sorted(groups.values(), key=lambda g: -sum(e.get("seconds", 0.0) for e in g))


def default_jobs():
    """One process per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


WarmResult = namedtuple("WarmResult", "compiled seconds failed")
WarmResult.__doc__ = """What :func:`warm` did: entries compiled, wall seconds, and one line per
entry that failed to compile (the process that needs it then compiles it as usual)."""


def warm(entries=None, jobs=None):
    """Compile the uncached manifest entries in ``jobs`` processes; returns a WarmResult.

    The processes are started with "spawn" (a fresh interpreter each; forking a process
    that runs Numba threads is unsafe).  Each process takes whole :func:`compile_groups`
    tasks, so no two of them write to the same cache index."""
    todo = missing(entries)
    if not todo:
        return WarmResult(0, 0.0, [])
    tasks = compile_groups(todo)
    jobs = min(jobs or default_jobs(), len(tasks))
    # small_gemm compiles its C entry point when it is imported (on the CPUs it serves):
    # here, once, so that the processes below load it from the cache instead of all
    # compiling and writing it at once.
    importlib.import_module(MODULE_PREFIX + "small_gemm")
    t0 = time.perf_counter()
    if jobs == 1:
        failed = _compile_group(todo)
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            failed = [err for errs in pool.map(_compile_group, tasks, chunksize=1) for err in errs]
    return WarmResult(len(todo) - len(failed), time.perf_counter() - t0, failed)


def record(run):
    """Call ``run()`` and return manifest entries for every minigrad.cpu kernel signature
    it compiled, with the compile seconds Numba reported (run it with an empty cache)."""
    import pkgutil

    from numba.core import event
    from numba.core.caching import NullCache

    import minigrad.cpu as cpu

    seconds = {}

    class _Timer(event.Listener):
        def __init__(self):
            self.started = {}

        def on_start(self, ev):
            self.started[id(ev.data["dispatcher"]), str(ev.data["args"])] = time.perf_counter()

        def on_end(self, ev):
            key = (id(ev.data["dispatcher"]), str(ev.data["args"]))
            seconds[key] = time.perf_counter() - self.started.pop(key, time.perf_counter())

    timer = _Timer()
    event.register("numba:compile", timer)
    try:
        run()
    finally:
        event.unregister("numba:compile", timer)
    entries = []
    for info in pkgutil.iter_modules(cpu.__path__):
        module = importlib.import_module(MODULE_PREFIX + info.name)
        for name, d in sorted(dispatchers(module).items()):
            if isinstance(d._cache, NullCache):
                continue    # no cache to fill (a helper without cache=True, called by a test)
            for sig in d.signatures:
                try:
                    args = [encode_type(t) for t in sig]
                except TypeError:
                    continue
                entries.append({"module": module.__name__, "name": name, "args": args,
                                "seconds": round(seconds.get((id(d), str(sig)), 0.0), 3)})
    return sorted(entries, key=lambda e: -e["seconds"])
