"""Fit the polynomial R of minigrad/cpu/gelu.py: erfc(z) exp(z^2) ~ sum_k R[k] t^k with
t = 1 / (1 + p z), z >= 0, least squares on the relative error.

    python tools/fit_gelu_erfc.py

Prints, for the chosen p and degree, the largest relative error over z in [0, 14] evaluated
in float64 (what the float32 kernels use) and the coefficients (gelu._R, gelu._P).
"""

import numpy as np
from scipy.special import erfc


def fit(p, degree, z):
    """(coefficients, max relative error) of the degree-``degree`` fit for this p."""
    target = erfc(z) * np.exp(z * z)
    t = 1.0 / (1.0 + p * z)
    basis = np.vander(t, degree + 1, increasing=True)
    weight = 1.0 / target
    coef, *_ = np.linalg.lstsq(basis * weight[:, None], target * weight, rcond=None)
    return coef, float(np.max(np.abs(basis @ coef - target) / target))


def main():
    z = np.concatenate([np.linspace(0, 1, 20001), np.linspace(1, 14, 200001)])
    best = None
    for degree in (8, 9, 10, 11, 12):
        for p in np.linspace(0.2, 1.0, 33):
            coef, err = fit(p, degree, z)
            if best is None or err < best[2]:
                best = (degree, p, err, coef)
        if best[2] < 3e-8:
            break
    degree, p, err, coef = best
    print(f"degree {degree}, p {p:.4g}: max relative error {err:.3g}")
    print("R =", tuple(float(f"{c:.9g}") for c in coef))


if __name__ == "__main__":
    main()
