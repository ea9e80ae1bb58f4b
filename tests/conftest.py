"""Test-wide setup: no test may reach the network; shared data is read from ../shared/data."""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# The (op, backend) rows that the kernel benchmark writes on a CPU, at every length.
KERNEL_ROWS = (
    ("scan", "cpp"),
    ("scan", "pytorch-parallel"),
    ("conv", "fft"),
    ("ssd", "cpp"),
    ("mamba3", "cpp"),
    ("attention", "sdpa"),
)


def pytest_collection_modifyitems(items):
    """The pipeline tests first: the longest file by minutes (one Snakemake run after another), which
    `make test`'s workers, given a file at a time in this order, would otherwise reach only after
    the 17 files before it alphabetically."""
    items.sort(key=lambda item: item.path.name != "test_pipeline.py")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (the repo's ../shared/data)")
    return SHARED_DATA


@pytest.fixture
def cuda_sources() -> Path:
    """The pinned CUDA source tarballs (the GPU env's builds), in the repo's ../shared/cuda-sources."""
    folder = SHARED_DATA.parent / "cuda-sources"
    if not folder.is_dir():
        pytest.skip(f"the pinned CUDA source tarballs are not at {folder} (the repo's ../shared)")
    return folder


@pytest.fixture(scope="session")
def slurm_profile(tmp_path_factory) -> Path:
    """profiles/slurm as it is but for its conda deployment, which it must ask for (a user's jobs
    run in the pinned envs): these machines have no conda, and Snakemake with it calls `conda info`
    even to plan (README, "Conda")."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert profile.pop("software-deployment-method") == "conda"
    folder = tmp_path_factory.mktemp("profile") / "slurm"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


@pytest.fixture(autouse=True)
def _seed_and_clean_backend_env(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.delenv("SEQARENA_SCAN_BACKEND", raising=False)
    monkeypatch.delenv("SEQARENA_DEVICE", raising=False)


def load_module(path: Path, name: str | None = None) -> types.ModuleType:
    """The Python file at ``path`` as a module of its own (named ``name``, else after the file),
    imported afresh on each call."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the benchmarks are scripts, not a package)."""
    return load_module(REPO / "benchmarks" / f"{name}.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, server: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll ``url`` until it answers; fail, naming ``what``, if the server exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.5)


def mlflow_server(port: int, folder: Path, workers: int = 1) -> subprocess.Popen:
    """A real tracking server on loopback, serving once this returns; its sqlite store and its
    artifacts in ``folder`` (also for benchmarks/tracking_writers.py)."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_until_serving(f"http://127.0.0.1:{port}/health", server, 120, "mlflow server")
    return server


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def write_multiple_choice_task(
    folder: Path, name: str, docs: list[dict], doc_to_text: str, choices: str
) -> Path:
    """A local lm-eval multiple-choice task: docs in a jsonl file, the YAML beside it (acc, acc_norm)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / f"{name}.yaml").write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / f"{name}.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{doc_to_text}"
doc_to_target: label
doc_to_choice: "{choices}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    return folder


def write_pile_shards(folder: Path, texts: list[str], shards: int, set_name: str = "Pile-CC") -> None:
    """The Pile's own on-disk format: texts split in order over jsonl.zst shards of {"text", "meta"}."""
    import zstandard

    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(texts) // shards)
    for shard in range(shards):
        records = texts[shard * per_shard : (shard + 1) * per_shard]
        lines = "".join(json.dumps({"text": t, "meta": {"pile_set_name": set_name}}) + "\n" for t in records)
        (folder / f"{shard:02d}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))


def write_pipeline_config(tmp_path: Path, **overrides) -> Path:
    """A tiny pipeline config: the shipped Tiny Shakespeare, three tiny models (Mamba-1, Transformer++
    and Mamba-3, which transformers cannot export; the other families run through the same rules:
    test_bench, test_mamba2, test_synthetic), a local task and a shipped one, a few steps."""
    docs = [
        {"goal": f"To open jar {i},", "sol1": "twist the lid.", "sol2": "sing to it.", "label": i % 2}
        for i in range(12)
    ]
    tasks = write_multiple_choice_task(
        tmp_path / "tasks", "local_piqa", docs, "Question: {{goal}}\\nAnswer:", "{{[sol1, sol2]}}"
    )
    config = {
        "results": str(tmp_path / "results"),
        "data": {
            "shakespeare": {
                "source": {"kind": "embedded", "path": "tinyshakespeare.txt.gz"},
                "tokenizer": {"kind": "bpe", "vocab_size": 512},
            }
        },
        "models": ["mamba-tiny", "transformer-tiny", "mamba3-tiny"],
        "train": {
            "dataset": "shakespeare",
            "steps": 4,
            "batch_tokens": 512,
            "micro_batch": 4,
            "seq_len": 64,
            "eval_interval": 2,
            "ckpt_interval": 100,
        },
        "bench": {
            "kernels": {"lengths": [32, 64, 128], "dim": 32, "repeats": 1},
            "generation": {"prompt_len": 16, "new_tokens": 4, "batch_sizes": [1, 2], "repeats": 1},
            "training": {"steps": 2, "seq_len": 32, "micro_batch": 2, "vocab_size": 512},
        },
        "eval": {
            "tasks": ["local_piqa", "piqa_embedded"],
            "include_path": str(tasks),
            "limit": 12,
            "batch_size": 4,
            "pretrained": [],
        },
        # every task of the default (a config file's dict merges into the default's, so each is set),
        # one arch through the stage (test_synthetic trains and scores every family in-process)
        "synthetic": {
            "archs": ["mamba"],
            "tasks": {
                "selective_copying": {
                    "d_model": [16],
                    "length": 16,
                    "n_data": 4,
                    "steps": 4,
                    "eval_sequences": 8,
                },
                "induction_heads": {
                    "d_model": [16],
                    "length": 16,
                    "steps": 4,
                    "test_lengths": [16, 64],
                    "eval_sequences": 8,
                },
                "mqar": {"d_model": [16], "length": 16, "n_pairs": 4, "steps": 4, "eval_sequences": 8},
            },
        },
        **overrides,
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
