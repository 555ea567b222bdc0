"""minigrad command line: train, eval, models, info, bench, summary, gradflow.

    python cli.py train lenet                      # MNIST, per-model defaults
    python cli.py train resnet18 --dataset synthetic --epochs 1 --limit 20
    python cli.py eval runs/lenet5/best.safetensors
    python cli.py models | info | bench | summary vgg16 | gradflow resnet18

Run ``python cli.py COMMAND --help`` for every option.
"""

import json
import os
import platform
import sys
import time

import click
import numpy as np

# Exit code for bad usage / unusable device (click's own usage errors use 2 as well).
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_NONFINITE = 3

DATASETS = ("mnist", "cifar10", "synthetic")
SCHEDULES = ("none", "step", "cosine", "onecycle")
OPTIMIZERS = ("sgd", "adam", "adamw")


def _fail(message, code=EXIT_USAGE):
    """Print one clear line to stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _check_device(device):
    """The backend of ``device``; one clear line and exit code 2 when it is unusable."""
    import minigrad as mg

    try:
        return mg.backend.get(device)
    except (RuntimeError, ValueError, ImportError) as e:
        _fail(str(e))


def default_data_dir(dataset):
    """The data folder used when --data-dir is not given: ``$MINIGRAD_DATA`` when set;
    otherwise the first of the user cache (``~/.cache/minigrad``), ``<repo>/../shared/data``
    and ``<repo>/data`` that holds a folder for ``dataset``; otherwise None (the library's
    default, where MNIST falls back to the shipped subset)."""
    if os.environ.get("MINIGRAD_DATA") or dataset == "synthetic":
        return None
    from minigrad.data import default_cache_dir

    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (str(default_cache_dir()), os.path.join(here, "..", "shared", "data"),
                   os.path.join(here, "data")):
        if os.path.isdir(os.path.join(folder, dataset)):
            return os.path.normpath(folder)
    return None


def _model_name(name):
    import zoo

    try:
        return zoo.get_spec(name).name
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="MODEL") from None


# ----------------------------------------------------------------------------- building a run

def build_data(dataset, data_dir, batch_size, seed, device, train=True, augment=True,
               echo=click.echo):
    """Train (or test) dataset and DataLoader for a run."""
    from minigrad.data import DataLoader, DatasetNotFoundError, get_dataset, train_augmentation

    import logging

    logging.getLogger("minigrad.data").setLevel(logging.ERROR)  # the CLI prints its own note
    kwargs = {"seed": seed} if dataset == "synthetic" else {}
    try:
        ds = get_dataset(dataset, root=data_dir, train=train, **kwargs)
    except DatasetNotFoundError as e:
        _fail(str(e))
    if getattr(ds, "is_subset", False) and train and echo is not None:
        echo(f"note: {ds.fallback_message}")
    transform = train_augmentation(dataset) if (train and augment) else None
    loader = DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=False, seed=seed,
                        transform=transform, device=device)
    return ds, loader


def build_optimizer(name, params, lr, momentum, weight_decay):
    """``optim.SGD`` (with momentum), ``optim.Adam`` or ``optim.AdamW``."""
    import minigrad.optim as optim

    params = list(params)
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         nesterov=momentum > 0)
    if name == "adam":
        return optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def build_scheduler(name, optimizer, lr, epochs, steps_per_epoch, warmup_epochs):
    """The LR schedule as ``(scheduler or None, interval)``; all but "step" act per batch.

    * none: constant LR (a linear warm-up when ``warmup_epochs`` > 0)
    * step: StepLR, x0.1 at 1/2 and 3/4 of the run (MultiStepLR, per epoch)
    * cosine: linear warm-up over ``warmup_epochs`` then cosine annealing to 0
    * onecycle: OneCycleLR with peak ``lr``; ``warmup_epochs`` sets its rising phase
      (default 30% of the run)
    """
    from minigrad.optim import lr_scheduler as sch

    total = max(1, epochs * steps_per_epoch)
    warm = min(total - 1, int(round(warmup_epochs * steps_per_epoch)))
    if name == "step":
        milestones = sorted({max(1, epochs // 2), max(1, (3 * epochs) // 4)})
        return sch.MultiStepLR(optimizer, milestones=milestones, gamma=0.1), "epoch"
    if name == "onecycle":
        pct = warm / total if warm > 0 else 0.3
        return sch.OneCycleLR(optimizer, max_lr=lr, total_steps=total,
                              pct_start=min(max(pct, 1.0 / total), 0.99)), "step"
    if name == "cosine":
        return WarmupCosine(optimizer, total_steps=total, warmup_steps=warm), "step"
    if name == "none":
        if warm > 0:
            return WarmupCosine(optimizer, total_steps=total, warmup_steps=warm,
                                anneal=False), "step"
        return None, "step"
    raise ValueError(f"unknown schedule {name!r}")


class WarmupCosine:
    """Linear warm-up from ``lr/warmup_steps`` to the base LR over ``warmup_steps`` steps,
    then cosine annealing to 0 at ``total_steps`` (or constant when ``anneal=False``).
    Stateless apart from the step count, so checkpoints hold ``{"step": n}``."""

    def __init__(self, optimizer, total_steps, warmup_steps=0, anneal=True):
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.anneal = anneal
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def factor(self, step):
        """LR multiplier at ``step``."""
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.anneal:
            return 1.0
        import math

        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    def _apply(self):
        f = self.factor(self.step_count)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f

    def step(self):
        """Advance one optimizer step."""
        self.step_count += 1
        self._apply()

    def get_last_lr(self):
        """Current LRs of the parameter groups."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        """``{"step": n, "base_lrs": [...]}`` as NumPy arrays."""
        import numpy as np

        return {"step": np.array(self.step_count, dtype=np.int64),
                "base_lrs": np.array(self.base_lrs, dtype=np.float64)}

    def load_state_dict(self, state):
        """Restore from :meth:`state_dict`."""
        import numpy as np

        self.step_count = int(np.asarray(state["step"]))
        self.base_lrs = [float(v) for v in np.asarray(state["base_lrs"]).ravel()]
        self._apply()


def build_run(config, echo=click.echo):
    """Model, loaders, optimizer, scheduler and Trainer from a run ``config`` dict."""
    import minigrad as mg
    import zoo
    from zoo.trainer import Trainer

    mg.manual_seed(config["seed"])
    train_ds, train_loader = build_data(config["dataset"], config["data_dir"],
                                        config["batch_size"], config["seed"], config["device"],
                                        train=True, augment=config.get("augment", True),
                                        echo=echo)
    _, test_loader = build_data(config["dataset"], config["data_dir"], 500, config["seed"],
                                config["device"], train=False, echo=None)
    spec = zoo.get_spec(config["model"])
    if config.get("model_kwargs") is None:
        c, h, _ = train_ds.image_shape
        kw = spec.kwargs_for_input(h)
        kw.update(num_classes=int(train_ds.num_classes), in_channels=int(c))
        config["model_kwargs"] = kw
    model = spec.builder(**config["model_kwargs"])
    if config["device"] != "cpu":
        model.to(config["device"])
    optimizer = build_optimizer(config["optimizer"], model.parameters(), config["lr"],
                                config["momentum"], config["weight_decay"])
    steps = len(train_loader)
    if config.get("limit"):
        steps = min(steps, config["limit"])
    scheduler, interval = build_scheduler(config["schedule"], optimizer, config["lr"],
                                          config["epochs"], steps, config["warmup_epochs"])
    trainer = Trainer(model, optimizer, train_loader, test_loader, scheduler=scheduler,
                      scheduler_interval=interval, out_dir=config["out"], config=config,
                      device=config["device"], limit=config.get("limit"),
                      log_grad_norms=config.get("log_grad_norms", 0),
                      progress=config.get("progress", True), echo=echo,
                      clip_grad_norm=config.get("clip_grad_norm"),
                      detect_anomaly=config.get("detect_anomaly", False))
    return trainer


# ----------------------------------------------------------------------------- commands

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """minigrad: train and inspect the model zoo (LeNet-5, AlexNet, VGG, ResNet-18)."""


_TRAIN_OPTIONS = ("dataset", "epochs", "batch_size", "lr", "optimizer", "momentum",
                  "weight_decay", "schedule", "warmup_epochs")


@cli.command()
@click.argument("model")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Device to train on.")
@click.option("--dataset", type=click.Choice(DATASETS), default=None,
              help="Dataset [model default: mnist for lenet, cifar10 otherwise].")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Number of epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="(Peak) learning rate.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help="Optimizer.")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="SGD momentum (Nesterov when > 0).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None,
              help="Weight decay (L2 for sgd/adam, decoupled for adamw).")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=None,
              help="LR schedule (step: x0.1 at 1/2 and 3/4; cosine and onecycle per batch).")
@click.option("--warmup-epochs", type=click.FloatRange(min=0), default=None,
              help="Linear warm-up length in epochs (onecycle: its rising phase).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of weights, data order, augmentation and dropout.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Data folder holding mnist/ or cifar10/ [default: $MINIGRAD_DATA, else the "
                   "first of ~/.cache/minigrad, ../shared/data, ./data that has the dataset].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder [default: runs/<model>].")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Continue from a checkpoint (its saved settings are used).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N batches of each epoch (train and test): smoke runs.")
@click.option("--plot", is_flag=True, help="Write OUT/curves.png at the end.")
@click.option("--log-grad-norms", type=click.IntRange(min=0), default=0, show_default=True,
              help="Every N steps log per-layer gradient L2 norms to metrics.jsonl (0: off).")
@click.option("--clip-grad-norm", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Clip the global gradient L2 norm to this value before each step.")
@click.option("--detect-anomaly", is_flag=True,
              help="Check every op for NaN/Inf and name the op that made one (slow).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
def train(ctx, model, device, dataset, epochs, batch_size, lr, optimizer, momentum,
          weight_decay, schedule, warmup_epochs, seed, data_dir, out, resume, limit, plot,
          log_grad_norms, clip_grad_norm, detect_anomaly, no_progress):
    """Train MODEL (see `models`), writing metrics.jsonl and checkpoints to --out.

    Every option left out takes the model's default (lenet: MNIST, Adam 3e-3 one-cycle,
    4 epochs, batch 128; the others: CIFAR-10, SGD+Nesterov, cosine). With --resume the
    checkpoint's settings are used and the run ends exactly as an uninterrupted one
    would; options given explicitly override the saved ones (--out, --plot, --data-dir,
    --no-progress leave the result unchanged; other changes, --epochs included, do not).
    """
    from zoo.registry import get_spec
    from zoo.trainer import NonFiniteError, load_checkpoint

    given = {p: ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE
             for p in ctx.params}
    state = None
    if resume:
        try:
            state = load_checkpoint(resume)
        except (OSError, ValueError) as e:
            _fail(f"cannot resume from {resume}: {e}")
        config = dict(state["config"])
        if given["model"] and _model_name(model) != config["model"]:
            _fail(f"checkpoint {resume} is a {config['model']} run, not {model}")
        for name in _TRAIN_OPTIONS + ("seed", "limit", "log_grad_norms", "clip_grad_norm"):
            if given.get(name) and ctx.params[name] != config.get(name):
                click.echo(f"note: --{name.replace('_', '-')} {ctx.params[name]} overrides the "
                           f"checkpoint's {config.get(name)}", err=True)
                config[name] = ctx.params[name]
        config["out"] = out or os.path.dirname(os.path.abspath(resume))
        for name, value in (("device", device), ("data_dir", data_dir), ("plot", plot)):
            if given[name]:
                config[name] = value
    else:
        spec = get_spec(_model_name(model))
        config = dict(spec.defaults)
        for name in _TRAIN_OPTIONS:
            if ctx.params[name] is not None:
                config[name] = ctx.params[name]
        config.update(model=spec.name, model_kwargs=None, seed=seed, device=device,
                      data_dir=data_dir, out=out or os.path.join("runs", spec.name),
                      limit=limit, plot=plot, log_grad_norms=log_grad_norms,
                      clip_grad_norm=clip_grad_norm)
    config["progress"] = not no_progress
    config["detect_anomaly"] = detect_anomaly
    if config.get("data_dir") is None:
        config["data_dir"] = default_data_dir(config["dataset"])
    _check_device(config["device"])
    if config["device"] == "cpu":
        _precompile_first_run(config["model"])

    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            _fail("--plot needs matplotlib, which is not installed (pip install matplotlib)")

    trainer = build_run(config)
    if state is not None:
        trainer.load_state(state)
        click.echo(f"resumed {resume}: epoch {trainer.epoch + 1}, batch "
                   f"{trainer.batch_in_epoch} (step {trainer.global_step})")
    n_params = sum(p.numel() for p in trainer.model.parameters())
    click.echo(f"{config['model']} {config['model_kwargs']} | {n_params:,} parameters | "
               f"{config['dataset']} | {config['optimizer']} lr {config['lr']:g} "
               f"{config['schedule']} | {config['epochs']} epochs x "
               f"{trainer._num_batches(trainer.train_loader)} batches of {config['batch_size']}"
               f" | {config['device']} | out {config['out']}")
    t0 = time.perf_counter()
    try:
        trainer.fit(config["epochs"])
    except NonFiniteError as e:
        last = trainer.path("last.safetensors")
        where = f"; the last good checkpoint is {last}" if last and os.path.exists(last) else ""
        _fail(f"training stopped: {e}{where}", code=EXIT_NONFINITE)
    except KeyboardInterrupt:  # a second Ctrl-C: no new checkpoint
        last = trainer.path("last.safetensors")
        where = f"; the last checkpoint is {last}" if last and os.path.exists(last) else ""
        click.echo(f"aborted{where}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    wall = time.perf_counter() - t0
    if trainer.stopped:
        last = trainer.path("last.safetensors")
        click.echo(f"stopped at epoch {trainer.epoch + 1}, batch {trainer.batch_in_epoch}; "
                   f"checkpoint {last}")
        click.echo(f"resume with: python cli.py train {config['model']} --resume {last}")
        sys.exit(EXIT_INTERRUPTED)
    if trainer.history:
        final = trainer.history[-1]
        msg = f"done in {wall:.1f}s"
        if "test_acc" in final:
            msg += (f": final test accuracy {100 * final['test_acc']:.2f}%, "
                    f"best {100 * trainer.best_acc:.2f}%")
        click.echo(msg)
    if config.get("plot") and trainer.out_dir:
        click.echo(f"curves: {trainer.path('curves.png')}")


def _precompile_first_run(model):
    """On a first CPU run (most of MODEL's kernels not in the Numba cache), fill the cache
    in one process per core before training (minigrad.cpu.precompile).  Off with
    MINIGRAD_PRECOMPILE=0; models without recorded kernels are skipped."""
    if os.environ.get("MINIGRAD_PRECOMPILE", "1") == "0":
        return
    from minigrad.cpu import precompile

    try:
        entries = precompile.load_manifest([model])
    except (OSError, ValueError):
        return
    todo = precompile.missing(entries)
    jobs = min(precompile.default_jobs(), len(todo))
    if jobs < 2 or len(todo) < max(3, len(entries) // 4):
        return
    click.echo(f"first run: compiling {len(todo)} CPU kernels in {jobs} processes "
               f"(cached afterwards; MINIGRAD_PRECOMPILE=0 skips this)", err=True)
    try:
        result = precompile.warm(todo, jobs)
    except Exception as e:  # noqa: BLE001 - e.g. processes cannot be started here
        click.echo(f"parallel compile failed ({type(e).__name__}: {e}); kernels compile "
                   f"as they are first used instead", err=True)
        return
    click.echo(f"compiled {result.compiled} kernels in {result.seconds:.1f} s"
               + (f"; {len(result.failed)} failed and compile on first use instead"
                  if result.failed else ""), err=True)


@cli.command(name="eval")
@click.argument("ckpt", type=click.Path(exists=True, dir_okay=False))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Data folder [default: the one of the run].")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N test batches.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def eval_(ckpt, device, data_dir, batch_size, limit, as_json):
    """Test accuracy and confusion matrix of checkpoint CKPT."""
    import zoo
    from zoo.trainer import Trainer, load_checkpoint

    try:
        state = load_checkpoint(ckpt)
    except (OSError, ValueError) as e:
        _fail(f"cannot read {ckpt}: {e}")
    _check_device(device)
    config = state["config"]
    model = zoo.get_model(config["model"], **config["model_kwargs"])
    model.load_state_dict(state["model"])
    if device != "cpu":
        model.to(device)
    ds, loader = build_data(config["dataset"], data_dir or config.get("data_dir"), batch_size,
                            config.get("seed", 0), device, train=False, echo=None)
    trainer = Trainer(model, None, None, loader, device=device, limit=limit, progress=False)
    t0 = time.perf_counter()
    loss, acc, matrix = trainer.evaluate(confusion=True)
    seconds = time.perf_counter() - t0
    n = int(matrix.sum())
    if as_json:
        click.echo(json.dumps({"checkpoint": ckpt, "model": config["model"],
                               "dataset": config["dataset"], "images": n, "loss": loss,
                               "accuracy": acc, "confusion": matrix.tolist()}))
        return
    epoch = state["progress"].get("epoch")
    click.echo(f"{config['model']} ({ckpt}, after epoch {epoch}) on {config['dataset']} test: "
               f"{n:,} images in {seconds:.1f}s")
    if getattr(ds, "is_subset", False):
        click.echo(f"note: {ds.fallback_message}")
    click.echo(f"loss {loss:.4f}  accuracy {100 * acc:.2f}%  ({int(np.trace(matrix)):,}/{n:,})")
    click.echo("confusion matrix (rows: true class, columns: predicted):")
    click.echo(format_confusion(matrix))


def format_confusion(matrix):
    """A confusion matrix as an aligned text table with per-class recall."""
    k = matrix.shape[0]
    width = max(4, len(str(int(matrix.max()))) + 1)
    lines = ["true\\pred" + "".join(f"{j:>{width}}" for j in range(k)) + "  recall"]
    for i in range(k):
        row_total = int(matrix[i].sum())
        recall = matrix[i, i] / row_total if row_total else float("nan")
        lines.append(f"{i:>9}" + "".join(f"{int(v):>{width}}" for v in matrix[i])
                     + f"  {100 * recall:5.1f}%")
    return "\n".join(lines)


def _human(n):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(names, as_json):
    """Table of the zoo (or of the models NAMES): parameters and forward FLOPs at each
    model's default input.

    FLOPs = 2 x multiply-adds of conv and linear layers for one image (1000 classes,
    ImageNet layout; LeNet-5: 10 classes, 1x28x28)."""
    import zoo
    from zoo.flops import model_stats

    rows = []
    for name in [_model_name(n) for n in names] or zoo.list_models():
        kw = {"num_classes": 10, "in_channels": 1} if name == "lenet5" else {}
        rows.append(model_stats(name, **kw))
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'model':<10} {'input':>10} {'parameters':>13} {'fwd FLOPs':>10}")
    for r in rows:
        click.echo(f"{r['name']:<10} {r['input']:>10} {r['params']:>13,} {_human(r['flops']):>10}")
    click.echo("aliases: lenet -> lenet5; every model takes num_classes and in_channels; "
               "32x32 variants: variant='cifar' (alexnet, vgg*), stem='cifar' (resnet18)")


@cli.command(name="compile")
@click.argument("models", nargs=-1)
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Compiler processes [default: one per core].")
def compile_kernels(models, jobs):
    """Fill the Numba cache with the CPU kernels that training MODELS needs (default: all
    recorded, i.e. lenet and resnet18), compiling in parallel processes.  `train` does this
    by itself on a first run; this command does it ahead of time (e.g. in an image build)."""
    from minigrad.cpu import precompile

    names = [_model_name(m) for m in models] or None
    try:
        entries = precompile.load_manifest(names)
    except ValueError as e:
        _fail(str(e))
    result = precompile.warm(entries, jobs)
    for line in result.failed:
        click.echo(f"not compiled: {line}", err=True)
    if result.compiled or result.failed:
        click.echo(f"compiled {result.compiled} of {len(entries)} kernel signatures in "
                   f"{result.seconds:.1f} s")
    else:
        click.echo(f"all {len(entries)} kernel signatures were already cached")


@cli.command()
def info():
    """Versions, devices, CUDA availability, threads and the Numba cache directory."""
    import numba
    import numpy

    import minigrad as mg

    rows = [("minigrad", getattr(mg, "__version__", "?")),
            ("python", f"{platform.python_version()} ({sys.executable})"),
            ("numpy", numpy.__version__), ("numba", numba.__version__),
            ("platform", f"{platform.platform()}, {os.cpu_count()} CPUs"),
            ("devices", ", ".join(mg.devices()))]
    try:
        import minigrad_cuda
    except ImportError:
        cuda = "minigrad_cuda not installed"
    else:
        if hasattr(minigrad_cuda, "is_available"):
            try:
                cuda = "available" if minigrad_cuda.is_available() else "not available"
                reason = getattr(minigrad_cuda, "unavailable_reason", lambda: None)()
                if reason:
                    cuda += f" ({reason})"
            except Exception as e:  # report, never crash `info`
                cuda = f"not available ({e})"
        else:
            cuda = "unknown (minigrad_cuda.is_available missing)"
    cache = os.environ.get("NUMBA_CACHE_DIR") or numba.config.CACHE_DIR or \
        "(unset: __pycache__ next to each module)"
    mnist = default_data_dir("mnist")
    rows += [("cuda", cuda),
             ("malloc", _malloc_state()),
             ("small gemm", _small_gemm_state()),
             ("kernels", _kernel_cache_state()),
             ("threads", f"{numba.get_num_threads()} (numba; NUMBA_NUM_THREADS="
                         f"{os.environ.get('NUMBA_NUM_THREADS', 'unset')})"),
             ("numba cache", cache),
             ("cache stamp", _cache_stamp_state()),
             ("data dir", _data_dir()),
             ("mnist", f"{mnist}/mnist (train default)" if mnist
              else "no mnist/ folder found: train uses the shipped subset")]
    for key, value in rows:
        click.echo(f"{key:<12} {value}")


def _malloc_state():
    import minigrad as mg
    from minigrad.cpu import allocator

    mg.tensor([0.0])  # starts the CPU backend, which applies the tuning
    return allocator.status()


def _small_gemm_state():
    from minigrad.cpu import small_gemm

    if not small_gemm.SUPPORTED:
        return "not used on this CPU (needs AVX2 and FMA, or AVX-512)"
    if small_gemm.enabled():
        isa = "AVX-512" if small_gemm.LANES == 16 else "AVX2"
        return (f"on: float32 GEMMs of the shapes it wins use the {isa} {small_gemm.MR}x"
                f"{small_gemm.NR} micro-kernel (MINIGRAD_SMALL_GEMM=0 turns it off)")
    return "off (MINIGRAD_SMALL_GEMM=0): every GEMM goes to OpenBLAS"


def _cache_stamp_state():
    from minigrad import cache_stamp
    from minigrad.cpu import PACKAGE_DIR

    return (f"{cache_stamp.status(PACKAGE_DIR)} "
            "(stale kernels are dropped when minigrad/cpu changes; "
            "MINIGRAD_CACHE_STAMP=0 turns this off)")


def _kernel_cache_state():
    try:
        from minigrad.cpu import precompile

        entries = precompile.load_manifest()
        models = sorted({m for e in entries for m in e["models"]})
        missing = precompile.missing(entries)
    except Exception as e:  # pragma: no cover - informational only
        return f"? ({e})"
    parts = []
    for m in models:
        mine = [e for e in entries if m in e["models"]]
        parts.append(f"{m} {sum(e not in missing for e in mine)}/{len(mine)}")
    return "compiled and cached: " + ", ".join(parts) + " (python cli.py compile fills the rest)"


def _data_dir():
    try:
        from minigrad.data import resolve_data_dir

        return resolve_data_dir(None)
    except Exception as e:  # pragma: no cover - informational only
        return f"? ({e})"


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def bench(ctx):
    """Run the benchmarks (benchmarks/run_all.py; extra arguments are passed through)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        from benchmarks import run_all
    except ImportError as e:
        _fail(f"benchmarks are not available ({e}); expected benchmarks/run_all.py with main()")
    result = run_all.main(list(ctx.args))
    if isinstance(result, int):
        sys.exit(result)


def _parse_shape(text):
    try:
        shape = tuple(int(v) for v in text.lower().replace(",", "x").split("x") if v)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a shape like 3x224x224") from None
    if not shape or min(shape) < 1:
        raise click.BadParameter(f"{text!r} is not a shape like 3x224x224")
    return shape


@cli.command()
@click.argument("model")
@click.option("--input", "input_shape", default=None,
              help="Input shape CxHxW [default: the model's, e.g. 3x224x224].")
@click.option("--num-classes", type=click.IntRange(min=1), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def summary(model, input_shape, num_classes, batch_size, as_json):
    """Per-layer table of MODEL (minigrad.summary): shapes, parameters, FLOPs, memory.

    A 32x32 input selects the CIFAR variant/stem automatically."""
    import minigrad as mg
    import zoo

    spec = zoo.get_spec(_model_name(model))
    shape = _parse_shape(input_shape) if input_shape else spec.input_shape
    try:
        kw = spec.kwargs_for_input(shape[-1]) if len(shape) == 3 else {}
        if len(shape) == 3:
            kw["in_channels"] = shape[0]
        if num_classes is not None:
            kw["num_classes"] = num_classes
        net = spec.builder(**kw)
        result = mg.summary(net, shape, batch_size=batch_size, print_table=not as_json)
    except ValueError as e:
        _fail(str(e))
    if as_json:
        click.echo(result.to_json())


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("model")
@click.pass_context
def gradflow(ctx, model):
    """Gradient-flow study of MODEL (zoo.gradflow.run; extra options are passed through,
    see `python -m zoo.gradflow --help` when available)."""
    try:
        from zoo import gradflow as gf
    except ImportError as e:
        _fail(f"zoo.gradflow is not available ({e})")
    _model_name(model)
    try:
        result = gf.main([model] + list(ctx.args))
    except ValueError as e:
        _fail(str(e))
    if isinstance(result, int):
        sys.exit(result)


def main(argv=None):
    """Entry point of the ``minigrad`` console script and ``python cli.py``."""
    cli.main(args=argv, prog_name="cli.py")


if __name__ == "__main__":
    main()
