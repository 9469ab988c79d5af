#!/usr/bin/env bash
# Issue 18's one prepared GPU run. Here: `bash scripts/gpu_bundle.sh`; then the device tool's
# `run` with carry [".gpu"], timeout_s 600 and the command `bash scripts/gpu_session.sh`.
# Each part runs under its own time limit (500 s if every one ran to its limit), so a part that
# hangs costs only itself; about five minutes in all on an H200 (4.4 measured before the
# train-profile part was added). Outputs land in $OUT.
# PARTS="head-loss:30 train-profile:60" runs only those numerics parts (after the throughput table).
set -uo pipefail
OUT=${OUT:-/tmp/donors-gpu}
PARTS=${PARTS:-head-loss:30 determinism:60 memory-8b:30 gemma-4b:40 token-budget:40 train-profile:60}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/device.txt"
python3 -c "import regex, torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'regex', regex.__version__)" 2>&1 | tee -a "$OUT/device.txt"
timeout 200 python3 bench/gpu_throughput.py --models llama-3.2-1b qwen2.5-0.5b gemma-3-1b llama-3.1-8b --tokenizer .gpu/tokenizer --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.txt"
for part in $PARTS; do
	echo "== ${part%%:*} (limit ${part##*:} s)" | tee -a "$OUT/numerics.txt"
	timeout "${part##*:}" python3 bench/gpu_numerics.py --tokenizer .gpu/tokenizer --parts "${part%%:*}" 2>&1 | tee -a "$OUT/numerics.txt"
done
# Item 15: the tests that build their models from configs pass on a GPU machine too (the harness comparison needs lm-eval).
timeout 40 python3 -m pytest -q -p no:cacheprovider tests/test_bf16.py tests/test_scoring_memory.py -k "not backends_in_bf16" 2>&1 | tee "$OUT/pytest.txt"
