"""Language-model training: a ``Trainer`` and its parts.

- ``config``: ``TrainConfig`` and the fingerprint a checkpoint must match to resume;
- ``optim``: the recipe (AdamW, warmup and cosine, decay groups), shared with the synthetic tasks;
- ``batches``: the tokens and their windows;
- ``parallel``: DDP/FSDP and full state dicts;
- ``signals``: stopping after a step on SIGTERM, SIGINT or SIGUSR1;
- ``summary``: throughput, MFU, memory, the recipe as summary.json reports them;
- ``trainer``: ``Trainer`` and ``train``.
"""

from seqarena.training.batches import TokenData
from seqarena.training.config import TrainConfig
from seqarena.training.signals import STOPPED_EXIT_STATUS, StopSignals, TrainingStopped
from seqarena.training.trainer import Trainer, TrainingDiverged, train

__all__ = [
    "STOPPED_EXIT_STATUS",
    "StopSignals",
    "TokenData",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "TrainingStopped",
    "train",
]
