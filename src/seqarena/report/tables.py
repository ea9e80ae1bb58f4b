"""The report's tables of our own results: one list of row dicts per table, for pandas to show."""

import math

from seqarena.models import matched_model
from seqarena.models.families import FAMILIES, family_name
from seqarena.paper import PAPER_METRIC, PAPER_TASKS, paper_task
from seqarena.report.results import Results

# Accuracy of a uniform guess per Table 3 task: 1 / number of choices (ARC's questions have 4, a few
# 3 or 5); LAMBADA's target is one word out of the whole vocabulary, so its chance is about 0.
CHANCE_ACCURACY = {
    "lambada_openai": 0.0,
    "hellaswag": 0.25,
    "piqa": 0.5,
    "arc_easy": 0.25,
    "arc_challenge": 0.25,
    "winogrande": 0.5,
}


def eval_table(r: Results) -> list[dict]:
    """One row per (model, task): each metric's value and lm-eval's stderr, beside the accuracy of
    a uniform guess (``chance acc``) where the task is one of Table 3's; ``source`` says whether
    the model was trained here or is a published checkpoint (``eval.pretrained``)."""
    rows = []
    for model, report in r.evaluation.items():
        for task, metrics in report["results"].items():
            row = {
                "model": model,
                "source": "published checkpoint" if "/" in model else "trained here",
                "task": task,
            }
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


def mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and standard deviation (n - 1) over seeds; no deviation from one seed (it is unknown,
    not 0); neither if any seed has none (out of memory)."""
    if not values or any(v is None for v in values):
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def seed_table(r: Results) -> list[dict]:
    """Each model's final validation loss over its training seeds (train.seeds: its own run and the
    repeats), so one lucky seed is not read as a difference between architectures."""
    rows = []
    for model in sorted(r.train_seeds):
        runs = r.seed_runs(model)
        losses = [run["final_val_loss"] for run in runs]
        mean, std = mean_std(losses)
        rows.append(
            {
                "model": model,
                "seeds": ", ".join(str(run.get("seed", 0)) for run in runs),
                "val loss mean": mean,
                "val loss std": std,
                "min": min(losses),
                "max": max(losses),
            }
        )
    return rows


def by_length(runs: list[dict]) -> dict[str, float | None]:
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
        rows.append(
            {
                "task": task,
                "model": model,
                "seeds": len(runs),
                "train length": cfg["length"],
                "steps": runs[0]["steps"],
                "accuracy": mean,
                "std": std,
                "chance": runs[0]["chance"],
                "train s": round(sum(run["train_seconds"] for run in runs) / len(runs), 1),
            }
        )
    return rows


def extrapolation_table(r: Results) -> list[dict]:
    """Table 11 shaped: induction-heads accuracy per test length, mean over seeds (None: out of memory)."""
    return [
        {"model": model, "seeds": len(runs), "train length": runs[0]["config"]["length"], **by_length(runs)}
        for (task, model), runs in sorted(r.synthetic.items())
        if task == "induction_heads"
    ]


def validation_notes(r: Results) -> str:
    """Models whose validation loss was averaged over different numbers of windows in one run (a
    resume after ``eval_windows`` changed): the curve's points before and after are not alike
    (Markdown; empty when every run kept its windows)."""
    lines = []
    for model, data in sorted(r.train.items()):
        spans = []  # [windows, first step, last step]
        for row in data["metrics"]:
            if "val_windows" not in row:
                continue
            if spans and spans[-1][0] == row["val_windows"]:
                spans[-1][2] = row["step"]
            else:
                spans.append([row["val_windows"], row["step"], row["step"]])
        if len(spans) > 1:
            each = ", then ".join(f"{w} windows at steps {a}-{b}" for w, a, b in spans)
            lines.append(
                f"- **{model}**: validation loss on {each} (`train.eval_windows` changed on a resume)."
            )
    return "\n".join(lines)


def generation_notes(r: Results) -> str:
    """Mamba's generation throughput over its Transformer++ (``matched_model``: the paper's pairs,
    130m beside 125m), per batch, in words;
    and, where Mamba is the slower, why that is expected on a CPU at these sizes (Markdown)."""
    lines, slower = [], False
    for model, data in sorted(r.generation.items()):
        arch = family_name(model)
        if arch not in FAMILIES or not FAMILIES[arch].has_ssm_state:
            continue
        partner = matched_model(model, "transformer")  # mamba-130m's is transformer-125m
        other = r.generation.get(partner)
        if other is None:
            continue
        theirs = {x["batch"]: x["tokens_per_s"] for x in other["results"] if not x["oom"]}
        ratios = [
            (x["batch"], x["tokens_per_s"] / theirs[x["batch"]])
            for x in data["results"]
            if not x["oom"] and x["batch"] in theirs
        ]
        if ratios:
            slower |= any(ratio < 1 for _, ratio in ratios)
            each = ", ".join(f"{ratio:.2f}x at batch {batch}" for batch, ratio in ratios)
            graphs = ", a CUDA graph a step" if data.get("cuda_graph") else ""
            setup = f"prompt {data['prompt_len']}, {data['new_tokens']} new tokens, {data['device']}{graphs}"
            line = f"- **{model}**: {each} the tokens/s of {partner} ({setup})"
            ours, kv = data.get("cache_bytes_per_sequence"), other.get("cache_bytes_per_sequence")
            if ours and kv:  # files written before the field lack it
                line += (
                    f"; its cache holds {ours / 2**10:,.0f} KiB per sequence at any length, the KV "
                    f"cache {kv / 2**10:,.0f} KiB at this one, growing with it"
                )
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


def environment_table(r: Results) -> list[dict]:
    """What the results ran on (``env/kernels.json``): the software, and one row per scan backend
    with whether it passed its self-check and its largest relative error against the float64
    reference (each gradient's error stays in the file)."""
    if not r.env:
        return []
    env = r.env
    rows = [
        {"what": key, "value": str(env.get(key))}
        for key in (
            "seqarena",
            "git_commit",
            "python",
            "platform",
            "cpu_threads",
            "torch",
            "torch_cuda",
            "gpu",
            "gpu_count",
        )
    ]
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


def scaling_notes(r: Results) -> str:
    """The scaling fits in words (Markdown): each family's exponent over compute with its interval
    and what stands behind it, or why it has none; Transformer++'s compute multiplier against each
    other family at its sizes, or that the two are not distinguishable at this budget (every pair:
    ``multiplier_table``)."""
    if not r.scaling:
        return ""
    lines = []
    for name, family in r.scaling["families"].items():
        behind = f"{len(family['sizes'])} sizes, {len(family['seeds'])} seed(s), {family['points']} runs"
        if family.get("fit", True) is None:
            lines.append(f"- **{name}**: no fit: {family['why']}.")
            continue
        law = family["flops"]
        low, high = law["alpha_interval"]
        lines.append(
            f"- **{name}**: L = {law['E']:.3g} + {law['A']:.3g} C^-{law['alpha']:.3f} over training FLOPs C; "
            f"alpha {law['alpha']:.3f}, 95% interval {low:.3f} to {high:.3f} ({behind})."
        )
    for pair in r.scaling["multipliers"]:
        if pair["family"] != "transformer":
            continue
        for row in pair["at"]:
            low, high = row["interval"]
            if row["distinguishable"]:
                verdict = f"{row['multiplier']:.2f}x the compute (95% interval {low:.2f} to {high:.2f}x)"
            else:
                verdict = f"not distinguishable at this budget ({low:.2f} to {high:.2f}x holds 1)"
            beyond = (
                f" (past {pair['family']}'s largest run: its law extrapolated)" if row["extrapolated"] else ""
            )
            lines.append(
                f"- {pair['family']} to reach {pair['against']}'s loss at {row['model']}: {verdict}{beyond}."
            )
    return "\n".join(lines)


def multiplier_table(r: Results) -> list[dict]:
    """Every pair's compute multiplier: the compute ``needs`` takes to reach ``reaches``'s fitted loss
    at each of its sizes, over that size's compute (above 1: more), with its interval."""
    rows = []
    for pair in (r.scaling or {}).get("multipliers", []):
        for row in pair["at"]:
            low, high = row["interval"]
            rows.append(
                {
                    "needs": pair["family"],
                    "to reach the loss of": row["model"],
                    "compute multiplier": row["multiplier"],
                    "95% interval": f"{low:.2f} to {high:.2f}",
                    "distinguishable from 1": row["distinguishable"],
                    "extrapolated past its runs": row["extrapolated"],
                }
            )
    return rows
