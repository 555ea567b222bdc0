"""Checks for gradient addends (see ``minigrad.autograd``): whether a backward may fold the
gradient already gathered for x into its dX copy-out, and whether it may write it in place.
Shared by the convolution backwards (``conv``, ``depthwise``, ``conv3x3_rows``, ``conv3x3_cl``)."""

import numpy as np


def nchw_foldable(addend, shape, dtype):
    """True when ``addend`` is an NCHW-contiguous array of ``shape`` and ``dtype``, so a
    kernel writing an NCHW dX can add it element by element."""
    return (addend is not None and addend.shape == tuple(shape) and addend.dtype == dtype
            and addend.flags.c_contiguous)


def writable_in_place(addend, addend_writable, *operands):
    """True when the caller allows it (``addend_writable``: the addend is a leaf's own
    ``.grad``), the array is writeable, and it shares no memory with the backward's
    ``operands``, so dX may be added into it in place."""
    return (addend_writable and addend.flags.writeable
            and not any(np.may_share_memory(addend, a) for a in operands))


def accumulating_dx(addend, addend_writable, shape, *operands):
    """(gx, folded) for a kernel that adds dX into an NCHW float32 array: the addend itself
    when it is foldable and may be written in place (``writable_in_place`` with the backward's
    ``operands``), a copy of it when it is foldable only, else zeros; folded when gx starts
    from the addend."""
    folded = nchw_foldable(addend, shape, np.float32)
    if folded and writable_in_place(addend, addend_writable, *operands):
        return addend, True
    if folded:
        return addend.copy(), True
    return np.zeros(shape, dtype=np.float32), False
