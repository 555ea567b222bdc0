"""Type-check and lower every CUDA kernel for a real GPU target (sm_90) without a GPU.

The simulator runs kernels as Python, so it cannot catch code that Numba's CUDA
compiler rejects.  This script runs Numba's CUDA front end (typing and lowering to
NVVM IR, ``compile_cuda(..., cc=(9, 0))``) on every kernel with representative
argument types; it needs neither a GPU nor the CUDA toolkit.  Run it *without*
``NUMBA_ENABLE_CUDASIM``:  ``python tests/cuda/compile_check.py``; it prints one line
per failure and exits non-zero if any kernel does not compile, or could not be cached on disk
(``cache_problem``).
"""

import os
import sys

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from numba import types  # noqa: E402
from numba.core.serialize import dumps  # noqa: E402
from numba.cuda import dispatcher as _dispatcher  # noqa: E402
from numba.cuda.compiler import compile_cuda  # noqa: E402


class _FakeDevice:
    """Stands in for the current device when device functions are compiled (sm_90)."""

    compute_capability = (9, 0)


_dispatcher.get_current_device = lambda: _FakeDevice()  # device functions ask the driver

from minigrad_cuda import depthwise as dk  # noqa: E402
from minigrad_cuda import elementwise as ew  # noqa: E402
from minigrad_cuda import gemm as gm  # noqa: E402
from minigrad_cuda import nn as nk  # noqa: E402
from minigrad_cuda import reduce as rd  # noqa: E402

f32, f64, i64, i32, b1, u64 = (types.float32, types.float64, types.int64, types.int32,
                               types.boolean, types.uint64)


def arr(t):
    """1-D C-contiguous array type of ``t``."""
    return types.Array(t, 1, "C")


def tup(n):
    """Homogeneous int64 tuple of length ``n``."""
    return types.UniTuple(i64, n)


def cases():
    """(name, kernel, argument types) for every kernel."""
    A, D, I32, I64 = arr(f32), arr(f64), arr(i32), arr(i64)
    out = []
    for op in ew.UNARY_FUNCS:
        out.append((f"unary {op}", ew.unary_kernel(op), (A, A, i64)))
    out.append(("unary exp f64", ew.unary_kernel("exp"), (D, D, i64)))
    out.append(("unary sign i64", ew.unary_kernel("sign"), (I64, I64, i64)))
    for op in ew.BINARY_FUNCS:
        out.append((f"binary {op}", ew.binary_flat_kernel(op), (A, A, A, i64)))
        out.append((f"bcast {op}", ew.binary_bcast_kernel(op), (A, A, A, i64, tup(2), tup(2), tup(2))))
    out.append(("bcast add i64+f32", ew.binary_bcast_kernel("add"), (I64, A, D, i64, tup(3), tup(3), tup(3))))
    for op in ("add", "sub", "mul", "div", "pow", "gt", "eq"):
        for rev in (False, True):
            out.append((f"scalar {op} {rev}", ew.scalar_kernel(op, rev), (A, f32, A, i64)))
    out.append(("scalar pow i64", ew.scalar_kernel("pow", False), (I64, i64, I64, i64)))
    out.append(("where", ew.where_kernel, (A, A, A, A, i64, tup(2), tup(2), tup(2), tup(2))))
    out.append(("fill", ew.fill_kernel, (A, f32, i64)))
    out.append(("cast", ew.cast_kernel, (A, D, i64)))
    out.append(("mix", ew.mix_kernel, (A, f32, A, f32, i64)))
    out.append(("mix f64", ew.mix_kernel, (D, f64, D, f64, i64)))
    out.append(("strided_copy", ew.strided_copy_kernel, (A, i64, tup(3), A, i64, tup(3), tup(3), i64)))
    out.append(("pad", ew.pad_kernel, (A, A, i64, tup(4), tup(4), tup(4), tup(4), f32)))
    out.append(("gather", ew.gather_kernel, (A, I32, A, i64)))
    out.append(("scatter_add", ew.scatter_add_kernel, (A, I32, A, i64)))
    out.append(("scatter_add f64", ew.scatter_add_kernel, (D, I64, D, i64)))
    for op in rd.OPS:
        t, at = (f64, D) if op == "sumsq" else ((i32, I32) if op == "nonfinite" else (f32, A))
        out.append((f"rows {op}", rd.rows_kernel(op, t),
                    (A, at, i64, tup(1), tup(1), tup(2), tup(2), i64, i64, t)))
        out.append((f"cols {op}", rd.cols_kernel(op),
                    (A, at, i64, tup(2), tup(2), tup(1), tup(1), i64, i64, t)))
    out.append(("rows sum i64", rd.rows_kernel("sum", i64), (I64, I64, i64, tup(1), tup(1), tup(1), tup(1), i64, i64, i64)))
    for kind, plen in (("matmul", 8), ("conv_fwd", 15), ("conv_bwd_data", 19), ("conv_bwd_weight", 15)):
        for dt, T in (("<f4", A), ("<f8", D)):
            for kf in (True, False):
                tiles = ((128, 128, 8, 8), (64, 128, 4, 8), (64, 64, 4, 4)) if dt == "<f4" and kf else ((128, 128, 8, 8),)
                for tile in tiles:
                    out.append((f"gemm {kind} {dt} {kf} {tile}", gm.gemm_kernel(kind, dt, kf, True, tile),
                                (T, T, T, T, I64, i64, i64, i64, i64, i64, i64, tup(plen))))
    out.append(("max_pool_fwd", nk.max_pool_fwd, (A, A, I32, i64) + (i64,) * 10))
    out.append(("max_pool_bwd", nk.max_pool_bwd, (A, I32, A, i64, i64, i64)))
    geo = (i64,) * 14                       # C H W m R S OH OW sh sw ph pw dh dw
    out.append(("depthwise_fwd", dk.depthwise_fwd, (A, A, A, A, i64) + geo))
    out.append(("depthwise_bwd_data", dk.depthwise_bwd_data, (A, A, A, i64) + geo + (f32,)))
    out.append(("depthwise_bwd_weight", dk.depthwise_bwd_weight, (A, A, A, i64) + geo))
    out.append(("avg_pool_fwd", nk.avg_pool_fwd, (A, A, i64) + (i64,) * 10 + (b1, f32)))
    out.append(("avg_pool_bwd", nk.avg_pool_bwd, (A, A, i64) + (i64,) * 10 + (b1, f32)))
    out.append(("log_softmax_rows", nk.log_softmax_rows, (A, A, i64, i64)))
    out.append(("log_softmax_strided", nk.log_softmax_strided, (A, A, i64, i64, i64)))
    out.append(("log_softmax_bwd_rows", nk.log_softmax_bwd_rows, (A, A, A, i64, i64)))
    out.append(("log_softmax_bwd_strided", nk.log_softmax_bwd_strided, (A, A, A, i64, i64, i64)))
    out.append(("xent_fwd", nk.softmax_xent_fwd, (A, I64, A, A, i64, i64, f64)))
    out.append(("xent_bwd", nk.softmax_xent_bwd, (A, I64, A, A, i64, i64, f64)))
    for T, t in ((A, f32), (D, f64)):
        out.append((f"bn_stats {t}", nk.bn_stats, (T, T, T, T, i64, i64, i64, f64, T, T, b1, T, T,
                                                    T, T, t, t, t, b1, b1, I64, b1)))
    for T, t in ((A, f32), (D, f64)):
        out.append((f"bn_apply {t}", nk.bn_apply, (T, T, T, T, i64, i64, i64, T, b1, b1)))
    out.append(("bn_eval_params", nk.bn_eval_params, (A, A, A, A, A, A, i64, f64, b1)))
    for T, t in ((A, f32), (D, f64)):
        out.append((f"bn_bwd_reduce {t}", nk.bn_bwd_reduce,
                    (T, T, T, T, T, T, i64, i64, i64, T, b1)))
        out.append((f"bn_bwd_apply {t}", nk.bn_bwd_apply,
                    (T, T, T, T, T, T, T, T, i64, i64, i64, f64, b1, T, b1, T, b1)))
    out.append(("lrn_fwd", nk.lrn_fwd, (A, A, A, i64, i64, i64, i64, f64, f64, f64)))
    out.append(("lrn_bwd", nk.lrn_bwd, (A, A, A, A, A, i64, i64, i64, i64, f64, f64)))
    out.append(("dropout", nk.dropout_mask_kernel, (A, i64, u64, u64, f64, f32)))
    for flags in ((True, False, True, True), (True, True, False, False), (False, False, False, True)):
        out.append((f"sgd {flags}", nk.sgd_kernel(*flags), (A, A, A, i64, f32, f32, f32, f32)))
    for flags in ((False, True), (True, True), (False, False)):
        out.append((f"adam {flags}", nk.adam_kernel(*flags), (A, A, A, A, i64) + (f32,) * 9))
    return out


def cache_problem(kernel):
    """None, or why ``kernel`` would not be cached on disk: every kernel is declared with
    ``cache=True``, and Numba's cache key pickles a factory-made kernel's closure variables
    (device functions, types, constants), which must therefore pickle."""
    if type(kernel._cache).__name__ == "NullCache":
        return "declared without cache=True"
    closure = kernel.py_func.__closure__ or ()
    try:
        dumps(tuple(cell.cell_contents for cell in closure))
    except Exception as err:  # noqa: BLE001 - report every failure
        return f"its closure variables do not pickle ({type(err).__name__}: {err})"
    return None


def main():
    """Compile every case; print failures; return the number of failures."""
    failures = 0
    all_cases = cases()
    for name, kernel, argtypes in all_cases:
        try:
            compile_cuda(kernel.py_func, types.void, argtypes, cc=(9, 0))
            problem = cache_problem(kernel)
            if problem:
                raise RuntimeError(f"not cacheable: {problem}")
        except Exception as err:  # noqa: BLE001 - report every failure
            failures += 1
            msg = " ".join(str(err).split())[:600]
            print(f"FAIL {name}: {type(err).__name__}: {msg}")
    print(f"{len(all_cases) - failures}/{len(all_cases)} kernels compile for sm_90")
    return failures


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
