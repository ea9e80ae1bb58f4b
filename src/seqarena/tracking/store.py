"""The tracking store: one sqlite file (the default) or a server, made safe under parallel writers.

Two facts shape this module: MLflow creates and migrates the sqlite schema on first use, and
parallel first-time writers to a fresh database fail (so store creation is serialised with a file
lock); and many writers to one sqlite file hit "database is locked" (so every call retries with
backoff, and no metric is lost).
"""

import contextlib
import fcntl
import hashlib
import itertools
import os
import random
import tempfile
import time
from pathlib import Path

RETRY_SECONDS = 120.0


def default_uri(results_dir: str | Path = "results") -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI, absolute (a relative path is the working directory's, as
    SQLAlchemy reads it; the pipeline passes ``sqlite:///results/mlflow.db``, so a moved checkout's
    jobs are unchanged), without SQLAlchemy's query (``?timeout=60&...``)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).resolve()


def absolute_uri(uri: str) -> str:
    """The URI with a sqlite file's path made absolute: what a record kept for later (a journal)
    needs, wherever it is read from."""
    db = sqlite_path(uri)
    if db is None:
        return uri
    query = uri.partition("?")[2]
    return f"sqlite:///{db}" + (f"?{query}" if query else "")


@contextlib.contextmanager
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
    db = sqlite_path(uri)
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
    """An MlflowClient whose store exists: a sqlite file is created and migrated once, under a lock,
    and its artifact locations follow it where it was moved (``relocate_artifacts``)."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    with file_lock(db.with_name(db.name + ".lock")):
        client = MlflowClient(tracking_uri=absolute_uri(uri))
        retry(client.search_experiments, max_results=1)  # creates the schema, or waits for it
        relocate_artifacts(db)
    return client


def init_store(uri: str) -> str:
    """Create (and migrate) the tracking store now, before parallel jobs start; for a server,
    check that it answers. Returns uri."""
    client = client_for(uri)
    if sqlite_path(uri) is None:
        try:
            client.search_experiments(max_results=1)
        except Exception as e:
            raise RuntimeError(f"tracking server {uri} does not answer ({type(e).__name__}: {e})") from e
    return uri


# Where a sqlite store keeps its artifacts: a folder beside the database (find_or_create_experiment).
ARTIFACTS = "mlartifacts"
# The columns of MLflow's schema that hold artifact locations (those a version of it lacks are skipped).
LOCATION_COLUMNS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "model_versions": ("source", "storage_location"),
    "logged_models": ("artifact_location",),
}


def relocate_artifacts(db: Path) -> int:
    """Point the store's artifact locations at the artifacts folder beside the database, where an
    experiment of ours (its location a ``mlartifacts`` folder) names one elsewhere: the results
    folder was moved or copied, and MLflow keeps absolute paths. Returns the rows rewritten."""
    import sqlite3

    here = (db.parent / ARTIFACTS).as_uri()
    with contextlib.closing(sqlite3.connect(db, timeout=RETRY_SECONDS)) as connection, connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        found = connection.execute("SELECT DISTINCT artifact_location FROM experiments").fetchall()
        elsewhere = {loc for (loc,) in found if loc and loc.endswith(f"/{ARTIFACTS}") and loc != here}
        changed = 0
        for old, (table, columns) in itertools.product(elsewhere, LOCATION_COLUMNS.items()):
            if table not in tables:
                continue
            present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            for column in set(columns) & present:
                inside = (
                    f"substr({column}, 1, ?) = ? AND (length({column}) = ? OR substr({column}, ?, 1) = '/')"
                )
                changed += connection.execute(  # the old location itself, or a path inside it
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE {inside}",
                    (here, len(old) + 1, len(old), old, len(old), len(old) + 1),
                ).rowcount
    return changed


# MLflow 3's UI lands on an experiment's traces (GenAI) unless the experiment says it holds model
# training: then its runs table is what a user sees first.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def find_or_create_experiment(client, name: str, uri: str) -> str:
    experiment = retry(client.get_experiment_by_name, name)
    if experiment is None:
        db = sqlite_path(uri)  # artifacts beside the database, not in whatever the cwd is
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
