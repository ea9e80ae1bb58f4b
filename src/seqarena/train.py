"""One training loop for both architectures: resumable, deterministic, DDP/FSDP-ready.

AdamW (betas 0.9/0.95, weight decay on matrices and embeddings only), linear warmup then
cosine decay to a floor, gradient clipping, gradient accumulation to a global token batch,
random contiguous windows drawn from the token memmap, periodic validation on fixed
windows, bf16 autocast on CUDA, optional torch.compile.

Determinism and resume: the windows of step s are a pure function of (seed, s, window
index), the learning rate a pure function of s, and a checkpoint holds the model, the
optimizer, the step and the RNG states. Checkpoints (checkpoints.py) are written atomically
with a checksummed manifest, so a job killed at any moment restarts from the newest whole one
and ends with the same weights and metrics as a run never killed. SIGTERM, SIGINT or SIGUSR1
(SLURM's warning before a time limit) stop it after the current step with a checkpoint of that
step, exiting with STOPPED_EXIT_STATUS.
"""

import contextlib
import json
import math
import os
import resource
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from seqarena.checkpoints import CheckpointStore
from seqarena.data import load_tokens
from seqarena.device import compute_device
from seqarena.models import SIZES, Mamba, build_model, parse_model_id
from seqarena.models.base import atomic_write

# bf16 dense peak of the GPUs we know, for MFU; elsewhere pass --peak-tflops.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


class TrainingDiverged(RuntimeError):
    pass


# A run stopped on a signal exits with this (EX_TEMPFAIL: try again): its checkpoint is written,
# and the same command resumes it.
STOPPED_EXIT_STATUS = 75


class TrainingStopped(RuntimeError):
    """Training stopped on a signal after a step, with a checkpoint of that step."""


class StopSignals:
    """SIGTERM, SIGINT and SIGUSR1 ask the loop to stop after the current step; a second SIGINT
    stops at once. Installed only in the main thread (where Python delivers signals)."""

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

    def requested(self, dist_: "Distributed") -> bool:
        """Whether any process received a stop signal (all stop at the same step)."""
        flag = torch.tensor(float(self.received is not None), device=dist_.device)
        return dist_.mean(flag).item() > 0


@dataclass
class TrainConfig:
    model: str  # model id, e.g. mamba-tiny
    data: str  # folder with train.bin, val.bin, meta.json
    out: str  # results/train/{model}
    steps: int = 0  # optimizer steps; 0: from `tokens`
    tokens: int = 0  # token budget; with steps 0 as well: 20 tokens per parameter (Chinchilla)
    batch_tokens: int = 8192  # global tokens per optimizer step
    micro_batch: int = 8  # sequences per forward pass and process
    seq_len: int = 128
    lr: float = 0.0  # peak learning rate; 0: the size registry's (the paper recipe)
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    min_lr: float = 0.0  # cosine floor, absolute (the paper's recipe: 1e-5); 0: lr * min_lr_ratio
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_windows: int = 32
    ckpt_interval: int = 50
    keep_checkpoints: int = 2  # the newest ones kept (at least 1)
    force_restart: bool = False  # discard existing checkpoints and start at step 0
    verify_data: bool = False  # compare the token files' sha256 with meta.json (their size always is)
    seed: int = 0
    compile: bool = False
    parallel: str = "ddp"  # with several processes: ddp or fsdp
    scan_backend: str = ""  # force a selective-scan backend (cuda, cpp, torch); "" chooses
    tracking_uri: str = ""  # "": sqlite:///<out>/../../mlflow.db; "none" disables MLflow
    experiment: str = "seqarena"
    run_name: str = ""  # the MLflow run's key; "": the model id (a repeat at another seed: <model>/seed<n>)
    dataset: str = ""  # a name for tags; "" uses the data folder's name
    peak_tflops: float = 0.0  # for MFU where the device is not in PEAK_TFLOPS

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


def lr_floor(cfg: TrainConfig, peak: float) -> float:
    """Where the cosine ends: min_lr if set, else peak * min_lr_ratio."""
    return cfg.min_lr or peak * cfg.min_lr_ratio


def lr_at(step: int, total: int, cfg: TrainConfig, peak: float) -> float:
    """Linear warmup to peak, then cosine to the floor (``lr_floor``) at the last step."""
    warmup = int(cfg.warmup * total)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup - 1)
    floor = lr_floor(cfg, peak)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def no_decay_names(model) -> set[str]:
    """Parameters that get no weight decay: norms, biases, A_log and D (``_no_weight_decay``).

    Taken by name before FSDP shards the model: its DTensor parameters lose the attribute."""
    return {n for n, p in model.named_parameters() if p.dim() < 2 or getattr(p, "_no_weight_decay", False)}


def param_groups(model, weight_decay: float, no_decay: set[str]) -> list[dict]:
    """Decay weight matrices and embeddings, not the parameters named in ``no_decay``."""
    decay, keep = [], []
    for name, p in model.named_parameters():  # tied weights once
        (keep if name in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def windows(tokens: np.ndarray, seed: int, step: int, index: int, batch: int, seq_len: int):
    """Micro-batch `index` of step `step`: `batch` random windows, (inputs, targets)."""
    g = torch.Generator().manual_seed(hash((seed, step, index)) & 0x7FFF_FFFF_FFFF_FFFF)
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch,), generator=g).tolist()
    chunk = torch.from_numpy(np.stack([tokens[s : s + seq_len + 1].astype(np.int64) for s in starts]))
    return chunk[:, :-1], chunk[:, 1:]


def val_windows(tokens: np.ndarray, count: int, seq_len: int):
    """Fixed, evenly spaced validation windows."""
    if len(tokens) < seq_len + 1:
        raise ValueError(
            f"the validation split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}"
        )
    starts = np.linspace(0, len(tokens) - seq_len - 1, count).astype(np.int64)
    chunk = torch.from_numpy(np.stack([tokens[s : s + seq_len + 1].astype(np.int64) for s in starts]))
    return chunk[:, :-1], chunk[:, 1:]


class Distributed:
    """World size, rank and device from torchrun's environment (one process: no-ops)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = compute_device(local)
        if self.world > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(value, op=dist.ReduceOp.AVG if self.device.type == "cuda" else dist.ReduceOp.SUM)
            if self.device.type != "cuda":  # gloo has no AVG
                value /= self.world
        return value

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _wrap(model, cfg: TrainConfig, dist_: Distributed):
    """DDP or FSDP2 around the model when there are several processes."""
    if dist_.world == 1:
        return model
    if cfg.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        layers = model.backbone.layers if hasattr(model, "backbone") else model.layers
        for layer in layers:
            fully_shard(layer)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[dist_.device.index] if dist_.device.type == "cuda" else None
    )


def _state_dicts(model, optimizer, sharded: bool):
    """Full (unsharded) model and optimizer state, for checkpoints and the final weights.

    ``model`` is the unwrapped module (DDP's wrapper would prefix every key with
    ``module.``); FSDP2 shards that same module in place.
    """
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return model.state_dict(), optimizer.state_dict()


def _load_state_dicts(model, optimizer, model_state, optim_state, sharded: bool):
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_state_dict(
            model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state, options=options
        )
    else:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)


# Config keys that leave the trained weights unchanged: a checkpoint resumes across changes to these.
RESUMABLE_CHANGES = frozenset({
    "out", "tracking_uri", "experiment", "run_name", "dataset", "eval_interval", "eval_windows",
    "ckpt_interval", "keep_checkpoints", "compile", "parallel", "scan_backend", "peak_tflops",
    "force_restart", "verify_data",
})  # fmt: skip


def run_fingerprint(cfg: TrainConfig, meta: dict) -> dict:
    """What a checkpoint must match to be resumed: every config key that shapes the weights, and the
    data (the token files' sha256 from meta.json)."""
    keys = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}
    return {**keys, "data_sha256": meta.get("sha256")}


def _changes(old: dict | None, new: dict) -> str:
    if not old:
        return "the checkpoint records no config"
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(new.keys() | old.keys())
               if old.get(k) != new.get(k)]  # fmt: skip
    return "the config changed: " + ", ".join(changed)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated memory on a GPU; the process's peak resident set on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_tflops(cfg: TrainConfig, device: torch.device) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


def _loss_curve(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["tokens"] for r in rows], [r["loss"] for r in rows], label="train")
    val = [r for r in rows if "val_loss" in r]
    ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax.set(xlabel="tokens", ylabel="loss (nats/token)", title=title)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) one model; write its weights, metrics.jsonl and summary.json."""
    dist_ = Distributed()
    try:
        with StopSignals() as stop:
            return _train(cfg, dist_, stop)
    finally:
        dist_.close()


def _train(cfg: TrainConfig, dist_: Distributed, stop: StopSignals) -> dict:
    if cfg.scan_backend:
        os.environ["SEQARENA_SCAN_BACKEND"] = cfg.scan_backend
    out, data_dir = Path(cfg.out), Path(cfg.data)
    meta_file = data_dir / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} not found: tokenize the data first (seqarena data tokenize)")
    meta = json.loads(meta_file.read_text())
    arch, size = parse_model_id(cfg.model)
    peak_lr = cfg.lr or SIZES[arch][size].lr

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, vocab_size=meta["vocab_size"]).to(dist_.device)
    n_params = model.num_parameters()
    per_step = cfg.micro_batch * cfg.seq_len * dist_.world
    if cfg.batch_tokens % per_step:
        raise ValueError(
            f"train config: batch_tokens={cfg.batch_tokens} is not a multiple of "
            f"micro_batch * seq_len * processes = {per_step}"
        )
    accum = cfg.batch_tokens // per_step
    steps = cfg.steps or math.ceil((cfg.tokens or 20 * n_params) / cfg.batch_tokens)
    train_tokens = load_tokens(data_dir, "train", cfg.verify_data)
    val_tokens = load_tokens(data_dir, "val", cfg.verify_data)
    if len(train_tokens) < cfg.seq_len + 2:
        raise ValueError(
            f"{data_dir}/train.bin has {len(train_tokens)} tokens, too few for seq_len {cfg.seq_len}"
        )
    val_x, val_y = val_windows(val_tokens, cfg.eval_windows, cfg.seq_len)

    sharded = dist_.world > 1 and cfg.parallel == "fsdp"
    no_decay = no_decay_names(model)
    wrapped = _wrap(model, cfg, dist_)  # before the optimizer: FSDP replaces the parameters
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, no_decay), lr=peak_lr, betas=(cfg.beta1, cfg.beta2),
        foreach=True,
    )  # fmt: skip
    checkpoints = CheckpointStore(out / "ckpt", cfg.keep_checkpoints)
    fingerprint = run_fingerprint(cfg, meta)
    ckpt_path, ckpt = checkpoints.newest()
    restart = ckpt is not None and (cfg.force_restart or ckpt.get("fingerprint") != fingerprint)
    if restart:
        reason = "--force-restart" if cfg.force_restart else _changes(ckpt.get("fingerprint"), fingerprint)
        dist_.barrier()  # every process has read the checkpoint before it moves
        if dist_.main:
            discarded = checkpoints.discard()
            print(f"not resuming from {ckpt_path} ({reason}): starting at step 0; the old checkpoints "
                  f"are in {discarded}", flush=True)  # fmt: skip
        dist_.barrier()
        ckpt_path, ckpt = None, None
    start_step, train_seconds = 0, 0.0
    if ckpt is not None:
        _load_state_dicts(model, optimizer, ckpt["model"], ckpt["optimizer"], sharded)
        torch.set_rng_state(ckpt["rng"])
        start_step, train_seconds = ckpt["step"], ckpt["train_seconds"]
        print(f"resuming from {ckpt_path} at step {start_step}", flush=True)
    forward = torch.compile(wrapped) if cfg.compile else wrapped
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dist_.device.type == "cuda"
        else contextlib.nullcontext()
    )
    from seqarena.ops import resolve_backend

    probe = torch.zeros(1, 1, 1, device=dist_.device)
    scan_backend = resolve_backend(probe) if isinstance(model, Mamba) else None
    flops_per_token = model.training_flops_per_token(cfg.seq_len)

    tracking = None
    metrics_file = out / "metrics.jsonl"
    history = ckpt["history"] if ckpt is not None else []  # the rows up to the checkpoint travel with it
    if dist_.main:
        out.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r) + "\n" for r in history)  # forget steps after the checkpoint
        atomic_write(metrics_file, lambda tmp: Path(tmp).write_text(text))
        tracking = _open_tracking(
            cfg, out, data_dir, arch, size, n_params, steps, accum, peak_lr, scan_backend, restart
        )
    logged_until = tracking.run.last_step("train/loss") if tracking else -1
    pending: list[tuple[str, float, int]] = []

    def evaluate() -> float:
        wrapped.eval()
        total = 0.0
        with torch.no_grad(), autocast:
            for i in range(0, len(val_x), cfg.micro_batch):
                x, y = val_x[i : i + cfg.micro_batch].to(dist_.device), val_y[i : i + cfg.micro_batch]
                logits = forward(x).float()
                total += F.cross_entropy(
                    logits.flatten(0, 1), y.to(dist_.device).flatten(), reduction="sum"
                ).item()
        wrapped.train()
        return total / val_y.numel()

    wrapped.train()
    bar = tqdm(
        range(start_step, steps), initial=start_step, total=steps, desc=cfg.model, disable=not dist_.main,
        mininterval=1 if sys.stderr.isatty() else 30,  # a log file gets a line every 30 s
    )  # fmt: skip
    for step in bar:
        started = time.perf_counter()
        lr = lr_at(step, steps, cfg, peak_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=dist_.device)
        for micro in range(accum):
            x, y = windows(
                train_tokens, cfg.seed, step, dist_.rank * accum + micro, cfg.micro_batch, cfg.seq_len
            )
            sync = micro == accum - 1 or dist_.world == 1 or sharded  # FSDP has no no_sync
            with contextlib.nullcontext() if sync else wrapped.no_sync(), autocast:
                logits = forward(x.to(dist_.device))
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.to(dist_.device).flatten()) / accum
                loss.backward()
            loss_sum += loss.detach()
        loss_value = dist_.mean(loss_sum).item()
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"{cfg.model}: loss is {loss_value} at step {step + 1}; stopped. The last good "
                f"checkpoint is {checkpoints.newest()[0] or 'none'}; lower lr or raise warmup and rerun."
            )
        grad_norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - started
        train_seconds += elapsed
        row = {
            "step": step + 1,
            "tokens": (step + 1) * cfg.batch_tokens,
            "loss": loss_value,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": cfg.batch_tokens / elapsed,
        }
        if (step + 1) % cfg.eval_interval == 0 or step + 1 == steps:
            row["val_loss"] = evaluate()
        if dist_.main:
            with open(metrics_file, "a") as f:
                f.write(json.dumps(row) + "\n")
            history.append(row)
            if step + 1 > logged_until:
                pending += [
                    (f"train/{k}", v, step + 1) for k, v in row.items() if k not in ("step", "val_loss")
                ]
                if "val_loss" in row:
                    pending.append(("val/loss", row["val_loss"], step + 1))
            bar.set_postfix(loss=f"{loss_value:.3f}")
        stopping = stop.requested(dist_) and step + 1 < steps
        if stopping or ((step + 1) % cfg.ckpt_interval == 0 and step + 1 < steps):
            model_state, optim_state = _state_dicts(model, optimizer, sharded)
            if dist_.main:
                # The metrics first (journaled, then sent): a checkpoint must never be ahead of them, or
                # a job killed between the two would resume past steps that MLflow never received.
                if tracking:
                    tracking.log(pending)
                pending = []
                state = {
                    "model": model_state, "optimizer": optim_state, "step": step + 1,
                    "rng": torch.get_rng_state(), "train_seconds": train_seconds, "config": asdict(cfg),
                    "fingerprint": fingerprint, "history": history,
                }  # fmt: skip
                saved = checkpoints.save(step + 1, state)
            dist_.barrier()
        if stopping:
            if tracking and tracking.reachable:
                tracking.run.finish("KILLED")  # the rerun reopens it
            where = saved if dist_.main else checkpoints.folder
            raise TrainingStopped(
                f"{cfg.model}: stopped by {stop.received or 'a signal to another process'} after step "
                f"{step + 1} of {steps}; checkpoint {where}. Rerun the same command to resume."
            )

    model_state, _ = _state_dicts(model, optimizer, sharded)
    if not dist_.main:
        return {}
    if sharded:  # FSDP sharded the model: an unsharded copy to save
        model = build_model(cfg.model, vocab_size=meta["vocab_size"])
        model.load_state_dict(model_state)
    return _finish(cfg, out, data_dir, model, history, tracking, pending, n_params, steps, peak_lr,
                   train_seconds, flops_per_token, dist_, scan_backend)  # fmt: skip


def _open_tracking(cfg, out, data_dir, arch, size, n_params, steps, accum, peak_lr, scan_backend, restart):
    """The model's MLflow run, written through a journal beside the outputs; a restart from step 0
    gets a new run (the old keeps its steps)."""
    if cfg.tracking_uri == "none":
        return None
    from seqarena.tracking import HTTP_PATIENCE, MetricsJournal, ModelRun, default_uri

    uri = cfg.tracking_uri or default_uri(out.resolve().parent.parent)
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_PATIENCE.items():
            os.environ.setdefault(key, value)
    tags = {
        "seqarena.arch": arch,
        "seqarena.size": size,
        "seqarena.dataset": cfg.dataset or data_dir.name,
        "seqarena.scan_backend": scan_backend or "n/a",
        "seqarena.tracking": "server" if uri.startswith("http") else "sqlite",
        "seqarena.seed": str(cfg.seed),  # a server refuses tags that are not strings
    }
    params = {
        "train": {k: v for k, v in asdict(cfg).items() if k not in ("out", "tracking_uri", "force_restart")},
        "resolved": {"steps": steps, "grad_accum": accum, "lr": peak_lr, "parameters": n_params},
    }
    run_name = cfg.run_name or cfg.model
    run = ModelRun(uri, cfg.experiment, run_name, tags=tags, params=params, new=restart, reopen=True)
    return MetricsJournal(run, out / "mlflow-journal.jsonl")


def _finish(cfg, out, data_dir, model, history, tracking, pending, n_params, steps, peak_lr, train_seconds,
            flops_per_token, dist_, scan_backend) -> dict:  # fmt: skip
    """Final weights, tokenizer, loss curve, summary.json (Snakemake's target), then the run's end."""
    model.save_pretrained(out)
    if (data_dir / "tokenizer.json").is_file():
        shutil.copyfile(data_dir / "tokenizer.json", out / "tokenizer.json")
    _loss_curve(history, out / "loss_curve.png", cfg.model)
    val_loss = history[-1]["val_loss"]
    tokens_seen = steps * cfg.batch_tokens
    tokens_per_s = tokens_seen / train_seconds
    peak = _peak_tflops(cfg, dist_.device)
    achieved = flops_per_token * tokens_per_s / 1e12
    summary = {
        "model": cfg.model,
        "seed": cfg.seed,
        "parameters": n_params,
        "steps": steps,
        "tokens": tokens_seen,
        "recipe": {  # as the report sets it beside the paper's (Table 12, Appendix E.2.1)
            "peak_lr": peak_lr,
            "warmup_steps": int(cfg.warmup * steps),
            "min_lr": lr_floor(cfg, peak_lr),
            "batch_tokens": cfg.batch_tokens,
            "seq_len": cfg.seq_len,
            "weight_decay": cfg.weight_decay,
            "betas": [cfg.beta1, cfg.beta2],
            "grad_clip": cfg.grad_clip,
        },
        "final_val_loss": val_loss,
        "final_val_perplexity": math.exp(val_loss),
        "final_train_loss": history[-1]["loss"],
        "wall_seconds": train_seconds,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops_per_token,
        "achieved_tflops": achieved,
        "mfu": achieved / (peak * dist_.world) if peak else None,  # per GPU: tokens/s is the world's
        "peak_memory_bytes": peak_memory_bytes(dist_.device),
        "device": device_name(dist_.device),
        "processes": dist_.world,
        "scan_backend": scan_backend,
        "mlflow_run_id": tracking.run.run_id if tracking else None,
    }
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text))
    if tracking:
        from seqarena.tracking import finish_training_run

        finals = [("final/val_loss", val_loss, steps), ("final/tokens_per_s", tokens_per_s, steps)]
        if tracking.log(pending + finals):
            finish_training_run(tracking.run.client, tracking.run.run_id, out)
        else:
            print(f"the tracking store does not answer: the run's metrics wait in {tracking.path}; "
                  f"`seqarena tracking sync {tracking.path}` sends them, the outputs, and ends the run",
                  file=sys.stderr)  # fmt: skip
    return summary
