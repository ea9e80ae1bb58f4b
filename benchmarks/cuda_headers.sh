#!/usr/bin/env bash
# Which CUDA toolkit headers the pinned source builds include, so that envs/gpu.yaml can hold the
# conda packages that ship them: `nvcc -M` (dependencies only, nothing compiled) over every .cu
# and .cpp of causal-conv1d and mamba-ssm, with the include paths of a CUDA build of torch.
# Writes tests/fixtures/cuda_build/toolkit_headers.txt, which tests/test_deploy.py checks
# envs/gpu.yaml against. Rerun it when the pins in envs/gpu.post-deploy.sh change.
#   benchmarks/cuda_headers.sh SOURCES_DIR [TORCH_WHEEL]
# SOURCES_DIR holds the two tags' tarballs (as SEQARENA_CUDA_SOURCES does); TORCH_WHEEL is a
# CUDA wheel of torch (only its headers are unpacked; the CPU wheel lacks c10/cuda's generated ones).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
sources="$1"
wheel="${2:-$(ls /opt/pypi-more/files/torch-2.14.1-*.whl)}"
cuda_home="${CUDA_HOME:-/usr/local/cuda}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

unzip -q "$wheel" 'torch/include/*' -d "$work"
include="$work/torch/include"
python_include="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
for tarball in "$sources"/causal-conv1d-*.tar.gz "$sources"/mamba-*.tar.gz; do
    tar -xzf "$tarball" -C "$work"
done
toolkit="$(cd "$cuda_home" && pwd -P)"  # nvcc names its headers by the real path
find "$work" -path '*/csrc/*' \( -name '*.cu' -o -name '*.cpp' \) -print0 |
    while IFS= read -r -d '' file; do
        nvcc -M -std=c++20 -arch=sm_90 -I"$include" -I"$include/torch/csrc/api/include" \
            -I"$python_include" -I"$(dirname "$file")" "$file"
    done |
    tr ' \\' '\n\n' | sed -nE "s#^($toolkit|$cuda_home)(/bin/\.\./targets/[^/]+)?/include/##p" | sort -u \
    >"$repo/tests/fixtures/cuda_build/toolkit_headers.txt"
echo "$(wc -l <"$repo/tests/fixtures/cuda_build/toolkit_headers.txt") toolkit headers ($(nvcc --version | tail -1))"
