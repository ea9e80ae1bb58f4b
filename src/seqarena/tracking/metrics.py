"""Every metric's MLflow name, in one place, and how a stage logs its results (``log_stage``).

Keys are ``<stage>/<what>``, with the step axis where a metric has one: training's step, a
kernel's sequence length, a synthetic task's test length (a generation batch size is in the
name). MLflow names allow no "+": a fwd+bwd timing is logged as fwd_bwd.
"""

from pathlib import Path

Row = tuple[str, float, int]  # (key, value, step)


# The metric whose steps are a run's training history: a resume logs past its last step, and a
# training that starts at step 0 does not continue a run that holds one (tracking.runs.ModelRun).
TRAINING_HISTORY = "train/loss"
VALIDATION = {"val_loss": "val/loss", "val_windows": "val/windows"}


def training_metrics(row: dict) -> list[Row]:
    """One row of metrics.jsonl: train/<key> for each (``loss`` is TRAINING_HISTORY), and val/loss
    with val/windows (how many windows it averaged) where the step validated."""
    step = row["step"]
    rows = [(f"train/{k}", v, step) for k, v in row.items() if k != "step" and k not in VALIDATION]
    return rows + [(VALIDATION[k], row[k], step) for k in VALIDATION if k in row]


def final_training_metrics(summary: dict) -> list[Row]:
    """The run's outcome, one value each: what a runs table compares. ``final/train_seconds`` is the
    training's own time (the UI's Duration spans every stage that ran in the run)."""
    steps = summary["steps"]
    return [
        ("final/val_loss", summary["final_val_loss"], steps),
        ("final/val_perplexity", summary["final_val_perplexity"], steps),
        ("final/tokens_per_s", summary["tokens_per_s"], steps),
        ("final/train_seconds", summary["wall_seconds"], steps),
    ]


def kernel_metrics(rows: list[dict]) -> list[Row]:
    """kernels.csv's rows: bench/kernels/<op>-<backend>/<pass>_ms per sequence length."""
    return [
        (
            f"bench/kernels/{r['op']}-{r['backend']}/{r['pass'].replace('+', '_')}_ms",
            r["median_ms"],
            r["seq_len"],
        )
        for r in rows
    ]


def generation_metrics(result: dict) -> list[Row]:
    """Decoding throughput, a metric per batch size (bench/generation/tokens_per_s/batch_<n>: a
    column of the runs table each, compared across runs), the batches that ran out of memory left out."""
    return [
        (f"bench/generation/tokens_per_s/batch_{r['batch']}", r["tokens_per_s"], 0)
        for r in result["results"]
        if not r["oom"]
    ]


def training_bench_metrics(result: dict) -> list[Row]:
    return [(f"bench/training/{k}", result[k], 0) for k in ("tokens_per_s", "achieved_tflops") if result[k]]


def eval_metrics(report: dict) -> list[Row]:
    """eval/<task>/<metric> for every numeric score of lm-eval's results."""
    return [
        (f"eval/{task}/{name}", entry["value"], 0)
        for task, entries in report["results"].items()
        for name, entry in entries.items()
        if isinstance(entry["value"], (int, float))
    ]


def synthetic_metrics(task: str, result: dict) -> list[Row]:
    """Accuracy per test length (those not run left out) and the training curve's accuracy per step."""
    rows = [
        (f"synthetic/{task}/accuracy_at_length", acc, int(length))
        for length, acc in result["accuracy_by_length"].items()
        if acc is not None
    ]
    return rows + [(f"synthetic/{task}/train_accuracy", r["accuracy"], r["step"]) for r in result["curve"]]


def log_stage(
    uri: str, experiment: str, run_name: str, rows: list[Row], artifact: Path, artifact_dir: str
) -> None:
    """A stage's results into the run ``run_name`` (found by its tag; created, and ended, if training
    logged none), its output file into the stage's own folder of that run (``bench/generation``,
    ``eval``, ...). A ``uri`` of "none" logs nothing."""
    if uri == "none":
        return
    from seqarena.tracking.runs import ModelRun

    with ModelRun(uri, experiment, run_name) as run:
        run.log_metrics(rows)
        run.log_artifact(artifact, artifact_dir)
