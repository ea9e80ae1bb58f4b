#!/usr/bin/env bash
# `make gpu-check-offline`: the GPU acceptance run (benchmarks/gpu_check.py) on an air-gapped GPU
# box, one with no package index and no internet, only a preinstalled CUDA build of torch (with
# triton, numpy and transformers beside it) and the CUDA toolkit's nvcc:
#   - the machine's own interpreter (PYTHON, default python3) and its torch; seqarena is installed
#     into it without dependencies and without build isolation, pip never reaching an index;
#   - causal-conv1d and mamba-ssm built from the source tarballs in SEQARENA_CUDA_SOURCES (filled
#     on a networked machine: SEQARENA_CUDA_FETCH_ONLY=1 SEQARENA_CUDA_SOURCES=DIR bash
#     envs/gpu.post-deploy.sh), for this GPU's arch, on every core; the wheels that command put in
#     its wheels/ folder (tilelang, for Mamba-3 MIMO) installed into a folder of their own on
#     PYTHONPATH, leaving the machine's python as it was;
#   - the table in OUT_DIR (gpu-check.md, gpu-check.json, build.log, errors.log).
#     benchmarks/gpu_check_offline.sh OUT_DIR [gpu_check.py options, e.g. --only build]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: benchmarks/gpu_check_offline.sh OUT_DIR [gpu_check.py options]}"
shift
python="$(command -v "${PYTHON:-python3}")"
: "${SEQARENA_CUDA_SOURCES:?names the folder of the CUDA source tarballs (the first lines of benchmarks/gpu_check_offline.sh say how to fill it)}"
export SEQARENA_CUDA_SOURCES="$(cd "$SEQARENA_CUDA_SOURCES" && pwd)" PIP_NO_INDEX=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
mkdir -p "$out"
SECONDS=0
"$python" - <<'PY'
import platform, shutil, subprocess, torch
nvcc = shutil.which("nvcc")
release = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.split()[-1] if nvcc else "none"
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), nvcc {release}")
PY
"$python" -m pip install -q --no-deps --no-build-isolation -e "$repo"
echo "installed seqarena into $python without dependencies ($SECONDS s)"
if compgen -G "$SEQARENA_CUDA_SOURCES/wheels/*.whl" >/dev/null; then
    site="${TMPDIR:-/tmp}/seqarena-offline-site"
    "$python" -m pip install -q --no-deps --no-compile --upgrade --target "$site" "$SEQARENA_CUDA_SOURCES"/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed $(cd "$SEQARENA_CUDA_SOURCES/wheels" && echo *.whl) into $site ($SECONDS s)"
fi
"$python" "$repo/benchmarks/gpu_check.py" --out "$out" --command "make gpu-check-offline" \
    --wheels "${SEQARENA_CUDA_WHEELS:-$HOME/.cache/seqarena/cuda-wheels}" "$@"
echo "gpu-check-offline: $SECONDS s in all"
