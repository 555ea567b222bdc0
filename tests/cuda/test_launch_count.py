"""A CUDA train step's kernel launches, counted under the simulator (kernels stubbed out).

On a GPU minigrad's train steps are bound by the host's launches (BENCHMARKS.md, "GPU"), so a
change that adds launches to a step slows it even when every kernel is fast.  The limits are
the counts after change 156 (batch norm, residual add and ReLU fused); lower them when a change
saves launches, and raise them only with a measured reason.
"""

import pytest

import minigrad_cuda

pytestmark = pytest.mark.skipif(not minigrad_cuda.is_simulator(),
                                reason="counts launches by stubbing the simulator's kernels")

LIMITS = {"lenet5": (54, 45), "resnet18": (243, 272)}   # (launches, pool allocations)


@pytest.mark.parametrize("model", sorted(LIMITS))
def test_train_step_launches_do_not_grow(model):
    from benchmarks.cuda_launch_count import count_step

    counts = count_step(model, batch=128)
    launches = sum(counts["launches"].values())
    max_launches, max_allocations = LIMITS[model]
    assert launches <= max_launches, (model, launches, counts["launches"].most_common())
    assert counts["allocations"] <= max_allocations, (model, counts["allocations"])
    assert counts["launches"]["sgd_kernel.kernel"] == {"lenet5": 10, "resnet18": 62}[model]
