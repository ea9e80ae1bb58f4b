"""MLflow tracking: one run per model id, found again by tag, safe under parallel writers.

The default store is ``sqlite:///results/mlflow.db``. Two facts shape this module: MLflow
creates and migrates the sqlite schema on first use, and parallel first-time writers to a
fresh database fail (so store creation is serialised with a file lock); and many writers
to one sqlite file hit "database is locked" (so every call retries with backoff, and no
metric is lost). A ``tracking_uri`` of ``http://host:port`` logs to a tracking server.
"""

import fcntl
import hashlib
import random
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

MODEL_TAG = "seqarena.model_id"
RETRY_SECONDS = 120.0


def default_uri(results_dir: str | Path = "results") -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (without SQLAlchemy's query, e.g. ``?timeout=60&...``)."""
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0]) if uri.startswith("sqlite:///") else None


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _runs_lock(uri: str) -> Path:
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
    with _file_lock(db.with_name(db.name + ".lock")):
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


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _experiment_id(client, name: str, uri: str) -> str:
    experiment = retry(client.get_experiment_by_name, name)
    if experiment is not None:
        return experiment.experiment_id
    db = _sqlite_path(uri)  # artifacts beside the database, not in whatever the cwd is
    location = (db.parent / "mlartifacts").as_uri() if db else None
    try:
        return retry(client.create_experiment, name, artifact_location=location)
    except Exception:  # another process created it first
        experiment = retry(client.get_experiment_by_name, name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _flatten(params: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:6000]
    return flat


class ModelRun:
    """The MLflow run of one model id: created once, continued by every later stage or resume."""

    def __init__(
        self, uri: str, experiment: str, model_id: str, tags: dict | None = None, params=None, new=False
    ):
        from mlflow.entities import Param

        self.client, self.uri = client_for(uri), uri
        experiment_id = _experiment_id(self.client, experiment, uri)
        # Find-or-create and the params, as one step: two stages of one model (train, bench_training)
        # start together, and each must find the run the other made.
        flat = _flatten(params or {})
        with _file_lock(_runs_lock(uri)):
            run = self._find_or_create(experiment_id, model_id, tags, flat, new)
            self.run_id = run.info.run_id
            new_params = [Param(k, v) for k, v in flat.items() if k not in run.data.params]
            for start in range(0, len(new_params), 100):
                retry(self.client.log_batch, self.run_id, params=new_params[start : start + 100])

    def _find_or_create(self, experiment_id, model_id, tags, flat: dict[str, str], new):
        from mlflow.entities import RunTag

        found = retry(
            self.client.search_runs,
            [experiment_id],
            filter_string=f"tags.`{MODEL_TAG}` = '{model_id}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        run = found[0] if found and not new else None
        if run is not None and any(run.data.params.get(k, v) != v for k, v in flat.items()):
            run = None  # the configuration changed: a new run, the old one stays for comparison
        all_tags = {MODEL_TAG: model_id, "seqarena.git_commit": git_commit(), **(tags or {})}
        if run is None:
            run = retry(self.client.create_run, experiment_id, tags=all_tags, run_name=model_id)
            self.resumed = False
        else:
            retry(self.client.update_run, run.info.run_id, status="RUNNING")
            self.resumed = True
        retry(self.client.log_batch, run.info.run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
        return run

    def last_step(self, key: str) -> int:
        """The last step logged for a metric (-1 if none): a resume logs only what comes after."""
        history = retry(self.client.get_metric_history, self.run_id, key)
        return max((m.step for m in history), default=-1)

    def log_metrics(self, rows: list[tuple[str, float, int]]) -> None:
        """(key, value, step) rows in batches of 1000, MLflow's limit per call."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(step)) for key, value, step in rows]
        for start in range(0, len(metrics), 1000):
            retry(self.client.log_batch, self.run_id, metrics=metrics[start : start + 1000])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        retry(self.client.log_artifact, self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED") -> None:
        retry(self.client.set_terminated, self.run_id, status)
