"""Facts from the Mamba paper (Gu & Dao 2023), and the MQAR findings of Zoology, Based and Mamba-2,
that the pipeline compares against.

The numbers live in ``paper_data/*.csv`` inside the package, each row with its source (see the
README there); ``paper_table`` reads one. They are for setting beside our results, never for
checking our code's output.
"""

import csv
from functools import cache
from importlib.resources import files

TABLES = ("table1", "table3", "table3_metrics", "table11", "table12", "recipe", "mqar_findings")


def _value(text: str):
    """A CSV cell: a number where it reads as one, None where empty, else the text."""
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


@cache
def _rows(name: str) -> tuple[dict, ...]:
    if name not in TABLES:
        raise ValueError(f"no paper table {name!r}; known: {', '.join(TABLES)}")
    with (files("seqarena") / "paper_data" / f"{name}.csv").open(newline="") as f:
        return tuple({k: _value(v) for k, v in row.items()} for row in csv.DictReader(f))


def paper_table(name: str) -> list[dict]:
    """One of the paper's tables (``TABLES``) as rows of {column: number, text or None}, with ``source``."""
    return [dict(row) for row in _rows(name)]


def recipe(item: str) -> float:
    """A number of the paper's training recipe (``recipe.csv``), e.g. ``recipe("min_lr")``."""
    return next(row["value"] for row in _rows("recipe") if row["item"] == item)


# The metric Table 3 reports for each of its zero-shot tasks (lm-eval names, in the table's order):
# acc, and acc_norm for HellaSwag and ARC-challenge (Appendix E.2.3).
PAPER_METRIC = {row["task"]: row["metric"] for row in _rows("table3_metrics")}
PAPER_TASKS = list(PAPER_METRIC)


def paper_task(task: str) -> str | None:
    """The Table 3 task an lm-eval task stands for: itself, a local copy named ``<task>_local``, or
    the package's shipped slice ``<task>_embedded`` (seqarena.embedded)."""
    name = task.removesuffix("_local").removesuffix("_embedded")
    return name if name in PAPER_METRIC else None
