"""Reliability: NaN/Inf detection naming step and layer, crash safety under SIGKILL,
exact resume, determinism, and clear errors for bad CLI options."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import minigrad as mg
import minigrad.nn as nn
import minigrad.optim as optim
from zoo.trainer import NonFiniteError, Trainer, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Loader:
    """The two things Trainer needs of a loader: ``len`` and ``numpy_batches(epoch)``."""

    def __init__(self, images, labels, batches=3):
        self.images, self.labels, self.batches = images, labels, batches

    def __len__(self):
        return self.batches

    def numpy_batches(self, epoch=None):
        for _ in range(self.batches):
            yield self.images, self.labels


def _trainer(model, images, lr=0.1, **kw):
    labels = np.arange(len(images)) % 3
    return Trainer(model, optim.SGD(model.parameters(), lr=lr), _Loader(images, labels),
                   progress=False, echo=lambda *_: None, **kw)


def _mlp():
    mg.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


class _Blowup(nn.Module):
    """Multiplies by a huge factor: float32 overflows to Inf in this layer's output."""

    def forward(self, x):
        return x * 1e30 * 1e30


class _SqrtGate(nn.Module):
    """sqrt(x * 0 + w) with w = 0: a finite forward whose gradient is infinite."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(mg.zeros(3))

    def forward(self, x):
        return x + mg.sqrt(x * 0 + self.w)


def test_nan_in_input_batch_is_named():
    images = np.ones((6, 1, 2, 2), np.float32)
    images[2, 0, 1, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"step 1 .*input batch \(6, 1, 2, 2\) holds 1 NaN"):
        _trainer(_mlp(), images).fit(1)


def test_layer_whose_output_overflows_is_named():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), _Blowup())
    with pytest.raises(NonFiniteError, match=r"loss is (nan|inf).*layer '2' \(_Blowup\)"):
        _trainer(model, np.ones((6, 1, 2, 2), np.float32)).fit(1)


# sqrt's gradient at 0 times gradients of both signs gives +inf and -inf, and NumPy warns
# when their sum makes a NaN; the test is about the error the trainer raises after that.
@pytest.mark.filterwarnings("ignore:invalid value encountered in reduce:RuntimeWarning")
def test_layer_whose_gradient_goes_non_finite_is_named_and_params_untouched():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), _SqrtGate())
    before = {k: v.copy() for k, v in model.state_dict().items()}
    trainer = _trainer(model, np.ones((6, 1, 2, 2), np.float32))
    with pytest.raises(NonFiniteError, match=r"step 1 .*gradient of layer '2' went non-finite"):
        trainer.fit(1)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_detect_anomaly_names_the_op():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), _SqrtGate())
    trainer = _trainer(model, np.ones((6, 1, 2, 2), np.float32), detect_anomaly=True)
    with pytest.raises(NonFiniteError, match="backward of Unary"):
        trainer.fit(1)


def test_clip_grad_norm_bounds_the_update():
    images = np.full((6, 1, 2, 2), 100.0, np.float32)
    model = _mlp()
    w0 = model.state_dict()["1.weight"].copy()
    _trainer(model, images, lr=1.0, clip_grad_norm=1e-3).fit(1)
    change = np.abs(model.state_dict()["1.weight"] - w0).max()
    assert 0 < change <= 3 * 1e-3 + 1e-7  # three steps, each at most lr * max_norm


# --- the CLI under faults ------------------------------------------------------------------

TRAIN = ["train", "lenet", "--epochs", "3", "--limit", "6", "--batch-size", "32",
         "--no-progress", "--seed", "7"]

KILL_AT_STEP = r"""
import os, signal, sys
sys.path.insert(0, {root!r})
import zoo.trainer as tr
orig = tr.Trainer.train_step
def step(self, *a, **k):
    if self.global_step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(self, *a, **k)
tr.Trainer.train_step = step
import cli
cli.main({args!r})
"""

KILL_IN_CHECKPOINT_WRITE = r"""
import os, signal, sys
sys.path.insert(0, {root!r})
real_fsync = os.fsync
count = [0]
def fsync(fd):
    count[0] += 1
    if count[0] == {nth}:  # the temp file of this checkpoint is written but not yet renamed
        os.kill(os.getpid(), signal.SIGKILL)
    return real_fsync(fd)
os.fsync = fsync
import cli
cli.main({args!r})
"""


def _env(tmp_path):
    env = dict(os.environ)
    env["MINIGRAD_DATA"] = str(tmp_path / "no-data")  # forces the shipped MNIST subset
    return env


def _run(code, tmp_path):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)


def _cli(args, tmp_path):
    return subprocess.run([sys.executable, "cli.py"] + args, cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)


def _final_params(out):
    return load_checkpoint(os.path.join(out, "last.safetensors"))["model"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    out = str(tmp / "run")
    done = _cli(TRAIN + ["--data-dir", str(tmp / "no-data"), "--out", out], tmp)
    assert done.returncode == 0, done.stderr
    return out, _final_params(out), tmp


@pytest.mark.parametrize("kind,point", [("step", 3), ("step", 8), ("step", 13), ("write", 2), ("write", 5)])
def test_sigkill_then_resume_matches_uninterrupted_run(reference_run, tmp_path, kind, point):
    _, reference, _ = reference_run
    out = str(tmp_path / "run")
    args = TRAIN + ["--data-dir", str(tmp_path / "no-data"), "--out", out]
    template = KILL_AT_STEP if kind == "step" else KILL_IN_CHECKPOINT_WRITE
    code = template.format(root=ROOT, step=point, nth=point, args=args)
    killed = _run(code, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    last = os.path.join(out, "last.safetensors")
    if not os.path.exists(last):  # killed before the first checkpoint: start again
        resumed = _cli(args, tmp_path)
    else:
        mg.load(last)  # the checkpoint left behind always loads
        resumed = _cli(["train", "lenet", "--resume", last, "--no-progress",
                        "--data-dir", str(tmp_path / "no-data")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = _final_params(out)
    assert final.keys() == reference.keys()
    for key in reference:
        np.testing.assert_array_equal(final[key], reference[key], err_msg=key)


def test_sigint_stops_cleanly_and_says_how_to_resume(reference_run, tmp_path):
    _, reference, _ = reference_run
    out = str(tmp_path / "run")
    args = TRAIN + ["--data-dir", str(tmp_path / "no-data"), "--out", out]
    proc = subprocess.Popen([sys.executable, "cli.py"] + args, cwd=ROOT, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 300
    while not os.path.exists(metrics) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGINT arrived")
    assert proc.returncode == 130, stderr
    assert "resume with: python cli.py train lenet5 --resume" in stdout
    resumed = _cli(["train", "lenet", "--resume", os.path.join(out, "last.safetensors"),
                    "--no-progress", "--data-dir", str(tmp_path / "no-data")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = _final_params(out)
    for key in reference:
        np.testing.assert_array_equal(final[key], reference[key], err_msg=key)


def test_same_seed_same_losses(reference_run, tmp_path):
    ref_out, _, _ = reference_run
    out = str(tmp_path / "again")
    done = _cli(TRAIN + ["--data-dir", str(tmp_path / "no-data"), "--out", out], tmp_path)
    assert done.returncode == 0, done.stderr

    def losses(path):
        with open(os.path.join(path, "metrics.jsonl")) as fh:
            return [(r["train_loss"], r.get("test_loss")) for r in map(json.loads, fh)
                    if r.get("type") == "epoch"]

    assert losses(out) == losses(ref_out)


@pytest.mark.parametrize("option,value", [("--epochs", "0"), ("--lr", "-1"), ("--batch-size", "0"),
                                          ("--clip-grad-norm", "0"), ("--momentum", "1.5")])
def test_cli_options_out_of_range(option, value):
    import cli

    result = CliRunner().invoke(cli.cli, ["train", "lenet", option, value])
    assert result.exit_code == 2
    assert option in result.output and value in result.output
