#!/usr/bin/env bash
# Snakemake runs this once, inside the new GPU env: build causal-conv1d and mamba-ssm from source
# for the CUDA archs of config kernels.cuda_archs only (the pipeline exports them as
# SEQARENA_CUDA_ARCHS, e.g. "80;90"). Their setup.py files hard-code a dozen -gencode flags,
# which makes a build take about an hour; with the list patched it takes minutes.
set -euo pipefail
ARCHS="${SEQARENA_CUDA_ARCHS:-80;90}"
CAUSAL_CONV1D_VERSION=1.5.0.post8
MAMBA_SSM_VERSION=2.2.4
export MAX_JOBS="${MAX_JOBS:-8}" CAUSAL_CONV1D_FORCE_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for pkg in "causal_conv1d==$CAUSAL_CONV1D_VERSION" "mamba_ssm==$MAMBA_SSM_VERSION"; do
    name="${pkg%%==*}"
    # only the sdist: its metadata step runs setup.py, which without the SKIP flags probes CUDA
    CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
        pip download --no-deps --no-binary :all: --no-build-isolation -d "$work" "$pkg"
    tar -xzf "$work/$name"-*.tar.gz -C "$work"
    src="$(find "$work" -maxdepth 1 -type d -name "$name-*" | head -1)"
    python -m seqarena.ops.cuda_build "$src/setup.py" "$ARCHS"
    pip install --no-deps --no-build-isolation "$src"
done
python -c "import mamba_ssm, causal_conv1d; print('built mamba_ssm', mamba_ssm.__version__)"
