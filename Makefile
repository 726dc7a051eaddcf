# The commands people type. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed on its own first: a CPU build where there is no NVIDIA GPU, so pip
# never pulls a multi-GB CUDA build onto a CPU machine. There pip also looks in PyTorch's
# CPU index (TORCH_CPU_INDEX), whose torch==2.13.0 is 2.13.0+cpu and wins over PyPI's CUDA
# build; where that index cannot be reached (checked once, 5 s), pip takes what its
# configured sources offer.
# Override TORCH_SPEC, or TORCH_INDEX to install from that index alone (GPU or not).
TORCH_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
ARGS ?=
SWEEP ?= dilate
# pytest-xdist workers of `make test`: one per core, each file's tests on one worker (its
# module fixtures built once); TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= auto

.DEFAULT_GOAL := help
.PHONY: help install wheel train test lint format sweep summary tensorboard bench benchmark gpu-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@if [ -n "$(TORCH_INDEX)" ]; then \
		$(BIN)/pip install "$(TORCH_SPEC)" --index-url "$(TORCH_INDEX)"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing the default (CUDA) build of torch"; \
		$(BIN)/pip install "$(TORCH_SPEC)"; \
	elif $(BIN)/python -c "import urllib.request as r; r.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" 2>/dev/null; then \
		echo "no GPU: installing a CPU build of torch ($(TORCH_SPEC), $(TORCH_CPU_INDEX))"; \
		$(BIN)/pip install "$(TORCH_SPEC)" --extra-index-url "$(TORCH_CPU_INDEX)"; \
	else \
		echo "no GPU, $(TORCH_CPU_INDEX) unreachable: torch from pip's configured sources"; \
		$(BIN)/pip install "$(TORCH_SPEC)"; \
	fi
	$(BIN)/pip install -e ".[dev]"
	@touch $@

install: $(VENV)/.installed ## create .venv and install crackseg with its dev tools

wheel: | $(BIN)/python ## build dist/crackseg-<version>-py3-none-any.whl, configs included
	rm -rf build  # setuptools reuses it: files deleted since would ship again
	$(BIN)/pip wheel --no-deps --wheel-dir dist .

train: install ## run the demo: synthetic data, small model, CPU, a few minutes (ARGS=overrides)
	$(BIN)/crackseg-train experiment=demo $(ARGS)

test: install ## run the test suite, one worker per core (TEST_WORKERS=N, ARGS=pytest options)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

lint: install ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

sweep: install ## run an ablation sweep (SWEEP=dilate|weighted_loss|delta|..., ARGS=overrides)
	$(BIN)/crackseg-train -m +sweep=$(SWEEP) $(ARGS)

summary: install ## rebuild the summary table of a folder of runs (ARGS=FOLDER)
	$(BIN)/crackseg-summary $(ARGS)

tensorboard: install ## compare every run under outputs/ in TensorBoard
	$(BIN)/tensorboard --logdir outputs $(ARGS)

bench: install ## speed table, benchmarks/results.json, memory check (ARGS=bench.py options)
	$(BIN)/python benchmarks/bench.py $(ARGS) || [ $$? -eq 3 ]  # 3: --budget stopped rows
	$(if $(filter --list --help -h,$(ARGS)),,$(BIN)/python benchmarks/memory_vs_dataset_size.py $(filter --quick,$(ARGS)))

benchmark: bench ## the same as bench

gpu-check: install ## GPU tests, bench on cuda, DDP, a seed-run epoch: <= 8 min (toy size without a GPU)
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

clean: ## remove caches and built wheels (keeps outputs/, data/ and .venv)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . \( -path ./.venv -o -path ./data -o -path ./outputs \) -prune -o \
		-name __pycache__ -type d -prune -exec rm -rf {} +
