"""The report's inputs: every result file the pipeline wrote, gathered, and what is missing named."""

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from seqarena.models import pretrained_id
from seqarena.models.families import family_name


@dataclass
class Results:
    root: Path
    data: dict = field(default_factory=dict)  # dataset -> its meta.json
    train: dict = field(default_factory=dict)  # model -> {"summary": ..., "metrics": [...]}
    train_seeds: dict = field(default_factory=dict)  # model -> summaries of its repeats at other seeds
    evaluation: dict = field(default_factory=dict)  # model (or published checkpoint id) -> eval json
    generation: dict = field(default_factory=dict)  # model -> generation bench json
    kernels: list = field(default_factory=list)  # rows of kernels.csv
    env: dict | None = None  # env/kernels.json
    synthetic: dict = field(default_factory=dict)  # (task, model) -> its runs, one per seed (by seed)
    scaling: dict | None = None  # scaling/fits.json
    missing: list = field(default_factory=list)  # what could not be shown, and why

    def models_by_family(self) -> list[str]:
        """The trained models, family by family, smallest first."""
        return sorted(self.train, key=lambda m: (family_name(m), self.train[m]["summary"]["parameters"]))

    def seed_runs(self, model: str) -> list[dict]:
        """The summaries of a model's runs at every seed (its own run, if trained here, and its
        repeats: train.seeds), by seed."""
        runs = ([self.train[model]["summary"]] if model in self.train else []) + self.train_seeds.get(
            model, []
        )
        return sorted(runs, key=lambda run: run.get("seed", 0))


def collect(results_dir: str | Path) -> Results:
    root = Path(results_dir)
    r = Results(root)
    for meta in sorted(root.glob("data/*/meta.json")):
        r.data[meta.parent.name] = json.loads(meta.read_text())
    for summary in sorted(root.glob("train/*/summary.json")):
        metrics = summary.parent / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        r.train[summary.parent.name] = {"summary": json.loads(summary.read_text()), "metrics": rows}
    for summary in sorted(root.glob("train/*/seed*/summary.json")):
        r.train_seeds.setdefault(summary.parent.parent.name, []).append(json.loads(summary.read_text()))
    for path in sorted(root.glob("eval/*.json")):
        r.evaluation[path.stem] = json.loads(path.read_text())
    for path in sorted(root.glob("eval/pretrained/*.json")):  # published checkpoints, named by hub id
        r.evaluation[pretrained_id(path.stem)] = json.loads(path.read_text())
    for path in sorted(root.glob("bench/generation/*.json")):
        r.generation[path.stem] = json.loads(path.read_text())
    if (root / "bench/kernels.csv").is_file():
        with open(root / "bench/kernels.csv") as f:
            r.kernels = list(csv.DictReader(f))
    if (root / "env/kernels.json").is_file():
        r.env = json.loads((root / "env/kernels.json").read_text())
    if (root / "scaling/fits.json").is_file():
        r.scaling = json.loads((root / "scaling/fits.json").read_text())
    for path in sorted(root.glob("synthetic/*/*/seed*.json")):
        run = json.loads(path.read_text())
        r.synthetic.setdefault((run["task"], run["model"]), []).append(run)
    for runs in r.synthetic.values():
        runs.sort(key=lambda run: run["config"]["seed"])
    for name, have, source in [
        ("training results", r.train, "train/*/summary.json"),
        ("evaluation results", r.evaluation, "eval/*.json"),
        ("generation benchmarks", r.generation, "bench/generation/*.json"),
        ("kernel benchmarks", r.kernels, "bench/kernels.csv"),
        ("environment record", r.env, "env/kernels.json"),
        ("synthetic-task results", r.synthetic, "synthetic/*/*/seed*.json"),
        ("scaling fits", r.scaling, "scaling/fits.json"),
    ]:
        if not have:
            r.missing.append(f"no {name}: `{root / source}` not found")
    return r
