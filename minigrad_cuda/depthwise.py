"""Depthwise convolution kernels (groups equal to the input channels), NCHW, flat arrays.

Output channel o = c*m + j (m = K / C) reads input channel c only.  The forward runs one
thread per output and dX one thread per input pixel, gathering from the outputs whose
windows cover it (no atomics, deterministic); dW runs one block per weight element,
summing over the batch's output pixels in float64 with a shared-memory tree.
"""

from numba import cuda, float64

from ._common import RED_MAX
from .nn import _block_sum


@cuda.jit(cache=True)
def depthwise_fwd(x, w, b, y, n, C, H, W, m, R, S, OH, OW, sh, sw, ph, pw, dh, dw):
    """y[img, o, oh, ow] = b[o] + sum_{r,s} w[o, r, s] * xpad[img, o // m, ...] for n outputs."""
    K = C * m
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        ow = i % OW
        t = i // OW
        oh = t % OH
        t //= OH
        o = t % K
        img = t // K
        xb = (img * C + o // m) * H * W
        wb = o * R * S
        acc = b[o]
        for r in range(R):
            ih = oh * sh - ph + r * dh
            if ih >= 0 and ih < H:
                for s in range(S):
                    iw = ow * sw - pw + s * dw
                    if iw >= 0 and iw < W:
                        acc += w[wb + r * S + s] * x[xb + ih * W + iw]
        y[i] = acc


@cuda.jit(cache=True)
def depthwise_bwd_data(gy, w, gx, n, C, H, W, m, R, S, OH, OW, sh, sw, ph, pw, dh, dw, zero):
    """gx[img, c, ih, iw] = sum over c's m filters and their taps that read pixel (ih, iw)
    of w * gy at the output that tap belongs to; n = the number of input pixels."""
    K = C * m
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        iw = i % W
        t = i // W
        ih = t % H
        t //= H
        c = t % C
        img = t // C
        acc = zero
        for j in range(m):
            o = c * m + j
            gb = (img * K + o) * OH * OW
            wb = o * R * S
            for r in range(R):
                th = ih + ph - r * dh
                if th >= 0 and th % sh == 0 and th // sh < OH:
                    row = gb + (th // sh) * OW
                    for s in range(S):
                        tw = iw + pw - s * dw
                        if tw >= 0 and tw % sw == 0 and tw // sw < OW:
                            acc += w[wb + r * S + s] * gy[row + tw // sw]
        gx[i] = acc


@cuda.jit(cache=True)
def depthwise_bwd_weight(x, gy, gw, N, C, H, W, m, R, S, OH, OW, sh, sw, ph, pw, dh, dw):
    """gw[o, r, s] = sum over images and output pixels of gy[img, o] * the input pixel tap
    (r, s) reads; one block per weight element (grid-stride), float64 sums."""
    sh_mem = cuda.shared.array(RED_MAX, float64)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    K = C * m
    count = N * OH * OW
    for e in range(cuda.blockIdx.x, K * R * S, cuda.gridDim.x):
        s = e % S
        r = (e // S) % R
        o = e // (R * S)
        c = o // m
        acc = 0.0
        for q in range(t, count, nt):
            ow = q % OW
            u = q // OW
            oh = u % OH
            img = u // OH
            ih = oh * sh - ph + r * dh
            iw = ow * sw - pw + s * dw
            if ih >= 0 and ih < H and iw >= 0 and iw < W:
                acc += float64(gy[((img * K + o) * OH + oh) * OW + ow]) * \
                    x[((img * C + c) * H + ih) * W + iw]
        acc = _block_sum(sh_mem, acc)
        if t == 0:
            gw[e] = acc
