#!/usr/bin/env bash
# Snakemake runs this once, inside the new GPU env: install seqarena from the workflow's folder
# (as the CPU env does), then build causal-conv1d and mamba-ssm from source for the CUDA archs
# of config kernels.cuda_archs only (the pipeline exports them as SEQARENA_CUDA_ARCHS, e.g.
# "80;90"). Their setup.py files hard-code a dozen -gencode flags, which makes a build take about
# an hour; with the list patched it takes minutes.
# The sources are the GitHub release tags: the PyPI sdists ship setup.py without csrc/, so they
# cannot be built. SEQARENA_CUDA_SOURCES names a folder holding the two tarballs
# (causal-conv1d-<version>.tar.gz, mamba-<version>.tar.gz, as GitHub's archive links name them)
# for hosts without network, or to build again without downloading; missing ones are fetched.
# SEQARENA_CUDA_WHEELS names a folder that keeps the built wheels, one subfolder per torch build
# and arch list: a later run (another env, `make gpu-check`) installs them instead of compiling.
# benchmarks/cuda_build.sh runs this same script in a venv, to time the build on any machine.
set -euo pipefail
ARCHS="${SEQARENA_CUDA_ARCHS:-80;90}"
SOURCES="${SEQARENA_CUDA_SOURCES:-}"
export MAX_JOBS="${MAX_JOBS:-8}" CAUSAL_CONV1D_FORCE_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
: "${SEQARENA_WORKFLOW_DIR:?is unset: Snakemake exports it (workflow/rules/common.smk)}"
bash "$SEQARENA_WORKFLOW_DIR/envs/cpu.post-deploy.sh"
torch_build="$(python -c 'import torch; print(torch.__version__)')"
wheels="${SEQARENA_CUDA_WHEELS:-$work/wheels}/torch-$torch_build-sm_${ARCHS//;/-sm_}"

# source name, wheel name, GitHub repository, version (its tag is v<version>)
for pinned in "causal-conv1d causal_conv1d Dao-AILab/causal-conv1d 1.5.0.post8" \
    "mamba mamba_ssm state-spaces/mamba 2.3.2.post1"; do
    read -r name dist repo version <<<"$pinned"
    built=("$wheels/$dist-$version"-*.whl)
    if [[ -f "${built[0]}" ]]; then
        python -m pip install --no-deps --force-reinstall "${built[0]}"
        echo "installed $dist $version built before: ${built[0]}"
        continue
    fi
    tarball="$name-$version.tar.gz"
    if [[ -n "$SOURCES" && -f "$SOURCES/$tarball" ]]; then
        cp "$SOURCES/$tarball" "$work/"
    else
        curl -fsSL -o "$work/$tarball" "https://github.com/$repo/archive/refs/tags/v$version.tar.gz"
    fi
    tar -xzf "$work/$tarball" -C "$work"
    src="$work/$name-$version"
    # fails here, before compiling, on an arch nvcc lacks or a torch/nvcc CUDA mismatch
    python -m seqarena.ops.cuda_build "$src/setup.py" "$ARCHS"
    SECONDS=0
    python -m pip wheel --no-deps --no-build-isolation --wheel-dir "$wheels" "$src"
    python -m pip install --no-deps --force-reinstall "$wheels/$dist-$version"-*.whl
    echo "built $dist $version for sm_${ARCHS//;/, sm_} in $SECONDS s (MAX_JOBS=$MAX_JOBS)"
done
if python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    python -c "import mamba_ssm, causal_conv1d; print('built mamba_ssm', mamba_ssm.__version__)"
else
    echo "no GPU here: the built extensions compile but cannot be imported (they need the CUDA driver)"
fi
