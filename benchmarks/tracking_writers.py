"""Many processes logging to one tracking store at once, through seqarena's tracking layer.

Each writer is its own process, as each pipeline job is: it opens the run of its own model id
(find-or-create under the store's lock) and logs --points metric rows in batches of --batch, as
training does at each checkpoint. All start at the same instant. The result is counts, not
timings: rows expected, found, lost and duplicated, and writers that failed.
    python benchmarks/tracking_writers.py --writers 32 --points 200             # one sqlite file
    python benchmarks/tracking_writers.py --writers 64 --points 200 --server    # an mlflow server
"""

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import free_port, mlflow_server, stop_server  # noqa: E402

WRITER = """
import sys, time
from seqarena.tracking import ModelRun
uri, index, points, batch = sys.argv[1], *map(int, sys.argv[2:5])
start = float(sys.argv[5])
time.sleep(max(0.0, start - time.time()))
run = ModelRun(uri, "stress", f"writer-{index}")
rows = [("stress/value", index + step / points, step) for step in range(points)]
for first in range(0, points, batch):
    run.log_metrics(rows[first : first + batch])
run.finish()
"""


def count(uri: str, writers: int, points: int) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("stress")
    runs = client.search_runs([experiment.experiment_id], max_results=10000)
    by_model = Counter(r.data.tags.get("seqarena.model_id") for r in runs)
    found = lost = duplicated = 0
    for run in runs:
        steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, "stress/value"))
        found += sum(steps.values())
        duplicated += sum(n - 1 for n in steps.values() if n > 1)
        lost += sum(1 for step in range(points) if step not in steps)
    lost += points * sum(1 for i in range(writers) if f"writer-{i}" not in by_model)
    return {
        "runs": len(runs),
        "runs_per_model_max": max(by_model.values(), default=0),
        "rows_found": found,
        "rows_lost": lost,
        "rows_duplicated": duplicated,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--batch", type=int, default=10, help="rows per log call")
    parser.add_argument(
        "--server", action="store_true", help="an mlflow server (sqlite behind it), not a file"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        server = mlflow_server(port, folder, workers=4) if args.server else None
        uri = f"http://127.0.0.1:{port}" if server else f"sqlite:///{folder / 'mlflow.db'}"
        try:
            from seqarena.tracking import init_store

            init_store(uri)
            start = time.time() + 5 + args.writers * 0.25  # after every interpreter has imported mlflow
            began = time.monotonic()
            argv = [str(args.points), str(args.batch), str(start)]
            jobs = [
                subprocess.Popen(
                    [sys.executable, "-c", WRITER, uri, str(i), *argv],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for i in range(args.writers)
            ]
            errors = [job.communicate(timeout=1800)[1] for job in jobs]
            failed = [err[-500:] for job, err in zip(jobs, errors, strict=True) if job.returncode]
            result = {
                "store": "server" if server else "sqlite file",
                "writers": args.writers,
                "points_each": args.points,
                "rows_expected": args.writers * args.points,
                **count(uri, args.writers, args.points),
                "writers_failed": len(failed),
                "seconds": round(time.monotonic() - began, 1),
            }
        finally:
            if server:
                stop_server(server)
    print("| " + " | ".join(result) + " |")
    print("|" + "---|" * len(result))
    print("| " + " | ".join(str(v) for v in result.values()) + " |")
    for error in failed:
        print(f"a writer failed: {error}", file=sys.stderr)
    if result["rows_lost"] or result["rows_duplicated"] or result["writers_failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
