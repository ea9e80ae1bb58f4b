"""The report's opening: what the results show, a sentence or two per section, each number from
the result files and each claim with what stands behind it (seeds, sizes, setup)."""

from seqarena.models import matched_model
from seqarena.models.families import FAMILIES, family_name
from seqarena.paper import paper_task
from seqarena.report.format import cell
from seqarena.report.results import Results
from seqarena.report.tables import CHANCE_ACCURACY, mean_std

GAP = 1.05  # validation loss this far above training loss is worth a sentence


def _losses(r: Results, model: str) -> list[float]:
    """The final validation loss of a model's own run and of its repeats at other seeds."""
    return [run["final_val_loss"] for run in r.seed_runs(model)]


def _data(r: Results) -> str:
    if not r.data:
        return ""
    parts = []
    for name, meta in sorted(r.data.items()):
        source = meta["source"]
        if source["kind"] == "python_stdlib":
            what = (
                f"the Python {source['python']} standard library's {source['files']:,} source files (a code "
                "corpus: losses fall as power laws of compute on code as on prose, but with code's own "
                "exponents, so compare the families here with each other, not with the paper's Pile numbers)"
            )
        elif source["kind"] == "embedded":
            what = f"`{source['path']}` (shipped with the package)"
        else:
            what = f"`{source['path']}`"
        parts.append(
            f"`{name}`: {what}, {cell(meta['train_tokens'])} training and {cell(meta['val_tokens'])} "
            f"validation tokens ({meta['validation']})"
        )
    line = "**Data.** " + "; ".join(parts) + "."
    passes = [p for p in (_passes(r, m) for m in r.train) if p is not None]
    if passes:
        line += f" The longest run reads the training tokens {max(passes):.2f} times."
    return line


def _loss_pairs(r: Results) -> str:
    """Each SSM model beside the Transformer++ the papers pair it with, by final validation loss."""
    lines, lower, single = [], 0, []
    for model in r.models_by_family():
        family = family_name(model)
        if family not in FAMILIES or not FAMILIES[family].has_ssm_state:
            continue
        partner = matched_model(model, "transformer")
        if partner not in r.train:
            continue
        ours, theirs = _losses(r, model), _losses(r, partner)
        (mean, _), (other, _) = mean_std(ours), mean_std(theirs)
        lower += mean < other
        line = f"{model} {mean:.3f} against {partner} {other:.3f}"
        if len(ours) > 1 and len(theirs) > 1:
            separated = max(ours) < min(theirs) or min(ours) > max(theirs)
            verdict = (
                "every seed on one side" if separated else "the seeds' ranges overlap: not distinguishable"
            )
            line += f" ({len(ours)} and {len(theirs)} seeds; {verdict})"
        else:
            single.append(model)
        lines.append(line)
    if not lines:
        return ""
    text = (
        f"**Validation loss** (nats per token, lower is better): an SSM is lower than its Transformer++ at "
        f"{lower} of {len(lines)} matched sizes: " + "; ".join(lines) + "."
    )
    spreads = {m: max(x) - min(x) for m in r.train if len(x := _losses(r, m)) > 1}  # repeated models
    if single and not spreads:
        text += " With one seed a pair, a difference this size may be seed noise (`train.seeds`: repeats)."
    elif single:
        widest = max(spreads, key=spreads.get)
        text += (
            f" Where a side has one seed ({', '.join(single)}), a difference may be seed noise: the "
            f"repeated models' seeds span up to {spreads[widest]:.3f} ({widest})."
        )
    return text


def _passes(r: Results, model: str) -> float | None:
    """How many times a model read the training tokens (known where one dataset was trained on)."""
    if len(r.data) != 1:
        return None
    return r.train[model]["summary"]["tokens"] / next(iter(r.data.values()))["train_tokens"]


def _validation_gap(r: Results) -> str:
    """Models whose validation loss ends well above their training loss, and the likelier reason:
    more than one pass over the data (fitting the training text), or a held-out text unlike it."""
    gap = sorted(
        m
        for m, d in r.train.items()
        if d["summary"]["final_val_loss"] > GAP * d["summary"]["final_train_loss"]
    )
    if not gap:
        return ""
    line = f"Validation loss ends more than {GAP - 1:.0%} above training loss for {', '.join(gap)}"
    passes = [p for p in (_passes(r, m) for m in gap) if p is not None]
    if passes and max(passes) > 1.5:
        return line + f": they read the training tokens up to {max(passes):.1f} times, and fit them better."
    if passes:
        validation = next(iter(r.data.values()))["validation"]
        return line + (
            f", though none read the training tokens more than {max(passes):.2f} times: the held-out text "
            f"({validation}) is unlike the training text, not memorised."
        )
    return line + "."


def _scaling(r: Results) -> str:
    if not r.scaling:
        return ""
    fitted = {n: f for n, f in r.scaling["families"].items() if f.get("fit", True) is not None}
    unfitted = sorted(set(r.scaling["families"]) - set(fitted))
    parts = []
    for name, family in fitted.items():
        low, high = family["flops"]["alpha_interval"]
        parts.append(f"{name} alpha {family['flops']['alpha']:.3f} ({low:.3f} to {high:.3f})")
    line = ""
    if parts:
        line = (
            "**Scaling** (L = E + A C^-alpha over training FLOPs, 95% intervals): " + "; ".join(parts) + "."
        )
    for pair in r.scaling["multipliers"]:
        if pair["family"] != "transformer" or not pair["at"]:
            continue
        within = [row for row in pair["at"] if not row["extrapolated"]]
        shown = within[-1:] + ([pair["at"][-1]] if pair["at"][-1]["extrapolated"] else [])
        parts = [_multiplier(row) for row in shown]
        line += f" To reach {pair['against']}'s loss, Transformer++ needs " + "; ".join(parts) + "."
    if unfitted:
        line += f" No fit for {', '.join(unfitted)} (fewer than 3 sizes)."
    return line.strip()


def _multiplier(row: dict) -> str:
    """One row of a compute multiplier in words, saying where the other family's law extrapolates."""
    low, high = row["interval"]
    if row["distinguishable"]:
        verdict = f"{row['multiplier']:.2f}x the compute ({low:.2f} to {high:.2f}x)"
    else:
        verdict = f"a multiplier not distinguishable from 1 at this budget ({low:.2f} to {high:.2f}x)"
    beyond = ", past its own largest run: its law extrapolated" if row["extrapolated"] else ""
    return f"at {row['model']} {verdict}{beyond}"


def _evaluation(r: Results) -> str:
    """Whether the models trained here score above a uniform guess, task by task."""
    above, scored = [], 0
    for model, result in sorted(r.evaluation.items()):
        if "/" in model:  # a published checkpoint: the Table 3 comparison speaks for it
            continue
        for task, metrics in result["results"].items():
            chance = CHANCE_ACCURACY.get(paper_task(task))
            if chance is None or "acc" not in metrics:
                continue
            scored += 1
            acc, stderr = metrics["acc"]["value"], metrics["acc"]["stderr"] or 0.0
            if acc - 2 * stderr > chance:
                above.append(f"{model} on {task} ({acc:.3f}, chance {chance:.2f})")
    if not scored:
        return ""
    if not above:
        return (
            f"**Zero-shot evaluation**: all {scored} scores of the models trained here are within 2 stderr "
            "of chance, as expected of models this small and this briefly trained."
        )
    return f"**Zero-shot evaluation**: above chance by more than 2 stderr: {'; '.join(above)}."


def _kernels(r: Results) -> str:
    """At the longest length, each SSM op's fastest backend against causal attention, forward."""
    forward = [row for row in r.kernels if row["pass"] == "fwd"]
    if not forward:
        return ""
    longest = max(int(row["seq_len"]) for row in forward)
    at = [row for row in forward if int(row["seq_len"]) == longest]
    attention = [float(row["median_ms"]) for row in at if row["op"] == "attention"]
    if not attention:
        return ""
    ops = {}
    for row in at:
        if row["op"] in ("scan", "ssd", "mamba3"):
            ops[row["op"]] = min(ops.get(row["op"], float("inf")), float(row["median_ms"]))
    names = {"scan": "Mamba's selective scan", "ssd": "Mamba-2's SSD", "mamba3": "Mamba-3's SSM"}
    parts = [f"{names[op]} {attention[0] / ms:.2f}x" for op, ms in sorted(ops.items())]
    return (
        f"**Kernels** at length {longest:,} on {at[0]['device']}, forward, the speed of causal attention's "
        f"{attention[0]:.3g} ms: " + ", ".join(parts) + " (above 1: faster than attention)."
    )


def _synthetic(r: Results) -> str:
    if not r.synthetic:
        return ""
    tasks = sorted({task for task, _ in r.synthetic})
    parts = []
    for task in tasks:
        runs = {model: rs for (t, model), rs in r.synthetic.items() if t == task}
        scores = {model: mean_std([run["final_accuracy"] for run in rs])[0] for model, rs in runs.items()}
        ranked = sorted(scores, key=lambda m: -scores[m])
        each = ", ".join(f"{m} {scores[m]:.2f}" for m in ranked)
        seeds = sorted({len(rs) for rs in runs.values()})
        parts.append(f"{task}: {each} ({'/'.join(map(str, seeds))} seed(s))")
    return "**Synthetic tasks** (accuracy at the training length, mean over seeds): " + "; ".join(parts) + "."


def summary(r: Results) -> str:
    """The opening section in Markdown: a paragraph per kind of result present."""
    paragraphs = [
        _data(r),
        " ".join(p for p in (_loss_pairs(r), _validation_gap(r)) if p),
        _scaling(r),
        _evaluation(r),
        _kernels(r),
        _synthetic(r),
    ]
    return "\n\n".join(p for p in paragraphs if p) or "*No results yet.*"
