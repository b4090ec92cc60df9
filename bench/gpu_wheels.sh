#!/usr/bin/env bash
# Wheels for measuring ingest on a GPU machine that has no network (Python 3.12, a CUDA torch and
# torchvision already there): this project as a wheel, and the packages that machine lacks or has
# too old, into .whl/ (git-ignored). Run here, where PyPI is reachable; then carry .whl to the
# GPU machine and run bench/on_gpu_machine.sh there. About 20 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl .
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl \
    "transformers==5.24.0" "sentence-transformers==6.2.0" "qdrant-edge-py==0.9.0" "rapidfuzz>=3.9,<4"
ls -l .whl
