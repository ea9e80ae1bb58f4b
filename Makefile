# The two commands of the README. Each does all set-up on a fresh machine: a venv, the CPU
# build of torch first (so pip never pulls a multi-GB CUDA build), the project; then
# `make pipeline` runs the whole default pipeline and `make test` the suite.
VENV ?= .venv
TORCH ?= torch==2.13.0
CONFIG ?= config/config.yaml
BIN := $(VENV)/bin

GPU_CHECK_OUT ?= results/gpu-check
GPU_CHECK_ARGS ?=  # e.g. --only build,backends,families, then --only build,kernels,generation,training

# The tests' oracle: mamba_ssm's and causal_conv1d's own Python modules (and the triton and einops
# they import), put beside the venv rather than in it, so that seqarena never sees a mamba_ssm
# without its kernels. On a CPU their pure-PyTorch references run (tests/mamba_ssm_reference.py),
# and so does the cuda backend through their code, the Triton kernels interpreted
# (tests/cuda_emulation.py). causal-conv1d 1.6.1 on PyPI has the Python of tag v1.6.1.post4, which
# the GPU env builds (a test compares them).
MAMBA_SSM_REFERENCE ?= $(VENV)/mamba-ssm-reference

.PHONY: install pipeline synthetic-cpu scaling-cpu test lint slurm gpu-check gpu-check-offline oracle

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

oracle: $(MAMBA_SSM_REFERENCE)/.installed

$(MAMBA_SSM_REFERENCE)/.installed: $(VENV)/.installed Makefile
	MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
		CAUSAL_CONV1D_FORCE_BUILD=TRUE $(BIN)/python -m pip install -q --no-deps \
		--no-build-isolation --upgrade --target $(MAMBA_SSM_REFERENCE) \
		mamba-ssm==2.3.2.post1 causal-conv1d==1.6.1 triton==3.6.0 einops==0.8.2
	touch $@

# On a terminal, --logger rich: a live view of the DAG (jobs done of all, per rule, the running
# ones); into a file or pipe, Snakemake's own lines, a line per job started and finished (the live
# view draws nothing there). Each job's own progress is in its log (tail -f
# results/logs/<stage>/<job>.log). The Snakefile loads config/config.yaml itself: naming it again
# would make Snakemake say it is "extended by additional config" that nobody gave.
LIVE_VIEW_ON_A_TERMINAL = logger=; [ -t 1 ] && logger="--logger rich";
CONFIG_FLAG = $(if $(filter-out config/config.yaml,$(CONFIG)),--configfile $(CONFIG))

pipeline: install
	$(LIVE_VIEW_ON_A_TERMINAL) PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores all $(CONFIG_FLAG) $$logger

# A study on the CPU: Snakemake's target $(1) with config $(2), one thread a job, then the report
# over what it wrote to $(3) (the other stages' sections say they have no results).
define cpu_study
	$(LIVE_VIEW_ON_A_TERMINAL) PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake $(1) --cores all \
		--configfile $(2) $$logger
	$(BIN)/seqarena report --results $(3) --out $(3)/reports/report.ipynb \
		--html $(3)/reports/report.html --figures $(3)/reports/figures
endef

# The paper's synthetic-task claims at CPU scale (config/synthetic-cpu.yaml).
synthetic-cpu: install
	$(call cpu_study,synthetic,config/synthetic-cpu.yaml,results/synthetic-cpu)

# A scaling ladder of four sizes a family on the Python standard library's sources, fitted
# (config/scaling-cpu.yaml).
scaling-cpu: install
	$(call cpu_study,scaling,config/scaling-cpu.yaml,results/scaling-cpu)

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

# The SLURM rehearsal (tests/cluster) spends much of its time waiting on the SLURM plugin's status
# checks, so it runs beside the rest of the suite; its report is printed after the rest's. The rest
# runs in TEST_WORKERS processes, a test file to each (its module fixtures run once), each torch
# on one thread (two workers of two threads each on CI's two cores spent a quarter more CPU for
# nothing): one process alone left the second core mostly idle (benchmarks/README.md, the suite).
PYTEST := SEQARENA_MAMBA_SSM_REFERENCE="$(abspath $(MAMBA_SSM_REFERENCE))" $(BIN)/pytest
TEST_WORKERS ?= 2

# A green run removes the tests' temporary folders (the rehearsal's alone is about 0.7 GB); a red
# one keeps them for a look, and names them.
test: lint slurm oracle
	@cluster_log=$$(mktemp); cluster_tmp=$$(mktemp -d); rest_tmp=$$(mktemp -d); \
	$(PYTEST) -m cluster --basetemp="$$cluster_tmp" > "$$cluster_log" 2>&1 & cluster=$$!; \
	trap 'kill $$cluster 2>/dev/null' INT TERM; \
	OMP_NUM_THREADS=1 $(PYTEST) -m "not cluster" -n $(TEST_WORKERS) --dist loadfile --basetemp="$$rest_tmp"; rest=$$?; \
	wait $$cluster; slurm=$$?; \
	echo "--- tests/cluster (run beside the rest) ---"; cat "$$cluster_log"; rm -f "$$cluster_log"; \
	if test $$rest = 0 && test $$slurm = 0; then rm -rf "$$cluster_tmp" "$$rest_tmp"; \
	else echo "the tests' files are kept: $$rest_tmp (the rest), $$cluster_tmp (tests/cluster)"; exit 1; fi

# The GPU acceptance run: kernels built for this GPU, backends checked, training, kernel and
# generation benchmarks, one table in $(GPU_CHECK_OUT)/gpu-check.md. On a CUDA machine, give the
# venv a CUDA torch: `make gpu-check VENV=.venv-gpu TORCH=torch==2.14.1`. On a CPU the GPU
# parts are skipped, saying so (tests/test_gpu_check.py runs that mode).
gpu-check: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/gpu_check.py --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

# The same on an air-gapped GPU box (no index, no internet, a preinstalled CUDA torch): the machine's
# own python3, the kernels built from the tarballs in SEQARENA_CUDA_SOURCES (filled on a networked
# machine: benchmarks/README.md), on every core; seqarena goes into that python without its dependencies.
PYTHON ?= python3
gpu-check-offline:
	PYTHON=$(PYTHON) bash benchmarks/gpu_check_offline.sh $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)
