"""Report: papermill renders the notebook from results made by the real stages; partial results too."""

from pathlib import Path

import pytest

from conftest import write_multiple_choice_task
from seqarena.bench import bench_generation, bench_kernels, write_csv, write_json
from seqarena.data import Source, download, tokenize
from seqarena.eval import evaluate
from seqarena.report import collect, render
from seqarena.train import TrainConfig, train

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "report.ipynb"


def make_training(results: Path, tmp: Path) -> None:
    corpus = tmp / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"Paragraph {i} about state space models and attention." for i in range(400))
    )
    raw = download(Source(kind="local", path=str(corpus)), tmp / "raw")
    tokenize(raw, results / "data" / "toy", "byte")
    for model in ("mamba-tiny", "mamba-mini", "transformer-tiny", "transformer-mini"):
        cfg = TrainConfig(
            model=model, data=str(results / "data" / "toy"), out=str(results / "train" / model), steps=4,
            batch_tokens=256, micro_batch=4, seq_len=64, eval_interval=2, eval_windows=4, ckpt_interval=100,
            tracking_uri="none",
        )  # fmt: skip
        train(cfg)


@pytest.fixture(scope="module")
def full_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    results = tmp / "results"
    make_training(results, tmp)
    for model in ("mamba-tiny", "transformer-tiny"):
        gen = bench_generation(str(results / "train" / model), prompt_len=8, new_tokens=4, batch_sizes=[1, 2],
                               repeats=1)  # fmt: skip
        write_json(gen, results / "bench" / "generation" / f"{model}.json")
    write_csv(bench_kernels([32, 64], dim=32, repeats=1), results / "bench" / "kernels.csv")
    docs = [{"q": f"Is {i} even?", "a": "yes", "b": "no", "label": i % 2} for i in range(6)]
    tasks = write_multiple_choice_task(tmp / "tasks", "toy_even", docs, "{{q}}", "{{[a, b]}}")
    evaluate(results / "train" / "mamba-tiny", ["toy_even"], results / "eval" / "mamba-tiny.json",
             include_path=str(tasks))  # fmt: skip
    return results


def test_full_report_has_every_figure(full_results, tmp_path):
    render(NOTEBOOK, full_results, tmp_path / "report.ipynb", tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 4  # loss curves, scaling, generation, kernels
    for caption in ("Figure (loss_curves)", "Figure (scaling)", "Figure (generation)", "Figure (kernels)"):
        assert caption in html
    assert "toy_even" in html and "acc" in html  # the eval table
    assert "no evaluation results" not in html
    assert collect(full_results).missing == [
        f"no environment record: {full_results / 'env/kernels.json'} not found"
    ]


def test_partial_results_render_and_name_what_is_missing(tmp_path):
    results = tmp_path / "results"
    make_training(results, tmp_path)
    render(NOTEBOOK, results, tmp_path / "report.ipynb", tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 2  # loss curves and scaling only
    assert "no kernel benchmarks" in html and "no evaluation results" in html
    assert "generation: not shown, its inputs are missing" in html
