"""GPU slots: concurrent jobs on one machine get disjoint GPUs (CUDA_VISIBLE_DEVICES), real processes."""

import os
import subprocess
import sys
import time

import pytest

JOB = 'echo "$CUDA_VISIBLE_DEVICES $(date +%s.%N)" > "$0"; sleep {hold}; date +%s.%N >> "$0"'


def start(count: int, record, hold: float, **env):
    environment = {**os.environ, "SEQARENA_GPU_IDS": "0,1,2,3", **env}
    if "CUDA_VISIBLE_DEVICES" not in env:
        environment.pop("CUDA_VISIBLE_DEVICES", None)
    command = [
        sys.executable,
        "-m",
        "seqarena.cli",
        "gpus",
        "--count",
        str(count),
        "--",
        "sh",
        "-c",
        JOB.format(hold=hold),
        str(record),
    ]
    return subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)


def read(record) -> tuple[set[str], float, float]:
    first, end = record.read_text().splitlines()
    gpus, started = first.split()
    return set(gpus.split(",")), float(started), float(end)


def test_jobs_side_by_side_get_gpus_of_their_own_and_wait_for_free_ones(tmp_path):
    a, b = start(2, tmp_path / "a", hold=4), start(2, tmp_path / "b", hold=4)
    deadline = time.monotonic() + 60
    while not ((tmp_path / "a").is_file() and (tmp_path / "b").is_file()):
        assert time.monotonic() < deadline, "the first two jobs never started"
        time.sleep(0.1)
    c = start(3, tmp_path / "c", hold=0)  # all four GPUs are taken: it waits for one of them
    for job in (a, b, c):
        _, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
    (gpus_a, _, end_a), (gpus_b, _, end_b), (gpus_c, start_c, _) = map(
        read, (tmp_path / "a", tmp_path / "b", tmp_path / "c")
    )
    assert gpus_a | gpus_b == {"0", "1", "2", "3"} and not gpus_a & gpus_b
    assert len(gpus_c) == 3 and start_c >= min(end_a, end_b)


def test_an_allocations_gpus_are_kept(tmp_path):
    job = start(1, tmp_path / "slurm", hold=0, CUDA_VISIBLE_DEVICES="5")  # SLURM set it for the job
    assert job.wait(timeout=60) == 0
    assert read(tmp_path / "slurm")[0] == {"5"}


def test_more_gpus_than_the_machine_offers_is_refused_naming_the_key(tmp_path):
    job = start(8, tmp_path / "never", hold=0)
    _, err = job.communicate(timeout=60)
    assert job.returncode != 0 and not (tmp_path / "never").exists()
    assert "asks for 8 GPUs and this machine offers 4" in err and "resources.<stage>.<size>.gpu" in err


@pytest.mark.parametrize("argv", [["gpus", "--count", "1"], ["gpus", "--count", "1", "--"]])
def test_a_missing_command_is_named(argv):
    from seqarena.cli import main

    with pytest.raises(ValueError, match="no command given"):
        main(argv)


def test_launch_lines(monkeypatch):
    from seqarena.launch import command

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert command(1, 1, ["train", "--model", "m"])[1:] == ["-m", "seqarena.cli", "train", "--model", "m"]
    torchrun = command(1, 4, ["train"])
    assert torchrun[1:6] == ["-m", "torch.distributed.run", "--nproc_per_node", "4", "--standalone"]
    with pytest.raises(ValueError, match="srun, inside a SLURM allocation.*resources.train.<size>.nodes"):
        command(2, 8, ["train"])
