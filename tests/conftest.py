"""Test-wide setup: no test may reach the network; shared data is read from ../shared/data."""

import json
import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (the repo's ../shared/data)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed_and_clean_backend_env(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.delenv("SEQARENA_SCAN_BACKEND", raising=False)


def write_multiple_choice_task(
    folder: Path, name: str, docs: list[dict], doc_to_text: str, choices: str
) -> Path:
    """A local lm-eval multiple-choice task: docs in a jsonl file, the YAML beside it (acc metric)."""
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
""")
    return folder
