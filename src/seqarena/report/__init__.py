"""Report stage: gather whatever results exist and draw the paper's comparisons.

The notebooks in ``notebooks/`` are thin: they call these functions, so the logic is
tested like the rest of the package. Every figure and table says what produced it, and a
missing input (no GPU benchmarks, no evaluation yet) is named instead of failing.

- ``results``: gathering the result files (``collect``);
- ``summary``: the opening, what the results show in words;
- ``tables``: our results as tables, and ``format`` how a table is shown;
- ``comparisons``: ours beside the papers';
- ``figures``: the figures, registered with their sources and captions (``FIGURES``);
- ``render``: the notebook executed and exported.
"""

from seqarena.report.comparisons import (
    mqar_vs_findings,
    paper_size,
    recipe_table,
    table1_vs_paper,
    table3_vs_paper,
    table3_vs_paper_by_budget,
    table11_vs_paper,
)
from seqarena.report.figures import (
    FIGURES,
    caption,
    generation,
    kernels,
    loss_curves,
    png_bytes,
    save_figures,
    scaling,
    synthetic,
)
from seqarena.report.format import collapsed, styled
from seqarena.report.render import render
from seqarena.report.results import Results, collect
from seqarena.report.summary import summary
from seqarena.report.tables import (
    environment_table,
    eval_table,
    extrapolation_table,
    generation_notes,
    mean_std,
    multiplier_table,
    scaling_notes,
    seed_table,
    synthetic_table,
    table3,
    validation_notes,
)

__all__ = [
    "FIGURES",
    "Results",
    "caption",
    "collapsed",
    "collect",
    "environment_table",
    "eval_table",
    "extrapolation_table",
    "generation",
    "generation_notes",
    "validation_notes",
    "kernels",
    "loss_curves",
    "mean_std",
    "multiplier_table",
    "mqar_vs_findings",
    "paper_size",
    "png_bytes",
    "recipe_table",
    "render",
    "save_figures",
    "scaling",
    "scaling_notes",
    "seed_table",
    "styled",
    "summary",
    "synthetic",
    "synthetic_table",
    "table1_vs_paper",
    "table11_vs_paper",
    "table3",
    "table3_vs_paper",
    "table3_vs_paper_by_budget",
]
