"""The report's figures, each registered with what it is drawn from and its caption (``FIGURES``).

A figure is a function of the gathered ``Results`` that returns a matplotlib figure, or None when
its inputs are missing; adding one is that function and one ``FIGURES`` entry.
"""

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

from seqarena.files import atomic_write
from seqarena.models import parse_model_id
from seqarena.models.families import family_name
from seqarena.report.format import counted
from seqarena.report.results import Results, collect
from seqarena.report.tables import by_length, mean_std
from seqarena.scaling import MIN_SIZES

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _compact(value: float, _position=None) -> str:
    """4096 -> 4096, 140000 -> 140k, 2.4e9 -> 2.4G, 5e13 -> 50T: short tick labels in SI units up
    to Z (whole numbers below 100k as they are: lengths and batch sizes are powers of two)."""
    if value == int(value) and abs(value) < 1e5:
        return f"{int(value)}"
    units = (("Z", 1e21), ("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))
    for unit, scale in units:
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _compact_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(_compact)


def _log_axis(axis, at=None) -> None:
    """A log axis labelled with short plain numbers: at ``at`` (the measured values; of values
    within 10% of each other only the first) if given, else at 1, 2 and 5 times each power of
    ten; no minor labels (on a narrow range matplotlib's overlap)."""
    from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter

    ticks = []
    for value in sorted(set(at or [])):
        if not ticks or value > 1.1 * ticks[-1]:
            ticks.append(value)
    axis.set_major_locator(FixedLocator(ticks) if ticks else LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(_compact_formatter())
    axis.set_minor_formatter(NullFormatter())


# One colour per family in every figure, so a reader groups by architecture at a glance (tested
# to name every family of models.families.FAMILIES).
FAMILY_COLOURS = {
    "mamba": "C0",
    "transformer": "C1",
    "mamba2": "C2",
    "hybrid": "C3",
    "mamba3": "C4",
    "mamba_lti": "C5",
    "transformer_abs": "C6",
    "mamba3_mimo": "C9",
}


def model_colours(models_by_size: list[str]) -> dict[str, tuple]:
    """A colour per model: its family's, lighter for a family's smaller sizes (``models_by_size``
    is in ascending size), the largest in the family's own colour."""
    from matplotlib.colors import to_rgb

    colours = {}
    for family in dict.fromkeys(family_name(m) for m in models_by_size):
        mine = [m for m in models_by_size if family_name(m) == family]
        base = np.array(to_rgb(FAMILY_COLOURS[family]))
        for rank, model in enumerate(mine):
            lighten = 0.6 * (len(mine) - 1 - rank) / max(1, len(mine) - 1)
            colours[model] = tuple(base + (1 - base) * lighten)
    return colours


# Line styles by size, the largest solid: a size has one style in every family.
SIZE_LINESTYLES = ("-", "--", "-.", ":")


def size_linestyles(models_by_size: list[str]) -> dict[str, str]:
    """A line style per model by its size's name (mamba-tiny and transformer-tiny alike), the
    largest size (last in ``models_by_size``, ascending) solid; past four sizes the styles repeat."""
    size = {m: parse_model_id(m)[1] for m in models_by_size}
    largest_first = list(dict.fromkeys(size[m] for m in reversed(models_by_size)))
    return {m: SIZE_LINESTYLES[largest_first.index(size[m]) % len(SIZE_LINESTYLES)] for m in models_by_size}


def _by_size(r: Results, models) -> list[str]:
    """Trained models in ascending parameters (others by name, after them)."""
    size = {m: d["summary"]["parameters"] for m, d in r.train.items()}
    return sorted(models, key=lambda m: (m not in size, size.get(m, 0), m))


SMOOTHING = 50  # a training curve is averaged over 1/SMOOTHING of its steps (each step is one batch)


def smoothed(values: list[float]) -> np.ndarray:
    """An exponential moving average over about 1/SMOOTHING of the values (none for fewer than
    2 * SMOOTHING), debiased so that it starts at the first value, as TensorBoard's does."""
    span = len(values) // SMOOTHING
    if span < 2:
        return np.asarray(values, dtype=float)
    decay, average, out = 1 - 2 / (span + 1), 0.0, []
    for i, value in enumerate(values, start=1):
        average = decay * average + (1 - decay) * value
        out.append(average / (1 - decay**i))
    return np.asarray(out)


def loss_curves_figure(
    curves: dict[str, list[dict]], title: str, colours: dict | None = None, linestyles: dict | None = None
):
    """Training loss (line, ``smoothed``) and validation loss (hollow dots) against tokens seen (rows
    of metrics.jsonl per name), in ``colours`` and ``linestyles`` where given."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, rows in curves.items():
        colour, style = (colours or {}).get(name), (linestyles or {}).get(name, "-")
        tokens, loss = [x["tokens"] for x in rows], smoothed([x["loss"] for x in rows])
        line = ax.plot(tokens, loss, style, label=name, color=colour)[0]
        val = [x for x in rows if "val_loss" in x]
        ax.plot(
            [x["tokens"] for x in val],
            [x["val_loss"] for x in val],
            "o",
            ms=4,
            mfc="white",
            color=line.get_color(),
        )
    ax.set(xlabel="tokens", ylabel="loss (nats/token)", title=title)
    ax.xaxis.set_major_formatter(_compact_formatter())
    ax.legend(fontsize=7, ncol=2 if len(curves) > 8 else 1)
    fig.tight_layout()
    return fig


def loss_curves(r: Results):
    """Every model's loss curves (training: lines, validation: dots), coloured by family, a line
    style per size."""
    if not r.train:
        return None
    models = _by_size(r, r.train)
    curves = {model: r.train[model]["metrics"] for model in models}
    title = "Training (lines) and validation (dots) loss; darker and solid: larger"
    return loss_curves_figure(curves, title, model_colours(models), size_linestyles(models))


def scaling(r: Results):
    """Figure 4's shape: final validation loss against training FLOPs and against parameters
    (log-log), every trained model and seed as a point, and per family with a fit its law (line)
    and the law's bootstrap interval (band); a family without one says so in the legend."""
    if not r.train:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    summaries = [d["summary"] for d in r.train.values()] + [
        s for runs in r.train_seeds.values() for s in runs
    ]
    families = (r.scaling or {}).get("families", {})
    fitted = False
    for arch in sorted({family_name(s["model"]) for s in summaries}):
        mine = [s for s in summaries if family_name(s["model"]) == arch]
        sizes = len({s["model"] for s in mine})
        laws = {axis: families.get(arch, {}).get(axis) for axis in ("flops", "parameters")}
        label = arch if any(laws.values()) else f"{arch} (no law: {counted(sizes, 'size')})"
        for ax, (axis, law) in zip(axes, laws.items(), strict=True):
            xs = [s["flops_per_token"] * s["tokens"] if axis == "flops" else s["parameters"] for s in mine]
            (dots,) = ax.plot(
                xs, [s["final_val_loss"] for s in mine], "o", label=label, color=FAMILY_COLOURS[arch]
            )
            if law:
                fitted = True
                curve = law["curve"]
                ax.plot(curve["x"], curve["loss"], "-", color=dots.get_color())
                low, high = zip(*curve["interval"], strict=True)
                ax.fill_between(curve["x"], low, high, color=dots.get_color(), alpha=0.2, linewidth=0)
    for ax, xlabel in zip(axes, ["training FLOPs", "parameters"], strict=True):
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="final validation loss (nats/token)")
        _log_axis(ax.xaxis)
        _log_axis(ax.yaxis)
        ax.legend()
    if fitted:
        level = r.scaling["level"]
        fig.suptitle(
            f"Scaling: final validation loss (lines: fitted laws; bands: their {level:.0%} intervals)"
        )
    else:
        fig.suptitle(
            f"Scaling: final validation loss (no law fitted: a law needs {MIN_SIZES} sizes of a family)"
        )
    fig.tight_layout()
    return fig


def generation(r: Results):
    """Generation throughput (tokens/s, prompt + decoding) against batch size."""
    if not r.generation:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    batches, models = [], _by_size(r, r.generation)
    colours = model_colours(models)
    for model in models:
        ok = [x for x in r.generation[model]["results"] if not x["oom"]]
        ax.plot(
            [x["batch"] for x in ok], [x["tokens_per_s"] for x in ok], "o-", label=model, color=colours[model]
        )
        batches += [x["batch"] for x in ok]
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="tokens/s", title="Generation throughput")
    _log_axis(ax.xaxis, at=batches)
    _log_axis(ax.yaxis)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def kernels(r: Results):
    """Mamba-1's scan, Mamba-2's SSD and Mamba-3's SSM per backend, causal attention and the paper's
    baselines (the PyTorch parallel scan, the FFT convolution): time against sequence length,
    log-log, the forward pass and forward+backward side by side, each op its own colour in both."""
    if not r.kernels:
        return None
    passes = {"fwd": "forward", "fwd+bwd": "forward + backward"}
    series: dict[tuple[str, str], list] = {}
    for row in r.kernels:
        series.setdefault((f"{row['op']} ({row['backend']})", row["pass"]), []).append(
            (int(row["seq_len"]), float(row["median_ms"]))
        )
    ops = sorted({op for op, _ in series})
    palette = plt.get_cmap("tab10" if len(ops) <= 10 else "tab20").colors
    fig, axes = plt.subplots(1, len(passes), figsize=(9, 4), sharey=True)
    for ax, (key, title) in zip(axes, passes.items(), strict=True):
        for i, op in enumerate(ops):
            points = sorted(series.get((op, key), []))
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=palette[i], label=op)
        ax.set(xscale="log", yscale="log", xlabel="sequence length", title=title)
        _log_axis(ax.xaxis, at=[int(row["seq_len"]) for row in r.kernels])
        _log_axis(ax.yaxis)
    axes[0].set_ylabel("ms")
    axes[0].legend(fontsize=7)
    fig.suptitle("Mamba's scans (Mamba-1, Mamba-2's SSD, Mamba-3) vs attention and the paper's baselines")
    fig.tight_layout()
    return fig


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
    d_model = {model: runs[0]["config"]["d_model"] for (_, model), runs in r.synthetic.items()}
    colors = model_colours(sorted(d_model, key=lambda m: (d_model[m], m)))
    fig, axes = plt.subplots(1, panels, figsize=(4.8 * panels, 3.8), squeeze=False)
    for ax, task in zip(axes[0], curves, strict=False):
        for (t, model), runs in sorted(r.synthetic.items()):
            if t != task:
                continue
            points = sorted((int(k), v) for k, v in by_length(runs).items() if v is not None)
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                "-",
                color=colors[model],
                label=f"{model} ({counted(len(runs), 'seed')})",
            )
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
                accuracies = [
                    v
                    for run in r.synthetic.get((task, model), [])
                    for v in run["accuracy_by_length"].values()
                    if v is not None
                ]
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


def _train_caption(r: Results) -> str:
    """Where the models trained, and with which kernels the SSMs did (attention has no scan)."""
    devices = sorted({d["summary"].get("device", "?") for d in r.train.values()})
    backends = sorted(
        {d["summary"]["scan_backend"] for d in r.train.values() if d["summary"].get("scan_backend")}
    )
    kernels = f"; the SSMs' scan backend: {', '.join(backends)}" if backends else ""
    return (
        f"Loss curves, trained on {', '.join(devices)}{kernels}. Training loss is a moving average over "
        f"1/{SMOOTHING} of each run's steps (a step's own loss is one batch's); validation is unsmoothed."
    )


def _kernels_caption(r: Results) -> str:
    devices = sorted({row["device"] for row in r.kernels})
    return (
        f"Median times on {', '.join(devices) or '?'}: the forward pass (left) and forward+backward (right)."
    )


@dataclass(frozen=True)
class Figure:
    """A report figure: how it is drawn, the result files it is drawn from, and its caption
    (Markdown; ``caption`` may say what the results themselves record)."""

    draw: Callable[[Results], object]
    source: str
    caption: Callable[[Results], str]


FIGURES = {
    "loss_curves": Figure(loss_curves, "results/train/*/metrics.jsonl", _train_caption),
    "scaling": Figure(
        scaling,
        "results/train/*/summary.json and results/scaling/fits.json",
        lambda r: (
            "Final validation loss against training FLOPs (FLOPs per token x tokens) and against parameters; "
            f"a family with {MIN_SIZES} sizes or more has its fitted law L = E + A x^-alpha and its interval."
        ),
    ),
    "generation": Figure(
        generation,
        "results/bench/generation/*.json",
        lambda r: "Prompt + greedy decoding throughput (Mamba: recurrent state; Transformer++: KV cache).",
    ),
    "kernels": Figure(kernels, "results/bench/kernels.csv", _kernels_caption),
    "synthetic": Figure(
        synthetic,
        "results/synthetic/*/*/seed*.json",
        lambda r: (
            "Accuracy at each test length: the mean over seeds (lines) and each seed (points); dashed: "
            "the training length. Mamba is evaluated through its recurrent step path, Transformer++ by full "
            "attention."
        ),
    ),
}


def caption(name: str, r: Results) -> str:
    """A figure's caption, ending with the files it was drawn from (as code, so their `*` stays a `*`)."""
    figure = FIGURES[name]
    return f"{figure.caption(r)} From `{figure.source}`."


def png_bytes(fig) -> bytes:
    """The figure as PNG (100 dpi), closed."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return png.getvalue()


def save_figure(fig, path: Path) -> None:
    """The figure as a PNG file, written atomically, and closed."""
    data = png_bytes(fig)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def save_figures(results_dir: Path, out_dir: Path) -> list[Path]:
    """Each figure whose inputs exist as ``<out_dir>/<name>.png`` (for ``snakemake --report``).

    The folder is written beside and renamed into place, so it is never seen half-written.
    """
    import shutil
    import tempfile

    from seqarena.files import current_umask

    r = collect(results_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        for name, figure in FIGURES.items():
            fig = figure.draw(r)
            if fig is not None:
                (tmp / f"{name}.png").write_bytes(png_bytes(fig))
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp's folder is owner-only
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(out_dir.glob("*.png"))
