"""The paper path rehearsed: config/rehearsal.yaml through profiles/slurm to a live single-node SLURM,
with running jobs cancelled mid-training.

Needs root and Debian's SLURM packages (.ci/run installs them); without them this fails, it
does not skip: a cluster path nobody runs is a cluster path that does not work.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import SHARED_DATA
from rehearsal import write_rehearsal_inputs
from seqarena.report import collect, table3

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SLURM = Path(__file__).with_name("slurm.sh")
REHEARSAL = REPO / "config/rehearsal.yaml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A single-node SLURM cluster for this module: the environment its clients need."""
    state = tmp_path_factory.mktemp("slurm")
    up = subprocess.run(["bash", str(SLURM), "up", str(state)], capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, f"could not start the SLURM test cluster:\n{up.stdout}{up.stderr}"
    yield {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "SLURM_CONF": str(state / "slurm.conf"),
    }
    subprocess.run(["bash", str(SLURM), "down", str(state)], timeout=60)


def squeue(env, *fields) -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", "-o", " ".join(fields)], env=env, capture_output=True, text=True)
    return [line.split() for line in out.stdout.splitlines()]


def single_process_run(cluster, results: Path, model: str, out: Path) -> None:
    """The same training as the pipeline's, in one process and never interrupted, outside SLURM."""
    config = yaml.safe_load(REHEARSAL.read_text())["train"]
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in config.items() if k not in ("dataset", "parallel")]
    subprocess.run(
        [
            str(BIN / "seqarena"),
            "train",
            "--model",
            model,
            "--data",
            str(results / "data/pile"),
            "--out",
            str(out),
            "--tracking-uri",
            "none",
            *flags,
        ],
        env=cluster,
        check=True,
        capture_output=True,
        timeout=600,
    )


def assert_same_training(a: Path, b: Path) -> None:
    """Equal within float tolerance: several processes sum gradients in another order than one, and
    AdamW carries the difference (16 steps: a relative error of about 3e-5 per tensor)."""
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] and len(rows[0]) == 16
    for x, y in zip(*rows, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4) and x["lr"] == y["lr"]
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all((wa[k] - wb[k]).norm() <= 1e-4 * wb[k].norm() for k in wa)


def test_paper_path_rehearsal_through_the_slurm_profile_survives_a_cancelled_training_job(
    cluster, tmp_path, slurm_profile
):
    """config/rehearsal.yaml (the paper's code paths at miniature scale) through profiles/slurm."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DATA}")
    write_rehearsal_inputs(tmp_path)
    command = [
        # the report and all it needs: the paper path (the export to transformers is no cluster matter)
        str(BIN / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "report",
        "--configfile",
        str(REHEARSAL),
        "--workflow-profile",
        str(slurm_profile),
        # the test cluster: one node of two CPUs, no accounting database (so squeue, not sacct)
        "--set-resources",
        "kernels:cpus_per_task=2",
        "train:cpus_per_task=1",
        "train:nodes=1",
        "--set-threads",
        "bench_kernels=2",
        "bench_generation=2",
        "bench_training=2",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--retries",
        "1",
        "--jobs",
        "2",
    ]
    start = time.monotonic()
    run = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=cluster,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        ckpt = tmp_path / "results/train/mamba-tiny/ckpt"
        while not list(ckpt.glob("step_*.pt")):  # training (two processes, FSDP) is running as a SLURM job
            if run.poll() is not None:
                pytest.fail(f"snakemake stopped before training checkpointed:\n{run.stdout.read()[-6000:]}")
            assert time.monotonic() - start < 600, "no training checkpoint appeared in 10 minutes"
            time.sleep(0.2)
        running = [job for job, state in squeue(cluster, "%i", "%t") if state == "R"]
        assert running, "no running SLURM job to cancel"
        subprocess.run(["scancel", *running], env=cluster, check=True)
        output, _ = run.communicate(timeout=1200)
    finally:
        if run.poll() is None:  # never leave the plugin polling for ever
            os.killpg(run.pid, signal.SIGKILL)
    wall = time.monotonic() - start
    assert run.returncode == 0, output[-6000:]
    assert "localrule download:" in output  # on the submitting host, which has the network
    results = tmp_path / "results"
    meta = json.loads((results / "data/pile/meta.json").read_text())
    assert meta["train_tokens"] == 100_000 and meta["vocab_size"] == 50277  # the token budget, GPT-NeoX
    assert "resuming from" in (results / "logs/train/mamba-tiny.log").read_text()  # the retry resumed
    srun = (results / "logs/train/transformer-mini.log").read_text()
    assert "srun --ntasks 2" in srun and "--rdzv-backend c10d" in srun  # two tasks, one rendezvous
    for model in ("mamba-tiny", "transformer-mini"):
        assert json.loads((results / f"train/{model}/summary.json").read_text())["processes"] == 2
    rows = {row["model"]: row for row in table3(collect(results))}
    assert set(rows) == {"mamba-tiny", "transformer-mini", "rehearsal/state-spaces-mamba"}
    assert all(0 <= row["average"] <= 1 for row in rows.values())  # all six tasks, the paper's metrics
    assert "hellaswag (acc_norm)" in rows["rehearsal/state-spaces-mamba"]
    assert (results / "reports/report.html").stat().st_size > 10_000
    print(f"SLURM rehearsal with cancelled and retried jobs: {wall:.0f} s")

    for model in ("mamba-tiny", "transformer-mini"):  # FSDP after a resume; srun + torchrun
        single_process_run(cluster, results, model, tmp_path / "alone" / model)
        assert_same_training(results / f"train/{model}", tmp_path / "alone" / model)
