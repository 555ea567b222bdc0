"""Kernels for pooling, softmax / cross-entropy, batch norm, LRN, dropout and optimizer steps.

Pooling uses one thread per output (forward) or per input element (backward: the
thread gathers from the windows that cover its pixel, so there are no atomics and
the result is deterministic).  Row-wise softmax/cross-entropy and the per-channel
batch-norm statistics use one block per row/channel with shared-memory tree
reductions (float64 accumulation for batch-norm statistics).
"""

import functools
import math

import numpy as np
from numba import cuda, float64

from ._common import RED_MAX, dmax, dmin

# --- pooling ---------------------------------------------------------------------


@cuda.jit(cache=True)
def max_pool_fwd(x, y, am, n, H, W, OH, OW, kh, kw, sh, sw, ph, pw):
    """y = max over each window (padding never chosen, NaN propagates); am = flat ih*W+iw."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        ow = i % OW
        t = i // OW
        oh = t % OH
        plane = t // OH
        h0 = oh * sh - ph
        w0 = ow * sw - pw
        hs = dmax(h0, 0)
        he = dmin(h0 + kh, H)
        ws = dmax(w0, 0)
        we = dmin(w0 + kw, W)
        base = plane * H * W
        best = x[base + hs * W + ws]
        bi = hs * W + ws
        done = best != best
        for ih in range(hs, he):
            if done:
                break
            for iw in range(ws, we):
                v = x[base + ih * W + iw]
                if v > best or v != v:
                    best = v
                    bi = ih * W + iw
                    if v != v:
                        done = True
                        break
        y[i] = best
        am[i] = bi


@cuda.jit(cache=True)
def max_pool_bwd(gy, am, gx, n, OHW, HW):
    """gx[plane, argmax] += gy for every output (atomic: windows may share their argmax)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        plane = i // OHW
        cuda.atomic.add(gx, plane * HW + am[i], gy[i])


@cuda.jit(device=True, inline=True)
def _avg_div(h0, w0, kh, kw, H, W, ph, pw, include_pad):
    if include_pad:
        return (dmin(h0 + kh, H + ph) - h0) * (dmin(w0 + kw, W + pw) - w0)
    return (dmin(h0 + kh, H) - dmax(h0, 0)) * (dmin(w0 + kw, W) - dmax(w0, 0))


@cuda.jit(cache=True)
def avg_pool_fwd(x, y, n, H, W, OH, OW, kh, kw, sh, sw, ph, pw, include_pad, zero):
    """Average pooling, PyTorch's divisor rules for ``count_include_pad``."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        ow = i % OW
        t = i // OW
        oh = t % OH
        plane = t // OH
        h0 = oh * sh - ph
        w0 = ow * sw - pw
        base = plane * H * W
        acc = zero
        for ih in range(dmax(h0, 0), dmin(h0 + kh, H)):
            for iw in range(dmax(w0, 0), dmin(w0 + kw, W)):
                acc += x[base + ih * W + iw]
        d = _avg_div(h0, w0, kh, kw, H, W, ph, pw, include_pad)
        if d > 0:
            y[i] = acc / d
        else:
            y[i] = zero


@cuda.jit(cache=True)
def avg_pool_bwd(gy, gx, n, H, W, OH, OW, kh, kw, sh, sw, ph, pw, include_pad, zero):
    """gx[pixel] = sum of gy/divisor over the windows covering the pixel."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        iw = i % W
        t = i // W
        ih = t % H
        plane = t // H
        oh0 = dmax(0, (ih + ph - kh + sh) // sh)
        oh1 = dmin(OH - 1, (ih + ph) // sh)
        ow0 = dmax(0, (iw + pw - kw + sw) // sw)
        ow1 = dmin(OW - 1, (iw + pw) // sw)
        acc = zero
        for oh in range(oh0, oh1 + 1):
            h0 = oh * sh - ph
            for ow in range(ow0, ow1 + 1):
                w0 = ow * sw - pw
                d = _avg_div(h0, w0, kh, kw, H, W, ph, pw, include_pad)
                if d > 0:
                    acc += gy[(plane * OH + oh) * OW + ow] / d
        gx[i] = acc


# --- block reductions ----------------------------------------------------------------


@cuda.jit(device=True, inline=True)
def _block_sum(sh, v):
    """Sum of ``v`` over the block (blockDim.x a power of two); every thread gets it."""
    t = cuda.threadIdx.x
    sh[t] = v
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s:
            sh[t] += sh[t + s]
        cuda.syncthreads()
        s //= 2
    r = sh[0]
    cuda.syncthreads()
    return r


@cuda.jit(device=True, inline=True)
def _block_max(sh, v):
    """NaN-propagating max of ``v`` over the block; every thread gets it."""
    t = cuda.threadIdx.x
    sh[t] = v
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s:
            a = sh[t]
            b = sh[t + s]
            if not (a >= b or a != a):
                sh[t] = b
        cuda.syncthreads()
        s //= 2
    r = sh[0]
    cuda.syncthreads()
    return r


# --- softmax family (rows of a (outer, C, inner) view) ------------------------------


@cuda.jit(cache=True)
def log_softmax_rows(x, out, nrows, C):
    """Block per row of a contiguous (rows, C) array: out = x - max - log(sum(exp(x - max)))."""
    sh = cuda.shared.array(RED_MAX, float64)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for row in range(cuda.blockIdx.x, nrows, cuda.gridDim.x):
        base = row * C
        m = -math.inf
        for c in range(t, C, nt):
            v = float64(x[base + c])
            if v > m or v != v:
                m = v
        m = _block_max(sh, m)
        s = 0.0
        for c in range(t, C, nt):
            s += math.exp(float64(x[base + c]) - m)
        s = _block_sum(sh, s)
        lse = m + math.log(s)
        for c in range(t, C, nt):
            out[base + c] = float64(x[base + c]) - lse


@cuda.jit(cache=True)
def log_softmax_strided(x, out, nrows, C, inner):
    """Thread per row of an (outer, C, inner) array (axis not last): coalesced over ``inner``."""
    for row in range(cuda.grid(1), nrows, cuda.gridsize(1)):
        o = row // inner
        j = row - o * inner
        base = o * C * inner + j
        m = -math.inf
        for c in range(C):
            v = float64(x[base + c * inner])
            if v > m or v != v:
                m = v
        s = 0.0
        for c in range(C):
            s += math.exp(float64(x[base + c * inner]) - m)
        lse = m + math.log(s)
        for c in range(C):
            out[base + c * inner] = float64(x[base + c * inner]) - lse


@cuda.jit(cache=True)
def log_softmax_bwd_rows(y, g, out, nrows, C):
    """Block per row: out = g - exp(y) * sum(g)."""
    sh = cuda.shared.array(RED_MAX, float64)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for row in range(cuda.blockIdx.x, nrows, cuda.gridDim.x):
        base = row * C
        s = 0.0
        for c in range(t, C, nt):
            s += g[base + c]
        s = _block_sum(sh, s)
        for c in range(t, C, nt):
            out[base + c] = g[base + c] - math.exp(float64(y[base + c])) * s


@cuda.jit(cache=True)
def log_softmax_bwd_strided(y, g, out, nrows, C, inner):
    """Thread per row of an (outer, C, inner) array: out = g - exp(y) * sum(g)."""
    for row in range(cuda.grid(1), nrows, cuda.gridsize(1)):
        o = row // inner
        j = row - o * inner
        base = o * C * inner + j
        s = 0.0
        for c in range(C):
            s += g[base + c * inner]
        for c in range(C):
            out[base + c * inner] = g[base + c * inner] - math.exp(float64(y[base + c * inner])) * s


@cuda.jit(cache=True)
def softmax_xent_fwd(logits, labels, loss, probs, N, C, smooth):
    """Fused per-row softmax cross-entropy with label smoothing (PyTorch's formula).

    loss = (1 - smooth) * -logp[label] + smooth / C * sum_c -logp[c];  probs = softmax.
    An out-of-range label gives a NaN loss (the kernel cannot raise).
    """
    sh = cuda.shared.array(RED_MAX, float64)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for row in range(cuda.blockIdx.x, N, cuda.gridDim.x):
        base = row * C
        m = -math.inf
        for c in range(t, C, nt):
            v = float64(logits[base + c])
            if v > m or v != v:
                m = v
        m = _block_max(sh, m)
        s = 0.0
        tot = 0.0
        for c in range(t, C, nt):
            v = float64(logits[base + c])
            s += math.exp(v - m)
            tot += v
        s = _block_sum(sh, s)
        tot = _block_sum(sh, tot)
        lse = m + math.log(s)
        for c in range(t, C, nt):
            probs[base + c] = math.exp(float64(logits[base + c]) - lse)
        if t == 0:
            lab = labels[row]
            if lab < 0 or lab >= C:
                loss[row] = math.nan
            else:
                nll = lse - float64(logits[base + lab])
                if smooth == 0.0:
                    # no smoothing term: a -inf logit makes it +inf, and 0 * inf is NaN
                    loss[row] = nll
                else:
                    loss[row] = (1.0 - smooth) * nll + smooth * (lse - tot / C)


@cuda.jit(cache=True)
def softmax_xent_bwd(probs, labels, gloss, gx, n, C, smooth):
    """gx = gloss[row] * (probs - ((1 - smooth) * onehot + smooth / C))."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        row = i // C
        c = i - row * C
        target = smooth / C
        if labels[row] == c:
            target += 1.0 - smooth
        gx[i] = gloss[row] * (probs[i] - target)


# --- batch norm on an (N, C, L) view ----------------------------------------------------


@cuda.jit(cache=True)
def bn_stats(x, mean, var, invstd, N, C, L, eps, gamma, beta, has_affine, scale, shift,
             run_mean, run_var, keep, take_mean, take_var, track_mean, track_var, counter, count):
    """Block per channel: two-pass mean and biased variance in float64, invstd =
    1/sqrt(var+eps), and what follows from them per channel: scale = gamma * invstd, shift =
    beta - mean * scale (gamma 1, beta 0 without affine); with track_mean, run_mean = keep *
    run_mean + take_mean * mean (track_var: run_var from var likewise), from the stored
    statistics as a separate update would read them; with count, counter[0] += 1 (once)."""
    sh = cuda.shared.array(RED_MAX, float64)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    count_n = N * L
    for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
        s = 0.0
        for j in range(t, count_n, nt):
            nidx = j // L
            s += x[(nidx * C + c) * L + (j - nidx * L)]
        mu = _block_sum(sh, s) / count_n
        q = 0.0
        for j in range(t, count_n, nt):
            nidx = j // L
            d = x[(nidx * C + c) * L + (j - nidx * L)] - mu
            q += d * d
        v = _block_sum(sh, q) / count_n
        if t == 0:
            mean[c] = mu
            var[c] = v
            invstd[c] = 1.0 / math.sqrt(v + eps)
            g = gamma[c] if has_affine else 1.0
            b = beta[c] if has_affine else 0.0
            sc = g * invstd[c]
            scale[c] = sc
            shift[c] = b - mean[c] * sc
            if track_mean:
                run_mean[c] = keep * run_mean[c] + take_mean * mean[c]
            if track_var:
                run_var[c] = keep * run_var[c] + take_var * var[c]
            if count and c == 0:
                counter[0] += 1


@cuda.jit(cache=True)
def bn_apply(x, y, scale, shift, n, C, L, res, has_res, relu):
    """y = x * scale[c] + shift[c] for the (N, C, L) layout (scale/shift precomputed per
    channel); with has_res, + res (same layout); then with relu, max(., 0) keeping NaN."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        c = (i // L) % C
        v = x[i] * scale[c] + shift[c]
        if has_res:
            v += res[i]
        if relu and v <= 0:  # elementwise._relu's rule: NaN is not <= 0, so it is kept
            y[i] = 0
        else:
            y[i] = v


@cuda.jit(cache=True)
def bn_eval_params(mean, var, gamma, beta, scale, shift, C, eps, has_affine):
    """Per-channel scale/shift for evaluation from running statistics."""
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        g = gamma[c] if has_affine else 1.0
        b = beta[c] if has_affine else 0.0
        sc = g / math.sqrt(float64(var[c]) + eps)
        scale[c] = sc
        shift[c] = b - mean[c] * sc


@cuda.jit(cache=True)
def bn_bwd_reduce(gy, x, mean, invstd, gsum, gdot, N, C, L, y, masked):
    """Block per channel: gsum = sum(g), gdot = sum(g * xhat) in float64, where g = gy, or
    with masked, g = gy where y > 0 else 0 (the gradient through a fused relu's output y)."""
    sh = cuda.shared.array(RED_MAX, float64)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    count = N * L
    for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
        mu = float64(mean[c])
        s = 0.0
        d = 0.0
        for j in range(t, count, nt):
            nidx = j // L
            k = (nidx * C + c) * L + (j - nidx * L)
            if masked and not y[k] > 0:
                continue
            g = float64(gy[k])
            s += g
            d += g * (x[k] - mu)
        s = _block_sum(sh, s)
        d = _block_sum(sh, d)
        if t == 0:
            gsum[c] = s
            gdot[c] = d * invstd[c]


@cuda.jit(cache=True)
def bn_bwd_apply(gy, x, mean, invstd, gamma, gsum, gdot, gx, n, C, L, count, has_affine, y,
                 masked, gm, want_gm):
    """gx = gamma * invstd / M * (M * g - gsum - xhat * gdot), g as in bn_bwd_reduce (gy, or
    with masked, gy where y > 0 else 0); with want_gm, also gm = g (in gy's dtype)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        c = (i // L) % C
        gam = gamma[c] if has_affine else 1.0
        inv = float64(invstd[c])
        xhat = (x[i] - mean[c]) * inv
        gi = 0.0
        if masked and not y[i] > 0:
            if want_gm:
                gm[i] = 0
        else:
            gi = float64(gy[i])
            if want_gm:
                gm[i] = gy[i]
        gx[i] = gam * inv / count * (count * gi - gsum[c] - xhat * gdot[c])


# --- local response norm across channels of an (N, C, L) view ------------------------


@cuda.jit(cache=True)
def lrn_fwd(x, y, scale, n, C, L, size, alpha, beta, k):
    """scale = k + alpha/size * sum of x^2 over the channel window; y = x * scale^-beta."""
    lo = size // 2
    hi = (size - 1) // 2
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        c = (i // L) % C
        base = i - c * L
        s = 0.0
        for cc in range(dmax(0, c - lo), dmin(C, c + hi + 1)):
            v = float64(x[base + cc * L])
            s += v * v
        sc = k + alpha / size * s
        scale[i] = sc
        y[i] = x[i] * sc ** (-beta)


@cuda.jit(cache=True)
def lrn_bwd(x, y, scale, gy, gx, n, C, L, size, alpha, beta):
    """gx = gy * scale^-beta - 2*alpha*beta/size * x * sum over windows containing x of gy*y/scale."""
    lo = size // 2
    hi = (size - 1) // 2
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        c = (i // L) % C
        base = i - c * L
        s = 0.0
        for cc in range(dmax(0, c - hi), dmin(C, c + lo + 1)):
            j = base + cc * L
            s += float64(gy[j]) * y[j] / scale[j]
        gx[i] = gy[i] * float64(scale[i]) ** (-beta) - 2.0 * alpha * beta / size * x[i] * s


# --- dropout: Philox4x32-10 counter-based generator --------------------------------------

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_LO = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S8 = np.uint64(8)


@cuda.jit(device=True, inline=True)
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on 32-bit words held in uint64 (products of two words never overflow)."""
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        n0 = (p1 >> _S32) ^ c1 ^ k0
        n2 = (p0 >> _S32) ^ c3 ^ k1
        c1 = p1 & _LO
        c3 = p0 & _LO
        c0 = n0
        c2 = n2
        k0 = (k0 + _W0) & _LO
        k1 = (k1 + _W1) & _LO
    return c0, c1, c2, c3


@cuda.jit(cache=True)
def dropout_mask_kernel(out, n, k0, k1, p, keep_value):
    """out[i] = 0 with probability p else keep_value; thread t fills elements 4t..4t+3."""
    nq = (n + 3) // 4
    for q in range(cuda.grid(1), nq, cuda.gridsize(1)):
        qq = np.uint64(q)
        r0, r1, r2, r3 = philox4x32(qq & _LO, qq >> _S32, np.uint64(0), np.uint64(0), k0, k1)
        i = 4 * q
        for j in range(4):
            if i + j < n:
                r = r0 if j == 0 else (r1 if j == 1 else (r2 if j == 2 else r3))
                u = float64(r >> _S8) * (1.0 / 16777216.0)
                out[i + j] = 0.0 if u < p else keep_value


# --- optimizers ------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def sgd_kernel(has_buf, nesterov, first, has_wd):
    """Fused PyTorch SGD step for one parameter (flags specialise the kernel)."""

    @cuda.jit(cache=True)
    def kernel(p, g, buf, n, lr, momentum, damp1, wd):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            d = g[i]
            if has_wd:
                d = d + wd * p[i]
            if has_buf:
                if first:
                    b = d
                else:
                    b = momentum * buf[i] + damp1 * d
                buf[i] = b
                if nesterov:
                    d = d + momentum * b
                else:
                    d = b
            p[i] = p[i] - lr * d

    return kernel


@functools.lru_cache(maxsize=None)
def adam_kernel(decoupled, has_wd):
    """Fused PyTorch Adam / AdamW step for one parameter."""

    @cuda.jit(cache=True)
    def kernel(p, g, m, v, n, decay, wd, beta1, omb1, beta2, omb2, eps, step_size, bc2_sqrt):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            d = g[i]
            w = p[i]
            if has_wd:
                if decoupled:
                    w = w * decay
                else:
                    d = d + wd * w
            mi = beta1 * m[i] + omb1 * d
            vi = beta2 * v[i] + omb2 * d * d
            m[i] = mi
            v[i] = vi
            denom = math.sqrt(vi) / bc2_sqrt + eps
            p[i] = w - step_size * (mi / denom)

    return kernel
