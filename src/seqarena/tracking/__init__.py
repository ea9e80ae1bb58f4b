"""MLflow tracking: one run per model id, found again by tag, safe under parallel writers.

The default store is ``sqlite:///results/mlflow.db``; a ``tracking_uri`` of ``http://host:port``
logs to a tracking server. Training writes its metrics through a journal, so a server that goes
away loses nothing.

- ``store``: the store, its creation under a lock, retries while sqlite is locked;
- ``runs``: run identity (``ModelRun``) and a finished training's artifacts;
- ``journal``: metrics on their way to a store that may not answer;
- ``metrics``: every metric's name, and ``log_stage``;
- ``registry``: exported models in MLflow's model registry.
"""

from seqarena.tracking.journal import MetricsJournal, replay_journal
from seqarena.tracking.metrics import (
    eval_metrics,
    final_training_metrics,
    generation_metrics,
    kernel_metrics,
    log_stage,
    synthetic_metrics,
    training_bench_metrics,
    training_metrics,
)
from seqarena.tracking.registry import register_hf_model
from seqarena.tracking.runs import MODEL_TAG, ModelRun, finish_training_run, git_commit
from seqarena.tracking.store import client_for, default_uri, init_store, server_patience

__all__ = [
    "MODEL_TAG",
    "MetricsJournal",
    "ModelRun",
    "client_for",
    "default_uri",
    "eval_metrics",
    "final_training_metrics",
    "finish_training_run",
    "generation_metrics",
    "git_commit",
    "init_store",
    "kernel_metrics",
    "log_stage",
    "register_hf_model",
    "replay_journal",
    "server_patience",
    "synthetic_metrics",
    "training_bench_metrics",
    "training_metrics",
]
