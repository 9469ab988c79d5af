#!/usr/bin/env bash
# Build .gpu/ (git-ignored, about 20 MB): what a lent GPU machine needs to run scripts/gpu_session.sh.
#
# That machine has Python 3.12 with torch, numpy, scipy, pandas, tokenizers, huggingface_hub
# and accelerate, but no network and none of donors' pinned packages; it cannot fetch them.
# Here we download the pure-Python (and cp312) wheels it lacks, and save the SmolLM2 tokenizer
# the benchmarks use (the embedded model's 100+ MB package does not travel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
rm -rf .gpu && mkdir -p .gpu/wheels
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
wheels=(transformers==5.23.0 peft==0.21.2)
for package in pydantic pydantic_core annotated-types typing-inspection typing_extensions platformdirs regex; do
	wheels+=("$package==$(version "$package")")
done
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels "${wheels[@]}"
"$PY" -c "
from donors.models import embedded_model_path, load_tokenizer
embedded_model_path('smollm2-135m')
load_tokenizer('smollm2-135m').save_pretrained('.gpu/tokenizer')
"
du -sh .gpu
