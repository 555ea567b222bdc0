"""Static statistics of the CUDA GEMM / implicit-GEMM kernels, without a GPU.

    python benchmarks/cuda_ptx_stats.py [--tile 128,128,8,8] [--ptxas PATH]

Compiles each GEMM kind to PTX for sm_90 and prints, per kernel: shared-memory loads
(scalar and 128-bit vector), float32 FMAs, local-memory accesses and 64-bit integer
divisions in the PTX text (static counts, not executions), then ``ptxas -v``'s register
count and spills when ``ptxas`` is found.  This is how the shared-load vectorisation
and the division-free loads were checked when no GPU was lent; it measures no speed.

Needs numba-cuda and the CUDA compiler libraries, which pip provides without a GPU:
``pip install numba-cuda nvidia-cuda-nvcc-cu12 nvidia-cuda-nvrtc-cu12`` (use a separate
virtual environment: numba-cuda replaces Numba's built-in CUDA target), and
``CUDA_HOME`` pointing at the ``nvidia/cuda_nvcc`` folder of that environment.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KINDS = {"matmul": 8, "conv_fwd": 15, "conv_bwd_data": 19, "conv_bwd_weight": 15}


def ptx_counts(ptx):
    """Static instruction counts of interest in a PTX text."""
    def count(pattern):
        return len(re.findall(pattern, ptx))

    return {"ld.shared": count(r"ld\.shared\.[fbu]"), "ld.shared.v4": count(r"ld\.shared\.v4"),
            "fma.f32": count(r"fma\.rn\.f32"), "local": count(r"(?:ld|st)\.local"),
            "div/rem 64": count(r"(?:div|rem)\.[su]64")}


def ptxas_summary(ptxas, ptx):
    """``ptxas -v`` register and spill lines for ``ptx`` (None when ptxas fails)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        run = subprocess.run([ptxas, "-arch=sm_90", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    lines = [ln.split("info    :")[-1].strip() for ln in run.stderr.splitlines()
             if "registers" in ln or "spill" in ln]
    return "; ".join(lines) if run.returncode == 0 else f"ptxas failed: {run.stderr.strip()[:200]}"


def main():
    """Parse arguments, compile every GEMM kind and print its statistics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", default="128,128,8,8", help="BM,BN,TM,TN")
    parser.add_argument("--ptxas", default=None, help="ptxas binary (default: $CUDA_HOME/bin/ptxas, PATH)")
    args = parser.parse_args()
    tile = tuple(int(v) for v in args.tile.split(","))

    from numba import cuda, types
    from numba.cuda import dispatcher

    class _FakeDevice:  # device functions ask the driver for its compute capability
        compute_capability = (9, 0)

    dispatcher.get_current_device = lambda: _FakeDevice()
    from minigrad_cuda import gemm as gm

    ptxas = args.ptxas or shutil.which("ptxas") or os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "ptxas")
    ptxas = ptxas if os.path.exists(ptxas) else None
    f32 = types.Array(types.float32, 1, "C")
    i64 = types.int64
    table = types.Array(i64, 1, "C")
    print(f"tile {tile}; shared tiles 16-byte aligned: {gm.ALIGN_SHARED}")
    for kind, plen in KINDS.items():
        kernel = gm.gemm_kernel(kind, "<f4", True, True, tile)
        sig = (f32, f32, f32, f32, table) + (i64,) * 6 + (types.UniTuple(i64, plen),)
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
        counts = ", ".join(f"{k} {v}" for k, v in ptx_counts(ptx).items())
        print(f"{kind:16s} {counts}")
        if ptxas:
            print(f"{'':16s} {ptxas_summary(ptxas, ptx)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
