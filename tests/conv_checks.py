"""Shared checks of the CPU conv backend's backward against float64 references."""

import numpy as np

from minigrad.cpu import conv


def check_backward_passes(x, w, gy, stride, padding, saved, gxr, gwr, tol):
    """conv.conv2d_backward with and without the forward's ``saved`` state, all three
    gradients, then dW alone (with ``saved``) and dX alone, against the float64 references
    gxr and gwr; returns the full pass's gx (for layout checks)."""
    args = (stride, padding, (1, 1))
    gbr = np.asarray(gy, np.float64).sum(axis=(0, 2, 3))
    for kept in (saved, None):
        gx, gw, gb = conv.conv2d_backward(x, w, gy, *args, True, True, True, saved=kept)
        np.testing.assert_allclose(gx, gxr, **tol)
        np.testing.assert_allclose(gw, gwr, **tol)
        np.testing.assert_allclose(gb, gbr, **tol)
        assert gx.dtype == gw.dtype == x.dtype and gw.shape == w.shape
    full = gx
    gx, gw, _ = conv.conv2d_backward(x, w, gy, *args, False, True, False, saved=saved)
    assert gx is None
    np.testing.assert_allclose(gw, gwr, **tol)
    gx, gw, _ = conv.conv2d_backward(x, w, gy, *args, True, False, False)
    assert gw is None
    np.testing.assert_allclose(gx, gxr, **tol)
    return full


def check_addend_modes(x, w, gy, stride, gxr, addend, in_place):
    """dX with ``addend`` folded in (conv2d_backward's gx_addend), first read-only, then
    writable: both equal gxr + addend; the writable call updates the addend's own storage
    exactly when ``in_place``, and leaves it unchanged otherwise."""
    kept = addend.copy()
    args = (stride, (0, 0), (1, 1), True, False, False)
    gx, _, _ = conv.conv2d_backward(x, w, gy, *args, gx_addend=addend)
    np.testing.assert_allclose(gx, gxr + kept, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(addend, kept)       # only read
    gx, _, _ = conv.conv2d_backward(x, w, gy, *args, gx_addend=addend, addend_writable=True)
    np.testing.assert_allclose(gx, gxr + kept, rtol=1e-4, atol=1e-4)
    assert np.shares_memory(gx, addend) == in_place
    if not in_place:
        np.testing.assert_array_equal(addend, kept)
