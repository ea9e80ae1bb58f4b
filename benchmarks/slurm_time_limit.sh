#!/usr/bin/env bash
# A training job that runs into its SLURM time limit, through profiles/slurm on the single-node
# test cluster (tests/cluster/slurm.sh: root and Debian's SLURM packages, `make slurm`).
# The profile asks SLURM for SIGTERM ahead of the limit (`--signal=TERM@...` in slurm_extra,
# shortened here); the trainer finishes its step, checkpoints it and exits 75; Snakemake's
# retries resubmit the job with a longer time limit, and it resumes from that step.
# Too slow for the suite (SLURM checks time limits about once a minute): run it by hand.
#   PATH=.venv/bin:$PATH benchmarks/slurm_time_limit.sh    prints what happened; exit 0 when it held
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(dirname "$(command -v python)")"
work="$(mktemp -d)"
state="$work/slurm"
bash "$repo/tests/cluster/slurm.sh" up "$state"
trap 'bash "$repo/tests/cluster/slurm.sh" down "$state"' EXIT
export SLURM_CONF="$state/slurm.conf"
cd "$work"
python "$repo/tests/rehearsal.py" "$work"
# One Mamba (with the GPT-NeoX vocabulary), one process, 700 steps: longer than a 2-minute limit.
cat >time-limit.yaml <<'YAML'
models: [mamba-tiny]
train: {tokens: 358400, eval_interval: 1000, ckpt_interval: 1000, keep_checkpoints: 100}
eval: {pretrained: []}
resources: {train: {tiny: {gpu: 1, runtime: 2}}}
YAML
# The profile without its conda deployment: the test cluster's machine has no conda.
mkdir profile && grep -v '^software-deployment-method:' "$repo/profiles/slurm/config.yaml" >profile/config.yaml
SECONDS=0
"$bin/snakemake" --snakefile "$repo/Snakefile" --configfile "$repo/config/rehearsal.yaml" time-limit.yaml \
    --workflow-profile profile \
    --set-resources "train:slurm_extra='--signal=TERM@30'" train:cpus_per_task=1 kernels:cpus_per_task=2 \
    --slurm-status-command squeue --slurm-init-seconds-before-status-checks 2 --retries 2 --jobs 1 \
    results/train/mamba-tiny/summary.json >snakemake.log 2>&1 || { tail -40 snakemake.log; exit 1; }
echo "pipeline done in $SECONDS s; checkpoints: $(ls results/train/mamba-tiny/ckpt | tr '\n' ' ')"
log=results/logs/train/mamba-tiny.log  # the last attempt's
grep -h "resuming from" "$log"
python - <<'PY'
import json, pathlib, sys
from mlflow.tracking import MlflowClient

out = pathlib.Path("results/train/mamba-tiny")
summary = json.loads((out / "summary.json").read_text())
stopped = [int(p.stem[5:]) for p in (out / "ckpt").glob("step_*.pt") if int(p.stem[5:]) % 1000]
client = MlflowClient(f"sqlite:///{pathlib.Path('results/mlflow.db').resolve()}")
steps = sorted(m.step for m in client.get_metric_history(summary["mlflow_run_id"], "train/loss"))
print(f"steps {summary['steps']}; checkpoints written on SIGTERM at steps {sorted(stopped)}; "
      f"MLflow train/loss steps 1..{steps[-1]}, {len(steps)} rows")
sys.exit(not (stopped and steps == list(range(1, summary["steps"] + 1))))
PY
