"""The report notebook executed (papermill) and exported as HTML without its code."""

from dataclasses import dataclass
from pathlib import Path

from seqarena.files import atomic_write
from seqarena.options import option
from seqarena.report.figures import save_figures


def render(notebook: Path, results_dir: Path, out_ipynb: Path, out_html: Path) -> None:
    """Execute the notebook with papermill (kernel python3), then export HTML with images inlined and
    without the code: a reader sees the tables, figures and text (the .ipynb keeps the code)."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    def execute(tmp):
        papermill.execute_notebook(
            str(notebook),
            tmp,
            parameters={"results_dir": str(Path(results_dir).resolve())},
            kernel_name="python3",
            progress_bar=False,
        )

    atomic_write(Path(out_ipynb), execute)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    html, _ = exporter.from_notebook_node(nbformat.read(str(out_ipynb), as_version=4))
    atomic_write(Path(out_html), lambda tmp: Path(tmp).write_text(html))


@dataclass
class ReportConfig:
    notebook: str = "notebooks/report.ipynb"
    results: str = "results"
    out: str = "results/reports/report.ipynb"
    html: str = "results/reports/report.html"
    figures: str | None = option(None, help="also write each figure as <name>.png into this folder")


def report_command(cfg: ReportConfig) -> None:
    """Render the report notebook (papermill) and its HTML."""
    render(Path(cfg.notebook), Path(cfg.results), Path(cfg.out), Path(cfg.html))
    if cfg.figures:
        saved = save_figures(Path(cfg.results), Path(cfg.figures))
        print(f"figures: {', '.join(str(p) for p in saved)}")
    print(f"report: {cfg.out}, {cfg.html}")
