"""The tables of a synthetic-task study's run (make synthetic-cpu), from what it wrote: per task and
model, the accuracy at the training length over seeds (mean, spread, each seed), chance, where
each seed's training curve first passed halfway from chance to 1 (its way off the loss plateau)
and its final loss, and the job's wall time from Snakemake's benchmark file; each seed's training
curve at its quarters; then, for tasks scored at several lengths, accuracy by test length (the
mean over seeds, and each seed).

    python benchmarks/synthetic_study.py --results results/synthetic-cpu
"""

import argparse
import statistics
from pathlib import Path

from snakemake_benchmark import wall_seconds

from seqarena.report import collect


def halfway_step(result: dict) -> str:
    """The first logged step whose training-batch accuracy passed halfway from chance to 1 (the
    way off a loss plateau), or "never"."""
    halfway = (result["chance"] + 1) / 2
    return next((str(point["step"]) for point in result["curve"] if point["accuracy"] > halfway), "never")


def job_seconds(results: Path, run: dict) -> float:
    """The wall time of the job that wrote ``run``, from its rule's benchmark file."""
    seed = run["config"]["seed"]
    return wall_seconds(results / "benchmarks/synthetic" / run["task"] / run["model"] / f"seed{seed}.tsv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results/synthetic-cpu", type=Path)
    results = parser.parse_args().results
    runs = {  # (task, model) -> [(seed, result, wall seconds)], by seed
        (task, model): [(r["config"]["seed"], r, job_seconds(results, r)) for r in seeds]
        for (task, model), seeds in collect(results).synthetic.items()
    }

    header = "task | model | accuracy, mean ± std | per seed | chance | halfway at step | final loss | min"
    print(f"| {header} |\n|---|---|---|---|---:|---|---|---|")
    total = 0.0
    for (task, model), seeds in sorted(runs.items()):
        accuracy = [r["final_accuracy"] for _, r, _ in seeds]
        final_loss = [r["curve"][-1]["loss"] for _, r, _ in seeds]
        spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
        total += sum(s for *_, s in seeds)
        print(
            f"| {task} | {model} | {statistics.mean(accuracy):.3f} ± {spread:.3f} | "
            f"{' / '.join(f'{a:.3f}' for a in accuracy)} | {seeds[0][1]['chance']:.3f} | "
            f"{' / '.join(halfway_step(r) for _, r, _ in seeds)} | "
            f"{' / '.join(f'{loss:.3f}' for loss in final_loss)} | "
            f"{' / '.join(f'{s / 60:.1f}' for *_, s in seeds)} |"
        )
    print(f"\nSynthetic jobs: {total / 3600:.2f} h of job time in all.")

    print("\nTraining curves: the loss (on each step's fresh batch) at each quarter of the steps\n")
    print("| task | model | seed | 1/4 | 1/2 | 3/4 | end |\n|---|---|---:|---:|---:|---:|---:|")
    for (task, model), seeds in sorted(runs.items()):
        for seed, r, _ in seeds:
            curve = r["curve"]
            quarters = [curve[max(0, round(len(curve) * q / 4) - 1)]["loss"] for q in (1, 2, 3, 4)]
            print(f"| {task} | {model} | {seed} | " + " | ".join(f"{loss:.3f}" for loss in quarters) + " |")

    for (task, model), seeds in sorted(runs.items()):
        lengths = list(seeds[0][1]["accuracy_by_length"])
        if len(lengths) < 2:
            continue
        print(f"\n{task}, {model}: accuracy by test length (seeds {', '.join(str(s) for s, *_ in seeds)})\n")
        print("| | " + " | ".join(lengths) + " |")
        print("|---|" + "---:|" * len(lengths))

        def at(r, n):
            value = r["accuracy_by_length"].get(n)
            return "x" if value is None else f"{value:.3f}"

        scored = [
            [r["accuracy_by_length"][n] for _, r, _ in seeds if r["accuracy_by_length"][n] is not None]
            for n in lengths
        ]
        print("| mean | " + " | ".join(f"{statistics.mean(v):.3f}" if v else "x" for v in scored) + " |")
        for seed, r, _ in seeds:
            print(f"| seed {seed} | " + " | ".join(at(r, n) for n in lengths) + " |")


if __name__ == "__main__":
    main()
