"""minigrad.cache_stamp: stale cached kernels are dropped when a helper module changes.

The end-to-end test builds a copy of the package with a cached kernel that inlines a helper
from another module, changes only the helper, and runs the kernel again in a fresh process:
with the stamp check the new helper runs; without it (MINIGRAD_CACHE_STAMP=0) Numba serves
the stale kernel, which is the bug the check exists for.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from minigrad import cache_stamp
from minigrad.cpu import PACKAGE_DIR as CPU, cache_probe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_digests_follow_each_module_and_what_it_imports(tmp_path):
    (tmp_path / "a.py").write_text("from .b import f\n")
    (tmp_path / "b.py").write_text("from . import c as cc, os\n")
    (tmp_path / "c.py").write_text("x = 1\n")
    (tmp_path / "d.py").write_text("import numpy\n")
    (tmp_path / "notes.txt").write_text("not a source\n")
    d1 = cache_stamp.module_digests(str(tmp_path))
    assert sorted(d1) == ["a", "b", "c", "d"]
    (tmp_path / "notes.txt").write_text("changed\n")
    assert cache_stamp.module_digests(str(tmp_path)) == d1
    (tmp_path / "c.py").write_text("x = 2\n")        # a imports b, which imports c
    d2 = cache_stamp.module_digests(str(tmp_path))
    assert all(d2[m] != d1[m] for m in "abc") and d2["d"] == d1["d"]
    (tmp_path / "a.py").write_text("from .b import f\n# edited\n")
    d3 = cache_stamp.module_digests(str(tmp_path))
    assert d3["a"] != d2["a"] and all(d3[m] == d2[m] for m in "bcd")


def test_check_drops_only_the_changed_modules_files(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIGRAD_CACHE_STAMP", raising=False)
    files = ["conv._fwd-1.py311.nbi", "conv._fwd-1.py311.1.nbc", "winograd._bwd-9.py311.nbi",
             "conv.cpython-311.pyc"]
    for name in files:
        (tmp_path / name).write_text("x")
    stamp = tmp_path / cache_stamp.STAMP_NAME
    # no stamp yet: every module counts as changed
    assert "3 cached kernel files dropped" in cache_stamp.check(CPU, cache_probe, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["conv.cpython-311.pyc", cache_stamp.STAMP_NAME]
    assert json.loads(stamp.read_text()) == cache_stamp.module_digests(CPU)
    for name in files:
        (tmp_path / name).write_text("x")
    assert cache_stamp.check(CPU, cache_probe, str(tmp_path)) == "cache matches the sources"
    assert cache_stamp.status(CPU) == "cache matches the sources"
    assert all((tmp_path / name).exists() for name in files)
    # a stamp that disagrees on one module: only that module's kernels go
    old = cache_stamp.module_digests(CPU)
    old["winograd"] = "an older digest"
    stamp.write_text(json.dumps(old))
    assert "1 cached kernel files dropped" in cache_stamp.check(CPU, cache_probe, str(tmp_path))
    assert not (tmp_path / "winograd._bwd-9.py311.nbi").exists()
    assert (tmp_path / "conv._fwd-1.py311.nbi").exists()
    stamp.write_text("not json")
    assert "2 cached kernel files dropped" in cache_stamp.check(CPU, cache_probe, str(tmp_path))
    monkeypatch.setenv("MINIGRAD_CACHE_STAMP", "0")
    stamp.write_text("{}")
    (tmp_path / "conv._fwd-1.py311.nbi").write_text("x")
    assert cache_stamp.check(CPU, cache_probe, str(tmp_path)).startswith("off")
    assert (tmp_path / "conv._fwd-1.py311.nbi").exists()


def test_check_of_another_package_uses_its_sources_and_state(tmp_path, monkeypatch):
    """The CUDA backend checks minigrad_cuda's cached kernels with the same function: the
    digests come from the folder it names, its status is kept for that folder, and the CPU
    package's status is left alone."""
    monkeypatch.delenv("MINIGRAD_CACHE_STAMP", raising=False)
    pkg, cache = tmp_path / "pkg", tmp_path / "cache"
    pkg.mkdir()
    cache.mkdir()
    (pkg / "nn.py").write_text("from ._common import f\n")
    (pkg / "_common.py").write_text("f = 1\n")
    (cache / "nn.bn_stats-288.py312.nbi").write_text("x")
    cpu_status = cache_stamp.status(CPU)
    assert cache_stamp.status(str(pkg)) == "not checked"
    cache_stamp.check(str(pkg), None, str(cache))
    assert cache_stamp.status(str(pkg)) == "2 changed modules: 1 cached kernel files dropped"
    assert cache_stamp.status(CPU) == cpu_status
    digests = json.loads((cache / cache_stamp.STAMP_NAME).read_text())
    assert digests == cache_stamp.module_digests(str(pkg)) and sorted(digests) == ["_common", "nn"]
    (cache / "nn.bn_stats-288.py312.nbi").write_text("x")
    (pkg / "_common.py").write_text("f = 2\n")   # a helper the kernel's module imports
    assert "1 cached kernel files dropped" in cache_stamp.check(str(pkg), None, str(cache))
    assert not (cache / "nn.bn_stats-288.py312.nbi").exists()


HELPER = "from numba import njit\n\n\n@njit(cache=True)\ndef helper():\n    return {}\n"
KERNEL = ("from numba import njit\n\nfrom .zz_helper import helper\n\n\n"
          "@njit(cache=True)\ndef kernel():\n    return helper()\n")


def _run(pkg_root, stamp_on):
    env = dict(os.environ, PYTHONPATH=str(pkg_root), MINIGRAD_CACHE_STAMP="1" if stamp_on else "0")
    env.pop("NUMBA_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", "from minigrad.cpu import zz_kernel; "
                          "print(zz_kernel.kernel())"], env=env, cwd=str(pkg_root),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("stamp_on", [True, False])
def test_changed_helper_reaches_a_cached_kernel(tmp_path, stamp_on):
    shutil.copytree(os.path.join(ROOT, "minigrad"), tmp_path / "minigrad",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cpu = tmp_path / "minigrad" / "cpu"
    (cpu / "zz_helper.py").write_text(HELPER.format(1))
    (cpu / "zz_kernel.py").write_text(KERNEL)
    assert _run(tmp_path, stamp_on) == 1
    assert any(n.startswith("zz_kernel.kernel") for n in os.listdir(cpu / "__pycache__"))
    (cpu / "zz_helper.py").write_text(HELPER.format(2))
    # with the check the kernel is recompiled; without it the cached kernel still returns 1
    assert _run(tmp_path, stamp_on) == (2 if stamp_on else 1)
