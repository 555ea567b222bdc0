"""Test configuration: make the repository importable, keep hypothesis runs short, and
compile the CPU kernels the tests need in parallel when the Numba cache lacks them."""

import os
import sys
import time

from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

settings.register_profile(
    "ci", max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# Compiling the kernels one after the other inside the test process took 400-500 s of a cold
# CPU test run on 2 cores (warm: ~135 s).  tests/kernel_manifest.json lists the signatures
# the tests compile (tools/make_test_kernel_manifest.py); when most are missing from the
# cache they are compiled first in one process per core, as `cli.py train` does on a first
# run.  Only for sessions that run most of the suite (a single test file compiles less than
# the whole list); MINIGRAD_TEST_PRECOMPILE=0 turns it off.
TEST_MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel_manifest.json")
_PRECOMPILE_MIN_MISSING = 20
_PRECOMPILE_MIN_TESTS = 400


def pytest_collection_finish(session):
    """Fill the Numba cache from tests/kernel_manifest.json in parallel processes."""
    if (os.environ.get("MINIGRAD_TEST_PRECOMPILE", "1") == "0" or not os.path.exists(TEST_MANIFEST)
            or len(session.items) < _PRECOMPILE_MIN_TESTS):
        return
    try:
        from minigrad.cpu import precompile

        todo = precompile.missing(precompile.load_manifest(path=TEST_MANIFEST))
        if len(todo) < _PRECOMPILE_MIN_MISSING:
            return
        t0 = time.perf_counter()
        result = precompile.warm(todo)
        sys.stderr.write(f"conftest: compiled {result.compiled} kernel signatures in parallel in "
                         f"{time.perf_counter() - t0:.0f} s ({len(result.failed)} failed; the "
                         f"tests compile those themselves)\n")
    except Exception as e:  # noqa: BLE001 - the tests then compile as they go
        sys.stderr.write(f"conftest: parallel precompile skipped: {type(e).__name__}: {e}\n")
