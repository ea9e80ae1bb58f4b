"""The tables of a scaling ladder's run (make scaling-cpu), from what it wrote: each trained size
(parameters, tokens, passes over the training tokens, compute, final validation loss, the job's
wall time from Snakemake's benchmark file), each family's fitted law over compute with its 95%
interval, and Transformer++'s compute multiplier against each SSM family at that family's sizes.

    python benchmarks/scaling_ladder.py --results results/scaling-cpu
"""

import argparse
import csv
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results/scaling-cpu", type=Path)
    results = parser.parse_args().results
    (meta_file,) = results.glob("data/*/meta.json")
    train_tokens = json.loads(meta_file.read_text())["train_tokens"]
    summaries = [json.loads(p.read_text()) for p in sorted(results.glob("train/*/summary.json"))]
    summaries.sort(key=lambda s: (s["model"].split("-")[0], s["parameters"]))
    total = 0.0
    print("| model | parameters | tokens | passes | training FLOPs | val loss | job wall time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in summaries:
        with open(results / "benchmarks/train" / f"{s['model']}.tsv") as f:
            seconds = float(next(csv.DictReader(f, delimiter="\t"))["s"])
        total += seconds
        print(
            f"| {s['model']} | {s['parameters']:,} | {s['tokens']:,} | {s['tokens'] / train_tokens:.2f} | "
            f"{s['training_flops']:.3g} | {s['final_val_loss']:.3f} | {seconds / 60:.1f} min |"
        )
    print(f"\nTraining jobs: {total / 3600:.2f} h of job time in all.\n")

    fits = json.loads((results / "scaling/fits.json").read_text())
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
