"""Run identity: one MLflow run per model id, found again by its tag, continued by every stage."""

import subprocess
from pathlib import Path

from seqarena.tracking.metrics import TRAINING_HISTORY
from seqarena.tracking.store import (
    absolute_uri,
    client_for,
    file_lock,
    find_or_create_experiment,
    log_metric_rows,
    retry,
    runs_lock,
)

MODEL_TAG = "seqarena.model_id"


def git_commit() -> str:
    """The commit of the checkout seqarena runs from (an editable install), whatever the cwd."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flatten(params: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:6000]
    return flat


# What a finished training run keeps as artifacts (the Trainer writes them beside its journal).
TRAINING_OUTPUTS = ("config.json", "tokenizer.json", "loss_curve.png", "summary.json")


def finish_training_run(client, run_id: str, out: Path) -> None:
    """A finished training's outputs as its run's artifacts, and the run marked FINISHED."""
    for name in TRAINING_OUTPUTS:
        if (Path(out) / name).is_file():
            retry(client.log_artifact, run_id, str(Path(out) / name))
    retry(client.set_terminated, run_id, "FINISHED")


class ModelRun:
    """The MLflow run of one model id: created once, continued by every later stage or resume.

    A training history is one run: a resume continues the run its checkpoint names (``run_id``),
    whatever resumable setting changed (``changed`` holds each such param's old and new value; the
    run's params keep the values it started with). A training that starts at step 0 (``fresh``)
    continues the model's newest run only while that holds no training history (another stage
    may have made it first), else it gets a run of its own. Training reopens its run (``reopen``:
    RUNNING until it ends). A later stage (bench, eval) adds its results to the model's newest run
    and leaves its status as training left it. Used as a context manager, a run that the stage
    itself created (no training made one) ends when the stage does, FINISHED or FAILED."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        model_id: str,
        tags: dict | None = None,
        params=None,
        run_id: str | None = None,
        fresh=False,
        reopen=False,
    ):
        from mlflow.entities import Param

        self.client, self.uri = client_for(uri), absolute_uri(uri)
        experiment_id = find_or_create_experiment(self.client, experiment, uri)
        # Find-or-create and the params, as one step: two stages of one model (train, bench_training)
        # start together, and each must find the run the other made.
        flat = _flatten(params or {})
        with file_lock(runs_lock(uri)):
            run = self._find_or_create(experiment_id, model_id, tags, run_id, fresh, reopen)
            self.run_id = run.info.run_id
            held = run.data.params
            self.changed = {k: (held[k], v) for k, v in flat.items() if k in held and held[k] != v}
            new_params = [Param(k, v) for k, v in flat.items() if k not in held]
            for start in range(0, len(new_params), 100):
                retry(self.client.log_batch, self.run_id, params=new_params[start : start + 100])

    def __enter__(self) -> "ModelRun":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if self.created:
            self.finish("FAILED" if error_type else "FINISHED")

    def _newest(self, experiment_id, model_id):
        found = retry(
            self.client.search_runs,
            [experiment_id],
            filter_string=f"tags.`{MODEL_TAG}` = '{model_id}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return found[0] if found else None

    def _find_or_create(self, experiment_id, model_id, tags, run_id, fresh, reopen):
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException

        if run_id is not None:
            try:
                run = retry(self.client.get_run, run_id)
            except MlflowException:  # deleted from the store since: the history starts a new run
                run = None
        else:
            run = self._newest(experiment_id, model_id)
            if run is not None and fresh and self._has_training_history(run.info.run_id):
                run = None
        all_tags = {MODEL_TAG: model_id, "seqarena.git_commit": git_commit(), **(tags or {})}
        self.created = run is None
        if run is None:
            run = retry(self.client.create_run, experiment_id, tags=all_tags, run_name=model_id)
        elif reopen:
            retry(self.client.update_run, run.info.run_id, status="RUNNING")
        retry(self.client.log_batch, run.info.run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
        return run

    def _has_training_history(self, run_id: str) -> bool:
        return bool(retry(self.client.get_metric_history, run_id, TRAINING_HISTORY))

    def tag(self, key: str, value: str) -> None:
        retry(self.client.set_tag, self.run_id, key, value)

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
