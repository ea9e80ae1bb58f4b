"""The pipeline submitted through profiles/slurm to a live single-node SLURM, with a job cancelled.

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
from safetensors.torch import load_file

from conftest import SHARED_DATA, write_pipeline_config

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SLURM = Path(__file__).with_name("slurm.sh")
TRAIN = {"dataset": "shakespeare", "steps": 60, "batch_tokens": 512, "micro_batch": 4, "seq_len": 64,
         "eval_interval": 10, "ckpt_interval": 5}  # fmt: skip


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


def test_tiny_pipeline_through_the_slurm_profile_survives_a_cancelled_training_job(cluster, tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DATA}")
    config = write_pipeline_config(
        tmp_path, models=["mamba-tiny"], train=TRAIN, synthetic={"archs": [], "tasks": {}}
    )
    command = [
        str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--configfile", str(config),
        "--workflow-profile", str(REPO / "profiles/slurm"),
        # the test cluster: two CPUs, no accounting database (so squeue, not sacct, for status)
        "--set-resources", "kernels:cpus_per_task=2", "train:cpus_per_task=2",
        "--set-threads", "bench_kernels=2", "bench_generation=2", "bench_training=2",
        "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
        "--retries", "1", "--jobs", "2",
    ]  # fmt: skip
    start = time.monotonic()
    run = subprocess.Popen(command, cwd=tmp_path, env=cluster, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        ckpt = tmp_path / "results/train/mamba-tiny/ckpt"
        while not list(ckpt.glob("step_*.pt")):  # training is running as a SLURM job
            if run.poll() is not None:
                pytest.fail(f"snakemake stopped before training checkpointed:\n{run.stdout.read()[-6000:]}")
            assert time.monotonic() - start < 600, "no training checkpoint appeared in 10 minutes"
            time.sleep(0.2)
        running = [job for job, state in squeue(cluster, "%i", "%t") if state == "R"]
        assert running, "no running SLURM job to cancel"
        subprocess.run(["scancel", *running], env=cluster, check=True)
        output, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:  # never leave the plugin polling for ever
            os.killpg(run.pid, signal.SIGKILL)
    wall = time.monotonic() - start
    assert run.returncode == 0, output[-6000:]
    results = tmp_path / "results"
    assert "resuming from" in (results / "logs/train/mamba-tiny.log").read_text()  # the retry resumed
    assert json.loads((results / "eval/mamba-tiny.json").read_text())["results"]["local_piqa"]["acc"]
    assert (results / "reports/report.html").stat().st_size > 10_000
    print(f"SLURM pipeline with one cancelled and retried training job: {wall:.0f} s")

    # the same training, never interrupted, outside SLURM: identical weights and metrics
    alone = tmp_path / "alone"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TRAIN.items() if k != "dataset"]
    subprocess.run(
        [str(BIN / "seqarena"), "train", "--model", "mamba-tiny", "--data", str(results / "data/shakespeare"),
         "--out", str(alone), "--tracking-uri", "none", *flags],
        env=cluster, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    cluster_run = results / "train/mamba-tiny"
    keys = ("step", "loss", "val_loss", "lr", "grad_norm")  # not the timings

    def metrics(folder):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [{k: row.get(k) for k in keys} for row in rows]

    assert metrics(cluster_run) == metrics(alone) and len(metrics(alone)) >= 60
    a, b = load_file(cluster_run / "model.safetensors"), load_file(alone / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
