#!/usr/bin/env bash
# Issue 18's one prepared GPU run. Here: `bash scripts/gpu_bundle.sh`; then the device tool's
# `run` with carry [".gpu"], timeout_s 600 and the command `bash scripts/gpu_session.sh`.
# About 8 minutes on an H200; every part has its own time limit so one that hangs costs only
# itself. Its outputs land in $OUT (the device tool brings them back).
set -uo pipefail
OUT=${OUT:-/tmp/donors-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/device.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/device.txt"
timeout 150 python3 bench/gpu_throughput.py --models llama-3.2-1b qwen2.5-0.5b gemma-3-1b llama-3.1-8b --tokenizer .gpu/tokenizer --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.txt"
timeout 270 python3 bench/gpu_numerics.py --tokenizer .gpu/tokenizer 2>&1 | tee "$OUT/numerics.txt"
# Item 15: the tests that build their models from configs pass on a GPU machine too (the harness comparison needs lm-eval).
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_bf16.py tests/test_scoring_memory.py -k "not backends_in_bf16" 2>&1 | tee "$OUT/pytest.txt"
