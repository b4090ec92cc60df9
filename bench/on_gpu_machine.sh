#!/usr/bin/env bash
# On the GPU machine, in a copy of this repository with .whl/ from bench/gpu_wheels.sh: install
# the wheels beside the machine's own torch, then run the ingest benchmark at 1000 px and 224 px,
# and the ingests alone of a larger 1000-px catalog (SCALE_N products, 16384 unless set; 0 skips
# them), where the run's fixed costs weigh less. STANDARD=0 skips the first part.
# Figures and the whole log go to $OUT (or ./gpu-out). Through the device tool:
#   run(command="bash bench/on_gpu_machine.sh", carry=[".whl"], timeout_s=600)
# PY, DEVICE, N and WHEELS override the interpreter, device, catalog size and wheels, for a smoke
# run on a machine without a GPU: WHEELS='.whl/shelfsight-*.whl' PY=.venv/bin/python DEVICE=cpu N=64
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${OUT:-$repo/gpu-out}")
PY=${PY:-python3}
mkdir -p "$OUT"
# shellcheck disable=SC2086  # WHEELS is a glob
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    ${WHEELS:-$repo/.whl/*.whl} || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
cd /tmp || exit 1 # so the checkout's shelfsight/ folder cannot shadow the installed package
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    if [ "${STANDARD:-1}" != 0 ]; then
        timeout 300 "$PY" "$repo/bench/ingest_throughput.py" --device "${DEVICE:-cuda}" --image-size 1000 \
            --also-224 ${N:+--n "$N"} --workdir /tmp/shelfsight-bench --json "$OUT/ingest_gpu.json" \
            --profile "$OUT/ingest_profile.txt"
    fi
    # The index build alone on this machine's cores, with and without the links per field value,
    # in fp32 and int8 (README: "The index build and the links per field value").
    timeout 120 "$PY" "$repo/bench/index_build.py" --n "${INDEX_N:-16384}" --json "$OUT/index_build.json"
    timeout 120 "$PY" "$repo/bench/index_build.py" --n "${INDEX_N:-16384}" --quantization int8 \
        --json "$OUT/index_build_int8.json"
    if [ "${SCALE_N:-16384}" != 0 ]; then
        timeout 240 "$PY" "$repo/bench/ingest_throughput.py" --device "${DEVICE:-cuda}" --image-size 1000 \
            --ingest-only --n "${SCALE_N:-16384}" --workdir /tmp/shelfsight-bench --json "$OUT/ingest_gpu_scale.json"
    fi
} 2>&1 | tee "$OUT/ingest_gpu.log"
