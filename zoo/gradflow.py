"""Gradient flow: train a few SGD steps, record each layer's gradient norm, plot it against depth.

    from zoo import gradflow
    r = gradflow.run("resnet18", steps=5, out_png="resnet18_gradflow.png")
    r.ratio                      # first-layer / last-layer gradient norm
    both = gradflow.compare_residual("resnet18", out_png="residual_vs_plain.png")
    both["residual"].ratio, both["plain"].ratio

From the shell: ``python -m zoo.gradflow resnet18 --compare --out gradflow.png``.

The per-layer norm is :func:`minigrad.summary.layer_grad_norms` (weight and bias of a layer
together). By default only the weight layers (Conv2d, Linear) are plotted, so "depth" is
the index of the conv/linear layer in definition order (= forward order in the zoo).
"""

import math
import os

import numpy as np

from minigrad.io import save_figure, write_file_atomic
from minigrad.summary import layer_grad_norms

__all__ = ["run", "compare_residual", "GradFlowResult", "layer_grad_norms", "plot",
           "default_input_shape"]

WEIGHT_LAYERS = ("Conv2d", "Linear")


class GradFlowResult:
    """Result of :func:`run`.

    ``model`` (name), ``residual``, ``layers`` (names, depth order), ``norms_per_step``
    (list over steps of lists of norms, aligned with ``layers``), ``norms`` (mean over steps,
    an ordered dict name -> norm), ``losses`` (per step), ``ratio`` (first / last layer's mean
    gradient norm), ``png`` (path written or None). ``to_dict()`` for JSON.
    """

    def __init__(self, model, residual, layers, norms_per_step, losses, png, input_shape):
        self.model = model
        self.residual = residual
        self.layers = list(layers)
        self.norms_per_step = norms_per_step
        mean = np.mean(np.asarray(norms_per_step, dtype=np.float64), axis=0)
        self.norms = dict(zip(self.layers, (float(v) for v in mean)))
        self.losses = losses
        self.png = png
        self.input_shape = tuple(input_shape)
        first, last = mean[0], mean[-1]
        self.ratio = float(first / last) if last > 0 else math.inf

    @property
    def label(self):
        """Legend text: model name, with "(no residual)" for plain networks."""
        return self.model + ("" if self.residual else " (no residual)")

    def to_dict(self):
        """A JSON-ready dict of the result."""
        return {"model": self.model, "residual": self.residual, "layers": self.layers,
                "norms": self.norms, "norms_per_step": self.norms_per_step,
                "losses": self.losses, "ratio_first_last": self.ratio, "png": self.png,
                "input_shape": list(self.input_shape)}

    def __repr__(self):
        return (f"GradFlowResult({self.label}, layers={len(self.layers)}, "
                f"first/last={self.ratio:.4g})")


def default_input_shape(model_name, model_kw):
    """``(C, H, W)`` used when none is given: the registry's default for LeNet-5 (1x28x28),
    3x32x32 (CIFAR size) for the other models; ``in_channels`` / ``input_size`` honoured."""
    name = model_name.lower()
    if name.startswith("lenet"):
        size = model_kw.get("input_size", 28)
        return (model_kw.get("in_channels", 1), size, size)
    return (model_kw.get("in_channels", 3), 32, 32)


def _build(model_name, residual, model_kw, input_shape):
    """The model with quick-run defaults: 10 classes and the small-input variant the registry
    gives for ``input_shape`` (``stem="cifar"``, ``variant="cifar"``), unless ``model_kw``
    says otherwise."""
    import zoo

    kw = dict(model_kw)
    kw.setdefault("num_classes", 10)
    try:
        for k, v in zoo.get_spec(model_name).kwargs_for_input(input_shape[-1]).items():
            kw.setdefault(k, v)
    except (AttributeError, ValueError):
        pass
    if model_name.lower().startswith("resnet"):
        kw["residual"] = residual
    elif not residual:
        raise ValueError(f"gradflow: model {model_name!r} has no residual connections to "
                         f"remove; residual=False is for ResNets")
    return zoo.get_model(model_name, **kw)


def _batches(dataset, input_shape, steps, batch_size, num_classes, seed, data_dir):
    """``steps`` batches (float32 images, int64 labels) from the named dataset."""
    n = steps * batch_size
    c, h, w = input_shape
    key = dataset.lower().replace("-", "").replace("_", "")
    images = labels = None
    if key == "synthetic":
        try:
            from minigrad.data.datasets import SyntheticImages
            if h == w:
                ds = SyntheticImages(num_samples=n, train=True, num_classes=num_classes,
                                     image_size=h, channels=c, seed=seed)
                images = np.stack([ds[i][0] for i in range(n)]).astype(np.float32)
                labels = ds.targets[:n].astype(np.int64)
        except ImportError:  # pragma: no cover - minigrad.data ships with minigrad
            pass
        if images is None:
            rng = np.random.default_rng(seed)
            images = rng.standard_normal((n, c, h, w)).astype(np.float32)
            labels = rng.integers(0, num_classes, n).astype(np.int64)
    else:
        from minigrad.data.datasets import get_dataset

        ds = get_dataset(dataset, root=data_dir, train=True)
        if tuple(ds.image_shape) != tuple(input_shape):
            raise ValueError(f"gradflow: dataset {dataset} has images {ds.image_shape}, the "
                             f"model input is {tuple(input_shape)}")
        idx = np.random.default_rng(seed).permutation(len(ds))[:n]
        images = np.stack([ds[int(i)][0] for i in idx]).astype(np.float32)
        labels = ds.targets[idx].astype(np.int64)
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, n, batch_size)]


def run(model_name, steps=5, batch_size=8, dataset="synthetic", out_png="gradflow.png",
        residual=True, seed=0, lr=0.01, momentum=0.9, input_shape=None, layer_types=WEIGHT_LAYERS,
        device="cpu", data_dir=None, verbose=True, **model_kw):
    """Train ``model_name`` (from :func:`zoo.get_model`) for ``steps`` SGD steps and record
    every layer's gradient norm at each step; draw the mean norm (log scale) against depth
    to ``out_png`` (skipped when None) and return a :class:`GradFlowResult` whose ``ratio``
    is the first layer's norm over the last layer's (also printed when ``verbose``).

    Defaults aim at a quick run: 10 classes; ResNets get ``stem="cifar"``, VGG/AlexNet
    ``variant="cifar"`` unless ``model_kw`` says otherwise; ``residual=False`` builds a
    ResNet without its skip connections. ``dataset`` is ``"synthetic"`` (no files needed),
    ``"mnist"`` or ``"cifar10"`` (read from ``data_dir``). ``layer_types`` selects the layers
    plotted (None: every layer with parameters). ``seed`` fixes the weights and the data.
    """
    import minigrad as mg
    import minigrad.nn.functional as F
    import minigrad.optim as optim

    if steps < 1 or batch_size < 1:
        raise ValueError(f"gradflow: steps and batch_size must be >= 1, got {steps}, {batch_size}")
    mg.manual_seed(seed)
    input_shape = tuple(input_shape or default_input_shape(model_name, model_kw))
    model = _build(model_name, residual, model_kw, input_shape)
    if device != "cpu":
        model.to(device)
    model.train()
    num_classes = model_kw.get("num_classes", 10)
    batches = _batches(dataset, input_shape, steps, batch_size, num_classes, seed, data_dir)
    opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    layers, per_step, losses = None, [], []
    for step, (xb, yb) in enumerate(batches):
        x = mg.tensor(xb, device=device)
        y = mg.tensor(yb, device=device)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        norms = layer_grad_norms(model, layer_types=layer_types)
        if layers is None:
            layers = list(norms)
            if len(layers) < 2:
                raise ValueError(f"gradflow: {model_name} has {len(layers)} layers of types "
                                 f"{layer_types} with gradients; need at least 2")
        per_step.append([norms.get(n, 0.0) for n in layers])
        losses.append(float(loss.item()))
        opt.step()
        if verbose:
            print(f"  step {step + 1}/{steps}: loss {losses[-1]:.4f}, "
                  f"|g| first {per_step[-1][0]:.3e}, last {per_step[-1][-1]:.3e}")
    result = GradFlowResult(model_name, residual, layers, per_step, losses, None, input_shape)
    if out_png:
        result.png = plot([result], out_png)
    if verbose:
        print(f"{result.label}: gradient norm first layer ({layers[0]}) / last layer "
              f"({layers[-1]}) = {result.ratio:.4g}" + (f"; plot: {result.png}" if out_png else ""))
    return result


def _is_shortcut(name):
    return ".downsample." in name or name.endswith(".downsample") or ".shortcut" in name


def plot(results, out_png, title=None):
    """Draw one curve per :class:`GradFlowResult` (gradient norm, log scale, against depth)
    into ``out_png`` (matplotlib, Agg backend); layers are matched by name across results,
    shortcut (downsample) convs drawn as separate markers (x); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # x positions: one per layer name, in forward order, merged over the results (a plain
    # ResNet lacks the downsample convs); shortcut (downsample) convs sit beside the main
    # path, so they are drawn as unconnected markers.
    names = []
    for r in sorted(results, key=lambda r: -len(r.layers)):
        for n in r.layers:
            if n not in names:
                names.append(n)
    pos = {n: i + 1 for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(max(7.0, 0.3 * len(names)), 4.8))
    for r in results:
        main = [n for n in r.layers if not _is_shortcut(n)]
        side = [n for n in r.layers if _is_shortcut(n)]
        line, = ax.semilogy([pos[n] for n in main], [r.norms[n] for n in main], marker="o",
                            ms=3, label=f"{r.label}: first/last = {r.ratio:.3g}")
        if side:
            ax.semilogy([pos[n] for n in side], [r.norms[n] for n in side], linestyle="none",
                        marker="x", ms=6, color=line.get_color())
    ax.set_xticks(np.arange(1, len(names) + 1))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_xlabel("layer (forward order; x = shortcut conv)")
    ax.set_ylabel("gradient L2 norm (mean over steps)")
    steps = len(results[0].losses)
    ax.set_title(title or f"Gradient flow, {steps} SGD steps, input {results[0].input_shape}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(folder, exist_ok=True)
    save_figure(fig, out_png, dpi=120)
    plt.close(fig)
    return out_png


def compare_residual(model_name="resnet18", steps=5, batch_size=8, dataset="synthetic",
                     out_png="gradflow_residual.png", seed=0, verbose=True, **kw):
    """Run :func:`run` on ``model_name`` with and without residual connections (same seed:
    same initial weights and data) and draw both curves in one PNG. Returns
    ``{"residual": GradFlowResult, "plain": GradFlowResult, "png": path}``."""
    with_res = run(model_name, steps=steps, batch_size=batch_size, dataset=dataset,
                   out_png=None, residual=True, seed=seed, verbose=verbose, **kw)
    plain = run(model_name, steps=steps, batch_size=batch_size, dataset=dataset,
                out_png=None, residual=False, seed=seed, verbose=verbose, **kw)
    png = plot([with_res, plain], out_png,
               title=f"{model_name}: gradient flow with and without residual connections")\
        if out_png else None
    with_res.png = plain.png = png
    if verbose:
        print(f"first/last gradient-norm ratio: residual {with_res.ratio:.4g}, "
              f"plain {plain.ratio:.4g}" + (f"; plot: {png}" if png else ""))
    return {"residual": with_res, "plain": plain, "png": png}


def main(argv=None):
    """``python -m zoo.gradflow MODEL [--steps N] [--batch-size B] [--compare] [--plain]
    [--out PNG] [--seed S] [--lr LR] [--input CxHxW] [--all-layers] [--json PATH]``;
    returns 0."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m zoo.gradflow", description=main.__doc__)
    p.add_argument("model")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--out", default="gradflow.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--compare", action="store_true", help="with and without residuals")
    p.add_argument("--plain", action="store_true", help="residual=False")
    p.add_argument("--json", default=None, help="also write the numbers here")
    p.add_argument("--input", default=None, help="input shape CxHxW, e.g. 3x32x32")
    p.add_argument("--all-layers", action="store_true",
                   help="plot every layer with parameters (BatchNorm too), not only conv/linear")
    a = p.parse_args(argv)
    extra = {"layer_types": None} if a.all_layers else {}
    if a.input:
        extra["input_shape"] = tuple(int(v) for v in a.input.lower().split("x"))
    if a.compare:
        r = compare_residual(a.model, steps=a.steps, batch_size=a.batch_size, dataset=a.dataset,
                             out_png=a.out, seed=a.seed, lr=a.lr, **extra)
        data = {"residual": r["residual"].to_dict(), "plain": r["plain"].to_dict()}
    else:
        r = run(a.model, steps=a.steps, batch_size=a.batch_size, dataset=a.dataset,
                out_png=a.out, residual=not a.plain, seed=a.seed, lr=a.lr, **extra)
        data = r.to_dict()
    if a.json:
        write_file_atomic(a.json, json.dumps(data, indent=2).encode())
    return 0


if __name__ == "__main__":
    main()
