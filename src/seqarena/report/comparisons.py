"""Our results beside the papers': Table 3, Table 1, Table 11, Table 12's recipe, and MQAR's findings.

The published numbers are ``seqarena.paper``'s data, each with its source.
"""

import math

from seqarena.models import SIZES, matched_model, parse_model_id
from seqarena.models.families import FAMILIES, family_name
from seqarena.paper import PAPER_METRIC, paper_table, paper_task, recipe
from seqarena.report.results import Results
from seqarena.report.tables import by_length, mean_std


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
    family = FAMILIES[family_name(model)].paper_family + "-"
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
            for metric, scale, published in (
                (PAPER_METRIC[name], 100.0, row[name]),
                ("perplexity", 1.0, row.get(f"{name}_ppl")),
            ):
                if metric not in metrics or published is None:
                    continue
                ours, stderr = metrics[metric]["value"] * scale, metrics[metric]["stderr"]
                stderr = None if stderr is None else stderr * scale
                difference = ours - published
                tolerance = max(2 * (stderr or 0.0), noise if scale == 100.0 else 0.0)
                flag = "outside noise" if abs(difference) > tolerance else ""
                rows.append(
                    {
                        "model": model,
                        "paper row": row["model"],
                        "budget": budget,
                        "task": task,
                        "metric": metric,
                        "ours": ours,
                        "paper": published,
                        "difference": difference,
                        "stderr": stderr,
                        "flag": flag if budget == "the same checkpoint" else "n/a",
                    }
                )
    return rows


def table3_vs_paper_by_budget(r: Results) -> tuple[list[dict], list[dict]]:
    """``table3_vs_paper`` in two: published checkpoints beside their own rows (comparable), and
    models trained here beside the nearest paper size, without a difference or flag (a number that
    compares minutes on a CPU with 300B tokens would only mislead)."""
    rows = table3_vs_paper(r)
    same = [row for row in rows if row["budget"] == "the same checkpoint"]
    other = [
        {k: v for k, v in row.items() if k not in ("budget", "difference", "flag")}
        for row in rows
        if row["budget"] != "the same checkpoint"
    ]
    return same, other


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
        rows.append(
            {
                "model": model,
                "architecture, layer": ", ".join(kind or ("-", "-")),
                "ours (%)": mean,
                "std": std,
                "seeds": len(runs),
                "paper (%)": paper.get(kind),
                "train length": cfg["length"],
                "steps": runs[0]["steps"],
                "paper setup": "length 4096, 400K steps",
            }
        )
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
        lengths = by_length(runs)
        rows.append(
            {
                "model": model,
                "seeds": len(runs),
                "train length": runs[0]["config"]["length"],
                **{k: "x" if v is None else 100 * v for k, v in lengths.items()},
            }
        )
        published = paper.get(TABLE11_ROWS.get(runs[0]["config"]["arch"]))
        if published is not None:
            values = {k: published.get(k) for k in lengths}
            rows.append(
                {
                    "model": f"paper: {published['model']}",
                    "train length": 256,
                    **{k: "x" if v == "oom" else v for k, v in values.items()},
                }
            )
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
        rows.append(
            {
                "model": model,
                "accuracy": mean,
                "std": std,
                "seeds": len(runs),
                "chance": runs[0]["chance"],
                "length": cfg["length"],
                "pairs": cfg["n_pairs"],
                "vocab": cfg["vocab"],
                "steps": runs[0]["steps"],
            }
        )
    findings = "\n".join(f"- {row['finding']} ({row['source']})" for row in paper_table("mqar_findings"))
    return rows, findings


def _table12_row(model: str, parameters: int, sizes: list[dict]) -> tuple[dict | None, str]:
    """The Table 12 row a model trained here is set beside, and why: a paper size's own (its
    Transformer++ partner's size: Table 12 lists those), none past 1.3B, the nearest for a CPU size."""
    arch, size = parse_model_id(model)
    if SIZES[arch][size].nominal_params is None:
        return _nearest(sizes, parameters, name_of=lambda row: row["params"]), "nearest (a CPU size)"
    partner = matched_model(model, "transformer")
    partner_size = parse_model_id(partner)[1] if partner else size
    own = next((row for row in sizes if row["params"].lower() == partner_size), None)
    return own, "its own size" if own else f"none: Table 12 has no {partner_size.upper()} row"


def recipe_table(r: Results) -> list[dict]:
    """The recipe each model was trained with (summary.json) beside its Table 12 row (``_table12_row``),
    whose learning rate is the improved recipe's multiple of GPT-3's (Appendix E.2.1)."""
    sizes, multiple = paper_table("table12"), recipe("improved_recipe_lr_multiple")
    rows = []
    for model, d in r.train.items():
        summary = d["summary"]
        ours = summary.get("recipe", {})
        size, which = _table12_row(model, summary["parameters"], sizes)
        paper = (
            {
                "paper size": size["params"],
                "paper lr": size["gpt3_lr"] * multiple,
                "paper warmup steps": recipe("warmup_fraction") * size["steps"],
                "paper min lr": recipe("min_lr"),
                "paper batch tokens": size["batch_tokens"],
                "paper steps": size["steps"],
                "paper tokens": size["tokens"],
            }
            if size
            else {}
        )
        rows.append(
            {
                "model": model,
                "parameters": summary["parameters"],
                "peak lr": ours.get("peak_lr"),
                "warmup steps": ours.get("warmup_steps"),
                "min lr": ours.get("min_lr"),
                "batch tokens": ours.get("batch_tokens"),
                "steps": summary["steps"],
                "tokens": summary["tokens"],
                "paper row": which,
                **paper,
            }
        )
    return rows
