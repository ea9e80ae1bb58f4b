# The two commands of the README. Each does all set-up on a fresh machine: a venv, the CPU
# build of torch first (so pip never pulls a multi-GB CUDA build), the project; then
# `make pipeline` runs the whole default pipeline and `make test` the suite.
VENV ?= .venv
TORCH ?= torch==2.13.0
CONFIG ?= config/config.yaml
BIN := $(VENV)/bin

GPU_CHECK_OUT ?= results/gpu-check

.PHONY: install pipeline test lint slurm gpu-check

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

pipeline: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores all --configfile $(CONFIG)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# The cluster test (tests/cluster) starts a single-node SLURM: Debian's packages, as root. Where
# they cannot be installed that test fails and says why (it never skips).
slurm:
	@command -v slurmctld >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends slurmctld slurmd slurm-client munge; } || \
		echo "warning: SLURM packages not installed: tests/cluster will fail"

test: lint slurm
	$(BIN)/pytest

# The GPU acceptance run: kernels built for this GPU, backends checked, training, kernel and
# generation benchmarks, one table in $(GPU_CHECK_OUT)/gpu-check.md. On a CUDA machine, give the
# venv a CUDA torch: `make gpu-check VENV=.venv-gpu TORCH=torch==2.14.1`. On a CPU the GPU
# parts are skipped, saying so (tests/test_gpu_check.py runs that mode).
gpu-check: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)
