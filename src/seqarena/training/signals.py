"""Stopping on a signal: after the current step, with a checkpoint of it, and an exit status that
says "run the same command again"."""

import signal
import sys
import threading

import torch

# A run stopped on a signal exits with this (EX_TEMPFAIL: try again): its checkpoint is written,
# and the same command resumes it.
STOPPED_EXIT_STATUS = 75


class TrainingStopped(RuntimeError):
    """Training stopped on a signal after a step, with a checkpoint of that step."""


class StopSignals:
    """SIGTERM, SIGINT and SIGUSR1 (SLURM's warning before a time limit) ask the loop to stop after
    the current step; a second SIGINT stops at once. Installed only in the main thread (where
    Python delivers signals)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __enter__(self):
        self.received, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(
            f"received {self.received}: stopping after this step, with a checkpoint",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def requested(self, dist_) -> bool:
        """Whether any process received a stop signal (all stop at the same step)."""
        flag = torch.tensor(float(self.received is not None), device=dist_.device)
        return dist_.mean(flag).item() > 0
