"""What one training run is: its config, and the fingerprint that a checkpoint must match to resume."""

from dataclasses import asdict, dataclass

from seqarena.models import parse_model_id
from seqarena.options import option


@dataclass
class TrainConfig:
    model: str = option(help="model id, e.g. mamba-tiny")
    data: str = option(help="folder with train.bin, val.bin, meta.json")
    out: str = option(help="the folder to write, e.g. results/train/{model}")
    steps: int = option(0, help="optimizer steps; 0: from `tokens`")
    tokens: int = option(0, help="token budget; with steps 0 as well: 20 tokens per parameter (Chinchilla)")
    batch_tokens: int = option(8192, help="global tokens per optimizer step")
    micro_batch: int = option(8, help="sequences per forward pass and process")
    seq_len: int = 128
    lr: float = option(0.0, help="peak learning rate; 0: the size registry's (the paper recipe)")
    min_lr_ratio: float = option(0.1, help="cosine floor as a fraction of lr")
    min_lr: float = option(
        0.0, help="cosine floor, absolute (the paper's recipe: 1e-5); 0: lr * min_lr_ratio"
    )
    warmup: float = option(0.1, help="fraction of the steps")
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_windows: int = 32
    ckpt_interval: int = 50
    keep_checkpoints: int = option(2, help="the newest ones kept (at least 1)")
    force_restart: bool = option(False, help="discard existing checkpoints and start at step 0")
    verify_data: bool = option(
        False, help="compare the token files' sha256 with meta.json (their size always is)"
    )
    seed: int = 0
    compile: bool = False
    activation_checkpointing: bool = option(
        False, help="recompute each block's activations in the backward pass: less memory, more compute"
    )
    deterministic: bool = option(
        False, help="PyTorch's deterministic algorithms, which mamba_ssm's Triton kernels follow too"
    )
    parallel: str = option("ddp", help="with several processes: ddp or fsdp")
    scan_backend: str = option("", help="force a selective-scan backend (cuda, cpp, torch); '' chooses")
    tracking_uri: str = option("", help="'': sqlite:///<out>/../../mlflow.db; 'none' disables MLflow")
    experiment: str = "seqarena"
    run_name: str = option(
        "", help="the MLflow run's key; '': the model id (a repeat at another seed: <model>/seed<n>)"
    )
    dataset: str = option("", help="a name for tags; '' uses the data folder's name")
    peak_tflops: float = option(0.0, help="for MFU where the device is not in summary.PEAK_TFLOPS")

    def __post_init__(self):
        parse_model_id(self.model)
        positive = (
            "batch_tokens",
            "micro_batch",
            "seq_len",
            "eval_interval",
            "eval_windows",
            "ckpt_interval",
            "keep_checkpoints",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"train config: {name} must be positive, not {getattr(self, name)}")
        if self.steps < 0 or self.tokens < 0 or self.lr < 0:
            raise ValueError("train config: steps, tokens and lr must not be negative")
        if self.min_lr < 0:
            raise ValueError(f"train config: min_lr must not be negative, not {self.min_lr}")
        if not 0 <= self.warmup < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("train config: warmup must be in [0, 1) and min_lr_ratio in [0, 1]")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"train config: parallel must be ddp or fsdp, not {self.parallel!r}")

    def grad_accumulation(self, processes: int) -> int:
        """Micro-batches per process and step that make up ``batch_tokens``."""
        per_step = self.micro_batch * self.seq_len * processes
        if self.batch_tokens % per_step:
            raise ValueError(
                f"train config: batch_tokens={self.batch_tokens} is not a multiple of "
                f"micro_batch * seq_len * processes = {per_step}"
            )
        return self.batch_tokens // per_step


# Config keys that leave the trained weights unchanged: a checkpoint resumes across changes to these.
RESUMABLE_CHANGES = frozenset(
    {
        "out",
        "tracking_uri",
        "experiment",
        "run_name",
        "dataset",
        "eval_interval",
        "eval_windows",
        "deterministic",
        "activation_checkpointing",
        "ckpt_interval",
        "keep_checkpoints",
        "compile",
        "parallel",
        "scan_backend",
        "peak_tflops",
        "force_restart",
        "verify_data",
    }
)


def run_fingerprint(cfg: TrainConfig, data_sha256: dict | None) -> dict:
    """What a checkpoint must match to be resumed: every config key that shapes the weights, and the
    data (the token files' sha256 from meta.json)."""
    keys = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}
    return {**keys, "data_sha256": data_sha256}


def describe_changes(old: dict | None, new: dict) -> str:
    """Why a checkpoint with fingerprint ``old`` does not resume a run with ``new``."""
    if not old:
        return "the checkpoint records no config"
    keys = sorted(new.keys() | old.keys())
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "the config changed: " + ", ".join(changed)
