"""GELU on the CPU: forward and gradient in one pass each.

Composed from elementwise ops, GELU's exact form ``x * Phi(x)`` took seven passes over the
tensor forward and backward, the slowest being SciPy's single-threaded erf (22 ms for
2M float32 values: BENCHMARKS_perf.md, change 104).  These kernels compute each output
element in registers.

float32 runs vectorised arithmetic in float64, without libm calls (which Numba makes one
scalar call per element):

    Phi(x) = 1 - erfc(z) / 2 (x >= 0),  erfc(z) / 2 (x < 0),   z = |x| / sqrt(2)
    erfc(z) = exp(-z^2) * R(t),  t = 1 / (1 + 0.325 z)

R a degree-10 polynomial least-squares fitted (on the relative error, z in [0, 14]) to
erfc(z) exp(z^2) by tools/fit_gelu_erfc.py: at most 1.6e-8 relative error, so Phi and its
density keep a float32 result within about one rounding (0.76 ulp measured over [-20, 20]).
exp is 2^n e^r with e^r by its Taylor polynomial.  float64 calls libm's erfc and exp (full
float64 accuracy, for gradient checks).  ``approximate="tanh"``: PyTorch's
``0.5 x (1 + tanh(u))``, u = sqrt(2/pi) (x + 0.044715 x^3), with 1 + tanh(u) and
1 - tanh(u)^2 written through exp(-2|u|) so that neither cancels in the tails.
"""

import math

import numpy as np
from numba import prange, types
from numba.extending import overload, register_jitable

from ._jit import pjit
from .bitcast import bits_of_float64, float64_from_bits

_SQRT1_2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_TANH_K = 0.7978845608028654        # sqrt(2 / pi)
_TANH_C = 0.044715

# erfc(z) * exp(z^2) ~ sum_k _R[k] * t^k, t = 1 / (1 + _P * z), z >= 0
_P = 0.325
_R = (6.78965463e-06, 1.83169794e-01, 1.85740630e-01, 1.56602662e-01, 2.32982657e-01,
      -1.16845402e-01, 6.08889717e-01, -6.72365592e-01, 7.01728194e-01, -3.38261531e-01,
      5.83520642e-02)

_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238
_LN2_LO = 1.9082149292705877e-10


# 1.5 * 2^52: adding it to |v| < 2^51 rounds v to an integer held in the low mantissa bits
_SHIFTER = 6755399441055744.0


def _exp_neg(d):
    """exp(d) for float64 d <= 0 (jitted code only)."""
    raise NotImplementedError


@overload(_exp_neg, inline="always")
def _exp_neg_impl(d):
    def impl(d):
        # 2^n e^r: n = round(d / ln2), |r| <= ln2 / 2, e^r to degree 9 (truncation error
        # < 1e-11, for float32 results).  n by the shifter, in the low bits of kd, so that 2^n
        # is an int64 add and shift of kd's bits (no float-int conversions, which AVX2 does
        # not vectorise for 64-bit integers: the exp 1.27x faster, BENCHMARKS_perf.md,
        # change 104).  Below -700 the result is 0 (the clamp keeps 2^n a normal float64):
        # x = -inf then gives NaN as PyTorch (-inf * 0)
        small = d < -700.0
        d = max(d, -700.0)
        kd = d * _LOG2E + _SHIFTER
        n = kd - _SHIFTER
        r = d - n * _LN2_HI - n * _LN2_LO
        p = 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        e = p * float64_from_bits((bits_of_float64(kd) + np.int64(1023)) << np.int64(52))
        return 0.0 if small else e
    return impl


def _is_f32(t):
    return isinstance(t, types.Float) and t.bitwidth == 32


def _phi_pdf(x):
    """(Phi(x), phi(x)) in float64: the standard normal CDF and density at x, by the fitted
    erfc for a float32 x, by libm for a float64 one (jitted code only)."""
    raise NotImplementedError


@overload(_phi_pdf, inline="always")
def _phi_pdf_impl(x):
    if _is_f32(x):
        def fast(x):
            v = np.float64(x)
            z = abs(v) * _SQRT1_2
            t = 1.0 / (1.0 + _P * z)
            r = _R[10]
            r = r * t + _R[9]
            r = r * t + _R[8]
            r = r * t + _R[7]
            r = r * t + _R[6]
            r = r * t + _R[5]
            r = r * t + _R[4]
            r = r * t + _R[3]
            r = r * t + _R[2]
            r = r * t + _R[1]
            r = r * t + _R[0]
            e = _exp_neg(-z * z)
            half_erfc = 0.5 * e * r
            phi = half_erfc if v < 0 else 1.0 - half_erfc
            return phi, e * _INV_SQRT_2PI
        return fast

    def exact(x):
        v = np.float64(x)
        return 0.5 * math.erfc(-v * _SQRT1_2), math.exp(-0.5 * v * v) * _INV_SQRT_2PI
    return exact


def _tanh_terms(u, like):
    """(1 + tanh(u), 1 - tanh(u)^2) for float64 u, without cancellation in either: with
    e = exp(-2|u|), 2e / (1 + e) (u < 0) or 2 / (1 + e), and 4e / (1 + e)^2; exp by
    _exp_neg for a float32 ``like``, by libm for a float64 one (jitted code only)."""
    raise NotImplementedError


@overload(_tanh_terms, inline="always")
def _tanh_terms_impl(u, like):
    if _is_f32(like):
        def exp_neg(d):
            return _exp_neg(d)
    else:
        def exp_neg(d):
            return math.exp(d)
    exp_neg = register_jitable(inline="always")(exp_neg)

    def impl(u, like):
        e = exp_neg(-2.0 * abs(u))
        inv = 1.0 / (1.0 + e)
        one_plus = 2.0 * e * inv if u < 0 else 2.0 * inv
        return one_plus, 4.0 * e * inv * inv
    return impl


@pjit(fastmath={"contract"}, error_model="numpy")
def gelu_erf(x, out):
    """out = x * Phi(x) (flat arrays of one float dtype)."""
    for i in prange(x.size):
        phi, _ = _phi_pdf(x[i])
        out[i] = np.float64(x[i]) * phi


@pjit(fastmath={"contract"}, error_model="numpy")
def gelu_erf_grad(x, g, out):
    """out = g * (Phi(x) + x * phi(x)): the gradient of gelu_erf for the output's g."""
    for i in prange(x.size):
        phi, pdf = _phi_pdf(x[i])
        out[i] = g[i] * (phi + np.float64(x[i]) * pdf)


@pjit(fastmath={"contract"}, error_model="numpy")
def gelu_tanh(x, out):
    """out = x (1 + tanh(u)) / 2, u = sqrt(2/pi) (x + 0.044715 x^3)."""
    for i in prange(x.size):
        v = np.float64(x[i])
        one_plus, _ = _tanh_terms(_TANH_K * (v + _TANH_C * v * v * v), x[i])
        out[i] = 0.5 * v * one_plus


@pjit(fastmath={"contract"}, error_model="numpy")
def gelu_tanh_grad(x, g, out):
    """out = g * d/dx [x (1 + tanh(u)) / 2]."""
    for i in prange(x.size):
        v = np.float64(x[i])
        one_plus, sech2 = _tanh_terms(_TANH_K * (v + _TANH_C * v * v * v), x[i])
        du = _TANH_K * (1.0 + 3.0 * _TANH_C * v * v)
        out[i] = g[i] * (0.5 * one_plus + 0.5 * v * sech2 * du)
