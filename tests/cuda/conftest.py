"""CUDA test configuration: skip (with the reason) when neither a GPU nor the simulator is usable.

Run on a machine without a GPU with Numba's CUDA simulator (small shapes only):

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda -q

``test_compile.py`` needs neither: it type-checks every kernel for a real sm_90 target.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import minigrad  # noqa: E402,F401  (registers "cpu" and, through minigrad_cuda, "cuda")
import minigrad_cuda  # noqa: E402

REASON = minigrad_cuda.unavailable_reason()
NEEDS_NO_GPU = ("test_compile.py",)


def pytest_collection_modifyitems(config, items):
    """Mark every CUDA test skipped, with the reason, when device "cuda" cannot be used."""
    if REASON is None:
        return
    skip = pytest.mark.skip(reason=(
        f"CUDA tests need a GPU or Numba's CUDA simulator: {REASON}; "
        f"set NUMBA_ENABLE_CUDASIM=1 to run them on the simulator"))
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        path = str(item.fspath)
        if path.startswith(here) and not path.endswith(NEEDS_NO_GPU):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def be():
    """The CUDA backend."""
    return minigrad.backend.get("cuda")


@pytest.fixture(scope="session")
def cpu():
    """The CPU backend (the second reference)."""
    return minigrad.backend.get("cpu")
