"""Training's metrics on their way to the store, kept in a file until the store holds them."""

import json
import os
import sys
import time
from pathlib import Path

from seqarena.tracking.store import client_for, log_metric_rows


class MetricsJournal:
    """Metrics on their way to one run, kept in a file beside the outputs until the store holds
    them: a tracking server that goes away mid-training loses nothing. Training goes on; the rows
    wait in the journal and go out at the next call that finds the server answering, or with
    ``seqarena tracking sync JOURNAL``. Each row keeps the timestamp it was first logged with, and
    MLflow ignores a row it already holds, so a replay after a lost answer duplicates nothing."""

    def __init__(self, run, path: Path):
        self.run, self.path, self.reachable = run, Path(path), True
        self.flush()  # what a killed run left behind goes first

    def log(self, rows: list[tuple[str, float, int]]) -> bool:
        """Journal the rows (on disk before anything else), then send everything journaled."""
        now = int(time.time() * 1000)
        lines = "".join(
            json.dumps({"uri": self.run.uri, "run": self.run.run_id, "row": [k, float(v), int(s), now]})
            + "\n"
            for k, v, s in rows
        )
        with open(self.path, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        return self.flush()

    def flush(self) -> bool:
        """Send what the journal holds; False, keeping it, while the store does not answer."""
        if not self.path.is_file():
            return True
        try:
            sent = sum(replay_journal(self.path).values())
        except Exception as e:
            if self.reachable:
                print(
                    f"tracking store {self.run.uri} does not answer ({type(e).__name__}): metrics are kept "
                    f"in {self.path} and sent when it does (or: seqarena tracking sync {self.path})",
                    file=sys.stderr,
                    flush=True,
                )
            self.reachable = False
            return False
        if not self.reachable:
            print(f"tracking store {self.run.uri} answers again: {sent} journaled rows sent", file=sys.stderr)
        self.reachable = True
        return True


def replay_journal(path: Path) -> dict[tuple[str, str], int]:
    """Send a journal's rows to their runs, then remove it; a line torn by a kill is skipped.
    Returns the rows sent per (tracking URI, run id)."""
    rows: dict[tuple[str, str], list] = {}
    for line in Path(path).read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        rows.setdefault((entry["uri"], entry["run"]), []).append(entry["row"])
    for (uri, run_id), run_rows in rows.items():
        log_metric_rows(client_for(uri), run_id, run_rows)
    Path(path).unlink()
    return {key: len(run_rows) for key, run_rows in rows.items()}
