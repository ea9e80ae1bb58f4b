"""The tracking store's commands: create it, send what training journaled, browse it."""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from seqarena.options import option
from seqarena.tracking.journal import replay_journal
from seqarena.tracking.runs import finish_training_run
from seqarena.tracking.store import client_for, default_uri, init_store, sqlite_path


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
    experiment: str = option("seqarena", help="the experiment whose runs the printed address opens")
    host: str = option("127.0.0.1", help="0.0.0.0 exposes it to the network")
    port: int = 5000
    workers: int = option(1, help="the server's worker processes (MLflow's default: 4)")


def landing_path(uri: str, experiment: str) -> str:
    """The UI's page of the experiment's runs, as a model-training workflow (MLflow 3 otherwise
    opens on the GenAI traces overview); the experiments list where there is no such experiment."""
    found = client_for(uri).get_experiment_by_name(experiment)
    if found is None:
        return "/"
    return f"/#/experiments/{found.experiment_id}/runs?workflowType=machine_learning"


def ui_command(cfg: UiConfig) -> None:
    """The MLflow UI on the pipeline's tracking store, bound to loopback unless --host says otherwise,
    in one worker and without MLflow's GenAI job runner (seven processes seqarena never uses)."""
    uri = cfg.tracking_uri or default_uri(cfg.results)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        sys.exit(f"no tracking store at {db}: the pipeline writes it (or pass --results / --tracking-uri)")
    address = f"http://{cfg.host}:{cfg.port}{landing_path(uri, cfg.experiment)}"
    print(f"MLflow UI for {uri}; the runs of experiment {cfg.experiment!r}: {address}", flush=True)
    mlflow = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--workers", str(cfg.workers)]
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    os.execve(sys.executable, [*mlflow, "--host", cfg.host, "--port", str(cfg.port)], env)
