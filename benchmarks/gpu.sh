#!/usr/bin/env bash
# The GPU suite on a device machine (after benchmarks/prepare_gpu.sh here; carry .whl and .gpu).
# Usage: bash benchmarks/gpu.sh "MODEL NAME SUBSTRINGS"; results go to $OUT/benchmarks (or results/).
# PYTHON and SUITE override the interpreter and suite (a dry run on a CPU: SUITE=smoke, "tiny").
set -euo pipefail
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
# shellcheck disable=SC2086
"$PYTHON" -m benchmarks --suite "${SUITE:-gpu}" --models $1 --data-dir .gpu/datasets --tokenizer .gpu/tokenizer \
  --results-dir "${OUT:-results}"
