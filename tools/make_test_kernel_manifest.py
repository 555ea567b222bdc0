"""Regenerate tests/kernel_manifest.json: the CPU kernel signatures the test suite compiles.

    python tools/make_test_kernel_manifest.py        # one cold run of the CPU tests, ~10 min

Runs ``pytest tests --ignore=tests/cuda`` in a child process with an empty Numba cache and
records every minigrad.cpu kernel signature compiled in that process with its compile
time (minigrad.cpu.precompile.record).  tests/conftest.py compiles the listed signatures in
parallel processes before a session whose cache lacks most of them (a fresh clone in CI),
instead of one after the other inside the test process.  Entries that no longer match a
kernel only fail to precompile (the test that needs the kernel then compiles it), so the
file needs regenerating only to keep that speed-up when kernels or tests change.
"""

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OUT = os.path.join(ROOT, "tests", "kernel_manifest.json")


def record_tests(path):
    """In this process (empty cache): run the CPU tests, write the entries to ``path``."""
    import pytest

    from minigrad.cpu import precompile

    codes = []
    # the checks of the manifest this run replaces fail whenever a kernel moved or its
    # arguments changed (node ids: the child runs in ROOT)
    stale_checks = ["tests/test_precompile.py::test_test_manifest_entries_name_existing_kernels",
                    "tests/test_precompile.py::"
                    "test_compile_groups_keep_each_cache_index_in_one_task[tests]"]
    deselect = [arg for check in stale_checks for arg in ("--deselect", check)]
    entries = precompile.record(lambda: codes.append(
        pytest.main(["-q", "-p", "no:cacheprovider", os.path.join(ROOT, "tests"),
                     "--ignore", os.path.join(ROOT, "tests", "cuda")] + deselect)))
    if codes[0] != 0:
        raise SystemExit(f"the tests failed (exit {codes[0]}); no manifest written")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(entries, fh)


def main():
    if len(sys.argv) == 2:
        record_tests(sys.argv[1])
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "entries.json")
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "cache"),
                   MINIGRAD_TEST_PRECOMPILE="0")
        subprocess.run([sys.executable, os.path.abspath(__file__), path], env=env, check=True,
                       cwd=ROOT)
        with open(path, encoding="utf-8") as fh:
            entries = [e for e in json.load(fh) if e["seconds"] > 0]
    from minigrad.cpu import precompile

    precompile.save_manifest(entries, OUT, "tools/make_test_kernel_manifest.py")
    print(f"{len(entries)} kernel signatures, {sum(e['seconds'] for e in entries):.1f} s of "
          f"compile recorded (nested calls counted in their callers too) -> {OUT}")


if __name__ == "__main__":
    main()
