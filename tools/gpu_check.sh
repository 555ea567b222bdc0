#!/usr/bin/env bash
# Everything to run on a machine with an NVIDIA GPU, in one call, logs into one folder:
# the CUDA tests (real-GPU agreement tests included), the GPU benchmarks next to PyTorch,
# and LeNet training with --device cuda.  Results go to BENCHMARKS.md, section "GPU".
#
#   bash tools/gpu_check.sh [LOG_DIR]        (from the repository root)
#
# Needs Numba with CUDA (numba-cuda), NumPy < 2.5 (see README, "Devices"), pytest and
# hypothesis; PyTorch with CUDA for the reference columns; MNIST under $MINIGRAD_DATA
# for the training run (it is skipped without it).  Each step has its own time limit, so
# a slow step cannot eat the others' time; the whole script takes about 10 minutes on an
# H100, most of it compiling kernels on a fresh machine.
set -u
LOG=${1:-gpu_logs}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $LOG/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
    timeout "$limit" "$@" > "$LOG/$name.log" 2>&1
    echo "   exit $? ; last lines:"
    tr '\r' '\n' < "$LOG/$name.log" | grep -v '^\s*$' | tail -n 6 | sed 's/^/   /'
}

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$LOG/gpu.log" 2>&1
python3 - > "$LOG/env.log" 2>&1 <<'EOF'
import numba, numpy
import minigrad_cuda
print("numpy", numpy.__version__, "numba", numba.__version__)
print("cuda:", minigrad_cuda.unavailable_reason() or "usable")
EOF
cat "$LOG/gpu.log" "$LOG/env.log"

step tests 900 python3 -m pytest -q -p no:cacheprovider tests/cuda
step bench 420 python3 benchmarks/bench_cuda.py --repeat 5
step depthwise 120 python3 -m benchmarks.bench_depthwise --device cuda --repeat 10
if [ -d "${MINIGRAD_DATA:-}/mnist" ]; then
    step lenet 300 python3 cli.py train lenet --device cuda --epochs 2 --no-progress
else
    echo "== lenet: skipped (no \$MINIGRAD_DATA/mnist)"
fi
step profile 120 python3 benchmarks/bench_cuda.py --profile
