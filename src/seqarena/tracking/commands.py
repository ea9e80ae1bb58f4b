"""The tracking store's commands: create it, send what training journaled, browse it."""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from seqarena.options import option
from seqarena.tracking.journal import replay_journal
from seqarena.tracking.runs import finish_training_run
from seqarena.tracking.store import client_for, default_uri, init_store


@dataclass
class InitConfig:
    uri: str = option("", help="tracking URI (default: sqlite:///<results>/mlflow.db)")
    results: str = "results"


def init_command(cfg: InitConfig) -> None:
    """Create the tracking database once, before parallel jobs."""
    print(f"tracking store ready: {init_store(cfg.uri or default_uri(cfg.results))}")


@dataclass
class SyncConfig:
    journals: list[str] = option(
        help="mlflow-journal.jsonl files (in results/train/<model>/)", positional=True
    )


def sync_command(cfg: SyncConfig) -> None:
    """Send what training journaled while the tracking store did not answer; where the training
    finished meanwhile (summary.json beside the journal), its outputs too, and end the run."""
    for journal in map(Path, cfg.journals):
        if not journal.is_file():
            sys.exit(f"{journal}: no such journal (nothing left to send, or another path)")
        for (uri, run_id), rows in replay_journal(journal).items():
            print(f"{journal}: {rows} metric rows sent to run {run_id} at {uri}")
            if (journal.parent / "summary.json").is_file():
                finish_training_run(client_for(uri), run_id, journal.parent)
                print(f"run {run_id}: outputs logged, run FINISHED")


@dataclass
class UiConfig:
    results: str = option("results", help="serves sqlite:///<results>/mlflow.db")
    tracking_uri: str = option("", help="another store instead")
    host: str = option("127.0.0.1", help="0.0.0.0 exposes it to the network")
    port: int = 5000


def ui_command(cfg: UiConfig) -> None:
    """The MLflow UI on the pipeline's tracking store, bound to loopback unless --host says otherwise."""
    uri = cfg.tracking_uri or default_uri(cfg.results)
    print(f"MLflow UI for {uri} on http://{cfg.host}:{cfg.port}", flush=True)
    mlflow = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    os.execv(sys.executable, [*mlflow, "--host", cfg.host, "--port", str(cfg.port)])
