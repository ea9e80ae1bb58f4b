#!/usr/bin/env bash
# The CUDA source build of causal-conv1d and mamba-ssm, compiled for real on any machine with
# nvcc (no GPU needed to compile), timed per package: envs/gpu.post-deploy.sh itself, run in a
# venv standing in for the conda env, with a CUDA build of torch whose CUDA major matches nvcc's.
#   benchmarks/cuda_build.sh [ARCHS] [VENV]      defaults: "90" and .venv-cuda
# SEQARENA_CUDA_SOURCES=DIR takes the source tarballs from DIR instead of GitHub, and
# SEQARENA_CUDA_WHEELS=DIR keeps the built wheels for the next run (see the script).
# Too slow for the test suite (minutes to an hour): run it by hand; results in benchmarks/README.md.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
archs="${1:-90}"
venv="${2:-$repo/.venv-cuda}"
torch_spec="${TORCH_CUDA:-torch==2.14.1}"  # +cu130: CUDA 13.0, as nvcc here

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "$torch_spec" numpy ninja packaging setuptools wheel einops tqdm safetensors
fi
# torch's extension builder takes the toolkit from CUDA_HOME (else from nvcc's folder, which a
# wrapper on PATH hides): the toolkit's headers, cuda_runtime.h among them, must be under it
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
[[ -f "$CUDA_HOME/include/cuda_runtime.h" ]] || { echo "no CUDA toolkit at CUDA_HOME=$CUDA_HOME" >&2; exit 1; }
nvcc --version | tail -2
"$venv/bin/python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
SECONDS=0
PATH="$venv/bin:$PATH" SEQARENA_WORKFLOW_DIR="$repo" SEQARENA_CUDA_ARCHS="$archs" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    bash "$repo/envs/gpu.post-deploy.sh"
echo "both packages for sm_${archs//;/, sm_}: $SECONDS s in all"
