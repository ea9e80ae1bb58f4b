"""Report: papermill renders the notebook from results made by the real stages; partial results too."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import write_multiple_choice_task
from seqarena.bench import bench_generation, bench_kernels, write_csv, write_json
from seqarena.cli import main
from seqarena.data import Source, download, tokenize
from seqarena.eval import evaluate
from seqarena.report import collect, render, save_figures
from seqarena.synthetic import SyntheticConfig, train_synthetic
from seqarena.training import TrainConfig, train

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "report.ipynb"


def make_training(results: Path, tmp: Path) -> None:
    corpus = tmp / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"Paragraph {i} about state space models and attention." for i in range(400))
    )
    raw = download(Source(kind="local", path=str(corpus)), tmp / "raw")
    tokenize(raw, results / "data" / "toy", "byte")
    models = ("mamba-tiny", "mamba-mini", "transformer-tiny", "transformer-mini")
    runs = [(model, 0, model) for model in models]
    runs += [("mamba-tiny", seed, f"mamba-tiny/seed{seed}") for seed in (1, 2)]  # as train.seeds repeats
    for model, seed, out in runs:
        cfg = TrainConfig(
            model=model,
            data=str(results / "data" / "toy"),
            out=str(results / "train" / out),
            steps=4,
            batch_tokens=256,
            micro_batch=4,
            seq_len=64,
            eval_interval=2,
            eval_windows=4,
            ckpt_interval=100,
            tracking_uri="none",
            seed=seed,
        )
        train(cfg)


@pytest.fixture(scope="module")
def full_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    results = tmp / "results"
    make_training(results, tmp)
    for model in ("mamba-tiny", "transformer-tiny"):
        gen = bench_generation(
            str(results / "train" / model), prompt_len=8, new_tokens=4, batch_sizes=[1, 2], repeats=1
        )
        write_json(gen, results / "bench" / "generation" / f"{model}.json")
    write_csv(bench_kernels([32, 64], dim=32, repeats=1), results / "bench" / "kernels.csv")
    docs = [{"q": f"Is {i} even?", "a": "yes", "b": "no", "label": i % 2} for i in range(6)]
    tasks = write_multiple_choice_task(tmp / "tasks", "toy_even", docs, "{{q}}", "{{[a, b]}}")
    evaluate(
        results / "train" / "mamba-tiny",
        ["toy_even"],
        results / "eval" / "mamba-tiny.json",
        include_path=str(tasks),
    )
    # as the pipeline names a published checkpoint's results (here: the same tiny model)
    published = results / "eval" / "pretrained" / "state-spaces--mamba-tiny.json"
    evaluate(results / "train" / "mamba-tiny", ["toy_even"], published, include_path=str(tasks))
    # a local copy of a Table 3 task, scored for a model trained here and as a published checkpoint
    piqa = [
        {"goal": f"To make {i} tea,", "sol1": "boil water.", "sol2": "freeze it.", "label": i % 2}
        for i in range(6)
    ]
    write_multiple_choice_task(tasks, "piqa_local", piqa, "Question: {{goal}}\\nAnswer:", "{{[sol1, sol2]}}")
    for out in ("eval/transformer-tiny.json", "eval/pretrained/state-spaces--mamba-130m.json"):
        evaluate(
            results / "train" / "transformer-tiny", ["piqa_local"], results / out, include_path=str(tasks)
        )
    for arch in ("mamba", "transformer", "transformer_abs"):
        cfg = SyntheticConfig(
            task="induction_heads",
            arch=arch,
            length=16,
            d_model=16,
            steps=4,
            batch=4,
            test_lengths=[16, 64],
            eval_sequences=8,
        )
        train_synthetic(
            cfg, results / "synthetic" / "induction_heads" / cfg.model_name / "seed0.json", log_every=2
        )
    cfg = SyntheticConfig(
        task="mqar",
        arch="mamba",
        length=16,
        vocab=16,
        n_pairs=2,
        d_model=16,
        steps=4,
        batch=4,
        eval_sequences=8,
    )
    train_synthetic(cfg, results / "synthetic" / "mqar" / cfg.model_name / "seed0.json", log_every=2)
    for seed in (0, 1):  # as the pipeline repeats a run per seed of synthetic.seeds
        cfg = SyntheticConfig(
            task="selective_copying",
            arch="mamba",
            length=16,
            n_data=4,
            d_model=16,
            steps=4,
            batch=4,
            eval_sequences=8,
            seed=seed,
        )
        train_synthetic(
            cfg,
            results / "synthetic" / "selective_copying" / cfg.model_name / f"seed{seed}.json",
            log_every=2,
        )
    summaries = sorted(str(p) for p in results.glob("train/*/summary.json"))
    fits = str(results / "scaling/fits.json")
    main(["scaling", "--summaries", ",".join(summaries), "--out", fits, "--fixed-token"])  # fixed steps
    return results


def test_full_report_has_every_figure(full_results, tmp_path):
    render(NOTEBOOK, full_results, tmp_path / "report.ipynb", tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 5  # loss, scaling, generation, kernels, synthetic
    for name in ("loss_curves", "scaling", "generation", "kernels", "synthetic"):
        assert f"Figure ({name})" in html
    assert "toy_even" in html and "acc" in html  # the eval table
    assert "state-spaces/mamba-tiny" in html and "published checkpoint" in html and "trained here" in html
    assert "induction_heads" in html and "mamba-d16" in html and "transformer-d16" in html  # both tables
    assert "no evaluation results" not in html
    assert (
        "no fit: mamba: 2 size(s) (mamba-tiny, mamba-mini); a law needs at least 3 sizes of the family"
        in html
    )
    assert "report.collect(" not in html and "results_dir =" not in html  # no code cells, no parameters
    assert "<code>results/train/*/metrics.jsonl</code>" in html  # a caption's * stays a *, not italics
    generation, tiny_pair = collect(full_results).generation, ("mamba-tiny", "transformer-tiny")
    mamba, transformer = (generation[m]["results"] for m in tiny_pair)
    ratio = mamba[0]["tokens_per_s"] / transformer[0]["tokens_per_s"]  # batch 1, said in words
    assert f"{ratio:.2f}x at batch 1" in html and "the tokens/s of transformer-tiny" in html
    state, kv = (generation[m]["cache_bytes_per_sequence"] / 2**10 for m in tiny_pair)
    assert f"its cache holds {state:,.0f} KiB per sequence at any length, the KV cache {kv:,.0f} KiB" in html
    assert ("expected here, not a fault" in html) == (
        ratio < 1 or mamba[1]["tokens_per_s"] < transformer[1]["tokens_per_s"]
    )
    # the paper beside ours (their content: test_the_report_sets_the_papers_tables_beside_ours)
    for text in (
        "Table 3 beside the paper",
        "Mamba-130M",
        "not comparable in budget",
        "paper: MHA-RoPE",
        "Training recipe beside the paper",
        "Mamba, S6",
        "paper: MHA-Abs",
        "Over training seeds",
        "Mamba-1 struggles while Mamba-2 performs well",
    ):
        assert text in html, text
    umask = os.umask(0)
    os.umask(umask)  # written atomically, yet readable like any new file
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o666 & ~umask
    assert collect(full_results).missing == [
        f"no environment record: `{full_results / 'env/kernels.json'}` not found"
    ]


def test_partial_results_render_and_name_what_is_missing(tmp_path):
    results = tmp_path / "results"
    make_training(results, tmp_path)
    render(NOTEBOOK, results, tmp_path / "report.ipynb", tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 2  # loss curves and scaling only
    assert "no kernel benchmarks" in html and "no evaluation results" in html
    assert "generation: not shown, its inputs are missing" in html
    assert "No synthetic-task results yet" in html


def test_figures_are_saved_for_snakemakes_report(full_results, tmp_path):
    saved = save_figures(full_results, tmp_path / "figures")
    assert [p.name for p in saved] == [
        "generation.png",
        "kernels.png",
        "loss_curves.png",
        "scaling.png",
        "synthetic.png",
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG") and p.stat().st_size > 5000 for p in saved)
    # readable like any new file (the temp folder and files they are made in are owner-only)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "figures").stat().st_mode & 0o777 == 0o777 & ~umask
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in saved)


def test_log_axes_are_labelled_at_the_measured_values_in_plain_numbers(full_results):
    from seqarena import report

    r = report.collect(full_results)

    def labels(ax, which):
        ax.figure.canvas.draw()
        ticks = ax.get_xticklabels() if which == "x" else ax.get_yticklabels()
        return [t.get_text() for t in ticks if t.get_text()]

    generation = report.generation(r).axes[0]
    assert labels(generation, "x") == ["1", "2"]  # the batch sizes, not 10^0 and 2x10^0
    assert not any("times" in t or "^" in t for t in labels(generation, "y"))
    for panel in report.kernels(r).axes:
        assert labels(panel, "x") == sorted({row["seq_len"] for row in r.kernels}, key=int)
    from seqarena.report.figures import _compact

    assert [_compact(v) for v in (2.11e12, 5e13, 2.5e21)] == ["2.11T", "50T", "2.5Z"]  # a ladder's FLOPs
    for panel in report.scaling(r).axes:  # training FLOPs, parameters: SI units, never 2.11e+03G
        ticks = labels(panel, "x")
        assert ticks and all(re.fullmatch(r"[\d.]+[kMGTPEZ]?", t) for t in ticks), ticks
    tasks = {task for task, _ in r.synthetic}
    panels = report.synthetic(r).axes
    assert [ax.get_title() for ax in panels] == ["induction_heads", "at the training length"]
    assert [t.get_text() for t in panels[1].get_xticklabels()] == sorted(tasks - {"induction_heads"})
    assert labels(panels[0], "x") == ["16", "64"]


def test_kernel_figure_sets_the_forward_pass_beside_forward_backward_each_op_one_colour(full_results):
    """Twelve series in one panel repeated matplotlib's ten colours: attention and the SSD looked alike."""
    from seqarena import report

    r = report.collect(full_results)
    panels = report.kernels(r).axes
    assert [ax.get_title() for ax in panels] == ["forward", "forward + backward"]
    ops = {f"{row['op']} ({row['backend']})" for row in r.kernels}
    assert len(ops) > 5  # the scan, SSD and Mamba-3 per backend, attention, both baselines
    colours = [{line.get_label(): line.get_color() for line in panel.get_lines()} for panel in panels]
    assert set(colours[0]) == set(colours[1]) == ops
    assert colours[0] == colours[1] and len(set(colours[0].values())) == len(ops)
    for panel, name in zip(panels, ("fwd", "fwd+bwd"), strict=True):
        for line in panel.get_lines():
            rows = [row for row in r.kernels if f"{row['op']} ({row['backend']})" == line.get_label()]
            expected = sorted(
                (int(row["seq_len"]), float(row["median_ms"])) for row in rows if row["pass"] == name
            )
            assert list(zip(line.get_xdata(), line.get_ydata(), strict=True)) == expected


def test_table3_takes_the_papers_metric_per_task_and_averages_all_six(tmp_path):
    """acc, but acc_norm for HellaSwag and ARC-Challenge (Appendix E.2.3); local copies count."""
    import json

    from seqarena.report import table3

    values = {
        "lambada_openai": 0.1,
        "hellaswag_local": 0.2,
        "piqa": 0.3,
        "arc_easy_local": 0.4,
        "arc_challenge": 0.5,
        "winogrande_local": 0.6,
    }
    results = {
        task: {"acc": {"value": v, "stderr": 0.01}, "acc_norm": {"value": v + 0.05, "stderr": 0.01}}
        for task, v in values.items()
    }
    (tmp_path / "eval/pretrained").mkdir(parents=True)
    (tmp_path / "eval/pretrained/state-spaces--mamba-130m.json").write_text(json.dumps({"results": results}))
    partial = {"piqa_local": results["piqa"], "toy": {"acc": {"value": 0.9, "stderr": None}}}
    (tmp_path / "eval/mamba-tiny.json").write_text(json.dumps({"results": partial}))
    rows = {row["model"]: row for row in table3(collect(tmp_path))}
    published = rows["state-spaces/mamba-130m"]
    assert published["hellaswag (acc_norm)"] == 0.25 and published["arc_challenge (acc_norm)"] == 0.55
    assert published["piqa (acc)"] == 0.3 and published["winogrande (acc)"] == 0.6
    assert published["average"] == pytest.approx((0.1 + 0.25 + 0.3 + 0.4 + 0.55 + 0.6) / 6)
    assert rows["mamba-tiny"] == {
        "model": "mamba-tiny",
        "source": "trained here",
        "piqa (acc)": 0.3,
        "average": None,
    }


def test_the_report_sets_the_papers_tables_beside_ours(full_results):
    """Table 3, Table 1, Table 11 and the recipe beside the paper's (seqarena.paper's data, looked up
    here, not written out), from results the real stages wrote."""
    import json
    import statistics

    from seqarena.paper import paper_table, recipe
    from seqarena.report import (
        mqar_vs_findings,
        recipe_table,
        table1_vs_paper,
        table3_vs_paper,
        table11_vs_paper,
    )

    r = collect(full_results)
    paper3 = {row["model"]: row for row in paper_table("table3")}
    rows = {(row["model"], row["metric"]): row for row in table3_vs_paper(r)}
    assert {model for model, _ in rows} == {"state-spaces/mamba-130m", "transformer-tiny"}
    for model in ("state-spaces/mamba-130m", "transformer-tiny"):
        row = rows[(model, "acc")]
        name = "eval/pretrained/state-spaces--mamba-130m.json" if "/" in model else f"eval/{model}.json"
        ours = json.loads((full_results / name).read_text())["results"]["piqa_local"]["acc"]
        assert row["task"] == "piqa_local" and row["ours"] == pytest.approx(100 * ours["value"])
        assert row["stderr"] == pytest.approx(100 * ours["stderr"])
        assert row["difference"] == pytest.approx(row["ours"] - row["paper"])
    published, trained = rows[("state-spaces/mamba-130m", "acc")], rows[("transformer-tiny", "acc")]
    assert published["paper row"] == "Mamba-130M" and published["paper"] == paper3["Mamba-130M"]["piqa"]
    outside = abs(published["difference"]) > max(2 * published["stderr"], recipe("eval_noise"))
    assert published["budget"] == "the same checkpoint" and published["flag"] == (
        "outside noise" if outside else ""
    )
    # a Transformer++ trained here: the nearest Pythia, and no verdict
    assert (
        trained["paper row"] == "Pythia-160M"
        and trained["flag"] == "n/a"
        and "not comparable" in trained["budget"]
    )

    (copying,) = table1_vs_paper(r)
    table1 = {(row["arch"], row["layer"]): row["accuracy"] for row in paper_table("table1")}
    assert copying["architecture, layer"] == "Mamba, S6" and copying["paper (%)"] == table1[("Mamba", "S6")]
    runs = [full_results / f"synthetic/selective_copying/mamba-d16/seed{s}.json" for s in (0, 1)]
    seeds = [100 * json.loads(run.read_text())["final_accuracy"] for run in runs]
    assert copying["seeds"] == 2 and copying["ours (%)"] == pytest.approx(statistics.mean(seeds))
    assert copying["std"] == pytest.approx(statistics.stdev(seeds))

    induction = table11_vs_paper(r)
    assert [row["model"] for row in induction] == [
        "mamba-d16",
        "paper: Mamba",
        "transformer-d16",
        "paper: MHA-RoPE",
        "transformer_abs-d16",
        "paper: MHA-Abs",
    ]
    paper11 = {row["model"]: row for row in paper_table("table11")}
    assert induction[1]["64"] == paper11["Mamba"]["64"] and induction[1]["16"] is None  # 16: not in the paper
    assert induction[1]["train length"] == 256 and induction[0]["train length"] == 16

    (mqar,), findings = mqar_vs_findings(r)
    ours = json.loads((full_results / "synthetic/mqar/mamba-d16/seed0.json").read_text())
    assert mqar["model"] == "mamba-d16" and mqar["accuracy"] == ours["final_accuracy"] and mqar["pairs"] == 2
    for row in paper_table("mqar_findings"):  # each finding, with its source
        assert f"- {row['finding']} ({row['source']})" in findings

    recipes = {row["model"]: row for row in recipe_table(r)}
    assert sorted(recipes) == ["mamba-mini", "mamba-tiny", "transformer-mini", "transformer-tiny"]
    summary = json.loads((full_results / "train/mamba-tiny/summary.json").read_text())
    assert recipes["mamba-tiny"]["peak lr"] == summary["recipe"]["peak_lr"] > 0
    assert recipes["mamba-tiny"]["paper size"] == "125M"  # Table 12's smallest, the nearest
    assert recipes["mamba-tiny"]["paper row"] == "nearest (a CPU size)"


def test_the_seed_table_spreads_each_models_loss_over_its_training_seeds(full_results):
    import json
    import statistics

    from seqarena.report import seed_table

    r = collect(full_results)
    assert sorted(r.train) == ["mamba-mini", "mamba-tiny", "transformer-mini", "transformer-tiny"]  # no seed
    (row,) = seed_table(r)
    files = ["train/mamba-tiny/summary.json"] + [f"train/mamba-tiny/seed{s}/summary.json" for s in (1, 2)]
    losses = [json.loads((full_results / f).read_text())["final_val_loss"] for f in files]
    assert len(set(losses)) == 3  # the seed changes the initialisation and the batches
    assert row["model"] == "mamba-tiny" and row["seeds"] == "0, 1, 2"
    assert row["val loss mean"] == pytest.approx(statistics.mean(losses))
    assert row["val loss std"] == pytest.approx(statistics.stdev(losses))
    assert (row["min"], row["max"]) == (min(losses), max(losses))


def test_the_eval_table_has_a_row_per_model_and_task_with_every_metric_and_chance(full_results):
    from seqarena.report import eval_table

    r = collect(full_results)
    rows = eval_table(r)
    assert [(row["model"], row["task"]) for row in rows] == [
        (model, task) for model, report in r.evaluation.items() for task in report["results"]
    ]
    assert all(list(row)[:3] == ["model", "source", "task"] and list(row)[-1] == "chance acc" for row in rows)
    assert len({tuple(row) for row in rows}) == 1  # one column order for every row
    for row in rows:
        metrics = r.evaluation[row["model"]]["results"][row["task"]]
        assert {k: row[k] for k in metrics} == {k: m["value"] for k, m in metrics.items()}
        assert row["chance acc"] == (
            0.5 if row["task"] == "piqa_local" else None
        )  # toy_even is no Table 3 task


def test_every_registered_figure_is_in_the_notebook_and_snakemakes_caption():
    """A figure is one function and one FIGURES entry: the notebook shows each by name, and
    workflow/report/figures.rst names each with the files it is drawn from."""
    from seqarena.report import FIGURES

    repo = Path(__file__).resolve().parents[1]
    notebook = "".join("".join(cell["source"]) for cell in json.loads(NOTEBOOK.read_text())["cells"])
    rst = " ".join((repo / "workflow/report/figures.rst").read_text().split())
    for name, figure in FIGURES.items():
        assert f'show("{name}")' in notebook, name
        assert f"``{name}`` (``{figure.source}``" in rst, name


def _summary(parameters: int) -> dict:
    return {"summary": {"parameters": parameters, "steps": 1, "tokens": 1, "recipe": {}}, "metrics": []}


def test_paper_sizes_are_set_beside_their_own_partners_not_the_nearest_name_or_size(tmp_path):
    """The Mamba paper's pairs (mamba-130m with transformer-125m, ... 2.8b with 2.7b) from the size
    registry: the generation notes compare them, and the recipe table sets each model beside its
    own Table 12 row, or says that Table 12 has none (it stops at 1.3B)."""
    from seqarena.models import matched_model
    from seqarena.report import Results, generation_notes, recipe_table

    pairs = {
        "mamba-130m": "transformer-125m",
        "mamba-790m": "transformer-760m",
        "mamba2-780m": "transformer-760m",
    }
    pairs |= {
        "mamba-1.4b": "transformer-1.3b",
        "mamba-2.8b": "transformer-2.7b",
        "hybrid-370m": "transformer-350m",
    }
    assert {model: matched_model(model, "transformer") for model in pairs} == pairs
    assert (
        matched_model("hybrid-370m", "mamba2") == "mamba2-370m"
        and matched_model("mamba-tiny", "hybrid") == "hybrid-tiny"
    )

    bench = {"prompt_len": 2048, "new_tokens": 128, "device": "H100", "cuda_graph": True, "results": []}
    generation = {
        "mamba-130m": bench | {"results": [{"batch": 1, "oom": False, "tokens_per_s": 300.0}]},
        "transformer-125m": bench | {"results": [{"batch": 1, "oom": False, "tokens_per_s": 100.0}]},
    }
    notes = generation_notes(Results(tmp_path, generation=generation))
    assert (
        "**mamba-130m**: 3.00x at batch 1 the tokens/s of transformer-125m (prompt 2048, 128 new "
        "tokens, H100, a CUDA graph a step)" in notes
    )

    train = {"mamba-1.4b": _summary(1_372_000_000), "mamba-2.8b": _summary(2_768_000_000)}
    rows = {row["model"]: row for row in recipe_table(Results(tmp_path, train=train))}
    assert rows["mamba-1.4b"]["paper size"] == "1.3B" and rows["mamba-1.4b"]["paper row"] == "its own size"
    assert (
        "paper lr" not in rows["mamba-2.8b"]
        and rows["mamba-2.8b"]["paper row"] == "none: Table 12 has no 2.7B row"
    )


def test_a_table_shows_values_as_a_reader_writes_them():
    from seqarena.report.format import cell, styled

    assert [cell(v) for v in (None, float("nan"), 480.0, 2.5e9, 51.5, 0.515, 6.97e8, True)] == [
        "–",
        "–",
        "480",
        "2,500,000,000",
        "51.5",
        "0.515",
        "697,000,000",
        "yes",
    ]
    words = "not comparable in budget: trained here, nearest paper size, and a long way from it"
    html = styled(
        [{"model": "a", "acc": 0.5, "note": words}, {"model": "b", "acc": None, "note": ""}]
    ).to_html()
    assert words in html and "NaN" not in html and "None" not in html
    assert 'class="row_heading' not in html  # no index column
    assert cell(1e-5) == "1e-5" and cell(1.2e-7) == "1.2e-7"  # a learning rate as it is written
    align = {}  # first row's column -> its text-align, from the table's style sheet
    for selectors, properties in re.findall(r"([^{}]+)\{([^}]*)\}", html.split("</style>")[0]):
        for column in re.findall(r"row0_col(\d)", selectors):
            align[column] = re.search(r"text-align: (\w+)", properties).group(1)
    assert align == {"0": "left", "1": "right", "2": "left"}  # text left, numbers right
    assert styled([]) is None


def test_the_rendered_report_opens_with_a_summary_and_has_no_raw_dumps(full_results, tmp_path):
    import statistics

    render(NOTEBOOK, full_results, tmp_path / "report.ipynb", tmp_path / "report.html")
    text = re.sub(r"<[^>]+>", " ", (tmp_path / "report.html").read_text())
    assert text.index("Summary") < text.index("Training and validation loss")
    assert f"Drawn from the files under {full_results}" in " ".join(text.split())
    r = collect(full_results)
    loss = {m: d["summary"]["final_val_loss"] for m, d in r.train.items()}
    seeds = [loss["mamba-tiny"]] + [s["final_val_loss"] for s in r.train_seeds["mamba-tiny"]]
    tiny = statistics.mean(seeds)
    lower = (tiny < loss["transformer-tiny"]) + (loss["mamba-mini"] < loss["transformer-mini"])
    assert f"lower than its Transformer++ at {lower} of 2 matched sizes" in text
    assert f"mamba-tiny {tiny:.3f} against transformer-tiny {loss['transformer-tiny']:.3f}" in text
    assert (  # transformer-tiny and both minis have one seed; mamba-tiny's three say how far seeds go
        "Where a side has one seed (mamba-tiny, mamba-mini), a difference may be seed noise: the "
        f"repeated models' seeds span up to {max(seeds) - min(seeds):.3f} (mamba-tiny)."
    ) in " ".join(text.split())
    assert "toy" in text and "training and" in text  # the data sentence names the dataset
    for raw in ("NaN", "e+0", ">None<", " None "):
        assert raw not in text, raw
    # models trained here beside the paper's Table 3 are folded away, with no difference column
    assert re.search(
        r"<details><summary>\d+ rows of models trained here", (tmp_path / "report.html").read_text()
    )


def test_figures_colour_by_family_lighter_and_dashed_for_smaller_sizes(full_results):
    from matplotlib.colors import to_rgb

    from seqarena.models.families import FAMILIES
    from seqarena.report.figures import FAMILY_COLOURS, loss_curves, model_colours, size_linestyles

    assert sorted(FAMILY_COLOURS) == sorted(FAMILIES)
    assert len(set(FAMILY_COLOURS.values())) == len(FAMILY_COLOURS)
    colours = model_colours(["mamba-tiny", "transformer-tiny", "mamba-mini", "transformer-mini"])
    assert colours["mamba-mini"] == to_rgb("C0") and colours["transformer-mini"] == to_rgb("C1")
    assert sum(colours["mamba-tiny"]) > sum(colours["mamba-mini"])  # lighter: the smaller size
    models = ["mamba-micro", "mamba-tiny", "transformer-tiny", "mamba-mini"]
    assert [size_linestyles(models)[m] for m in models] == ["-.", "--", "--", "-"]  # one style a size
    lines = [line for line in loss_curves(collect(full_results)).axes[0].lines if line.get_label()[0] != "_"]
    colour = {line.get_label(): line.get_color() for line in lines}
    assert colour["mamba-mini"] == to_rgb("C0") and colour["transformer-mini"] == to_rgb("C1")
    style = {line.get_label(): line.get_linestyle() for line in lines}
    assert style["mamba-mini"] == "-" and style["mamba-tiny"] == "--"


def test_the_summary_explains_a_validation_gap_by_the_passes_over_the_data(tmp_path):
    from seqarena.report import Results, summary

    def trained(tokens: int) -> dict:
        losses = {"final_val_loss": 3.5, "final_train_loss": 3.0, "parameters": 10, "tokens": tokens}
        return {"summary": {"model": "mamba-tiny", **losses}, "metrics": []}

    data = {
        "toy": {
            "source": {"kind": "local", "path": "toy.txt"},
            "train_tokens": 1000,
            "val_tokens": 50,
            "validation": "last 5% of train records",
        }
    }
    many = summary(Results(tmp_path, data=data, train={"mamba-tiny": trained(3000)}))
    assert "read the training tokens up to 3.0 times, and fit them better" in many
    once = summary(Results(tmp_path, data=data, train={"mamba-tiny": trained(500)}))
    assert "none read the training tokens more than 0.50 times" in once and "not memorised" in once


def test_training_curves_are_smoothed_for_the_eye_and_start_where_the_run_did():
    from seqarena.report.figures import SMOOTHING, smoothed

    rng = np.random.default_rng(0)
    noisy = [3.0 + 0.5 * rng.standard_normal() for _ in range(20 * SMOOTHING)]
    curve = smoothed(noisy)
    assert len(curve) == len(noisy) and curve[0] == noisy[0]  # debiased: no ramp up from 0
    assert abs(curve[-200:].mean() - 3.0) < 0.1 and curve[-200:].std() < 0.25 * 0.5  # the noise averaged out
    assert list(smoothed([1.0, 2.0, 3.0])) == [1.0, 2.0, 3.0]  # a short run is drawn as it is


def test_the_summary_says_which_loss_pairs_rest_on_one_seed(tmp_path):
    """A pair with a single seed on a side is named as possibly seed noise, with the spread the
    repeated models measured; with no repeats anywhere, every pair is."""
    from seqarena.report import Results, summary

    def trained(model, loss, params):
        record = {"model": model, "final_val_loss": loss, "final_train_loss": loss, "parameters": params}
        return {"summary": record, "metrics": []}

    def seed(loss):
        return {"final_val_loss": loss}

    r = Results(tmp_path)
    r.train = {
        "mamba-micro": trained("mamba-micro", 4.5, 7e4),
        "transformer-micro": trained("transformer-micro", 4.6, 6e4),
        "mamba-mini": trained("mamba-mini", 2.6, 6e5),
        "transformer-mini": trained("transformer-mini", 2.7, 5e5),
    }
    unrepeated = summary(r)
    assert "With one seed a pair, a difference this size may be seed noise" in unrepeated
    r.train_seeds = {"mamba-micro": [seed(4.52), seed(4.55)], "transformer-micro": [seed(4.8), seed(4.62)]}
    text = " ".join(summary(r).split())
    assert "mamba-micro 4.523 against transformer-micro 4.673 (3 and 3 seeds; every seed on one side)" in text
    assert (
        "Where a side has one seed (mamba-mini), a difference may be seed noise: the repeated models' "
        "seeds span up to 0.200 (transformer-micro)."
    ) in text
    assert "With one seed a pair" not in text
