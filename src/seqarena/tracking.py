"""MLflow tracking: one run per model id, found again by tag, safe under parallel writers.

The default store is ``sqlite:///results/mlflow.db``. Two facts shape this module: MLflow
creates and migrates the sqlite schema on first use, and parallel first-time writers to a
fresh database fail (so store creation is serialised with a file lock); and many writers
to one sqlite file hit "database is locked" (so every call retries with backoff, and no
metric is lost). A ``tracking_uri`` of ``http://host:port`` logs to a tracking server;
training writes its metrics through a MetricsJournal, so a server that goes away loses nothing.
"""

import fcntl
import hashlib
import json
import os
import random
import subprocess
import sys
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
    """The commit of the checkout seqarena runs from (an editable install), whatever the cwd."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)  # fmt: skip
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# MLflow 3's UI lands on an experiment's traces (GenAI) unless the experiment says it holds model
# training: then its runs table is what a user sees first.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _experiment_id(client, name: str, uri: str) -> str:
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


def _flatten(params: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:6000]
    return flat


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
HTTP_PATIENCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}  # fmt: skip


class MetricsJournal:
    """Metrics on their way to one run, kept in a file beside the outputs until the store holds
    them: a tracking server that goes away mid-training loses nothing. Training goes on; the rows
    wait in the journal and go out at the next call that finds the server answering, or with
    ``seqarena tracking sync JOURNAL``. Each row keeps the timestamp it was first logged with, and
    MLflow ignores a row it already holds, so a replay after a lost answer duplicates nothing."""

    def __init__(self, run: "ModelRun", path: Path):
        self.run, self.path, self.reachable = run, Path(path), True
        self.flush()  # what a killed run left behind goes first

    def log(self, rows: list[tuple[str, float, int]]) -> bool:
        """Journal the rows (on disk before anything else), then send everything journaled."""
        now = int(time.time() * 1000)
        lines = "".join(
            json.dumps({"uri": self.run.uri, "run": self.run.run_id, "row": [k, float(v), int(s), now]})
            + "\n"
            for k, v, s in rows
        )
        with open(self.path, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        return self.flush()

    def flush(self) -> bool:
        """Send what the journal holds; False, keeping it, while the store does not answer."""
        if not self.path.is_file():
            return True
        try:
            sent = sum(replay_journal(self.path).values())
        except Exception as e:
            if self.reachable:
                print(f"tracking store {self.run.uri} does not answer ({type(e).__name__}): metrics are kept "
                      f"in {self.path} and sent when it does (or: seqarena tracking sync {self.path})",
                      file=sys.stderr, flush=True)  # fmt: skip
            self.reachable = False
            return False
        if not self.reachable:
            print(f"tracking store {self.run.uri} answers again: {sent} journaled rows sent", file=sys.stderr)
        self.reachable = True
        return True


def replay_journal(path: Path) -> dict[tuple[str, str], int]:
    """Send a journal's rows to their runs, then remove it; a line torn by a kill is skipped.
    Returns the rows sent per (tracking URI, run id)."""
    rows: dict[tuple[str, str], list] = {}
    for line in Path(path).read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        rows.setdefault((entry["uri"], entry["run"]), []).append(entry["row"])
    for (uri, run_id), run_rows in rows.items():
        log_metric_rows(client_for(uri), run_id, run_rows)
    Path(path).unlink()
    return {key: len(run_rows) for key, run_rows in rows.items()}


# What a finished training run keeps as artifacts (train.py writes them beside its journal).
TRAINING_OUTPUTS = ("config.json", "tokenizer.json", "loss_curve.png", "summary.json")


def finish_training_run(client, run_id: str, out: Path) -> None:
    """A finished training's outputs as its run's artifacts, and the run marked FINISHED."""
    for name in TRAINING_OUTPUTS:
        if (Path(out) / name).is_file():
            retry(client.log_artifact, run_id, str(Path(out) / name))
    retry(client.set_terminated, run_id, "FINISHED")


def register_hf_model(uri: str, experiment: str, model_id: str, model_dir: Path, hf_dir: Path):
    """A transformers folder (``seqarena export``'s) logged as an MLflow ``transformers`` model in
    its training run (summary.json's ``mlflow_run_id``; else the model's run, found by tag) and
    registered under the model id: one version per training run, so exporting again adds none.
    It loads back without seqarena: ``mlflow.transformers.load_model("models:/<id>/<version>")``."""
    import mlflow
    import torch
    import transformers

    summary = Path(model_dir) / "summary.json"
    run_id = json.loads(summary.read_text()).get("mlflow_run_id") if summary.is_file() else None
    run_id = run_id or ModelRun(uri, experiment, model_id).run_id
    client = client_for(uri)

    def versions():
        return retry(client.search_model_versions, f"name = '{model_id}' and run_id = '{run_id}'")

    found = versions()
    if found:
        return found[0]
    components = {
        "model": transformers.AutoModelForCausalLM.from_pretrained(hf_dir),
        "tokenizer": transformers.AutoTokenizer.from_pretrained(hf_dir),
    }
    requirements = [f"transformers=={transformers.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    retry(mlflow.start_run, run_id=run_id)  # every call may meet a locked sqlite file: each retries
    try:
        retry(mlflow.transformers.log_model, components, name="hf-model", task="text-generation",
              registered_model_name=model_id, pip_requirements=requirements)  # fmt: skip
    finally:
        retry(mlflow.end_run)
    return versions()[0]


class ModelRun:
    """The MLflow run of one model id: created once, continued by every later stage or resume.

    Training reopens its run (``reopen``: RUNNING until it ends). A later stage (bench, eval) adds
    its results and leaves the run's status as training left it. Used as a context manager, a run
    that the stage itself created (no training made one) ends when the stage does, FINISHED or
    FAILED."""

    def __init__(
        self, uri: str, experiment: str, model_id: str, tags: dict | None = None, params=None, new=False,
        reopen=False,
    ):  # fmt: skip
        from mlflow.entities import Param

        self.client, self.uri = client_for(uri), uri
        experiment_id = _experiment_id(self.client, experiment, uri)
        # Find-or-create and the params, as one step: two stages of one model (train, bench_training)
        # start together, and each must find the run the other made.
        flat = _flatten(params or {})
        with _file_lock(_runs_lock(uri)):
            run = self._find_or_create(experiment_id, model_id, tags, flat, new, reopen)
            self.run_id = run.info.run_id
            new_params = [Param(k, v) for k, v in flat.items() if k not in run.data.params]
            for start in range(0, len(new_params), 100):
                retry(self.client.log_batch, self.run_id, params=new_params[start : start + 100])

    def __enter__(self) -> "ModelRun":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if self.created:
            self.finish("FAILED" if error_type else "FINISHED")

    def _find_or_create(self, experiment_id, model_id, tags, flat: dict[str, str], new, reopen):
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
        self.created = run is None
        if run is None:
            run = retry(self.client.create_run, experiment_id, tags=all_tags, run_name=model_id)
        elif reopen:
            retry(self.client.update_run, run.info.run_id, status="RUNNING")
        retry(self.client.log_batch, run.info.run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
        return run

    def last_step(self, key: str) -> int:
        """The last step logged for a metric (-1 if none): a resume logs only what comes after."""
        history = retry(self.client.get_metric_history, self.run_id, key)
        return max((m.step for m in history), default=-1)

    def log_metrics(self, rows: list[tuple[str, float, int]]) -> None:
        log_metric_rows(self.client, self.run_id, rows)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        retry(self.client.log_artifact, self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED") -> None:
        retry(self.client.set_terminated, self.run_id, status)
