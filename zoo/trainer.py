"""Trainer: the training loop behind ``python cli.py train`` (progress, metrics, checkpoints,
exact resumption, SIGINT handling, gradient-norm logging, curves).

    trainer = Trainer(model, optimizer, train_loader, test_loader, scheduler=sched,
                      out_dir="runs/lenet5", config={...})
    trainer.fit(epochs=3)

Reproducibility contract: the data order and augmentation of epoch ``e`` depend only on the
loader's seed and ``e`` (``DataLoader.numpy_batches(epoch)``), and the only other randomness
while training (dropout) comes from minigrad's global generator, whose state is saved in
every checkpoint. A run resumed from any checkpoint (end of epoch, or mid-epoch after
SIGINT) therefore ends with bit-identical parameters to an uninterrupted run.
"""

import contextlib
import json
import math
import os
import signal
import sys
import time

import numpy as np

import minigrad as mg
from minigrad.io import save_figure

CHECKPOINT_FORMAT = 1


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def encode_json(obj):
    """``obj`` (JSON-serialisable) as a uint8 array, for storage inside a safetensors file."""
    return np.frombuffer(json.dumps(obj, default=_json_default).encode("utf-8"),
                         dtype=np.uint8).copy()


def decode_json(value):
    """Inverse of :func:`encode_json` (also accepts a str or an already decoded object)."""
    if isinstance(value, (bytes, str)):
        return json.loads(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return json.loads(value.tobytes().decode("utf-8"))
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return decode_json(value.numpy())
    return value


def _to_numpy_tree(obj):
    """State dicts may hold Tensors; store NumPy arrays."""
    if isinstance(obj, dict):
        return {k: _to_numpy_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy_tree(v) for v in obj)
    if hasattr(obj, "numpy") and hasattr(obj, "shape") and not isinstance(obj, np.ndarray):
        return np.array(obj.numpy(), copy=True)
    return obj


def save_checkpoint(path, state):
    """Write ``state`` to ``path`` with :func:`minigrad.save` (safetensors, atomic: a temporary
    file in the same folder is renamed over ``path``).

    ``state`` holds the model/optimizer/scheduler state dicts (NumPy arrays) and JSON-able
    entries (``config``, ``progress``, ``rng``), which minigrad's format keeps as JSON.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    obj = {k: (_to_numpy_tree(v) if v is not None else {}) for k, v in state.items()}
    mg.save(obj, path)
    return path


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint` (a dict with ``model``,
    ``optimizer``, ``scheduler``, ``rng``, ``config``, ``progress``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    raw = mg.load(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a zoo checkpoint (top level is not a dict)")
    state = {k: (decode_json(v) if k in ("config", "progress", "rng") else v)
             for k, v in raw.items()}
    for key in ("model", "config", "progress"):
        if key not in state:
            raise ValueError(f"{path} is not a zoo checkpoint (no {key!r} entry)")
    return state


def _fmt_rate(x):
    return f"{x:,.0f}"


class Trainer:
    """Train and evaluate a classifier with per-epoch checkpoints and metrics.

    ``Trainer(model, optimizer, train_loader, test_loader=None, scheduler=None,
    scheduler_interval="step", out_dir=None, config=None, device="cpu", limit=None,
    log_grad_norms=0, progress=True, echo=print, keep_best=True)``

    * ``train_loader``/``test_loader``: :class:`minigrad.data.DataLoader` (iterated with
      ``numpy_batches(epoch)``, so epoch ``e``'s order depends only on seed and ``e``).
    * ``scheduler`` is stepped after every optimizer step (``scheduler_interval="step"``) or
      at the end of every epoch (``"epoch"``).
    * ``limit``: use only the first ``limit`` batches of each epoch (train and test).
    * ``log_grad_norms=N``: every N optimizer steps, append the per-layer gradient L2 norms
      to ``metrics.jsonl`` (read-only: results are unchanged).
    * ``out_dir``: where ``metrics.jsonl``, ``last.safetensors``, ``best.safetensors`` (best
      test accuracy) and ``curves.png`` go; None writes nothing.
    * ``clip_grad_norm``: clip the global gradient L2 norm to this value before each step.
    * ``detect_anomaly``: run every step under ``mg.detect_anomaly()`` (slow) so a NaN/Inf
      names the op that made it.
    * ``config``: JSON-able run description stored in every checkpoint (the CLI stores the
      model name and constructor arguments, dataset and hyper-parameters there).
    """

    def __init__(self, model, optimizer, train_loader, test_loader=None, scheduler=None,
                 scheduler_interval="step", out_dir=None, config=None, device="cpu",
                 limit=None, log_grad_norms=0, progress=True, echo=print, keep_best=True,
                 clip_grad_norm=None, detect_anomaly=False):
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', "
                             f"got {scheduler_interval!r}")
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.out_dir = os.fspath(out_dir) if out_dir is not None else None
        self.config = dict(config or {})
        self.device = device
        self.limit = int(limit) if limit else None
        self.log_grad_norms = int(log_grad_norms or 0)
        self.progress = progress
        self.echo = echo
        self.keep_best = keep_best
        self.clip_grad_norm = clip_grad_norm
        self.detect_anomaly = detect_anomaly
        self.loss_fn = mg.nn.CrossEntropyLoss()
        # position: next epoch to run and how many of its batches are already done
        self.epoch = 0
        self.batch_in_epoch = 0
        self.global_step = 0
        self.best_acc = -1.0
        self._running = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
        self._stop_requested = False
        self.stopped = False
        self.history = []

    # ------------------------------------------------------------------ paths
    def path(self, name):
        """``out_dir/name`` (None when there is no output folder)."""
        return None if self.out_dir is None else os.path.join(self.out_dir, name)

    @property
    def metrics_path(self):
        """``out_dir/metrics.jsonl``."""
        return self.path("metrics.jsonl")

    def _log(self, record):
        if self.out_dir is None:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")

    # ------------------------------------------------------------------ batches
    def _num_batches(self, loader):
        n = len(loader)
        return min(n, self.limit) if self.limit else n

    def _batches(self, loader, epoch, skip=0):
        total = self._num_batches(loader)
        for b, (images, labels) in enumerate(loader.numpy_batches(epoch)):
            if b >= total:
                break
            if b < skip:
                continue
            yield b, mg.tensor(images, device=self.device), mg.tensor(labels, device=self.device)

    # ------------------------------------------------------------------ checkpoint state
    def state(self):
        """Everything needed to continue exactly from here, as saved in a checkpoint."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "rng": mg.get_rng_state(),
            "config": self.config,
            "progress": {"format": CHECKPOINT_FORMAT, "epoch": self.epoch,
                         "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step,
                         "best_acc": self.best_acc, "running": self._running,
                         "history": self.history},
        }

    def save(self, name="last.safetensors"):
        """Write the current state to ``out_dir/name`` atomically; returns the path."""
        path = self.path(name)
        if path is not None:
            save_checkpoint(path, self.state())
        return path

    def load_state(self, state):
        """Restore a state read by :func:`load_checkpoint` (model, optimizer, scheduler, RNG,
        position in the run)."""
        self.model.load_state_dict(state["model"])
        if state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("rng"):
            mg.set_rng_state(state["rng"])
        p = state["progress"]
        self.epoch = int(p["epoch"])
        self.batch_in_epoch = int(p.get("batch_in_epoch", 0))
        self.global_step = int(p.get("global_step", 0))
        self.best_acc = float(p.get("best_acc", -1.0))
        self._running = dict(p.get("running") or self._running)
        self.history = list(p.get("history") or [])

    def resume(self, path):
        """Load checkpoint ``path`` and continue from where it stopped."""
        self.load_state(load_checkpoint(path))

    # ------------------------------------------------------------------ signals
    def request_stop(self):
        """Ask the loop to stop after the current step (a checkpoint is written first)."""
        self._stop_requested = True

    def _install_sigint(self):
        try:
            previous = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                if self._stop_requested:  # second Ctrl-C: give up at once
                    signal.signal(signal.SIGINT, previous)
                    raise KeyboardInterrupt
                self._stop_requested = True
                print("\ninterrupt: finishing this step and writing a checkpoint "
                      "(Ctrl-C again to abort without one)", file=sys.stderr, flush=True)

            signal.signal(signal.SIGINT, handler)
            return previous
        except ValueError:  # not in the main thread
            return None

    # ------------------------------------------------------------------ steps
    def _grad_norm_record(self, epoch):
        try:
            from minigrad.summary import layer_grad_norms
        except ImportError:  # pragma: no cover - summary ships with minigrad
            layer_grad_norms = _layer_grad_norms
        norms = layer_grad_norms(self.model)
        return {"type": "grad_norms", "epoch": epoch + 1, "step": self.global_step,
                "norms": dict(norms)}

    def train_step(self, images, labels, epoch=0):
        """One optimizer step on a batch; returns ``(loss, correct)`` as Python numbers.

        Raises :class:`NonFiniteError` (before the parameters change) when the loss or a
        gradient is NaN or infinite, naming the step and the layer at fault.
        """
        self.optimizer.zero_grad()
        step = self.global_step + 1
        with (mg.detect_anomaly() if self.detect_anomaly else contextlib.nullcontext()):
            try:
                logits = self.model(images)
                loss = self.loss_fn(logits, labels)
                loss_value = float(loss.item())
                if not math.isfinite(loss_value):
                    raise NonFiniteError(
                        f"step {step} (epoch {epoch + 1}): loss is {loss_value}; "
                        f"{find_nonfinite_forward(self.model, images)}")
                loss.backward()
            except mg.AnomalyError as err:
                raise NonFiniteError(f"step {step} (epoch {epoch + 1}): {err}") from None
        bad = first_nonfinite_grad(self.model)
        if bad is not None:
            raise NonFiniteError(
                f"step {step} (epoch {epoch + 1}): the gradient of layer {bad!r} went non-finite "
                f"first (loss {loss_value:.6g}); lower the learning rate, clip gradients "
                f"(--clip-grad-norm) or rerun with --detect-anomaly to name the op")
        if self.clip_grad_norm:
            mg.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.global_step += 1
        if self.log_grad_norms and self.global_step % self.log_grad_norms == 0:
            self._log(self._grad_norm_record(epoch))
        self.optimizer.step()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        pred = np.argmax(logits.numpy(), axis=1)
        correct = int(np.sum(pred == labels.numpy()))
        return loss_value, correct

    def evaluate(self, loader=None, confusion=False, progress=False, desc="eval"):
        """Mean loss and accuracy over ``loader`` (default: the test loader), in eval mode and
        without recording a graph. With ``confusion=True`` also returns the confusion matrix
        (rows: true class, columns: predicted) as a third element."""
        loader = loader if loader is not None else self.test_loader
        if loader is None:
            raise ValueError("evaluate: no loader given and the Trainer has no test_loader")
        was_training = getattr(self.model, "training", True)
        self.model.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        matrix = None
        bar = _progress_bar(self._num_batches(loader), desc, progress and self.progress)
        try:
            with mg.no_grad():
                for _, images, labels in self._batches(loader, 0):
                    logits = self.model(images)
                    loss = self.loss_fn(logits, labels)
                    y = labels.numpy()
                    pred = np.argmax(logits.numpy(), axis=1)
                    n = len(y)
                    loss_sum += float(loss.item()) * n
                    correct += int(np.sum(pred == y))
                    seen += n
                    if confusion:
                        k = logits.shape[1]
                        if matrix is None:
                            matrix = np.zeros((k, k), dtype=np.int64)
                        np.add.at(matrix, (y, pred), 1)
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            if was_training:
                self.model.train()
        seen = max(seen, 1)
        result = (loss_sum / seen, correct / seen)
        return result + (matrix,) if confusion else result

    def _current_lr(self):
        groups = getattr(self.optimizer, "param_groups", None)
        if groups:
            return float(groups[0]["lr"])
        return float(getattr(self.optimizer, "lr", float("nan")))

    # ------------------------------------------------------------------ the loop
    def fit(self, epochs):
        """Train until ``epochs`` epochs are complete (continuing from the current position,
        e.g. after :meth:`resume`). Returns the list of per-epoch metric dicts. When a stop is
        requested (SIGINT or :meth:`request_stop`), writes ``last.safetensors`` at the current
        step, sets ``self.stopped`` and returns early."""
        previous = self._install_sigint()
        try:
            while self.epoch < epochs:
                if not self._run_epoch(self.epoch, epochs):
                    self.stopped = True
                    break
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if self.out_dir is not None and not self.stopped and self.config.get("plot"):
            self.plot()
        return self.history

    def _run_epoch(self, epoch, epochs):
        self.model.train()
        total = self._num_batches(self.train_loader)
        skip = self.batch_in_epoch
        run = self._running if skip else {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
        self._running = run
        bar = _progress_bar(total, f"epoch {epoch + 1}/{epochs}", self.progress, initial=skip)
        t_last = time.perf_counter()
        try:
            for b, images, labels in self._batches(self.train_loader, epoch, skip):
                loss, correct = self.train_step(images, labels, epoch)
                n = labels.shape[0]
                now = time.perf_counter()
                run["time"] += now - t_last
                t_last = now
                run["loss_sum"] += loss * n
                run["correct"] += correct
                run["seen"] += n
                self.batch_in_epoch = b + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{run['loss_sum'] / run['seen']:.4f}",
                                    acc=f"{100.0 * run['correct'] / run['seen']:.2f}%",
                                    img_s=_fmt_rate(run["seen"] / max(run["time"], 1e-9)),
                                    refresh=False)
                if self._stop_requested and self.batch_in_epoch < total:
                    if bar is not None:
                        bar.close()
                        bar = None
                    self.save("last.safetensors")
                    return False
        finally:
            if bar is not None:
                bar.close()
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()
        seen = max(run["seen"], 1)
        record = {"type": "epoch", "epoch": epoch + 1, "epochs": epochs,
                  "train_loss": run["loss_sum"] / seen, "train_acc": run["correct"] / seen,
                  "images_per_s": run["seen"] / max(run["time"], 1e-9),
                  "train_time_s": run["time"], "lr": self._current_lr(),
                  "step": self.global_step}
        if self.test_loader is not None:
            t0 = time.perf_counter()
            test_loss, test_acc = self.evaluate()
            record.update(test_loss=test_loss, test_acc=test_acc,
                          eval_time_s=time.perf_counter() - t0)
        self.history.append(record)
        self._log(record)
        line = (f"epoch {epoch + 1}/{epochs}: train loss {record['train_loss']:.4f} "
                f"acc {100 * record['train_acc']:.2f}%")
        if "test_acc" in record:
            line += f" | test loss {record['test_loss']:.4f} acc {100 * record['test_acc']:.2f}%"
        line += (f" | lr {record['lr']:.3g} | {record['train_time_s']:.1f}s, "
                 f"{_fmt_rate(record['images_per_s'])} img/s")
        self.echo(line)
        self.epoch = epoch + 1
        self.batch_in_epoch = 0
        self._running = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
        improved = "test_acc" in record and record["test_acc"] > self.best_acc
        if improved:
            self.best_acc = record["test_acc"]
        if self.out_dir is not None:
            self.save("last.safetensors")
            if improved and self.keep_best:
                self.save("best.safetensors")
        return not self._stop_requested or self.epoch >= epochs

    # ------------------------------------------------------------------ curves
    def plot(self, path=None):
        """Draw loss and accuracy curves from ``metrics.jsonl`` to ``curves.png``."""
        return plot_metrics(self.metrics_path, path or self.path("curves.png"))


class NonFiniteError(RuntimeError):
    """Training met a NaN or infinite loss or gradient; the message names step and layer."""


def _layer_of(param_name):
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def first_nonfinite_grad(model):
    """Name of the first layer, in backward (reverse definition) order, whose gradient holds a
    NaN or Inf; None when every gradient is finite."""
    for name, p in reversed(list(model.named_parameters())):
        if p.grad is not None and not p.be.all_finite(p.grad.data):
            return _layer_of(name)
    return None


def find_nonfinite_forward(model, images):
    """Describe where a forward pass first produces a NaN/Inf: the input batch or a layer."""
    if not images.be.all_finite(images.data):
        bad = int(np.sum(~np.isfinite(images.numpy())))
        return f"the input batch {images.shape} holds {bad} NaN/Inf values (check the data)"
    found = []

    def hook(module, inputs, output, name):
        if not found and isinstance(output, mg.Tensor) and output.dtype.kind == "f" \
                and not output.be.all_finite(output.data):
            found.append(f"layer {name!r} ({type(module).__name__}) is the first to output NaN/Inf")

    handles = [m.register_forward_hook(lambda mod, i, o, n=name: hook(mod, i, o, n))
               for name, m in model.named_modules() if name and not list(m.children())]
    try:
        with mg.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else "every layer output was finite (the loss itself overflowed)"


def _progress_bar(total, desc, enabled, initial=0):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False,
                dynamic_ncols=True, file=sys.stderr)


def _layer_grad_norms(model):
    norms = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        layer = name.rsplit(".", 1)[0] if "." in name else ""
        a = np.asarray(p.grad.numpy(), dtype=np.float64).ravel()
        norms[layer] = norms.get(layer, 0.0) + float(np.dot(a, a))
    return {k: math.sqrt(v) for k, v in norms.items()}


def read_metrics(path):
    """The records of a ``metrics.jsonl`` file as a list of dicts."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(metrics_path, out_path):
    """Plot train/test loss and accuracy per epoch from ``metrics_path`` into ``out_path``
    (PNG). Raises RuntimeError with an install hint when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError(f"--plot needs matplotlib ({e}); install it with "
                           f"'pip install matplotlib'") from None
    records = [r for r in read_metrics(metrics_path) if r.get("type") == "epoch"]
    # a resumed run may log an epoch again; keep the last record of each epoch
    by_epoch = {r["epoch"]: r for r in records}
    epochs = sorted(by_epoch)
    rows = [by_epoch[e] for e in epochs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    if rows and "test_loss" in rows[0]:
        ax1.plot(epochs, [r.get("test_loss") for r in rows], "s-", label="test")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(epochs, [100 * r["train_acc"] for r in rows], "o-", label="train")
    if rows and "test_acc" in rows[0]:
        ax2.plot(epochs, [100 * r.get("test_acc", float("nan")) for r in rows], "s-",
                 label="test")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)
    return out_path
