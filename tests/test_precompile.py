"""Parallel Numba-cache warm-up (minigrad/cpu/precompile.py) and its CLI wiring."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from minigrad.cpu import precompile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_manifest_entries_name_existing_kernels():
    entries = precompile.load_manifest()
    assert len(entries) > 20
    models = {m for e in entries for m in e["models"]}
    assert {"lenet5", "resnet18"} <= models
    for e in entries:
        d = precompile.resolve(e)
        sig = precompile.signature(e)
        assert len(sig) == d.py_func.__code__.co_argcount, (e["module"], e["name"])
        assert [precompile.encode_type(t) for t in sig] == e["args"]
    # costliest first, so a process pool starts the long compiles early
    seconds = [e["seconds"] for e in entries]
    assert seconds == sorted(seconds, reverse=True)


def test_test_manifest_entries_name_existing_kernels():
    """tests/kernel_manifest.json (conftest's parallel precompile) names kernels that exist;
    regenerate it with tools/make_test_kernel_manifest.py when this fails."""
    entries = precompile.load_manifest(path=os.path.join(ROOT, "tests", "kernel_manifest.json"))
    assert len(entries) > 100
    for e in entries:
        d = precompile.resolve(e)
        assert len(precompile.signature(e)) == d.py_func.__code__.co_argcount, (e["module"], e["name"])


def test_manifest_filter_by_model_and_unknown_model():
    lenet = precompile.load_manifest(["lenet5"])
    assert lenet and all("lenet5" in e["models"] for e in lenet)
    assert len(lenet) < len(precompile.load_manifest())
    with pytest.raises(ValueError, match="no kernels recorded for vgg11.*recorded: lenet5, resnet18"):
        precompile.load_manifest(["vgg11"])


def test_type_codec_rejects_what_it_cannot_rebuild():
    from numba.core import types

    with pytest.raises(TypeError, match="neither an array nor a"):
        precompile.encode_type(types.UniTuple(types.int64, 2))
    with pytest.raises(ValueError, match="not a scalar type name"):
        precompile.decode_type(["scalar", "Array"])
    t = types.Array(types.float64, 3, "A", readonly=True)
    assert precompile.decode_type(precompile.encode_type(t)) == t


# A cheap kernel's two compilations: compiled by warm() in two spawned processes into an
# empty cache, then a third process must load them from that cache without compiling.
SMALL = [("minigrad.cpu.kernels", "relu_grad.serial"), ("minigrad.cpu.kernels", "relu_grad.parallel")]

WARM = r"""
import json, sys
from minigrad.cpu import precompile
keep = [tuple(k) for k in json.loads(sys.argv[1])]
entries = [e for e in precompile.load_manifest() if (e["module"], e["name"]) in keep]
before = len(precompile.missing(entries))
result = precompile.warm(entries, jobs=2)
print(json.dumps({"entries": len(entries), "missing_before": before, "compiled": result.compiled,
                  "failed": result.failed,
                  "missing_after": len(precompile.missing(entries))}))
"""

USE = r"""
import json
import numpy as np
from minigrad.cpu import kernels
y = np.arange(-3, 5, dtype=np.float32)
g = np.full(8, 2.0, dtype=np.float32)
out = np.empty_like(y)
kernels.relu_grad.serial(y, g, out)
kernels.relu_grad.parallel(y, g, np.empty_like(y))
st = [kernels.relu_grad.serial.stats, kernels.relu_grad.parallel.stats]
print(json.dumps({"hits": sum(sum(s.cache_hits.values()) for s in st),
                  "misses": sum(sum(s.cache_misses.values()) for s in st), "grad": out.tolist()}))
"""


def _py(code, env, *args):
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_warm_fills_the_cache_that_a_later_process_loads(tmp_path):
    have = {(e["module"], e["name"]) for e in precompile.load_manifest()}
    if not set(SMALL) <= have:
        pytest.skip("manifest no longer lists the small kernels this test uses")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=ROOT)
    warm = _py(WARM, env, json.dumps(SMALL))
    assert warm["entries"] >= 2
    assert warm["missing_before"] == warm["entries"] == warm["compiled"] and not warm["failed"]
    assert warm["missing_after"] == 0
    used = _py(USE, env)
    assert used["hits"] == 2 and used["misses"] == 0, used
    assert used["grad"] == [0, 0, 0, 0, 2, 2, 2, 2]
    again = _py(WARM, env, json.dumps(SMALL))
    assert again["compiled"] == 0 and again["missing_before"] == 0


def test_cli_compile_and_train_first_run(monkeypatch):
    import cli

    calls = []
    monkeypatch.setattr(precompile, "warm", lambda entries, jobs=None: calls.append((entries, jobs))
                        or precompile.WarmResult(len(entries), 0.5, []))
    runner = CliRunner()
    res = runner.invoke(cli.cli, ["compile", "lenet", "--jobs", "2"])
    assert res.exit_code == 0, res.output
    assert "compiled" in res.output
    assert calls and all("lenet5" in e["models"] for e in calls[0][0]) and calls[0][1] == 2
    res = runner.invoke(cli.cli, ["compile", "vgg11"])
    assert res.exit_code != 0 and "no kernels recorded for vgg11" in res.output

    # train: a first run (everything missing) warms, a warm cache does not
    calls.clear()
    monkeypatch.setattr(precompile, "missing", lambda entries=None: list(entries))
    monkeypatch.setattr(precompile, "default_jobs", lambda: 2)
    monkeypatch.delenv("MINIGRAD_PRECOMPILE", raising=False)
    cli._precompile_first_run("lenet5")
    assert len(calls) == 1 and calls[0][1] == 2
    monkeypatch.setattr(precompile, "missing", lambda entries=None: [])
    cli._precompile_first_run("lenet5")
    assert len(calls) == 1
    monkeypatch.setattr(precompile, "missing", lambda entries=None: list(entries))
    monkeypatch.setenv("MINIGRAD_PRECOMPILE", "0")
    cli._precompile_first_run("lenet5")
    cli._precompile_first_run("vgg11")
    assert len(calls) == 1


def test_stale_entry_fails_alone(tmp_path, monkeypatch):
    # an entry whose kernel now takes other arguments (the manifest is older than the code)
    # is reported, and the good entry next to it is still compiled
    good = [e for e in precompile.load_manifest() if (e["module"], e["name"]) == SMALL[0]]
    if not good:
        pytest.skip("manifest no longer lists the small kernel this test uses")
    stale = dict(good[0], args=good[0]["args"][:1])
    monkeypatch.setattr(precompile, "missing", lambda entries=None: list(entries))
    result = precompile.warm([stale, good[0]], jobs=1)
    assert result.compiled == 1
    assert len(result.failed) == 1 and "relu_grad.serial" in result.failed[0]


@pytest.mark.parametrize("manifest", ["runtime", "tests"])
def test_compile_groups_keep_each_cache_index_in_one_task(manifest):
    """Two processes adding signatures of one kernel to its Numba cache at once can leave
    the index naming one signature's code under the other's key (CI once loaded float32
    code for a float64 call), so every index file's entries form exactly one task."""
    path = precompile.MANIFEST if manifest == "runtime" else os.path.join(ROOT, "tests",
                                                                         "kernel_manifest.json")
    entries = precompile.load_manifest(path=path)
    tasks = precompile.compile_groups(entries)
    assert sorted(map(id, (e for t in tasks for e in t))) == sorted(map(id, entries))
    owner = {}
    for i, task in enumerate(tasks):
        for e in task:
            index = precompile.resolve(e)._cache._cache_file._index_path
            assert owner.setdefault(index, i) == i, (e["module"], e["name"])
    assert len(owner) == len(tasks)
    totals = [sum(e["seconds"] for e in t) for t in tasks]
    assert totals == sorted(totals, reverse=True)
    if manifest == "tests":
        # a kernel's several signatures share a task; its serial and parallel twins do not
        by_name = {(e["module"], e["name"]): i for i, t in enumerate(tasks) for e in t}
        several = [t for t in tasks if len(t) > 1]
        assert several and all(len({e["name"] for e in t}) == 1 for t in several)
        twins = [((m, n), (m, n.replace(".serial", ".parallel"))) for m, n in by_name
                 if n.endswith(".serial") and (m, n.replace(".serial", ".parallel")) in by_name]
        assert twins and all(by_name[s] != by_name[p] for s, p in twins)


def test_warm_hands_each_process_whole_cache_index_groups(monkeypatch):
    """warm() maps its pool over compile_groups' tasks, not over single entries."""
    entries = precompile.load_manifest(path=os.path.join(ROOT, "tests", "kernel_manifest.json"))
    compiled_by_task = []

    class InlinePool:
        def __init__(self, jobs, mp_context=None):
            assert jobs == 2

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, fn, tasks, chunksize=1):
            for task in tasks:
                compiled_by_task.append([])
                yield fn(task)

    monkeypatch.setattr(precompile, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(precompile, "missing", lambda entries=None: list(entries))
    monkeypatch.setattr(precompile, "_compile_entry",
                        lambda e: compiled_by_task[-1].append(e) or (
                            "stale" if e is entries[-1] else None))
    result = precompile.warm(entries, jobs=2)
    assert result.compiled == len(entries) - 1 and result.failed == ["stale"]
    assert sum(map(len, compiled_by_task)) == len(entries)
    one_per_row = [i for i, t in enumerate(compiled_by_task) for e in t
                   if e["name"] == "one_per_row.serial"]
    assert len(one_per_row) >= 2 and len(set(one_per_row)) == 1


def test_cli_train_carries_on_when_parallel_compile_cannot_start(monkeypatch, capsys):
    import cli

    def boom(entries, jobs=None):
        raise OSError("no processes here")

    monkeypatch.setattr(precompile, "warm", boom)
    monkeypatch.setattr(precompile, "missing", lambda entries=None: list(entries))
    monkeypatch.setattr(precompile, "default_jobs", lambda: 2)
    monkeypatch.delenv("MINIGRAD_PRECOMPILE", raising=False)
    cli._precompile_first_run("lenet5")
    assert "parallel compile failed (OSError: no processes here)" in capsys.readouterr().err
