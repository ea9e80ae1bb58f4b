"""The tracking store: one sqlite file (the default) or a server, made safe under parallel writers.

Two facts shape this module: MLflow creates and migrates the sqlite schema on first use, and
parallel first-time writers to a fresh database fail (so store creation is serialised with a file
lock); and many writers to one sqlite file hit "database is locked" (so every call retries with
backoff, and no metric is lost).
"""

import fcntl
import hashlib
import os
import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

RETRY_SECONDS = 120.0


def default_uri(results_dir: str | Path = "results") -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (without SQLAlchemy's query, e.g. ``?timeout=60&...``)."""
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0]) if uri.startswith("sqlite:///") else None


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def runs_lock(uri: str) -> Path:
    """The lock that serialises finding-or-creating runs: beside a sqlite store; for a server, one per
    host in the temp folder (jobs on other hosts of a cluster are not serialised by it)."""
    db = _sqlite_path(uri)
    if db is not None:
        return db.with_name(db.name + ".runs.lock")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"seqarena-mlflow-{digest}.lock"


def _is_lock_contention(error: Exception) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


def retry(call, *args, **kwargs):
    """Run an MLflow call, retrying with jittered backoff while sqlite reports contention."""
    deadline, delay = time.monotonic() + RETRY_SECONDS, 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as e:
            if not _is_lock_contention(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)


def client_for(uri: str):
    """An MlflowClient whose store exists: a sqlite file is created and migrated once, under a lock."""
    from mlflow.tracking import MlflowClient

    db = _sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    with file_lock(db.with_name(db.name + ".lock")):
        client = MlflowClient(tracking_uri=uri)
        retry(client.search_experiments, max_results=1)  # creates the schema, or waits for it
    return client


def init_store(uri: str) -> str:
    """Create (and migrate) the tracking store now, before parallel jobs start; for a server,
    check that it answers. Returns uri."""
    client = client_for(uri)
    if _sqlite_path(uri) is None:
        try:
            client.search_experiments(max_results=1)
        except Exception as e:
            raise RuntimeError(f"tracking server {uri} does not answer ({type(e).__name__}: {e})") from e
    return uri


# MLflow 3's UI lands on an experiment's traces (GenAI) unless the experiment says it holds model
# training: then its runs table is what a user sees first.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def find_or_create_experiment(client, name: str, uri: str) -> str:
    experiment = retry(client.get_experiment_by_name, name)
    if experiment is None:
        db = _sqlite_path(uri)  # artifacts beside the database, not in whatever the cwd is
        location = (db.parent / "mlartifacts").as_uri() if db else None
        try:
            retry(client.create_experiment, name, artifact_location=location, tags=EXPERIMENT_KIND)
        except Exception:  # another process created it first
            pass
        experiment = retry(client.get_experiment_by_name, name)
        if experiment is None:
            raise RuntimeError(f"MLflow experiment {name!r} could not be created in {uri}")
    for key, value in EXPERIMENT_KIND.items():  # an experiment made before seqarena set the kind
        if experiment.tags.get(key) != value:
            retry(client.set_experiment_tag, experiment.experiment_id, key, value)
    return experiment.experiment_id


def log_metric_rows(client, run_id: str, rows: list[tuple]) -> None:
    """(key, value, step) rows, stamped now, or (key, value, step, timestamp ms), in batches of 1000
    (MLflow's limit per call). MLflow ignores a row it already holds with the same timestamp."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(r[0], float(r[1]), int(r[3]) if len(r) > 3 else now, int(r[2])) for r in rows]
    for start in range(0, len(metrics), 1000):
        retry(client.log_batch, run_id, metrics=metrics[start : start + 1000])


# How long one call may wait for a tracking server that does not answer (MLflow's own defaults
# retry for minutes, which would stall training); the journal tries again at the next call.
HTTP_PATIENCE = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def server_patience(uri: str) -> None:
    """For a tracking server, HTTP_PATIENCE (where the environment says nothing else)."""
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_PATIENCE.items():
            os.environ.setdefault(key, value)
