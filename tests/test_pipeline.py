"""The Snakemake pipeline: lint, format, a real run of the data and train stages, config errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(*args, cwd, timeout=900):
    """The real snakemake, with this environment's `seqarena` on PATH (as an activated venv has it)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def test_lint_and_format_are_clean():
    lint = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Congratulations" in lint.stdout + lint.stderr
    fmt = subprocess.run([str(BIN / "snakefmt"), "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr


def write_config(tmp_path, **overrides) -> Path:
    config = {
        "results": str(tmp_path / "results"),
        "data": {
            "shakespeare": {
                "source": {"kind": "local", "path": str(SHARED_DATA / "tinyshakespeare.txt")},
                "tokenizer": {"kind": "bpe", "vocab_size": 512},
            }
        },
        "models": ["mamba-tiny", "transformer-tiny"],
        "train": {"dataset": "shakespeare", "steps": 4, "batch_tokens": 512, "micro_batch": 4, "seq_len": 64,
                  "eval_interval": 2, "ckpt_interval": 100},
        **overrides,
    }  # fmt: skip
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_data_and_train_stages_run_for_real_then_nothing_to_do(shared_data, tmp_path):
    from mlflow.tracking import MlflowClient

    config = write_config(tmp_path)
    done = snakemake("--configfile", str(config), "--cores", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    results = tmp_path / "results"
    meta = json.loads((results / "data/shakespeare/meta.json").read_text())
    assert meta["vocab_size"] == 512 and meta["train_tokens"] > 100_000
    run_ids = set()
    for model in ("mamba-tiny", "transformer-tiny"):
        summary = json.loads((results / f"train/{model}/summary.json").read_text())
        assert summary["steps"] == 4 and summary["final_val_loss"] < 7.0  # below ln(512) = 6.24 + slack
        assert (results / f"logs/train/{model}.log").is_file()
        assert (results / f"benchmarks/train/{model}.tsv").read_text().startswith("s\t")
        run_ids.add(summary["mlflow_run_id"])
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("seqarena").experiment_id])
    assert {r.info.run_id for r in runs} == run_ids and len(run_ids) == 2

    again = snakemake("--configfile", str(config), "--cores", "2", cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"models": ["rwkv-tiny"]}, "models"),  # schema pattern: the architecture
        ({"models": ["mamba-huge"]}, "config key models\\[0\\]: .*unknown mamba size 'huge'"),
        ({"trian": {}}, "Additional properties are not allowed \\('trian' was unexpected\\)"),
        ({"train": {"dataset": "shakespeare", "steps": -5}}, "-5 is less than the minimum of 0"),
        ({"train": {"dataset": "wiki"}}, "config key train.dataset: 'wiki' is not one of data"),
    ],
)
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, overrides, message):
    import re

    done = snakemake(
        "--configfile", str(write_config(tmp_path, **overrides)), "--cores", "1", "-n", cwd=tmp_path
    )
    assert done.returncode != 0
    assert re.search(message, done.stdout + done.stderr), (done.stdout + done.stderr)[-2000:]
    assert not (tmp_path / "results").exists()
