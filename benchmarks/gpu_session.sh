#!/usr/bin/env bash
# The GPU work of the CIFAR-10 study and of the CUDA deployment table, in one command for a
# machine lent for a few minutes (run from the repository root):
#
#   bash benchmarks/gpu_session.sh [STUDY_SECONDS] [BENCH_SECONDS]
#
# Needs .gpu/cifar10-jpeg.tar.gz (the CIFAR-10 JPEG archive). A study folder .gpu/study, if
# present (e.g. a baseline trained on the CPU, copied there), is continued: finished runs are
# skipped, unfinished ones resume. The study runs for at most STUDY_SECONDS (default 420), then
# stops its runs with their state saved; bench_cuda.py then runs for at most BENCH_SECONDS
# (default 120, 0 skips it). What it made lands in $OUT (default gpu-out/): the packed study
# (runs-meta.tar.gz, models-N.tar.gz, and state-N.tar.gz with the resume state of unfinished
# runs), the study's log, the GPU's name and the bench_cuda tables. DEVICE=cpu and QUICK=1 try
# the whole script on a CPU (one batch-limited epoch per phase).
set -uo pipefail
cd "$(dirname "$0")/.."
study_s=${1:-420}
bench_s=${2:-120}
out=${OUT:-gpu-out}
device=${DEVICE:-cuda}
mkdir -p "$out" .gpu
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export SGCNN_CACHE=${SGCNN_CACHE:-$PWD/.gpu/cache}
python=${PYTHON:-python3}

if [ ! -f .gpu/cifar10-jpeg.tar.gz ]; then
    echo "gpu_session: .gpu/cifar10-jpeg.tar.gz is missing: copy the CIFAR-10 JPEG archive there" >&2
    exit 2
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
fi

quick=()
[ "${QUICK:-0}" = 1 ] && quick=(--quick)
timeout -s TERM "$study_s" "$python" benchmarks/cifar10_study.py run \
    --archive .gpu/cifar10-jpeg.tar.gz --out .gpu/study --jobs 8 --device "$device" \
    --epochs 160 --ft-epochs 12 --full-train "${quick[@]}" 2>&1 | tee "$out/study.log"
echo "study: exit status ${PIPESTATUS[0]} (124: stopped at ${study_s} s, state saved)"
"$python" benchmarks/cifar10_study.py pack --runs .gpu/study --out "$out" --state

if [ "$bench_s" -gt 0 ]; then
    bench=(--batches 64 --runs 30 --warmup 5 --out "$out/bench_cuda_b64")
    [ "$device" = cpu ] && bench=(--device cpu --quick --out "$out/bench_cuda_cpu")
    timeout -s TERM "$bench_s" "$python" benchmarks/bench_cuda.py "${bench[@]}" 2>&1 | tail -40
    echo "bench_cuda: exit status ${PIPESTATUS[0]}"
fi
ls -la "$out"
