#!/usr/bin/env bash
# Everything to run on a machine with an NVIDIA GPU, in one call, logs into one folder:
# the GPU benchmarks next to PyTorch (alone on the GPU) and the first-step times with a cold
# and a warm kernel cache, then the CUDA tests (real-GPU agreement tests included) side by
# side with LeNet training on --device cuda.
# Results go to BENCHMARKS.md, section "GPU".
#
#   bash tools/gpu_check.sh [LOG_DIR]        (from the repository root)
#
# Needs Numba with CUDA (numba-cuda), NumPy < 2.5 (see README, "Devices"), pytest and
# hypothesis (pytest-xdist, when present, spreads the tests over 12 processes; the
# pytest-benchmark plugin is switched off: loaded beside xdist it kept pytest from
# exiting after the last test on the H200 image); PyTorch
# with CUDA for the reference columns; MNIST under $MINIGRAD_DATA for the training run
# (it is skipped without it).  Each step has its own time limit, so a slow step cannot
# eat the others' time.  Session 36 on an H200: benchmarks 75 s; the tests 70 s on a machine
# that had run them before, over 110 s on a fresh one (every process compiles its kernels);
# LeNet training 47 s beside the tests.  Session 37: the tests 153-229 s on fresh machines
# (243 of them); the kernels are now cached on disk, so a second run on the same machine
# compiles little.  Through the `device` tool, .whl/ (and a data folder) are git-ignored and
# must be named in its `carry` list, or the run has the image's NumPy 2.5 (session 37 lost a
# call that way).
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
    echo "== $name exit $? ($(date -u +%H:%M:%S)); last lines:"
    tr '\r' '\n' < "$LOG/$name.log" | grep -v '^\s*$' | tail -n 8 | sed "s/^/   $name: /"
}

# numba-cuda 0.30 cannot compile with NumPy 2.5 (the H100/H200 images' NumPy): when minigrad
# says so and a NumPy wheel was carried in .whl/ (README, "Devices"), install it for this run.
if ! python3 -c 'import minigrad_cuda, sys; sys.exit(minigrad_cuda.compiler_problem() is not None)' \
        && ls .whl/numpy-*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_check_site .whl/numpy-*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"
fi

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$LOG/gpu.log" 2>&1
python3 - > "$LOG/env.log" 2>&1 <<'PY'
import numba, numpy
import minigrad_cuda
try:
    from importlib.metadata import version
    print("numba-cuda", version("numba-cuda"))
except Exception as err:  # noqa: BLE001
    print("numba-cuda version unknown:", err)
print("numpy", numpy.__version__, "numba", numba.__version__)
print("cuda:", minigrad_cuda.unavailable_reason() or "usable")
PY
cat "$LOG/gpu.log" "$LOG/env.log"

step bench 270 python3 benchmarks/bench_cuda.py --repeat 5
# a fresh process's first LeNet step with a cold, then a warm kernel cache (about 30 s)
step first_step 120 python3 -m benchmarks.cuda_first_step --model lenet5

# -v: each test's result is in the log as it finishes, even if the step runs out of time
PARALLEL=()
if python3 -c "import xdist" 2>/dev/null; then PARALLEL=(-n 12); fi
step tests 300 python3 -m pytest -v -p no:cacheprovider -p no:benchmark "${PARALLEL[@]}" tests/cuda &
if [ -d "${MINIGRAD_DATA:-}/mnist" ]; then
    step lenet 200 python3 cli.py train lenet --device cuda --epochs 1 --no-progress \
        --data-dir "$MINIGRAD_DATA" &
else
    echo "== lenet: skipped (no \$MINIGRAD_DATA/mnist)"
fi
wait
