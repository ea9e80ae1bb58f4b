#!/usr/bin/env bash
# Snakemake runs this once, inside the new CPU env: install seqarena itself (its dependencies
# are pinned in cpu.yaml) from the workflow's folder, which the pipeline exports as
# SEQARENA_WORKFLOW_DIR. Editable, so a change to the checkout needs no new env.
set -euo pipefail
: "${SEQARENA_WORKFLOW_DIR:?is unset: Snakemake exports it (workflow/rules/common.smk)}"
python -m pip install --no-deps --no-build-isolation -e "$SEQARENA_WORKFLOW_DIR"
seqarena --help >/dev/null
echo "installed seqarena from $SEQARENA_WORKFLOW_DIR"
