"""Report stage: gather whatever results exist and draw the paper's comparisons.

The notebooks in ``notebooks/`` are thin: they call these functions, so the logic is
tested like the rest of the package. Every figure and table says what produced it, and a
missing input (no GPU benchmarks, no evaluation yet) is named instead of failing.
"""

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

from seqarena.models import pretrained_id
from seqarena.paper import PAPER_METRIC, PAPER_TASKS, paper_table, paper_task, recipe

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Results:
    root: Path
    train: dict = field(default_factory=dict)  # model -> {"summary": ..., "metrics": [...]}
    train_seeds: dict = field(default_factory=dict)  # model -> summaries of its repeats at other seeds
    evaluation: dict = field(default_factory=dict)  # model (or published checkpoint id) -> eval json
    generation: dict = field(default_factory=dict)  # model -> generation bench json
    kernels: list = field(default_factory=list)  # rows of kernels.csv
    env: dict | None = None  # env/kernels.json
    synthetic: dict = field(default_factory=dict)  # (task, model) -> its runs, one per seed (by seed)
    missing: list = field(default_factory=list)  # what could not be shown, and why


def collect(results_dir: str | Path) -> Results:
    root = Path(results_dir)
    r = Results(root)
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
    ]:
        if not have:
            r.missing.append(f"no {name}: {root / source} not found")
    return r


def _arch(model: str) -> str:
    return model.split("-", 1)[0]


def _compact(value: float, _position=None) -> str:
    """4096 -> 4096, 140000 -> 140k, 2.4e9 -> 2.4G: short tick labels (whole numbers below 100k
    as they are: lengths and batch sizes are powers of two)."""
    if value == int(value) and abs(value) < 1e5:
        return f"{int(value)}"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _log_axis(axis, at=None) -> None:
    """A log axis labelled with short plain numbers: at ``at`` (the measured values; of values
    within 10% of each other only the first) if given, else at 1, 2 and 5 times each power of
    ten; no minor labels (on a narrow range matplotlib's overlap)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    ticks = []
    for value in sorted(set(at or [])):
        if not ticks or value > 1.1 * ticks[-1]:
            ticks.append(value)
    axis.set_major_locator(FixedLocator(ticks) if ticks else LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(_compact))
    axis.set_minor_formatter(NullFormatter())


def loss_curves(r: Results):
    """Training (line) and validation (dots) loss per model against tokens seen."""
    if not r.train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, data in r.train.items():
        rows = data["metrics"]
        line = ax.plot([x["tokens"] for x in rows], [x["loss"] for x in rows], label=model, alpha=0.8)[0]
        val = [x for x in rows if "val_loss" in x]
        ax.plot([x["tokens"] for x in val], [x["val_loss"] for x in val], "o", color=line.get_color())
    ax.set(xlabel="tokens", ylabel="loss (nats/token)", title="Training (lines) and validation (dots) loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def scaling(r: Results):
    """Final validation loss against parameters and against training FLOPs (log x), per architecture."""
    if not r.train:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    xs: tuple[list, list] = ([], [])
    for arch in sorted({_arch(m) for m in r.train}):
        points = sorted(
            (d["summary"]["parameters"], d["summary"]["flops_per_token"] * d["summary"]["tokens"],
             d["summary"]["final_val_loss"])
            for m, d in r.train.items() if _arch(m) == arch
        )  # fmt: skip
        for ax, x, column in zip(axes, xs, (0, 1), strict=True):
            ax.plot([p[column] for p in points], [p[2] for p in points], "o-", label=arch)
            x += [p[column] for p in points]
    for ax, x, xlabel in zip(axes, xs, ["parameters", "training FLOPs"], strict=True):
        ax.set(xscale="log", xlabel=xlabel, ylabel="final validation loss (nats/token)")
        _log_axis(ax.xaxis, at=x if len(set(x)) <= 6 else None)
        ax.legend()
    fig.suptitle("Scaling: final validation loss")
    fig.tight_layout()
    return fig


def generation(r: Results):
    """Generation throughput (tokens/s, prompt + decoding) against batch size."""
    if not r.generation:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    batches = []
    for model, data in r.generation.items():
        ok = [x for x in data["results"] if not x["oom"]]
        ax.plot([x["batch"] for x in ok], [x["tokens_per_s"] for x in ok], "o-", label=model)
        batches += [x["batch"] for x in ok]
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="tokens/s", title="Generation throughput")
    _log_axis(ax.xaxis, at=batches)
    _log_axis(ax.yaxis)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def generation_notes(r: Results) -> str:
    """Mamba's generation throughput over the Transformer++ of the same size, per batch, in words;
    and, where Mamba is the slower, why that is expected on a CPU at these sizes (Markdown)."""
    lines, slower = [], False
    for model, data in sorted(r.generation.items()):
        arch, _, size = model.partition("-")
        other = r.generation.get(f"transformer-{size}")
        if arch.startswith("transformer") or other is None:
            continue
        theirs = {x["batch"]: x["tokens_per_s"] for x in other["results"] if not x["oom"]}
        ratios = [(x["batch"], x["tokens_per_s"] / theirs[x["batch"]]) for x in data["results"]
                  if not x["oom"] and x["batch"] in theirs]  # fmt: skip
        if ratios:
            slower |= any(ratio < 1 for _, ratio in ratios)
            each = ", ".join(f"{ratio:.2f}x at batch {batch}" for batch, ratio in ratios)
            setup = f"prompt {data['prompt_len']}, {data['new_tokens']} new tokens, {data['device']}"
            line = f"- **{model}**: {each} the tokens/s of transformer-{size} ({setup})"
            ours, kv = data.get("cache_bytes_per_sequence"), other.get("cache_bytes_per_sequence")
            if ours and kv:  # files written before the field lack it
                line += (f"; its cache holds {ours / 2**10:,.0f} KiB per sequence at any length, the KV "
                         f"cache {kv / 2**10:,.0f} KiB at this one, growing with it")  # fmt: skip
            lines.append(line + ".")
    if slower:
        lines.append(
            "\nMamba slower than a Transformer++ is expected here, not a fault. At a short prompt a tiny "
            "Transformer's KV cache is small and cheap to read, while every Mamba token runs a "
            "recurrent step per layer whose cost is mostly per-call overhead on a CPU. Mamba's "
            "advantage, no cache to read and grow, shows at long prompts and large batches: the "
            "paper's 4-5x is at prompt 2048 with 128 new tokens on a GPU (`config/paper.yaml`; "
            "CPU measurements in `benchmarks/README.md`)."
        )
    return "\n".join(lines)


def kernels(r: Results):
    """Mamba-1's scan and Mamba-2's SSD per backend, causal attention and the paper's baselines (the
    PyTorch parallel scan, the FFT convolution): time against sequence length, log-log."""
    if not r.kernels:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    series: dict[str, list] = {}
    for row in r.kernels:
        series.setdefault(f"{row['op']} ({row['backend']}) {row['pass']}", []).append(
            (int(row["seq_len"]), float(row["median_ms"]))
        )
    for name, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=name)
    ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="ms")
    _log_axis(ax.xaxis, at=[int(row["seq_len"]) for row in r.kernels])
    _log_axis(ax.yaxis)
    ax.set_title("Scan and SSD vs attention and the paper's baselines")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# Accuracy of a uniform guess per Table 3 task: 1 / number of choices (ARC's questions have 4, a few
# 3 or 5); LAMBADA's target is one word out of the whole vocabulary, so its chance is about 0.
CHANCE_ACCURACY = {"lambada_openai": 0.0, "hellaswag": 0.25, "piqa": 0.5, "arc_easy": 0.25,
                   "arc_challenge": 0.25, "winogrande": 0.5}  # fmt: skip


def eval_table(r: Results) -> list[dict]:
    """One row per (model, task): each metric's value and lm-eval's stderr, beside the accuracy of
    a uniform guess (``chance acc``) where the task is one of Table 3's; ``source`` says whether
    the model was trained here or is a published checkpoint (``eval.pretrained``)."""
    rows = []
    for model, report in r.evaluation.items():
        for task, metrics in report["results"].items():
            row = {"model": model, "source": "published checkpoint" if "/" in model else "trained here",
                   "task": task}  # fmt: skip
            for metric, entry in sorted(metrics.items()):
                row[metric], row[f"{metric} stderr"] = entry["value"], entry["stderr"]
            row["chance acc"] = CHANCE_ACCURACY.get(paper_task(task))
            rows.append(row)
    metrics = sorted({key for row in rows for key in row} - {"model", "source", "task", "chance acc"})
    columns = ["model", "source", "task", *metrics, "chance acc"]  # one column order for every row
    return [{column: row.get(column) for column in columns} for row in rows]


def table3(r: Results) -> list[dict]:
    """Table 3 shaped: one row per model with the paper's metric for each of its tasks (acc;
    acc_norm for HellaSwag and ARC-Challenge) and, where all six were scored, their average."""
    rows = []
    for model, report in r.evaluation.items():
        row = {"model": model, "source": "published checkpoint" if "/" in model else "trained here"}
        for task, metrics in report["results"].items():
            name = paper_task(task)
            if name is not None and PAPER_METRIC[name] in metrics:
                row[f"{name} ({PAPER_METRIC[name]})"] = metrics[PAPER_METRIC[name]]["value"]
        scores = [row[f"{t} ({PAPER_METRIC[t]})"] for t in PAPER_TASKS if f"{t} ({PAPER_METRIC[t]})" in row]
        row["average"] = sum(scores) / len(scores) if len(scores) == len(PAPER_TASKS) else None
        rows.append(row)
    return rows


def paper_size(name: str) -> float:
    """The parameters a paper row's name gives: 'Mamba-130M' -> 1.3e8, 'GPT-Neo 1.3B' -> 1.3e9."""
    size = name.rsplit("-", 1)[-1].rsplit(" ", 1)[-1]
    return float(size[:-1]) * {"M": 1e6, "B": 1e9}[size[-1].upper()]


def _nearest(rows: list[dict], parameters: float, name_of=lambda row: row["model"]) -> dict:
    return min(rows, key=lambda row: abs(math.log(paper_size(name_of(row)) / parameters)))


def _paper_row_for(r: Results, model: str, paper: list[dict]) -> tuple[dict | None, str]:
    """The Table 3 row to set beside a model: a published checkpoint's own (matched by name), or for
    a model trained here the nearest in size of its family (Mamba; Pythia, the paper's Transformer
    with the same data and tokenizer), which it is not comparable with in budget."""
    if "/" in model:
        key = model.split("/", 1)[1].lower().removesuffix("-hf")
        row = next((row for row in paper if row["model"].lower().replace(" ", "-") == key), None)
        return row, "the same checkpoint"
    if model not in r.train:
        return None, ""
    family = "Pythia-" if _arch(model).startswith("transformer") else "Mamba-"
    row = _nearest(
        [row for row in paper if row["model"].startswith(family)], r.train[model]["summary"]["parameters"]
    )
    return row, "not comparable in budget: trained here, nearest paper size"


def table3_vs_paper(r: Results) -> list[dict]:
    """Ours beside the paper's Table 3, per model and task, in points (accuracy in %, LAMBADA's
    perplexity as is), with lm-eval's stderr. ``flag`` marks a published checkpoint's score outside
    both 2 stderr and the +-0.3 points of evaluation noise that the mamba README states."""
    paper, noise = paper_table("table3"), recipe("eval_noise")
    rows = []
    for model, report in r.evaluation.items():
        row, budget = _paper_row_for(r, model, paper)
        if row is None:
            continue
        for task, metrics in report["results"].items():
            name = paper_task(task)
            if name is None:
                continue
            for metric, scale, published in ((PAPER_METRIC[name], 100.0, row[name]),
                                             ("perplexity", 1.0, row.get(f"{name}_ppl"))):  # fmt: skip
                if metric not in metrics or published is None:
                    continue
                ours, stderr = metrics[metric]["value"] * scale, metrics[metric]["stderr"]
                stderr = None if stderr is None else stderr * scale
                difference = ours - published
                tolerance = max(2 * (stderr or 0.0), noise if scale == 100.0 else 0.0)
                flag = "outside noise" if abs(difference) > tolerance else ""
                rows.append({
                    "model": model, "paper row": row["model"], "budget": budget, "task": task,
                    "metric": metric, "ours": ours, "paper": published, "difference": difference,
                    "stderr": stderr, "flag": flag if budget == "the same checkpoint" else "n/a",
                })  # fmt: skip
    return rows


def mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and standard deviation over seeds (0 for one seed); None if any seed has none (out of memory)."""
    if not values or any(v is None for v in values):
        return None, None
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1))


def seed_table(r: Results) -> list[dict]:
    """Each model's final validation loss over its training seeds (train.seeds: its own run and the
    repeats), so one lucky seed is not read as a difference between architectures."""
    rows = []
    for model, repeats in sorted(r.train_seeds.items()):
        runs = ([r.train[model]["summary"]] if model in r.train else []) + repeats
        runs.sort(key=lambda run: run.get("seed", 0))
        losses = [run["final_val_loss"] for run in runs]
        mean, std = mean_std(losses)
        rows.append({
            "model": model, "seeds": ", ".join(str(run.get("seed", 0)) for run in runs),
            "val loss mean": mean, "val loss std": std, "min": min(losses), "max": max(losses),
        })  # fmt: skip
    return rows


def _by_length(runs: list[dict]) -> dict[str, float | None]:
    """Mean accuracy over seeds at each test length."""
    return {
        k: mean_std([run["accuracy_by_length"][k] for run in runs])[0] for k in runs[0]["accuracy_by_length"]
    }


def synthetic_table(r: Results) -> list[dict]:
    """One row per (task, model): its setup and the final accuracy as mean and std over its seeds."""
    rows = []
    for (task, model), runs in sorted(r.synthetic.items()):
        mean, std = mean_std([run["final_accuracy"] for run in runs])
        cfg = runs[0]["config"]
        rows.append({
            "task": task, "model": model, "seeds": len(runs), "train length": cfg["length"],
            "steps": runs[0]["steps"], "accuracy": mean, "std": std, "chance": runs[0]["chance"],
            "train s": round(sum(run["train_seconds"] for run in runs) / len(runs), 1),
        })  # fmt: skip
    return rows


def extrapolation_table(r: Results) -> list[dict]:
    """Table 11 shaped: induction-heads accuracy per test length, mean over seeds (None: out of memory)."""
    return [
        {"model": model, "seeds": len(runs), "train length": runs[0]["config"]["length"], **_by_length(runs)}
        for (task, model), runs in sorted(r.synthetic.items())
        if task == "induction_heads"
    ]


# Which row of the paper's Table 1 (architecture, inner layer) and Table 11 each synthetic arch stands for.
TABLE1_ROWS = {"mamba": ("Mamba", "S6"), "mamba_lti": ("Mamba", "S4")}
TABLE11_ROWS = {"mamba": "Mamba", "transformer": "MHA-RoPE", "transformer_abs": "MHA-Abs"}


def table1_vs_paper(r: Results) -> list[dict]:
    """Selective copying, ours beside Table 1's accuracy for the same architecture and layer (S6:
    selective; S4: time-invariant) where it has one; with each setup, since ours is shrunk."""
    paper = {(row["arch"], row["layer"]): row["accuracy"] for row in paper_table("table1")}
    rows = []
    for (task, model), runs in sorted(r.synthetic.items()):
        if task != "selective_copying":
            continue
        mean, std = mean_std([100 * run["final_accuracy"] for run in runs])
        cfg = runs[0]["config"]
        kind = TABLE1_ROWS.get(cfg["arch"])
        rows.append({
            "model": model, "architecture, layer": ", ".join(kind or ("-", "-")), "ours (%)": mean,
            "std": std, "seeds": len(runs), "paper (%)": paper.get(kind), "train length": cfg["length"],
            "steps": runs[0]["steps"], "paper setup": "length 4096, 400K steps",
        })  # fmt: skip
    return rows


def table11_vs_paper(r: Results) -> list[dict]:
    """Induction heads, accuracy (%) per test length: each of ours, then the paper's row for the same
    kind of model (trained at 256); "x" is out of memory (for ours also: attention not run past
    ``max_attention_length``), None a length the paper did not test."""
    paper = {row["model"]: row for row in paper_table("table11")}
    rows = []
    for (task, model), runs in sorted(r.synthetic.items()):
        if task != "induction_heads":
            continue
        lengths = _by_length(runs)
        rows.append({"model": model, "seeds": len(runs), "train length": runs[0]["config"]["length"],
                     **{k: "x" if v is None else 100 * v for k, v in lengths.items()}})  # fmt: skip
        published = paper.get(TABLE11_ROWS.get(runs[0]["config"]["arch"]))
        if published is not None:
            values = {k: published.get(k) for k in lengths}
            rows.append({"model": f"paper: {published['model']}", "train length": 256,
                         **{k: "x" if v == "oom" else v for k, v in values.items()}})  # fmt: skip
    return rows


def mqar_vs_findings(r: Results) -> tuple[list[dict], str]:
    """MQAR: ours per model (accuracy over seeds, the state size, the setup), and beside it what
    Zoology, Based and Mamba-2 found (``paper_data/mqar_findings.csv``), in words with sources:
    they publish plots, not numbers to set in a column."""
    rows = []
    for (task, model), runs in sorted(r.synthetic.items()):
        if task != "mqar":
            continue
        mean, std = mean_std([run["final_accuracy"] for run in runs])
        cfg = runs[0]["config"]
        rows.append({
            "model": model, "accuracy": mean, "std": std, "seeds": len(runs), "chance": runs[0]["chance"],
            "length": cfg["length"], "pairs": cfg["n_pairs"], "vocab": cfg["vocab"],
            "steps": runs[0]["steps"],
        })  # fmt: skip
    findings = "\n".join(f"- {row['finding']} ({row['source']})" for row in paper_table("mqar_findings"))
    return rows, findings


def recipe_table(r: Results) -> list[dict]:
    """The recipe each model was trained with (summary.json) beside Table 12's nearest size, whose
    learning rate is the improved recipe's multiple of GPT-3's (Appendix E.2.1)."""
    sizes, multiple = paper_table("table12"), recipe("improved_recipe_lr_multiple")
    rows = []
    for model, d in r.train.items():
        summary = d["summary"]
        ours = summary.get("recipe", {})
        size = _nearest(sizes, summary["parameters"], name_of=lambda row: row["params"])
        rows.append({
            "model": model, "parameters": summary["parameters"], "peak lr": ours.get("peak_lr"),
            "warmup steps": ours.get("warmup_steps"), "min lr": ours.get("min_lr"),
            "batch tokens": ours.get("batch_tokens"), "steps": summary["steps"], "tokens": summary["tokens"],
            "paper size": size["params"], "paper lr": size["gpt3_lr"] * multiple,
            "paper warmup steps": recipe("warmup_fraction") * size["steps"], "paper min lr": recipe("min_lr"),
            "paper batch tokens": size["batch_tokens"], "paper steps": size["steps"],
            "paper tokens": size["tokens"],
        })  # fmt: skip
    return rows


def synthetic(r: Results):
    """Accuracy against test length for each task tested at several lengths (log x, the training
    length dashed): the mean over seeds as a line, every seed as a point. Tasks tested at their
    training length alone share one bar panel (the mean, each seed a point)."""
    if not r.synthetic:
        return None
    lengths = {task: set() for task, _ in r.synthetic}
    for (task, _), runs in r.synthetic.items():
        lengths[task] |= {k for run in runs for k, v in run["accuracy_by_length"].items() if v is not None}
    curves = sorted(task for task, found in lengths.items() if len(found) > 1)
    bars = sorted(task for task in lengths if task not in curves)
    panels = len(curves) + bool(bars)
    colors = {model: f"C{i}" for i, model in enumerate(sorted({model for _, model in r.synthetic}))}
    fig, axes = plt.subplots(1, panels, figsize=(4.8 * panels, 3.8), squeeze=False)
    for ax, task in zip(axes[0], curves, strict=False):
        for (t, model), runs in sorted(r.synthetic.items()):
            if t != task:
                continue
            points = sorted((int(k), v) for k, v in _by_length(runs).items() if v is not None)
            ax.plot([p[0] for p in points], [p[1] for p in points], "-", color=colors[model],
                    label=f"{model} ({len(runs)} seeds)")  # fmt: skip
            seeds = [
                (int(k), v) for run in runs for k, v in run["accuracy_by_length"].items() if v is not None
            ]
            ax.plot([p[0] for p in seeds], [p[1] for p in seeds], "o", color=colors[model], alpha=0.6)
            ax.axvline(runs[0]["config"]["length"], color="grey", lw=0.5, ls="--")
        ax.set(xscale="log", ylim=(0, 1.05), xlabel="test length", ylabel="accuracy", title=task)
        _log_axis(ax.xaxis, at=[int(k) for k in lengths[task]])
        ax.legend(fontsize=8)
    if bars:
        ax = axes[0][-1]
        models = sorted({model for task, model in r.synthetic if task in bars})
        width = 0.8 / len(models)
        for i, model in enumerate(models):
            label = model  # on the model's first bar, whichever task that is
            for j, task in enumerate(bars):
                accuracies = [v for run in r.synthetic.get((task, model), [])
                              for v in run["accuracy_by_length"].values() if v is not None]  # fmt: skip
                if accuracies:
                    x = j + (i - (len(models) - 1) / 2) * width
                    ax.bar(x, mean_std(accuracies)[0], width, color=colors[model], label=label)
                    ax.plot([x] * len(accuracies), accuracies, "o", color="black", ms=3)
                    label = None
        ax.set_xticks(range(len(bars)), bars)
        ax.set(ylim=(0, 1.05), ylabel="accuracy", title="at the training length")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def environment_table(r: Results) -> list[dict]:
    """What the results ran on (``env/kernels.json``): the software, and one row per scan backend
    with whether it passed its self-check and its largest relative error against the float64
    reference (each gradient's error stays in the file)."""
    if not r.env:
        return []
    env = r.env
    rows = [{"what": key, "value": str(env.get(key))}
            for key in ("seqarena", "git_commit", "python", "platform", "cpu_threads", "torch", "torch_cuda",
                        "gpu", "gpu_count")]  # fmt: skip
    rows += [{"what": name, "value": version or "not installed"} for name, version in env["packages"].items()]
    for name, backend in env["backends"].items():
        if not backend["available"]:
            value = f"unavailable: {backend['reason']}"
        else:
            verdict = "passed" if backend["passed"] else "FAILED"
            error = backend["max_relative_error"]
            value = f"{verdict}, max relative error {error:.1e} on {backend['device']}"
        rows.append({"what": f"scan backend {name}", "value": value})
    rows.append({"what": "tracking", "value": f"{env.get('tracking')}: {env.get('tracking_uri')}"})
    return rows


def captions(r: Results) -> dict[str, str]:
    """What produced each figure (Markdown: file patterns as code, so their `*` stays a `*`)."""
    devices = sorted({d["summary"].get("device", "?") for d in r.train.values()})
    backends = sorted({str(d["summary"].get("scan_backend")) for d in r.train.values()})
    kernel_devices = sorted({row["device"] for row in r.kernels})
    return {
        "loss_curves": f"Loss curves from `results/train/*/metrics.jsonl` (devices: {', '.join(devices)}; "
        f"scan backends: {', '.join(backends)}).",
        "scaling": "Final validation loss from `results/train/*/summary.json` against parameters and against "
        "training FLOPs (FLOPs per token x tokens).",
        "generation": "Prompt + greedy decoding throughput from `results/bench/generation/*.json` (Mamba: "
        "recurrent state; Transformer++: KV cache).",
        "kernels": f"Median times from `results/bench/kernels.csv` on {', '.join(kernel_devices) or '?'}: "
        "forward and forward+backward.",
        "synthetic": "Accuracy at each test length from `results/synthetic/*/*/seed*.json`: the mean over "
        "seeds (lines) and each seed (points); dashed: the training length. Mamba is evaluated through its "
        "recurrent step path, Transformer++ by full attention.",
    }


FIGURES = {
    "loss_curves": loss_curves, "scaling": scaling, "generation": generation, "kernels": kernels,
    "synthetic": synthetic,
}  # fmt: skip


def save_figures(results_dir: Path, out_dir: Path) -> list[Path]:
    """Each figure whose inputs exist as ``<out_dir>/<name>.png`` (for ``snakemake --report``).

    The folder is written beside and renamed into place, so it is never seen half-written.
    """
    import shutil
    import tempfile

    from seqarena.models.base import current_umask

    r = collect(results_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        for name, draw in FIGURES.items():
            fig = draw(r)
            if fig is not None:
                fig.savefig(tmp / f"{name}.png", dpi=100)
                plt.close(fig)
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp's folder is owner-only
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(out_dir.glob("*.png"))


def render(notebook: Path, results_dir: Path, out_ipynb: Path, out_html: Path) -> None:
    """Execute the notebook with papermill (kernel python3), then export HTML with images inlined and
    without the code: a reader sees the tables, figures and text (the .ipynb keeps the code)."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    from seqarena.models.base import atomic_write

    def execute(tmp):
        papermill.execute_notebook(
            str(notebook), tmp, parameters={"results_dir": str(Path(results_dir).resolve())},
            kernel_name="python3", progress_bar=False,
        )  # fmt: skip

    atomic_write(Path(out_ipynb), execute)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    html, _ = exporter.from_notebook_node(nbformat.read(str(out_ipynb), as_version=4))
    atomic_write(Path(out_html), lambda tmp: Path(tmp).write_text(html))
