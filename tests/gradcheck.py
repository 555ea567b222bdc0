"""Shared helpers for reference tests: float64 central-difference gradient checks."""

import numpy as np

import minigrad as mg


def numeric_grad(f, arrays, index, eps=1e-6):
    """Central-difference gradient of the scalar ``f(*arrays)`` with respect to ``arrays[index]``."""
    x = arrays[index]
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        plus = f(*arrays)
        x[i] = old - eps
        minus = f(*arrays)
        x[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad


def check_grad(op, arrays, seed=0, atol=1e-6, rtol=1e-5, wrt=None):
    """Compare minigrad's gradients of ``sum(op(*tensors) * W)`` with central differences.

    ``arrays`` are float64 NumPy arrays; ``W`` is a fixed random weighting so that every
    output element matters.  Returns the analytic gradients for further checks.
    """
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    wrt = range(len(arrays)) if wrt is None else wrt
    tensors = [mg.tensor(a, requires_grad=(i in wrt)) for i, a in enumerate(arrays)]
    out = op(*tensors)
    weight = np.random.default_rng(seed).standard_normal(out.shape)
    (out * mg.tensor(weight)).sum().backward()

    def scalar(*xs):
        with mg.no_grad():
            return float((op(*[mg.tensor(x) for x in xs]).numpy() * weight).sum())

    grads = []
    for i in wrt:
        expected = numeric_grad(scalar, arrays, i)
        got = tensors[i].grad.numpy()
        np.testing.assert_allclose(got, expected, atol=atol, rtol=rtol,
                                   err_msg=f"gradient of input {i}")
        grads.append(got)
    return grads, weight
