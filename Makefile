# Every user-facing command. `make` or `make help` lists them; each runs one command, logic lives in Python.
# The first target that needs Python creates .venv and installs the pinned dependencies (scripts/setup_env.py).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
SCRATCH_ARGS ?=
CONFIG ?= configs/smollm2/cpu.yaml

.DEFAULT_GOAL := help
.PHONY: help install install-cuda test test-slow lint format validate data bench bench-train train verify-grpo eval bench-eval

help: ## list the targets (this message)
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## create .venv with the pinned dependencies (a no-op when nothing changed)
	@$(PYTHON) scripts/setup_env.py --venv $(VENV)

install-cuda: ## add Unsloth + vLLM (requirements-cuda.txt); Linux with an NVIDIA GPU only
	@$(PYTHON) scripts/setup_env.py --venv $(VENV) --cuda

test: install ## the fast test suite (docs/commands.md gives its time)
	$(PY) -m pytest

test-slow: install ## the slow tests only: SLURM, model training, documented recipes (CI runs it after make test)
	$(PY) -m pytest -m "slow and not gpu"

lint: install ## ruff: lint and formatting check
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: install ## ruff: fix what can be fixed and format the code
	$(PY) -m ruff check --fix . && $(PY) -m ruff format .

validate: install ## validate every config under configs/ against its schema
	$(PY) -m lib.common.config validate configs

data: install ## datasets/di_vdp: 2,000 double-integrator + Van der Pol problems (~25 s; ARGS=--overwrite to redo)
	$(PY) scripts/generate_data.py --systems double_integrator van_der_pol --total-samples 2000 --dataset-name di_vdp --seed 0 $(ARGS)

bench: install ## benchmark data generation vs the old clipped-LQR labels, the GRPO rewards, tokens per record -> results/bench/ (ARGS: scripts/bench/data.py counts)
	$(PY) scripts/bench/data.py $(ARGS)
	$(PY) scripts/bench/rewards.py
	$(PY) scripts/bench/tokens.py

bench-train: install ## training speed: the from-scratch model against the matmul limit and its lifts (SCRATCH_ARGS), then SmolLM2-135M (ARGS)
	$(PY) scripts/bench/scratch_training.py $(SCRATCH_ARGS)
	$(PY) scripts/bench/training.py $(ARGS)

train: install ## SFT and/or GRPO from a config (CONFIG=..., default the embedded model on CPU; ARGS for key=value)
	$(PY) scripts/main_trainer.py --config $(CONFIG) $(ARGS)

# train-mps: CONFIG defaults to the byte-level model's MPS profile here (CONFIG=... on the command line or in
# the environment wins). Without MPS, lib.common.device logs the reason and trains on what the machine has.
MPS_CONFIG := configs/blt/entropy_mps.json
.PHONY: train-mps bench-blt
train-mps: install ## train with an Apple MPS profile (default configs/blt/entropy_mps.json; CONFIG=..., ARGS=key=value)
	$(PY) scripts/main_trainer.py --config $(if $(filter file,$(origin CONFIG)),$(MPS_CONFIG),$(CONFIG)) $(ARGS)

bench-blt: install ## byte-level model training bytes/s: CPU, and CUDA fp32 + mixed precision where present -> results/bench/blt.{json,md}
	$(PY) scripts/bench/blt.py $(ARGS)

verify-grpo: install ## check the answer format of the newest GRPO run on fresh double-integrator problems (ARGS for flags)
	$(PY) scripts/verify_grpo_format.py --system double_integrator --output-dir results/verify_grpo $(ARGS)

eval: install ## evaluate models by simulating their answers (ARGS="--model-path ... --dataset ..."; see docs/evaluation.md)
	$(PY) scripts/main_eval.py $(ARGS)

bench-eval: install ## evaluation throughput, batched vs one at a time, SmolLM2-135M -> results/bench/eval.{json,md}
	$(PY) scripts/bench/eval.py $(ARGS)

# pipeline: CONFIG defaults to the pipeline recipe here (the global default is a training-only config).
PIPELINE_CONFIG := configs/smollm2/cpu.yaml
.PHONY: pipeline demo
pipeline: install ## data -> SFT -> eval -> GRPO -> eval -> report (CONFIG=configs/<model>/..., ARGS for key=value)
	$(PY) scripts/run_pipeline.py --config $(if $(filter file,$(origin CONFIG)),$(PIPELINE_CONFIG),$(CONFIG)) $(ARGS)

demo: install ## the whole story in <20 min on this CPU: a from-scratch model's SFT, then GRPO, the baselines, the verdict (configs/scratch/demo_cpu.yaml); prints the report's path
	$(PY) scripts/run_pipeline.py --config configs/scratch/demo_cpu.yaml $(ARGS)

.PHONY: demo-smollm2
demo-smollm2: install ## the pipeline on the embedded SmolLM2-135M on this CPU: it learns the format, not the law (time: configs/smollm2/demo_cpu.yaml)
	$(PY) scripts/run_pipeline.py --config configs/smollm2/demo_cpu.yaml $(ARGS)

# clean-cache needs no .venv: lib/common/cleanup.py uses the standard library only, so the system python3 runs it
# with this checkout on PYTHONPATH (-B: a dry run writes no bytecode), before `make install` as after.
.PHONY: clean-cache
clean-cache: ## remove caches, temp training outputs, wandb/, *.tmp, logs (never models/ datasets/ results/ figures/ or source); DRY=1 lists only
	@PYTHONPATH="$(CURDIR)" $(PYTHON) -B scripts/cleanup_cache.py $(if $(filter 1 yes true,$(DRY)),--dry-run) $(ARGS)
