# Two set-up commands (see README): `make demo` and `make test`.
# TORCH_SPEC selects the torch build: the default is the CPU build served locally on these machines;
# GPU users set e.g. TORCH_SPEC="torch==2.13.0" with their CUDA index, or TORCH_SPEC=skip to keep theirs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-fast clean

$(BIN)/alignkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if [ "$(TORCH_SPEC)" != "skip" ]; then $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $(BIN)/alignkit

install: $(BIN)/alignkit

demo: install
	$(BIN)/alignkit demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not distributed"

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
