"""Test-wide setup: no test may reach the network; shared data is read from ../shared/data."""

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
