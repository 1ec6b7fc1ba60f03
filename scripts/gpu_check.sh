#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU (CUDA 12) and PyPI: install minivgg with
# CuPy in a virtual environment, run the gpu-marked tests, compare the gpu device's
# features and gradients with the CPU's (scripts/gpu_check.py), time scripts/bench.py on
# the GPU (beside torch CUDA when a CUDA build of torch installs), print one summary table.
# docs/gpu.md explains what each step proves.
#
# Exit status: 0 all passed; 1 a step failed or a result mismatched; 2 bad arguments;
# 3 no NVIDIA GPU here (nothing was installed or run).
set -uo pipefail

usage() {
    cat <<'EOF'
usage: scripts/gpu_check.sh [--venv DIR] [--weights FILE.h5] [--no-torch] [--no-bench] [--sizes LIST]
                            [--budget SECONDS]

On a machine with an NVIDIA GPU (CUDA 12) and PyPI reachable:
  1. creates (or reuses) the virtual environment DIR (default .venv-gpu) and installs the
     project with cupy-cuda12x and pytest (pip install -e '.[gpu]' pytest);
  2. runs the gpu-marked tests (python -m pytest -m gpu);
  3. compares the gpu device's features and input gradients with the CPU's on random
     weights, and on pretrained weights: FILE.h5, else a converted file in minivgg's
     cache (python -m weights_tools fetch ...), else random weights only, said in one line
     (scripts/gpu_check.py);
  4. runs scripts/bench.py --device gpu at LIST (default 256,512,1024), beside torch CUDA
     when torch==2.13.0 installs with CUDA (else minivgg alone, said in one line);
  5. prints one summary table.
Every step has a time limit so that the whole fits in BUDGET seconds (default 300).

options:
  --venv DIR        virtual environment to create or reuse (default .venv-gpu)
  --weights FILE.h5 converted pretrained weights to compare on as well
  --no-torch        do not try to install torch (the benchmark times minivgg alone)
  --no-bench        skip the benchmark
  --sizes LIST      benchmark image sizes, comma-separated (default 256,512,1024)
  --budget SECONDS  total time limit (default 300)
  -h, --help        this help

exit status: 0 passed, 1 a step failed or mismatched, 2 bad arguments, 3 no NVIDIA GPU
EOF
}

VENV=.venv-gpu
WITH_TORCH=1
WITH_BENCH=1
SIZES=256,512,1024
BUDGET=300
WEIGHTS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --venv) [ $# -ge 2 ] || { echo "error: --venv needs a folder (see --help)" >&2; exit 2; }; VENV=$2; shift 2 ;;
        --weights)
            [ $# -ge 2 ] && [ -f "$2" ] || { echo "error: --weights needs an existing file (see --help)" >&2; exit 2; }
            WEIGHTS=(--weights "$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift 2 ;;
        --no-torch) WITH_TORCH=0; shift ;;
        --no-bench) WITH_BENCH=0; shift ;;
        --sizes)
            [ $# -ge 2 ] && [[ $2 =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "error: --sizes needs a list like 256,512 (see --help)" >&2; exit 2; }
            SIZES=$2; shift 2 ;;
        --budget)
            [ $# -ge 2 ] && [[ $2 =~ ^[0-9]+$ ]] || { echo "error: --budget needs a number of seconds (see --help)" >&2; exit 2; }
            BUDGET=$2; shift 2 ;;
        *) echo "error: unknown argument '$1' (see scripts/gpu_check.sh --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.." || exit 1
# $GPU_CHECK_NVIDIA_SMI: the nvidia-smi to ask (the tests point it at a missing one)
SMI=${GPU_CHECK_NVIDIA_SMI:-nvidia-smi}
if ! GPUS=$("$SMI" --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null) || [ -z "$GPUS" ]; then
    echo "gpu_check: no NVIDIA GPU found ($SMI lists none); nothing to check on this machine" >&2
    exit 3
fi

START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
declare -a NAMES RESULTS TIMES
FAILED=0
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")

# step NAME SECONDS COMMAND...: run it under a time limit, log it, record ok/FAIL
step() {
    local name=$1 limit=$2 t0 rc
    shift 2
    [ "$limit" -gt "$(left)" ] && limit=$(left)
    if [ "$limit" -le 5 ]; then
        NAMES+=("$name"); RESULTS+=("FAIL (no time left)"); TIMES+=(0); FAILED=1
        return 1
    fi
    echo "== $name (limit ${limit}s)"
    t0=$(date +%s)
    timeout "$limit" "$@" > "$LOGDIR/$name.log" 2>&1
    rc=$?
    cat "$LOGDIR/$name.log"
    NAMES+=("$name"); TIMES+=($(( $(date +%s) - t0 )))
    if [ $rc -eq 0 ]; then RESULTS+=("ok")
    elif [ $rc -eq 124 ]; then RESULTS+=("FAIL (timed out)"); FAILED=1
    else RESULTS+=("FAIL (exit $rc)"); FAILED=1
    fi
    return $rc
}

echo "gpu_check: $GPUS"
if [ ! -x "$VENV/bin/python" ]; then
    step venv 60 python3 -m venv "$VENV" || { echo "gpu_check: cannot create $VENV" >&2; exit 1; }
fi
PY="$VENV/bin/python"
step install 150 "$PY" -m pip install -q -e '.[gpu]' pytest || { echo "gpu_check: installing failed (log above)" >&2; exit 1; }

step tests 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda_kernels.py
step compare 90 "$PY" scripts/gpu_check.py --device gpu "${WEIGHTS[@]}"

BENCH_TORCH=--no-torch
if [ "$WITH_BENCH" -eq 1 ]; then
    if [ "$WITH_TORCH" -eq 1 ]; then
        if timeout "$(( $(left) / 3 ))" "$PY" -m pip install -q torch==2.13.0 > "$LOGDIR/torch.log" 2>&1 \
            && "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
            BENCH_TORCH=
        else
            echo "gpu_check: torch==2.13.0 with CUDA did not install in time or sees no GPU: benchmark without torch"
        fi
    fi
    step bench "$(( $(left) - 5 ))" "$PY" scripts/bench.py --device gpu --sizes "$SIZES" --repeats 5 $BENCH_TORCH
else
    echo "gpu_check: benchmark skipped (--no-bench)"
fi

echo
echo "gpu_check summary ($GPUS; $(( $(date +%s) - START )) s; logs in $LOGDIR)"
printf '%-10s %-22s %8s\n' step result seconds
for i in "${!NAMES[@]}"; do
    printf '%-10s %-22s %8s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"
done
exit $FAILED
