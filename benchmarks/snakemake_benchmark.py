"""Read a job's wall time from the file its rule's ``benchmark:`` directive wrote (one tab-separated
row; ``s`` is the wall time in seconds), for the study scripts beside this one."""

import csv
from pathlib import Path


def wall_seconds(tsv: Path) -> float:
    with open(tsv) as f:
        return float(next(csv.DictReader(f, delimiter="\t"))["s"])
