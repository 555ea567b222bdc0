"""A pre-norm transformer encoder block written once for both frameworks, for the bench's
"transformer block" row: LayerNorm, 4-head self-attention (one fused QKV Linear, softmax
over the keys), output projection, LayerNorm, MLP with GELU, two residual additions.

    python -m benchmarks.run_all --only transformer

``make(lib, width, seed)`` builds the block's layers with ``lib`` = ``minigrad`` or ``torch``
(the same initial weights for both); ``block(layers, x, heads)`` runs it on (batch, tokens,
width) input with that library's tensors.
"""

import numpy as np


def make(lib, width, seed=0, mlp_ratio=4):
    """The block's layers for ``lib`` (minigrad or torch), weights drawn from ``seed``."""
    nn = lib.nn
    layers = {"ln1": nn.LayerNorm(width), "qkv": nn.Linear(width, 3 * width),
              "proj": nn.Linear(width, width), "ln2": nn.LayerNorm(width),
              "fc1": nn.Linear(width, mlp_ratio * width), "fc2": nn.Linear(mlp_ratio * width, width),
              "gelu": nn.GELU()}
    rng = np.random.default_rng(seed)
    for name in ("qkv", "proj", "fc1", "fc2"):
        lin = layers[name]
        fan_in = lin.weight.shape[1]
        for param, shape in ((lin.weight, tuple(lin.weight.shape)), (lin.bias, tuple(lin.bias.shape))):
            values = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
            _assign(lib, param, values)
    return layers


def _assign(lib, param, values):
    if lib.__name__ == "torch":
        with lib.no_grad():
            param.copy_(lib.from_numpy(values))
    else:
        param.data[...] = values


def block(layers, x, heads):
    """The block's output for x (batch, tokens, width): a tensor of the layers' library."""
    b, t, width = x.shape
    h = layers["qkv"](layers["ln1"](x))
    q, k, v = h[..., :width], h[..., width:2 * width], h[..., 2 * width:]

    def split(z):
        return z.reshape(b, t, heads, width // heads).permute(0, 2, 1, 3)

    q, k, v = split(q), split(k), split(v)
    scores = (q @ k.transpose(-1, -2)) * (1.0 / float(np.sqrt(width // heads)))
    att = scores.softmax(-1) @ v
    x = x + layers["proj"](att.permute(0, 2, 1, 3).reshape(b, t, width))
    return x + layers["fc2"](layers["gelu"](layers["fc1"](layers["ln2"](x))))
