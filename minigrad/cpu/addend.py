"""Checks for gradient addends (see ``minigrad.autograd``): whether a backward may fold the
gradient already gathered for x into its dX copy-out, and whether it may write it in place.
Shared by the convolution backwards (``conv``, ``depthwise``)."""

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
