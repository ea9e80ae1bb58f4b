"""The report notebook executed (papermill) and exported as HTML without its code."""

from pathlib import Path

from seqarena.models.base import atomic_write


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
