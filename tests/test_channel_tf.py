"""minigrad.cpu.channel_tf: out = L in R^T over grids of channel vectors, against NumPy.

Each transform is compiled once (a handful of L, R and options, including the four Winograd
ones); hypothesis varies the channel count (vector loop, scalar tail, both, none), the
dtype, the grid strides and offsets, the masks and the data.  Every element of dst that is
not an output must keep its value, and masked-out inputs must read as 0 even when they
hold NaN.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from minigrad.cpu import channel_tf, winograd

_BT = winograd._BT
_AT = winograd._AT
_B = winograd._B
_A = winograd._A

CASES = {
    "input": (_BT, _BT, {}),
    "input edge": (_BT, _BT, {"in_mask": True}),
    "output": (_AT, _AT, {"bias": True, "out_mask": True}),
    "grad out": (_A, _A, {}),
    "scatter": (_B, _B, {"accumulate": True}),
    "odd shapes": (((1, -1, 0), (0, 0, 0)), ((-1,), (1,), (0,), (1,)), {"accumulate": True,
                                                                     "bias": True}),
    "other coefficients": (((4, 0, -5, 0.5), (0, -2, 1, 8)), ((1, 2, -4), (0.25, 0, 1)),
                           {"in_mask": True}),
}


def _runner(L, R, opts):
    tf = channel_tf.make(L, R, **opts)

    @njit
    def run(n, src, s0, srs, scs, dst, d0, drs, dcs, bias, mask):
        tf(n, src, s0, srs, scs, dst, d0, drs, dcs, bias, mask)
    return run


_RUNNERS = {name: _runner(*case) for name, case in CASES.items()}


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(CASES)), n=st.integers(0, 21),
       dtype=st.sampled_from([np.float32, np.float64]), pad=st.integers(0, 9),
       mask=st.integers(0, 2 ** 16 - 1), seed=st.integers(0, 2 ** 31 - 1))
def test_transform_matches_numpy(name, n, dtype, pad, mask, seed):
    L, R, opts = CASES[name]
    L, R = np.array(L, float), np.array(R, float)
    rng = np.random.default_rng(seed)
    in_rows, in_cols, out_rows, out_cols = L.shape[1], R.shape[1], L.shape[0], R.shape[0]
    # grids with room between rows and columns (pad), at an offset
    scs, dcs = n + pad, n + pad + 1
    srs, drs = in_cols * scs + pad, out_cols * dcs + 2 * pad
    s0, d0 = pad + 3, 2 * pad + 1
    src = rng.standard_normal(s0 + in_rows * srs + n).astype(dtype)
    dst = rng.standard_normal(d0 + out_rows * drs + n).astype(dtype)
    bias = rng.standard_normal(max(n, 1)).astype(dtype)
    grid = np.array([[src[s0 + a * srs + j * scs:s0 + a * srs + j * scs + n]
                      for j in range(in_cols)] for a in range(in_rows)], np.float64)
    if opts.get("in_mask"):
        for a in range(in_rows):
            for j in range(in_cols):
                if not mask >> (a * in_cols + j) & 1:
                    src[s0 + a * srs + j * scs:s0 + a * srs + j * scs + n] = np.nan
                    grid[a, j] = 0.0
    out = np.einsum("pa,ajc,qj->pqc", L, grid, R)
    if opts.get("bias"):
        out = out + bias[:n]
    before = dst.copy()
    _RUNNERS[name](n, src, s0, srs, scs, dst, d0, drs, dcs, bias, mask)

    expect = before.astype(np.float64)
    for p in range(out_rows):
        for q in range(out_cols):
            if opts.get("out_mask") and not mask >> (p * out_cols + q) & 1:
                continue
            o = d0 + p * drs + q * dcs
            expect[o:o + n] = out[p, q] + (before[o:o + n] if opts.get("accumulate") else 0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dst, expect, rtol=tol, atol=tol)


def test_make_rejects_bad_matrices():
    with pytest.raises(ValueError, match="finite numbers"):
        channel_tf.make(((float("nan"), 0),), ((1,),))
    with pytest.raises(ValueError, match="finite numbers"):
        channel_tf.make((("2", 0),), ((1,),))
    with pytest.raises(ValueError, match="rectangular"):
        channel_tf.make(((1, 0), (1,)), ((1,),))
    with pytest.raises(ValueError, match="one mask"):
        channel_tf.make(((1,),), ((1,),), in_mask=True, out_mask=True)
