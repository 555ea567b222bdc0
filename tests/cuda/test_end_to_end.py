"""Ops through ``minigrad.Tensor`` with ``requires_grad`` on device "cuda", against the same on "cpu"."""

import sys

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn.functional as F
import minigrad_cuda
from minigrad.autograd import Function

RNG = np.random.default_rng(1)


def pair(*shape, scale=1.0):
    """The same random float32 data as a CPU and a CUDA leaf tensor requiring gradients."""
    data = (RNG.standard_normal(shape) * scale).astype(np.float32)
    return (mg.tensor(data, requires_grad=True),
            mg.tensor(data, requires_grad=True, device="cuda"))


def check(cpu_out, cuda_out, leaves, tol=1e-4):
    """Forward values and every leaf gradient agree between the devices."""
    assert cuda_out.device == "cuda"
    np.testing.assert_allclose(cuda_out.numpy(), cpu_out.numpy(), rtol=tol, atol=tol)
    for c, g in leaves:
        assert g.grad is not None and g.grad.device == "cuda"
        np.testing.assert_allclose(g.grad.numpy(), c.grad.numpy(), rtol=tol, atol=tol)


def test_to_and_from_device():
    x = mg.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    y = x.to("cuda")
    assert y.device == "cuda" and y.shape == (2, 3) and y.dtype == np.float32
    back = y.to("cpu")
    assert back.device == "cpu"
    np.testing.assert_array_equal(back.numpy(), x.numpy())
    assert "device='cuda'" in repr(y)


def test_gradient_flows_across_to():
    xc = mg.tensor(np.ones((2, 2), np.float32), requires_grad=True)
    y = (xc.to("cuda") * 3.0).sum()
    y.backward()
    np.testing.assert_allclose(xc.grad.numpy(), np.full((2, 2), 3.0))


def test_mlp_forward_backward():
    (xc, xg), (wc, wg), (bc, bg), (vc, vg) = pair(6, 5), pair(4, 5), pair(4), pair(4, 3)
    outs = []
    for x, w, b, v in ((xc, wc, bc, vc), (xg, wg, bg, vg)):
        h = mg.linear(x, w, b).relu()
        z = mg.log_softmax(h @ v, dim=1)
        outs.append((z * z).mean() + h.sigmoid().sum() * 0.1 + (h.tanh() ** 2).sum() * 0.01)
    for o in outs:
        o.backward()
    check(outs[0], outs[1], [(xc, xg), (wc, wg), (bc, bg), (vc, vg)])


def test_batched_matmul_and_softmax_gradients():
    """Batched products, a 2-D weight applied to a batch (its gradient is one 2-D product),
    broadcast batch dimensions, softmax along the last and a middle axis."""
    (ac, ag), (wc, wg), (bc, bg), (dc, dg) = pair(3, 4, 5), pair(5, 6), pair(3, 6, 2), pair(1, 2, 7)
    outs = []
    for a, w, b, d in ((ac, wc, bc, dc), (ag, wg, bg, dg)):
        h = (a @ w) @ b                  # (3, 4, 5) @ (5, 6), then (3, 4, 6) @ (3, 6, 2)
        z = h @ d                          # (3, 4, 2) @ (1, 2, 7): broadcast batch
        outs.append((z.softmax(-1) * z).sum() + (z.softmax(1) ** 2).sum())
    for o in outs:
        o.backward()
    check(outs[0], outs[1], [(ac, ag), (wc, wg), (bc, bg), (dc, dg)], tol=1e-3)


def test_broadcasting_elementwise_and_reductions():
    (ac, ag), (bc, bg) = pair(3, 1, 4), pair(2, 4)
    outs = []
    for a, b in ((ac, ag), (bc, bg)) and ((ac, bc), (ag, bg)):
        y = (a * b - b / (a * a + 1.0)).exp() + mg.maximum(a, b) - mg.minimum(a, b * 2.0)
        outs.append(y.max(axis=2).sum() + y.sum(axis=(0, 1)).mean() + mg.where(a > 0, a, b).sum())
    for o in outs:
        o.backward()
    check(outs[0], outs[1], [(ac, ag), (bc, bg)])


def test_shape_ops():
    (xc, xg) = pair(2, 3, 4)
    outs = []
    for x in (xc, xg):
        y = x.permute(2, 0, 1).reshape(4, 6)[1:, ::2]
        z = mg.cat([y, y * 2.0], dim=1)
        p = mg.pad(x, ((0, 0), (1, 1), (0, 2)), 0.5)
        outs.append((z * z).sum() + p.sum() + x[:, [0, 2, 2]].sum() + x.transpose(0, 2).flatten()[3])
    for o in outs:
        o.backward()
    check(outs[0], outs[1], [(xc, xg)])


def test_conv_pool_stack():
    (xc, xg), (wc, wg), (bc, bg) = pair(2, 3, 8, 8), pair(4, 3, 3, 3, scale=0.3), pair(4)
    outs = []
    for x, w, b in ((xc, wc, bc), (xg, wg, bg)):
        y = mg.conv2d(x, w, b, stride=1, padding=1).relu()
        y = mg.max_pool2d(y, 2)
        y = mg.avg_pool2d(y, 2, stride=1, padding=1)
        outs.append((y * y).sum())
    for o in outs:
        o.backward()
    check(outs[0], outs[1], [(xc, xg), (wc, wg), (bc, bg)], tol=2e-4)


def test_grouped_conv():
    """groups > 1 slices the channels (non-contiguous views) and concatenates on the device."""
    (xc, xg), (wc, wg), (bc, bg) = pair(1, 4, 4, 4), pair(4, 2, 2, 2, scale=0.3), pair(4)
    outs = []
    for x, w, b in ((xc, wc, bc), (xg, wg, bg)):
        outs.append((mg.conv2d(x, w, b, groups=2) ** 2).sum())
    for o in outs:
        o.backward()
    check(outs[0], outs[1], [(xc, xg), (wc, wg), (bc, bg)], tol=2e-4)


def test_depthwise_conv():
    """groups equal to the input channels runs the depthwise kernels on both devices."""
    (xc, xg), (wc, wg), (bc, bg) = pair(2, 3, 5, 5), pair(6, 1, 3, 3, scale=0.3), pair(6)
    outs = []
    for x, w, b in ((xc, wc, bc), (xg, wg, bg)):
        y = mg.conv2d(x, w, b, stride=2, padding=1, groups=3)
        assert type(y._ctx).__name__ == "DepthwiseConv2d"
        outs.append((y ** 2).sum())
    for o in outs:
        o.backward()
    check(outs[0], outs[1], [(xc, xg), (wc, wg), (bc, bg)], tol=2e-4)


def test_cross_entropy_ignore_index_and_class_weights():
    (xc, xg) = pair(5, 4)
    y = np.array([1, -100, 3, 0, -100])
    w = np.array([1.0, 0.5, 2.0, 1.5])
    outs = [F.cross_entropy(x, y, label_smoothing=0.1) + F.cross_entropy(x, y, weight=w)
            for x in (xc, xg)]
    for o in outs:
        o.backward()
    check(outs[0], outs[1], [(xc, xg)])


def test_layer_norm_embedding_leaky_relu():
    """The composed ops (layer_norm, embedding, leaky_relu, gelu) on the device."""
    (xc, xg), (wc, wg), (ec, eg) = pair(3, 4), pair(4), pair(6, 4)
    idx = np.array([5, 0, 5])
    outs = []
    for x, w, e in ((xc, wc, ec), (xg, wg, eg)):
        y = F.layer_norm(x + F.embedding(idx, e), 4, w)
        outs.append((F.leaky_relu(y, 0.1) ** 2).sum() + F.gelu(y).sum())
    for o in outs:
        o.backward()
    check(outs[0], outs[1], [(xc, xg), (wc, wg), (ec, eg)])


def test_gradients_gathered_before_conv_and_log_softmax():
    """Conv2d and LogSoftmax take the gradient already gathered for their input as an
    addend (autograd.Function.grad_addend_inputs): a second backward into the same
    leaves, and an input with a second consumer, on both devices (with nll_loss's
    fused op as one of the consumers)."""
    (xc, xg), (wc, wg) = pair(2, 3, 9, 9), pair(4, 3, 1, 1, scale=0.3)
    (zc, zg) = pair(3, 7)
    for _ in range(2):
        outs = []
        for x, w, z in ((xc, wc, zc), (xg, wg, zg)):
            y = mg.conv2d(x, w, stride=2) * 2.0 + mg.conv2d(x * 1.5, w, stride=2)
            lp = mg.log_softmax(z, 1)
            outs.append((y * y).sum() + (lp * (z * 0.5)).sum()
                        + F.nll_loss(lp, np.array([2, 0, 6])))
        for o in outs:
            o.backward()
    check(outs[0], outs[1], [(xc, xg), (wc, wg), (zc, zg)], tol=2e-4)


def test_unavailable_message(monkeypatch):
    monkeypatch.setattr(minigrad_cuda, "unavailable_reason", lambda: "no driver")
    with pytest.raises(RuntimeError) as err:
        minigrad_cuda._factory()
    msg = str(err.value)
    assert "\n" not in msg and "no usable GPU" in msg and "--device cpu" in msg
    assert "NUMBA_ENABLE_CUDASIM=1" in msg


class _BrokenCompilerImport:
    """Import hook that fails numba-cuda's array typing as NumPy 2.5 does (seen on an H100)."""

    NAMES = ("numba.cuda.np", "numba.cuda.np.arrayobj")

    def find_spec(self, name, path, target=None):
        if name in self.NAMES:
            raise AttributeError("module 'numpy' has no attribute 'row_stack'")
        return None


def test_compiler_problem_names_numpy(monkeypatch):
    """A NumPy the CUDA compiler cannot use is reported as a reason, not at the first launch."""
    assert minigrad_cuda.compiler_problem() is None
    for name in _BrokenCompilerImport.NAMES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenCompilerImport()] + sys.meta_path)
    reason = minigrad_cuda.compiler_problem()
    assert "row_stack" in reason and "NumPy" in reason and "numpy<2.5" in reason


def test_leaf_gradient_accumulates_in_place_on_the_device():
    """A second backward adds into the device array .grad holds (as on the CPU); a .grad
    the user assigned is not written."""
    c, g = pair(3, 5)
    w1 = RNG.standard_normal((3, 5)).astype(np.float32)
    w2 = RNG.standard_normal((3, 5)).astype(np.float32)
    (g * mg.tensor(w1, device="cuda")).sum().backward()
    first = g.grad.data
    (g * mg.tensor(w2, device="cuda")).sum().backward()
    assert g.grad.data is first
    np.testing.assert_allclose(g.grad.numpy(), w1 + w2, rtol=1e-6, atol=1e-6)
    mine = mg.tensor(np.ones((3, 5), np.float32), device="cuda")
    g.grad = mine
    mine_array = mine.data
    (g * 2.0).sum().backward()
    np.testing.assert_array_equal(g.be.to_numpy(mine_array), np.ones((3, 5), np.float32))
    np.testing.assert_array_equal(g.grad.numpy(), np.full((3, 5), 3.0, np.float32))


def test_add_into_refuses_overlap_and_mismatches():
    be = mg.tensor(np.zeros(1), device="cuda").be
    a = be.from_numpy(np.ones(6, np.float32))
    assert not be.add_into_(a, a)
    assert not be.add_into_(a, be.from_numpy(np.ones(6, np.float64)))
    assert not be.add_into_(a, be.from_numpy(np.ones(5, np.float32)))
    assert be.add_into_(a, be.from_numpy(np.full(6, 2.0, np.float32)))
    np.testing.assert_array_equal(be.to_numpy(a), np.full(6, 3.0, np.float32))


def test_mix_into_matches_numpy_and_names_bad_shapes():
    """dst = keep * dst + take * src in one kernel; a float64 src is converted to dst's dtype
    first (as the CPU backend does), and mismatched shapes are refused with both named."""
    be = mg.backend.get("cuda")
    start = RNG.standard_normal(7).astype(np.float32)
    for src_dtype in (np.float32, np.float64):
        src = RNG.standard_normal(7).astype(src_dtype)
        dst = be.from_numpy(start)
        be.mix_into_(dst, 0.9, be.from_numpy(src), 0.25)
        want = np.float32(0.9) * start + np.float32(0.25) * src.astype(np.float32)
        np.testing.assert_allclose(be.to_numpy(dst), want, rtol=1e-6, atol=1e-7)
        assert be.to_numpy(dst).dtype == np.float32
    dst64 = be.from_numpy(start.astype(np.float64))
    be.mix_into_(dst64, 0.5, be.from_numpy(np.ones(7)), 2.0)
    np.testing.assert_allclose(be.to_numpy(dst64), 0.5 * start.astype(np.float64) + 2.0,
                               rtol=1e-14)
    with pytest.raises(ValueError, match=r"\(6,\).*\(7,\)"):
        be.mix_into_(dst, 0.5, be.from_numpy(np.ones(6, np.float32)), 0.5)


def test_batchnorm_running_stats_match_the_cpu():
    """Training-mode BatchNorm2d updates running_mean and running_var on the device as the CPU
    does, over several steps of batches with different statistics."""
    bns = {dev: mg.nn.BatchNorm2d(3, momentum=0.2).to(dev) for dev in ("cpu", "cuda")}
    for step in range(3):
        x = (RNG.standard_normal((4, 3, 5, 5)) * (step + 1) + step).astype(np.float32)
        for dev, bn in bns.items():
            bn(mg.tensor(x, device=dev))
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(bns["cuda"], name).numpy(),
                                   getattr(bns["cpu"], name).numpy(), rtol=1e-5, atol=1e-6)
    assert bns["cuda"].num_batches_tracked.item() == bns["cpu"].num_batches_tracked.item() == 3
    assert bns["cuda"].num_batches_tracked.device == "cuda"


def _ownership(be, x):
    """What owns_memory decided from, for assertion messages (a real GPU's numba-cuda may
    count references differently from the simulator)."""
    from minigrad_cuda.backend import _storage_counts

    return {"counts": _storage_counts(x), "unshared": be._unshared_counts,
            "storage": type(getattr(x, "gpu_data", getattr(x, "_ary", None))).__name__}


def test_owns_memory_sees_reshapes_and_views():
    """A device array owns its memory while no reshape or view of it is alive; views never do."""
    be = mg.backend.get("cuda")
    a = be.from_numpy(np.arange(6, dtype=np.float32))
    assert be.owns_memory(a), _ownership(be, a)
    v = a.reshape((2, 3))
    assert not be.owns_memory(a) and not be.owns_memory(v), (_ownership(be, a), _ownership(be, v))
    del v
    assert be.owns_memory(a), _ownership(be, a)
    s = a[1:]
    assert not be.owns_memory(a) and not be.owns_memory(s), (_ownership(be, a), _ownership(be, s))
    del s
    assert be.owns_memory(a), _ownership(be, a)
    assert not be.owns_memory(np.ones(3, np.float32))
    assert not be.owns_memory(be.from_numpy(np.ones((0, 3), np.float32)))


class _TwoReshapes(Function):
    """a + b whose backward returns two reshapes (two objects, one memory) of its gradient."""

    def forward(self, a, b):
        return self.be.binary("add", a, b)   # raw device arrays: no `+` on a DeviceNDArray

    def backward(self, grad):
        return self.be.reshape(grad, grad.shape), self.be.reshape(grad, grad.shape)


def test_leaf_takes_over_an_unshared_gradient_and_copies_a_shared_one(monkeypatch):
    """An unshared gradient array becomes .grad without a copy (no cast kernel); two
    reshapes of one gradient array are copied, so the two leaves' .grad never alias."""
    be = mg.backend.get("cuda")
    copies = []
    original = be.astype
    monkeypatch.setattr(be, "astype", lambda x, dtype: copies.append(x) or original(x, dtype))
    c, g = pair(3, 4)
    w = RNG.standard_normal((3, 4)).astype(np.float32)
    (g * mg.tensor(w, device="cuda")).sum().backward()
    assert copies == [], [_ownership(be, x) for x in copies]
    np.testing.assert_allclose(g.grad.numpy(), w, rtol=1e-6)
    a, b = (mg.tensor(np.ones((2, 3), np.float32), requires_grad=True, device="cuda")
            for _ in range(2))
    (_TwoReshapes.apply(a, b) * 2.0).sum().backward()
    assert copies
    be.fill_(a.grad.data, 7.0)
    np.testing.assert_array_equal(b.grad.numpy(), np.full((2, 3), 2.0, np.float32))


def test_train_steps_match_the_cpu():
    """Two SGD-momentum steps of a small conv / BatchNorm / linear model, two backward
    passes each (the second adds into .grad in place), give the same parameters and running
    statistics on both devices: every leaf that takes over its gradient array keeps one of
    its own."""
    x = RNG.standard_normal((2, 1, 4, 4)).astype(np.float32)
    y = RNG.integers(0, 3, 2)
    states = {}
    for dev in ("cpu", "cuda"):
        mg.manual_seed(3)
        model = mg.nn.Sequential(mg.nn.Conv2d(1, 2, 3, padding=1), mg.nn.BatchNorm2d(2),
                                 mg.nn.ReLU(), mg.nn.MaxPool2d(2), mg.nn.Flatten(),
                                 mg.nn.Linear(8, 3)).to(dev)
        opt = mg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        xt, yt = mg.tensor(x, device=dev), mg.tensor(y, device=dev)
        for _ in range(2):
            opt.zero_grad()
            for _ in range(2):
                F.cross_entropy(model(xt), yt).backward()
            opt.step()
        states[dev] = model.state_dict()
    for k, want in states["cpu"].items():
        np.testing.assert_allclose(states["cuda"][k], want, rtol=1e-4, atol=1e-5, err_msg=k)


def test_resnet_block_with_fused_batch_norm_relu_matches_the_cpu():
    """A ResNet BasicBlock with a projection shortcut: its two batch norms run fused with the
    ReLU, the second also with the residual add (F.batch_norm_relu), forward and backward;
    outputs, input gradient, parameter gradients and running statistics as on the CPU."""
    from zoo.resnet import BasicBlock

    xc, xg = pair(2, 2, 4, 4)
    outs, blocks = {}, {}
    for dev, x in (("cpu", xc), ("cuda", xg)):
        mg.manual_seed(5)
        blocks[dev] = BasicBlock(2, 3, stride=2).to(dev)
        outs[dev] = blocks[dev](x)
        (outs[dev] * outs[dev]).sum().backward()
    check(outs["cpu"], outs["cuda"], [(xc, xg)])
    cpu_params = dict(blocks["cpu"].named_parameters())
    for name, p in blocks["cuda"].named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), cpu_params[name].grad.numpy(), rtol=1e-4,
                                   atol=1e-4, err_msg=name)
    want = blocks["cpu"].state_dict()
    for k, v in blocks["cuda"].state_dict().items():
        np.testing.assert_allclose(v, want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_slices_of_one_tensor_sum_their_gradients():
    """Several indexings of one tensor (a fused QKV projection's slices, repeated array
    indices): each later GetItem's gradient is added into the one already gathered
    (Backend.index_add_into's default on CUDA), through a non-leaf, as on the CPU."""
    xc, xg = pair(4, 9)

    def run(x):
        h = x * 1.5
        return (h[:, :3].sum() * 2 + h[:, 3:].sum() * 3 + h[np.array([0, 0, 2])].sum()
                + h[1:, ::2].sum())

    outs = [run(x) for x in (xc, xg)]
    for out in outs:
        out.backward()
    check(outs[0], outs[1], [(xc, xg)])
