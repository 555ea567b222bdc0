"""Inverted dropout: zero with probability ``p``, scale the rest by ``1/(1-p)``."""

from .. import random as _random
from ..autograd import Function


class Dropout(Function):
    """``y = x * mask`` with a backend-generated mask that is a function of ``seed``."""

    def forward(self, x, p, seed):
        """Output storage from input storage."""
        mask = self.be.dropout_mask(x.shape, p, seed, x.dtype)
        self.save(mask)
        return self.be.binary("mul", x, mask)

    def backward(self, g):
        """Gradients for the positional inputs."""
        (mask,) = self.saved
        return (self.be.binary("mul", g, mask),)


def dropout(x, p=0.5, training=True):
    """Inverted dropout as ``torch.nn.functional.dropout``; identity when not training or ``p == 0``.

    The mask seed is drawn from minigrad's global generator, so ``manual_seed``
    (and saving/restoring ``get_rng_state``) makes it reproducible.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
    if not training or p == 0.0:
        return x
    return Dropout.apply(x, p=float(p), seed=_random.next_seed())
