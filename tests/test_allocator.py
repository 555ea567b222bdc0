"""glibc malloc tuning of the CPU backend (minigrad/cpu/allocator.py).

Each check runs in a fresh interpreter: the thresholds are process-wide and set once."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Four 2.4 MB arrays (LeNet's conv1 activation size) made and freed per round: without
# the tuning glibc trims the freed heap top after each round and faults the pages in again.
CODE = r"""
import json, resource
import numpy as np
import minigrad as mg
from minigrad.cpu import allocator
mg.tensor([0.0])                       # starts the CPU backend
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    arrays = [np.ones(600_000, np.float32) for _ in range(4)]
    del arrays
f0 = faults()
for _ in range(20):
    arrays = [np.ones(600_000, np.float32) for _ in range(4)]
    del arrays
print(json.dumps({"applied": allocator.applied(), "status": allocator.status(),
                  "faults_per_round": (faults() - f0) / 20}))
"""

def _has_glibc():
    names = getattr(os, "confstr_names", {})
    return sys.platform.startswith("linux") and "CS_GNU_LIBC_VERSION" in names and \
        bool(os.confstr("CS_GNU_LIBC_VERSION"))


glibc = pytest.mark.skipif(not _has_glibc(), reason="the tuning applies to glibc on Linux only")


def _run(tuning):
    env = dict(os.environ, MINIGRAD_MALLOC_TUNING=tuning, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_tuning_keeps_freed_activation_pages():
    tuned, plain = _run("1"), _run("0")
    assert tuned["applied"] is True
    assert plain["applied"] is False
    assert tuned["status"].startswith("glibc thresholds set (mmap 128 MB, trim 256 MB")
    assert plain["status"] == "left alone (MINIGRAD_MALLOC_TUNING=0)"
    # 4 x 2.4 MB = 2,344 pages per round: the plain allocator faults most of them in again
    assert tuned["faults_per_round"] < 100, tuned
    assert plain["faults_per_round"] > 10 * max(tuned["faults_per_round"], 1), (tuned, plain)


def test_tune_is_idempotent_and_reports_state():
    from minigrad.cpu import allocator

    first = allocator.tune()
    assert allocator.tune() is first
    assert allocator.applied() is first
