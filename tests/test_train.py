"""Training: learning, exact resume after SIGKILL, DDP on CPU, MLflow under concurrency and over HTTP."""

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import SHARED_DATA, free_port, mlflow_server, stop_server
from seqarena.checkpoints import CheckpointStore
from seqarena.data import Source, download, tokenize
from seqarena.models import build_model, from_pretrained
from seqarena.training import StopSignals, TrainConfig, TrainingDiverged, train
from seqarena.training.optim import lr_at, no_decay_names, param_groups
from seqarena.training.parallel import Distributed

DETERMINISTIC = ("step", "tokens", "loss", "lr", "grad_norm", "val_loss")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (the repo's ../shared/data)")
    root = tmp_path_factory.mktemp("data")
    raw = download(Source(kind="local", path=str(SHARED_DATA / "tinyshakespeare.txt")), root / "raw")
    tokenize(raw, root / "shakespeare", "bpe", vocab_size=512)
    return root / "shakespeare"


def config(data, out, **overrides) -> TrainConfig:
    base = dict(
        model="mamba-tiny",
        data=str(data),
        out=str(out),
        steps=30,
        batch_tokens=1024,
        micro_batch=8,
        seq_len=64,
        eval_interval=10,
        eval_windows=16,
        ckpt_interval=10,
        tracking_uri="none",
    )
    return TrainConfig(**{**base, **overrides})


def cli_args(cfg: TrainConfig) -> list[str]:
    args = []
    for key, value in vars(cfg).items():
        if isinstance(value, bool):
            args += [f"--{key.replace('_', '-')}"] if value else []
        elif value not in ("", None):
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def seqarena(*args, **popen):
    return subprocess.Popen([sys.executable, "-m", "seqarena.cli", *args], **popen)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", ["mamba-tiny", "transformer-tiny"])
def test_tiny_models_learn_shakespeare(shakespeare, tmp_path, model):
    summary = train(config(shakespeare, tmp_path / model, model=model, steps=60, eval_interval=20))
    vals = [r["val_loss"] for r in metrics(tmp_path / model) if "val_loss" in r]
    assert len(vals) == 3 and vals[0] > vals[-1]
    assert summary["final_val_loss"] == vals[-1] < math.log(512) - 1.2  # well below uniform guessing
    assert summary["tokens"] == 60 * 1024 and summary["steps"] == 60
    assert summary["scan_backend"] == ("cpp" if model.startswith("mamba") else None)
    loaded = from_pretrained(tmp_path / model)
    assert loaded.config.vocab_size == 512 and loaded.num_parameters() == summary["parameters"]
    assert (tmp_path / model / "tokenizer.json").read_bytes() == (shakespeare / "tokenizer.json").read_bytes()
    assert (tmp_path / model / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def uninterrupted(shakespeare, tmp_path_factory):
    """The 24-step run that every interrupted one must end equal to."""
    out = tmp_path_factory.mktemp("uninterrupted")
    assert (
        seqarena(
            "train",
            *cli_args(config(shakespeare, out, steps=24, ckpt_interval=5, eval_interval=8)),
            stderr=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        ).wait(timeout=300)
        == 0
    )
    return out


def test_sigkill_at_any_moment_then_resume_is_bit_identical(shakespeare, tmp_path, uninterrupted):
    from mlflow.tracking import MlflowClient

    def cfg(name):
        uri = f"sqlite:///{tmp_path / name}.db"
        return config(
            shakespeare, tmp_path / name, steps=24, ckpt_interval=5, eval_interval=8, tracking_uri=uri
        )

    out = tmp_path / "killed"
    kill_after = random.Random().randint(6, 21)  # past the first checkpoint, before the end
    job = seqarena("train", *cli_args(cfg("killed")), stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= kill_after):
        assert job.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL
    assert not (out / "summary.json").exists() and not (out / "model.safetensors").exists()
    assert seqarena("train", *cli_args(cfg("killed")), stderr=subprocess.DEVNULL).wait(timeout=300) == 0

    ref_dir = uninterrupted
    assert (out / "model.safetensors").read_bytes() == (ref_dir / "model.safetensors").read_bytes()
    strip = [{k: r[k] for k in DETERMINISTIC if k in r} for r in metrics(out)]
    assert strip == [{k: r[k] for k in DETERMINISTIC if k in r} for r in metrics(ref_dir)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_val_loss"] == json.loads((ref_dir / "summary.json").read_text())["final_val_loss"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'killed'}.db")
    runs = client.search_runs([client.get_experiment_by_name("seqarena").experiment_id])
    assert [r.info.run_id for r in runs] == [summary["mlflow_run_id"]]  # the resume continued the run
    steps = [m.step for m in client.get_metric_history(summary["mlflow_run_id"], "train/loss")]
    assert sorted(steps) == list(range(1, 25))  # every step once: none lost, none twice


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_torchrun_matches_one_process(shakespeare, tmp_path, parallel):
    common = dict(
        steps=6, batch_tokens=512, micro_batch=4, eval_interval=3, ckpt_interval=4, peak_tflops=100.0
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = seqarena(
        "train",
        *cli_args(config(shakespeare, tmp_path / "one", **common)),
        env=env,
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    assert single.wait(timeout=300) == 0
    # FSDP with each block's activations recomputed (as the paper config trains its large sizes)
    checkpointing = parallel == "fsdp"
    two_cfg = config(
        shakespeare, tmp_path / "two", parallel=parallel, activation_checkpointing=checkpointing, **common
    )
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "seqarena.cli",
            "train",
            *cli_args(two_cfg),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == len(two) == 6
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    summaries = {n: json.loads((tmp_path / n / "summary.json").read_text()) for n in ("one", "two")}
    assert summaries["two"]["processes"] == 2
    for name, processes in (("one", 1), ("two", 2)):  # MFU per device: the world's rate over its peaks
        summary = summaries[name]
        assert summary["mfu"] == pytest.approx(summary["achieved_tflops"] / (100.0 * processes))
    # the checkpoint at step 4 holds full (gathered) state: it loads into one process
    state = torch.load(tmp_path / "two" / "ckpt" / "step_00000004.pt", weights_only=False)["model"]
    assert state.keys() == build_model("mamba-tiny", vocab_size=512).state_dict().keys()
    assert (
        from_pretrained(tmp_path / "two").num_parameters()
        == from_pretrained(tmp_path / "one").num_parameters()
    )


def test_six_concurrent_writers_on_a_fresh_sqlite_db(shakespeare, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    models = [f"{arch}-{size}" for arch in ("mamba", "transformer") for size in ("tiny", "mini", "small")]
    jobs = [
        seqarena(
            "train",
            *cli_args(
                config(
                    shakespeare,
                    tmp_path / m,
                    model=m,
                    steps=6,
                    batch_tokens=64,
                    micro_batch=2,
                    seq_len=32,
                    eval_interval=3,
                    eval_windows=2,
                    ckpt_interval=100,
                    tracking_uri=uri,
                )
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in models
    ]
    for job in jobs:
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("seqarena").experiment_id])
    assert sorted(r.data.tags["seqarena.model_id"] for r in runs) == sorted(models)
    for run in runs:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [
            1,
            2,
            3,
            4,
            5,
            6,
        ]
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/loss")) == [3, 6]
        assert run.data.params["resolved.steps"] == "6"


OPEN_RUN_AT = """
import sys, time
import mlflow.tracking
from seqarena.tracking import ModelRun
uri, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # every process opens the run at the same moment
ModelRun(uri, "seqarena", "race")
"""


def test_remote_tracking_server_receives_the_run(shakespeare, tmp_path):
    from mlflow.tracking import MlflowClient

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = mlflow_server(port, tmp_path)
    try:
        summary = train(config(shakespeare, tmp_path / "out", steps=4, eval_interval=2, tracking_uri=uri))
        client = MlflowClient(uri)
        run = client.get_run(summary["mlflow_run_id"])
        assert run.data.tags["seqarena.model_id"] == "mamba-tiny"
        assert run.data.tags["seqarena.tracking"] == "server"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"summary.json", "loss_curve.png"}

        # stages of one model (train, bench_training) that start together share one run
        start = time.time() + 10  # after every interpreter has imported mlflow
        jobs = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_RUN_AT, uri, str(start)], stderr=subprocess.PIPE, text=True
            )
            for _ in range(6)
        ]
        for job in jobs:
            _, err = job.communicate(timeout=120)
            assert job.returncode == 0, err[-3000:]
        runs = client.search_runs([run.info.experiment_id], "tags.`seqarena.model_id` = 'race'")
        assert len(runs) == 1
    finally:
        stop_server(server)


def test_a_tracking_server_that_goes_away_mid_training_loses_and_duplicates_nothing(shakespeare, tmp_path):
    """The server is stopped after a few steps and, once training has found it gone, started again
    (training paused meanwhile, so it cannot finish first): the steps logged while it was away
    wait in the journal and arrive, once each. Then, once they have, it goes away again (training
    paused again) until training ends, and `seqarena tracking sync` sends the rest and ends the
    run."""
    from mlflow.tracking import MlflowClient

    port = free_port()
    uri, out = f"http://127.0.0.1:{port}", tmp_path / "out"
    journal = out / "mlflow-journal.jsonl"
    cfg = config(shakespeare, out, steps=40, ckpt_interval=2, eval_interval=20, tracking_uri=uri)
    server = mlflow_server(port, tmp_path)
    impatient = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # each refused call fails at once
    job = seqarena(
        "train", *cli_args(cfg), env=impatient, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )

    def wait_for(done):
        deadline = time.monotonic() + 300
        while not done():
            assert job.poll() is None and time.monotonic() < deadline, "training ended too soon"
            time.sleep(0.02)

    def journaled_steps() -> set[int]:
        lines = journal.read_text().splitlines() if journal.is_file() else []
        return {json.loads(line)["row"][2] for line in lines if line.endswith("}")}  # not one half-written

    wait_for(lambda: (out / "metrics.jsonl").is_file() and len(metrics(out)) >= 4)
    stop_server(server)
    # a second checkpoint's steps joined the first's in the journal: training found the server gone
    # (the journal alone may be a send caught in flight, which would go out once training resumes)
    wait_for(lambda: len(journaled_steps()) > cfg.ckpt_interval)
    job.send_signal(signal.SIGSTOP)
    assert journal.is_file()  # the steps since the server went away
    server = mlflow_server(port, tmp_path)
    job.send_signal(signal.SIGCONT)
    wait_for(lambda: not journal.exists())  # sent, the server answering again
    job.send_signal(signal.SIGSTOP)
    stop_server(server)
    job.send_signal(signal.SIGCONT)
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr[-3000:]
    assert "does not answer" in stderr and "answers again" in stderr and "tracking sync" in stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 40 and journal.is_file()

    server = mlflow_server(port, tmp_path)
    try:
        sync = subprocess.run(
            [sys.executable, "-m", "seqarena.cli", "tracking", "sync", str(journal)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sync.returncode == 0, sync.stderr[-3000:]
        assert not journal.exists()
        client = MlflowClient(uri)
        run = client.get_run(json.loads((out / "summary.json").read_text())["mlflow_run_id"])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, 41))  # none lost, none twice
        assert [m.step for m in client.get_metric_history(run.info.run_id, "final/val_loss")] == [40]
        assert run.info.status == "FINISHED"
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"summary.json", "loss_curve.png"}
    finally:
        stop_server(server)


def test_divergence_stops_clearly_and_keeps_the_last_good_checkpoint(shakespeare, tmp_path):
    cfg = config(shakespeare, tmp_path, model="transformer-tiny", steps=40, lr=1e5, warmup=0, ckpt_interval=1)
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at step \d+.*last good checkpoint"):
        train(cfg)
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "model.safetensors").exists()
    assert list((tmp_path / "ckpt").glob("step_*.pt"))


def test_bad_config_is_refused_naming_the_key(shakespeare, tmp_path):
    with pytest.raises(ValueError, match="batch_tokens=1000 is not a multiple"):
        train(config(shakespeare, tmp_path, batch_tokens=1000))
    with pytest.raises(ValueError, match="steps, tokens and lr must not be negative"):
        config(shakespeare, tmp_path, steps=-1)
    with pytest.raises(ValueError, match="min_lr must not be negative, not -1e-05"):
        config(shakespeare, tmp_path, min_lr=-1e-5)
    with pytest.raises(ValueError, match="unknown architecture 'gpt'"):
        config(shakespeare, tmp_path, model="gpt-tiny")
    with pytest.raises(FileNotFoundError, match="meta.json not found"):
        train(config(tmp_path / "nowhere", tmp_path))
    assert not (tmp_path / "summary.json").exists()


def test_schedule_and_weight_decay_groups(tmp_path):
    cfg = config(tmp_path, tmp_path, warmup=0.1, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, cfg, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup over 10 steps
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))  # then only down
    assert lrs[-1] == pytest.approx(0.1)  # to the floor
    paper = config(tmp_path, tmp_path, warmup=0.1, min_lr_ratio=0.1, min_lr=1e-5)  # an absolute floor wins
    assert lr_at(99, 100, paper, 3e-3) == pytest.approx(1e-5) and lr_at(9, 100, paper, 3e-3) == 3e-3
    model = build_model("mamba-tiny", vocab_size=64)
    decay, no_decay = param_groups(model, 0.1, no_decay_names(model))
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].split(".")[-1] for p in no_decay["params"]} == {"weight", "bias", "A_log", "D"}
    assert all(p.dim() == 1 or names[id(p)].endswith("A_log") for p in no_decay["params"])
    assert model.backbone.embedding.weight in [p for p in decay["params"]]
    assert all(p.dim() >= 2 for p in decay["params"]) and torch.is_tensor(decay["params"][0])


def test_fsdp_sharded_parameters_keep_their_no_decay_group(tmp_path):
    """FSDP2's DTensor parameters lose ``_no_weight_decay``: the groups are decided by name before."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    model = build_model("mamba-tiny", vocab_size=64)
    unsharded = [
        [name for name, p in model.named_parameters() if any(p is q for q in group["params"])]
        for group in param_groups(model, 0.1, no_decay_names(model))
    ]
    no_decay = no_decay_names(model)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for layer in model.backbone.layers:
            fully_shard(layer)
        fully_shard(model)
        groups = param_groups(model, 0.1, no_decay)
        sharded = [
            [name for name, p in model.named_parameters() if any(p is q for q in group["params"])]
            for group in groups
        ]
        assert all(type(p).__name__ == "DTensor" for p in groups[1]["params"])
    finally:
        dist.destroy_process_group()
    assert sharded == unsharded and len(sharded[1]) > 0
    assert any(name.endswith("A_log") for name in sharded[1]) and [g["weight_decay"] for g in groups] == [
        0.1,
        0,
    ]


def test_a_changed_config_starts_fresh_instead_of_resuming_a_stale_checkpoint(shakespeare, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = config(shakespeare, tmp_path / "run", steps=4, lr=1e-3, ckpt_interval=2, tracking_uri=uri)
    train(first)
    assert (tmp_path / "run/ckpt/step_00000002.pt").is_file()
    changed = config(shakespeare, tmp_path / "run", steps=6, lr=5e-2, ckpt_interval=2, tracking_uri=uri)
    log = subprocess.run(
        [sys.executable, "-m", "seqarena.cli", "train", *cli_args(changed)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert log.returncode == 0, log.stderr[-3000:]
    assert "not resuming from" in log.stdout and "lr: 0.001 -> 0.05" in log.stdout
    assert "steps: 4 -> 6" in log.stdout and "resuming from" not in log.stdout.replace("not resuming", "")
    assert (tmp_path / "run/ckpt.discarded/step_00000002.pt").is_file()  # moved aside, not deleted
    fresh = config(shakespeare, tmp_path / "fresh", steps=6, lr=5e-2, ckpt_interval=2)
    train(fresh)
    strip = [{k: r[k] for k in DETERMINISTIC if k in r} for r in metrics(tmp_path / "run")]
    assert strip == [{k: r[k] for k in DETERMINISTIC if k in r} for r in metrics(tmp_path / "fresh")]
    client = MlflowClient(uri)
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    steps = [m.step for m in client.get_metric_history(summary["mlflow_run_id"], "train/loss")]
    assert sorted(steps) == list(range(1, 7))  # the new config's run has every one of its steps

    # --force-restart starts over, in a run of its own
    restart = [sys.executable, "-m", "seqarena.cli", "train", *cli_args(changed), "--force-restart"]
    again = subprocess.run(restart, capture_output=True, text=True, timeout=300)
    assert (
        again.returncode == 0 and "not resuming from" in again.stdout and "(--force-restart)" in again.stdout
    )
    runs = client.search_runs([client.get_experiment_by_name("seqarena").experiment_id])
    assert len(runs) == 3


def test_a_repeat_at_another_seed_is_a_run_of_its_own(shakespeare, tmp_path):
    """train.seeds: the same model id trained at seed 1 beside its own run, as the pipeline names it."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    own = train(config(shakespeare, tmp_path / "mamba-tiny", steps=2, tracking_uri=uri))
    repeat = train(
        config(
            shakespeare,
            tmp_path / "mamba-tiny/seed1",
            steps=2,
            tracking_uri=uri,
            seed=1,
            run_name="mamba-tiny/seed1",
        )
    )
    assert (own["seed"], repeat["seed"]) == (0, 1) and own["final_val_loss"] != repeat["final_val_loss"]
    client = MlflowClient(uri)
    runs = {
        run.info.run_name: run
        for run in client.search_runs([client.get_experiment_by_name("seqarena").experiment_id])
    }
    assert sorted(runs) == ["mamba-tiny", "mamba-tiny/seed1"]
    assert runs["mamba-tiny/seed1"].info.run_id == repeat["mlflow_run_id"] != own["mlflow_run_id"]
    assert runs["mamba-tiny/seed1"].data.tags["seqarena.seed"] == "1"
    assert runs["mamba-tiny/seed1"].data.params["train.seed"] == "1"


def test_keep_checkpoints_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep_checkpoints must be positive, not 0"):
        config(tmp_path, tmp_path, keep_checkpoints=0)


class _Payload:
    """A pickle that would run code when loaded with weights_only=False."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_that_would_run_code_is_never_unpickled(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    store.save(
        3, {"model": {}, "step": 3, "payload": _Payload()}
    )  # its manifest matches: only loading stops it
    assert store.newest() == (None, None)
    assert not (tmp_path / "pwned").exists()
    assert "step_00000003.pt: it does not load as data (UnpicklingError" in capsys.readouterr().err


def test_a_stop_signal_checkpoints_the_current_step_and_the_rerun_ends_equal(
    shakespeare, tmp_path, uninterrupted
):
    """SIGTERM (scancel, SLURM's time limit): the step in flight finishes, is checkpointed and
    logged, the process exits 75; the same command resumes from that step."""
    stop_signal = signal.SIGTERM
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg, out = (
        config(shakespeare, tmp_path / "run", steps=24, ckpt_interval=5, eval_interval=8, tracking_uri=uri),
        tmp_path / "run",
    )
    job = seqarena("train", *cli_args(cfg), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 300
    while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 7):  # past the step-5 checkpoint
        assert job.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
        time.sleep(0.02)
    job.send_signal(stop_signal)
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 75, stderr[-2000:]
    stopped_at = len(metrics(out))
    assert 7 <= stopped_at < 24
    assert f"stopped by {stop_signal.name} after step {stopped_at} of 24" in stderr
    assert CheckpointStore(out / "ckpt", keep=2).newest()[1]["step"] == stopped_at  # not the step-5 one
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seqarena").experiment_id])
    assert run.info.status == "KILLED"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == stopped_at  # flushed

    assert (
        seqarena("train", *cli_args(cfg), stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL).wait(300) == 0
    )
    assert (out / "model.safetensors").read_bytes() == (uninterrupted / "model.safetensors").read_bytes()
    assert [{k: r[k] for k in DETERMINISTIC if k in r} for r in metrics(out)] == [
        {k: r[k] for k in DETERMINISTIC if k in r} for r in metrics(uninterrupted)
    ]
    (run,) = client.search_runs([client.get_experiment_by_name("seqarena").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == list(
        range(1, 25)
    )


def test_sigusr1_and_sigint_ask_for_the_same_stop_and_a_second_sigint_stops_at_once():
    for stop_signal in (signal.SIGUSR1, signal.SIGINT):
        with StopSignals() as stop:
            os.kill(os.getpid(), stop_signal)
            assert stop.received == stop_signal.name and stop.requested(Distributed())
    with StopSignals() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # handlers restored


def test_a_damaged_newest_checkpoint_is_named_and_skipped_for_the_one_before(
    shakespeare, tmp_path, uninterrupted
):
    """Step 20's checkpoint truncated on disk: the rerun says so and resumes from step 15."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted / "ckpt", out / "ckpt")
    newest = out / "ckpt/step_00000020.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    cfg = config(shakespeare, out, steps=24, ckpt_interval=5, eval_interval=8)
    done = subprocess.run(
        [sys.executable, "-m", "seqarena.cli", "train", *cli_args(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"skipping checkpoint {newest}: it has" in done.stderr and "(truncated?)" in done.stderr
    assert "resuming from" in done.stdout and "step_00000015.pt at step 15" in done.stdout
    assert (out / "model.safetensors").read_bytes() == (uninterrupted / "model.safetensors").read_bytes()


def test_the_checkpoint_store_skips_flipped_bytes_and_a_missing_manifest_naming_each(tmp_path, capsys):
    store = CheckpointStore(tmp_path / "ckpt", keep=3)
    for step in (1, 2, 3):
        store.save(step, {"step": step, "weights": torch.full((256,), float(step))})
    third, second = tmp_path / "ckpt/step_00000003.pt", tmp_path / "ckpt/step_00000002.pt"
    data = bytearray(third.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte different
    third.write_bytes(bytes(data))
    second.with_suffix(".json").unlink()  # as if killed between the file and its manifest
    path, state = store.newest()
    assert path.name == "step_00000001.pt" and torch.equal(state["weights"], torch.full((256,), 1.0))
    err = capsys.readouterr().err
    assert f"skipping checkpoint {third}: its sha256 differs from its manifest's" in err
    assert f"skipping checkpoint {second}: it has no manifest step_00000002.json" in err
    store.save(4, {"step": 4})
    kept = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert kept == [
        "step_00000002.pt",
        "step_00000003.json",
        "step_00000003.pt",
        "step_00000004.json",
        "step_00000004.pt",
    ]


def test_a_checkpoint_is_hashed_as_it_is_written_not_read_back(tmp_path, monkeypatch):
    """A stop signal's checkpoint must finish within torchrun's and SLURM's grace: at 2.8B the state
    is about 34 GB, and reading it back for its sha256 doubled the time on disk."""
    import hashlib

    import seqarena.checkpoints

    def no_reading(path):
        raise AssertionError(f"{path} was read back")

    monkeypatch.setattr(seqarena.checkpoints, "sha256_file", no_reading)
    path = CheckpointStore(tmp_path, keep=1).save(7, {"weights": torch.randn(4096)})
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["bytes"] == path.stat().st_size


def test_a_full_disk_fails_naming_the_checkpoint_and_keeps_the_one_before(
    shakespeare, tmp_path, uninterrupted
):
    """A file-size limit (RLIMIT_FSIZE) just under one checkpoint: resuming at step 15 reads fine,
    writing step 20's fails, naming it; step 15's stays whole and no temporary file is left."""
    import resource

    out = tmp_path / "run"
    (out / "ckpt").mkdir(parents=True)
    for name in ("step_00000015.pt", "step_00000015.json"):
        shutil.copy(uninterrupted / "ckpt" / name, out / "ckpt" / name)
    limit = (out / "ckpt/step_00000015.pt").stat().st_size - 1

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cfg = config(shakespeare, out, steps=24, ckpt_interval=5, eval_interval=8)
    command = [sys.executable, "-m", "seqarena.cli", "train", *cli_args(cfg)]
    done = subprocess.run(command, preexec_fn=small_disk, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "at step 15" in done.stdout
    assert f"OSError: could not write {out / 'ckpt/step_00000020.pt'}: " in done.stderr, done.stderr[-2000:]
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["step_00000015.json", "step_00000015.pt"]
    assert CheckpointStore(out / "ckpt", keep=2).newest()[1]["step"] == 15
    assert [r["step"] for r in metrics(out)] == list(range(1, 21))


def test_token_files_that_changed_after_tokenizing_are_named_before_training(shakespeare, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shakespeare, data)
    with open(data / "train.bin", "r+b") as f:
        f.write(b"\xff\xff")  # same size, other tokens: only the sha256 tells
    train(config(data, tmp_path / "size-only", steps=1, eval_interval=1))  # the cheap check passes
    with pytest.raises(ValueError, match=rf"{data / 'train.bin'}: its sha256 differs from meta.json's"):
        train(config(data, tmp_path / "verified", steps=1, verify_data=True))
    with open(data / "val.bin", "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(ValueError, match=rf"{data / 'val.bin'} has \d+ bytes, but meta.json records"):
        train(config(data, tmp_path / "grown", steps=1))
    assert not (tmp_path / "grown").exists() and not (tmp_path / "verified").exists()


def test_deterministic_training_turns_on_the_switch_that_mamba_ssms_kernels_read_and_restores_it(
    shakespeare, tmp_path
):
    from mamba_ssm_reference import mamba_ssm_on_cpu
    from seqarena.training.trainer import deterministic_algorithms

    summary = train(config(shakespeare, tmp_path / "run", steps=4, deterministic=True))
    assert summary["deterministic"] and not torch.are_deterministic_algorithms_enabled()
    plain = train(config(shakespeare, tmp_path / "plain", steps=4))
    assert not plain["deterministic"]
    with mamba_ssm_on_cpu():
        from mamba_ssm.utils.determinism import use_deterministic_mode

        with deterministic_algorithms(True):
            assert use_deterministic_mode()
        assert not use_deterministic_mode()


def test_a_resume_after_a_resumable_change_continues_the_same_mlflow_run_and_says_what_changed(
    shakespeare, tmp_path
):
    """Stopped at step N, then resumed with other validation settings: one run holds steps 1..end
    once each, a tag names the changes and the step they took effect at, the validation series
    says over how many windows each point was averaged, and the report names the change."""
    from mlflow.tracking import MlflowClient

    from seqarena.report import collect, validation_notes

    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "train/mamba-tiny"
    before = config(shakespeare, out, steps=16, ckpt_interval=50, eval_interval=4, tracking_uri=uri)
    job = seqarena("train", *cli_args(before), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 300
    while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 5):
        assert job.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
        time.sleep(0.02)
    job.send_signal(signal.SIGTERM)
    assert job.wait(300) == 75
    stopped_at = len(metrics(out))
    after = config(
        shakespeare, out, steps=16, ckpt_interval=50, eval_interval=2, eval_windows=8, tracking_uri=uri
    )
    summary = train(after)

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seqarena").experiment_id])
    assert summary["mlflow_run_id"] == run.info.run_id
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == list(
        range(1, 17)
    )
    changes = run.data.tags[f"seqarena.resumed_at_step_{stopped_at}"]
    assert changes == "train.eval_interval: 4 -> 2; train.eval_windows: 16 -> 8"
    windows = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/windows")}
    assert windows == {s: 16 for s in range(4, stopped_at + 1, 4)} | {
        s: 8 for s in range(stopped_at + 1, 17) if s % 2 == 0
    }
    notes = validation_notes(collect(tmp_path))
    assert (
        "**mamba-tiny**: validation loss on 16 windows at steps 4-" in notes
        and "then 8 windows at steps" in notes
    )


def test_a_training_that_starts_at_step_0_gets_a_run_of_its_own_unless_the_newest_holds_no_history(
    shakespeare, tmp_path
):
    """--force-restart without checkpoints (and a plain rerun after a finished run that kept none)
    starts a new run with all of its steps; a run that another stage made first (the training
    benchmark runs beside training) is continued."""
    from mlflow.tracking import MlflowClient

    from seqarena.tracking import log_stage

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "bench.json").write_text("{}")
    log_stage(
        uri,
        "seqarena",
        "mamba-tiny",
        [("bench/training/tokens_per_s", 1.0, 0)],
        tmp_path / "bench.json",
        "bench",
    )
    cfg = config(shakespeare, tmp_path / "run", steps=4, ckpt_interval=50, tracking_uri=uri)
    first = train(cfg)
    again = train(dataclasses.replace(cfg, force_restart=True))
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("seqarena").experiment_id])
    assert len(runs) == 2 and again["mlflow_run_id"] != first["mlflow_run_id"]
    bench_run = client.get_run(first["mlflow_run_id"])
    assert "bench/training/tokens_per_s" in bench_run.data.metrics  # the benchmark's run, continued
    for summary in (first, again):
        steps = [m.step for m in client.get_metric_history(summary["mlflow_run_id"], "train/loss")]
        assert sorted(steps) == [1, 2, 3, 4]


SLOW_CHECKPOINT = """
import os, time
import seqarena.checkpoints as checkpoints

save = checkpoints.CheckpointStore.save


def slow_save(self, step, state):
    time.sleep(float(os.environ["SEQARENA_TEST_SLOW_CHECKPOINT_S"]))
    return save(self, step, state)


checkpoints.CheckpointStore.save = slow_save
"""


def test_a_stop_under_torchrun_finishes_a_checkpoint_that_takes_longer_than_torchruns_default_grace(
    shakespeare, tmp_path
):
    """SIGTERM to `seqarena launch` (torchrun, two processes): the checkpoint of the step in flight
    takes 40 s, past the 30 s after which torchrun used to kill its workers, and is written whole."""
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject/sitecustomize.py").write_text(SLOW_CHECKPOINT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SEQARENA_TEST_SLOW_CHECKPOINT_S": "40"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "inject"), env.get("PYTHONPATH", "")])
    out = tmp_path / "run"
    cfg = config(shakespeare, out, steps=500, batch_tokens=512, micro_batch=4, ckpt_interval=1000)
    job = subprocess.Popen(
        [str(BIN / "seqarena"), "launch", "--nproc-per-node", "2", "--", "train", *cli_args(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 2):
        assert job.poll() is None and time.monotonic() < deadline, "training ended before the signal"
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)  # to torchrun, which passes it on, as SLURM's signal reaches it
    _, stderr = job.communicate(timeout=300)
    (saved,) = (out / "ckpt").glob("step_*.pt")
    store = CheckpointStore(out / "ckpt", keep=2)
    assert store.problem(saved) is None, stderr[-3000:]  # whole, with its manifest
    assert not list((out / "ckpt").glob(".*tmp*")) and "SIGKILL" not in stderr


@pytest.mark.parametrize("model_id", ["mamba-tiny", "hybrid-tiny", "transformer-tiny"])
def test_activation_checkpointing_keeps_the_gradients_and_holds_a_fraction_of_the_activations(model_id):
    """Measured by what autograd saves for the backward pass (saved_tensors_hooks), not estimated."""
    from seqarena.training.parallel import checkpoint_activations

    def loss_grads_and_saved_bytes(model, x):
        saved = []

        def pack(t):
            saved.append(t.nbytes)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()], sum(saved)

    x = torch.randint(0, 64, (4, 129))
    torch.manual_seed(0)
    plain = build_model(model_id, vocab_size=64)
    torch.manual_seed(0)
    checkpointed = build_model(model_id, vocab_size=64)
    checkpoint_activations(checkpointed)
    loss, grads, kept = loss_grads_and_saved_bytes(plain, x)
    loss_c, grads_c, kept_c = loss_grads_and_saved_bytes(checkpointed, x)
    assert loss_c == loss and all(
        torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads, grads_c, strict=True)
    )
    assert kept_c < kept / 3, (kept_c, kept)
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():  # validation and generation run the blocks as they are
        assert torch.equal(checkpointed(x), plain(x))
