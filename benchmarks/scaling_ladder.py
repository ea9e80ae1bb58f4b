"""The tables of a scaling ladder's run (make scaling-cpu), from what it wrote: each trained size
(parameters, tokens, passes over the training tokens, compute, final validation loss over its
seeds, its job's wall time from Snakemake's benchmark file), each family's fitted law over compute
with its 95% interval, and Transformer++'s compute multiplier against each SSM family at that
family's sizes.

    python benchmarks/scaling_ladder.py --results results/scaling-cpu
"""

import argparse
from pathlib import Path
from statistics import mean, stdev

from snakemake_benchmark import wall_seconds

from seqarena.report import Results, collect


def trainings(r: Results) -> dict[str, list[tuple[dict, float]]]:
    """model -> [(summary.json, its job's wall seconds)], its own run (train.seed) first, then its
    repeats at other seeds; family by family, smallest first."""
    benchmarks = r.root / "benchmarks/train"  # Snakemake's benchmark files, as train.smk names them
    runs = {}
    for model in r.models_by_family():
        repeats = sorted(r.train_seeds.get(model, []), key=lambda summary: summary["seed"])
        runs[model] = [(r.train[model]["summary"], wall_seconds(benchmarks / f"{model}.tsv"))]
        runs[model] += [(s, wall_seconds(benchmarks / model / f"seed{s['seed']}.tsv")) for s in repeats]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results/scaling-cpu", type=Path)
    results = parser.parse_args().results
    r = collect(results)
    (meta,) = r.data.values()
    train_tokens = meta["train_tokens"]
    runs = trainings(r)
    print(
        "| model | parameters | tokens | passes | training FLOPs | seeds | val loss | per seed | job time |"
    )
    print("|---|---:|---:|---:|---:|---|---|---|---:|")
    for model, seeds in runs.items():
        s = seeds[0][0]  # the seeds differ in their weights, not their size or budget
        losses = [summary["final_val_loss"] for summary, _ in seeds]
        loss = f"{losses[0]:.3f}" if len(losses) == 1 else f"{mean(losses):.3f} ± {stdev(losses):.3f}"
        print(
            f"| {model} | {s['parameters']:,} | {s['tokens']:,} | {s['tokens'] / train_tokens:.2f} | "
            f"{s['training_flops']:.3g} | {', '.join(str(summary['seed']) for summary, _ in seeds)} | "
            f"{loss} | {' / '.join(f'{x:.3f}' for x in losses)} | "
            f"{mean(wall for _, wall in seeds) / 60:.1f} min |"
        )
    jobs = [wall for seeds in runs.values() for _, wall in seeds]
    print(
        f"\nTraining jobs: {len(jobs)}, {sum(jobs) / 3600:.2f} h of job time in all "
        "(job time above: one seed's, the mean over its seeds; val loss: mean ± std over seeds).\n"
    )

    fits = r.scaling
    print("| family | sizes | E | A | alpha (compute) | 95% interval | alpha (parameters) | 95% interval |")
    print("|---|---:|---:|---:|---:|---|---:|---|")
    for name, family in fits["families"].items():
        if family.get("fit", True) is None:
            print(f"| {name} | {len(family['sizes'])} | no fit: {family['why']} | | | | | |")
            continue
        c, n = family["flops"], family["parameters"]
        print(
            f"| {name} | {len(family['sizes'])} | {c['E']:.3g} | {c['A']:.3g} | {c['alpha']:.3f} | "
            f"{c['alpha_interval'][0]:.3f} to {c['alpha_interval'][1]:.3f} | {n['alpha']:.3f} | "
            f"{n['alpha_interval'][0]:.3f} to {n['alpha_interval'][1]:.3f} |"
        )
    print("\nCompute Transformer++ needs for each SSM family's fitted loss at its sizes, over the SSM's:\n")
    header = "| against | at | SSM compute | multiplier | 95% interval | distinguishable | extrapolated |"
    print(header)
    print("|---|---|---:|---:|---|---|---|")
    for pair in fits["multipliers"]:
        if pair["family"] != "transformer":
            continue
        for row in pair["at"]:
            low, high = row["interval"]
            print(
                f"| {pair['against']} | {row['model']} | {row['compute']:.3g} | {row['multiplier']:.2f}x | "
                f"{low:.2f} to {high:.2f}x | {'yes' if row['distinguishable'] else 'no'} | "
                f"{'yes' if row['extrapolated'] else 'no'} |"
            )


if __name__ == "__main__":
    main()
