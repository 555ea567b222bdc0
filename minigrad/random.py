"""The global random-number generator: seeding and state for reproducible runs."""

import numpy as np

_generator = np.random.Generator(np.random.PCG64(0))


def manual_seed(seed):
    """Seed the generator used by ``randn``, ``rand``, weight initialisation and dropout."""
    global _generator
    _generator = np.random.Generator(np.random.PCG64(int(seed)))
    return _generator


def generator():
    """The current global ``numpy.random.Generator``."""
    return _generator


def get_rng_state():
    """The generator state as a JSON-serialisable dict (for checkpoints)."""
    return _generator.bit_generator.state


def set_rng_state(state):
    """Restore a state returned by ``get_rng_state``."""
    _generator.bit_generator.state = state


def next_seed():
    """A fresh 63-bit seed drawn from the global generator (for device-side RNG kernels)."""
    return int(_generator.integers(0, 2**63 - 1))
