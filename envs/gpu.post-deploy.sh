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
# `SEQARENA_CUDA_FETCH_ONLY=1 SEQARENA_CUDA_SOURCES=DIR bash envs/gpu.post-deploy.sh`, on a
# networked machine, only fills DIR (for an air-gapped GPU box: `make gpu-check-offline`): the
# tarballs, and in DIR/wheels the wheels of this env's tilelang and apache-tvm-ffi (Mamba-3 MIMO's
# TileLang kernels; a CUDA torch image lacks them) for the box's Python, SEQARENA_BOX_PYTHON
# (default 3.12), downloaded with PYTHON's pip.
# SEQARENA_CUDA_WHEELS names a folder that keeps the built wheels, one subfolder per torch build
# and arch list: a later run (another env, `make gpu-check`) installs them instead of compiling.
# PYTHON (default: python) is the interpreter to install into.
# benchmarks/cuda_build.sh runs this same script in a venv, to time the build on any machine.
# causal-conv1d >= 1.5.1: mamba-ssm 2.3.2.post1's fused Mamba-1 mixer imports its cpp_functions.
set -euo pipefail
ARCHS="${SEQARENA_CUDA_ARCHS:-80;90}"
SOURCES="${SEQARENA_CUDA_SOURCES:-}"
PYTHON="${PYTHON:-python}"
export MAX_JOBS="${MAX_JOBS:-8}" CAUSAL_CONV1D_FORCE_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE
# source name, wheel name, GitHub repository, version (its tag is v<version>)
PINNED=("causal-conv1d causal_conv1d Dao-AILab/causal-conv1d 1.6.1.post4"
    "mamba mamba_ssm state-spaces/mamba 2.3.2.post1")
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The tarball of a pinned tag: from $SOURCES, else downloaded (into $SOURCES when given).
tarball_of() {
    local name="$1" repo="$2" version="$3" into="${SOURCES:-$work}"
    local tarball="$into/$name-$version.tar.gz"
    if [[ ! -f "$tarball" ]]; then
        mkdir -p "$into"
        curl -fsSL -o "$tarball.part" "https://github.com/$repo/archive/refs/tags/v$version.tar.gz" || {
            echo "$name-$version.tar.gz is not in SEQARENA_CUDA_SOURCES=${SOURCES:-(unset)} and could not" \
                "be downloaded: fetch it on a networked machine (benchmarks/README.md, the offline GPU run)" >&2
            exit 1
        }
        mv "$tarball.part" "$tarball"
    fi
    echo "$tarball"
}

if [[ -n "${SEQARENA_CUDA_FETCH_ONLY:-}" ]]; then
    : "${SEQARENA_CUDA_SOURCES:?names the folder to fill}"
    for pinned in "${PINNED[@]}"; do
        read -r name dist repo version <<<"$pinned"
        tarball_of "$name" "$repo" "$version"
    done
    mapfile -t pins < <(grep -oE '(tilelang|apache-tvm-ffi)==[^ ]+' "$(dirname "$0")/gpu.yaml")
    [[ ${#pins[@]} == 2 ]] || { echo "envs/gpu.yaml pins tilelang and apache-tvm-ffi: found '${pins[*]}'" >&2; exit 1; }
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --implementation cp \
        --python-version "${SEQARENA_BOX_PYTHON:-3.12}" --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 -d "$SOURCES/wheels" "${pins[@]}"
    ls "$SOURCES"/wheels/*.whl  # the tarballs were named above, by tarball_of
    exit 0
fi

: "${SEQARENA_WORKFLOW_DIR:?is unset: Snakemake exports it (workflow/rules/common.smk)}"
PATH="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')"):$PATH" \
    bash "$SEQARENA_WORKFLOW_DIR/envs/cpu.post-deploy.sh"
torch_build="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
wheels="${SEQARENA_CUDA_WHEELS:-$work/wheels}/torch-$torch_build-sm_${ARCHS//;/-sm_}"

# The wheel of a pinned tag, in the tag's own folder (a wheel's name carries the package's version,
# which may not be the tag's: v1.6.1.post4 builds causal_conv1d 1.6.1), unless built before.
build() {
    local name="$1" dist="$2" repo="$3" version="$4" kept="$wheels/$1-$4"
    if compgen -G "$kept/*.whl" >/dev/null; then
        echo "reusing $dist $version built before: $kept"
        return
    fi
    tar -xzf "$(tarball_of "$name" "$repo" "$version")" -C "$work"
    local src="$work/$name-$version"
    # fails here, before compiling, on an arch nvcc lacks or a torch/nvcc CUDA mismatch
    "$PYTHON" -m seqarena.ops.cuda_build "$src/setup.py" "$ARCHS"
    SECONDS=0
    "$PYTHON" -m pip wheel --no-deps --no-build-isolation --wheel-dir "$kept" "$src"
    echo "built $dist $version for sm_${ARCHS//;/, sm_} in $SECONDS s (MAX_JOBS=$MAX_JOBS)"
}

# Both packages build at once, each into its own log (printed after): neither has enough translation
# units alone to keep 16 cores busy to the end (mamba-ssm 9, causal-conv1d 23 once split), and
# each nvcc needs at most about 1 GiB (benchmarks/README.md). Then both install.
pids=()
for pinned in "${PINNED[@]}"; do
    read -r name dist repo version <<<"$pinned"
    build "$name" "$dist" "$repo" "$version" >"$work/$name.log" 2>&1 &
    pids+=("$!")
done
failed=0
for i in "${!PINNED[@]}"; do
    read -r name dist repo version <<<"${PINNED[$i]}"
    wait "${pids[$i]}" || failed=1
    cat "$work/$name.log"
done
[[ $failed == 0 ]] || exit 1
for pinned in "${PINNED[@]}"; do
    read -r name dist repo version <<<"$pinned"
    "$PYTHON" -m pip install --no-deps --force-reinstall "$wheels/$name-$version"/*.whl
    echo "installed $dist $version"
done
if "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    "$PYTHON" -c "import mamba_ssm, causal_conv1d; print('built mamba_ssm', mamba_ssm.__version__)"
else
    echo "no GPU here: the built extensions compile but cannot be imported (they need the CUDA driver)"
fi
