"""One training loop for both architectures: resumable, deterministic, DDP/FSDP-ready.

A ``Trainer`` holds one run's state (model, optimizer, step, history, tracking) and names each
thing a step does; ``Trainer.train`` is the loop. Gradient accumulation to a global token batch,
periodic validation on fixed windows, bf16 autocast on CUDA, optional torch.compile; the recipe
is ``optim``'s.

Determinism and resume: the windows of step s are a pure function of (seed, s, window index)
(``batches``), the learning rate a pure function of s, and a checkpoint holds the model, the
optimizer, the step and the RNG states. Checkpoints (``seqarena.checkpoints``) are written
atomically with a checksummed manifest, so a job killed at any moment restarts from the newest
whole one and ends with the same weights and metrics as a run never killed. A stop signal
(``signals``) stops it after the current step with a checkpoint of that step.
"""

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from seqarena.checkpoints import CheckpointStore
from seqarena.files import atomic_write
from seqarena.models import SIZES, Mamba, build_model, parse_model_id
from seqarena.ops import resolve_backend, use_backend
from seqarena.tracking.metrics import TRAINING_HISTORY
from seqarena.training.batches import TokenData, val_windows, windows
from seqarena.training.config import TrainConfig, describe_changes, run_fingerprint
from seqarena.training.optim import adamw, lr_at, no_decay_names, set_lr
from seqarena.training.parallel import (
    Distributed,
    checkpoint_activations,
    full_state_dicts,
    load_full_state_dicts,
    wrap,
)
from seqarena.training.signals import STOPPED_EXIT_STATUS, StopSignals, TrainingStopped
from seqarena.training.summary import device_name, peak_memory_bytes, peak_tflops, recipe


class TrainingDiverged(RuntimeError):
    pass


class Trainer:
    """One model's training run on ``data``, with ``dist_``'s processes; ``stop`` (optional) asks
    it to stop after a step."""

    def __init__(
        self, cfg: TrainConfig, data: TokenData, dist_: Distributed, stop: StopSignals | None = None
    ):
        self.cfg, self.data, self.dist, self.stop = cfg, data, dist_, stop
        self.arch, self.size = parse_model_id(cfg.model)
        self.peak_lr = cfg.lr or SIZES[self.arch][self.size].lr
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, vocab_size=data.vocab_size).to(dist_.device)
        self.n_params = self.model.num_parameters()
        self.n_params_without_embedding = self.model.num_parameters(exclude_embedding=True)
        self.accum = cfg.grad_accumulation(dist_.world)
        self.steps = cfg.steps or math.ceil((cfg.tokens or 20 * self.n_params) / cfg.batch_tokens)
        data.check_fits(cfg.seq_len)
        self.val_x, self.val_y = val_windows(data.val, cfg.eval_windows, cfg.seq_len)

        self.sharded = dist_.world > 1 and cfg.parallel == "fsdp"
        no_decay = no_decay_names(self.model)  # before FSDP replaces the parameters
        if cfg.activation_checkpointing:
            checkpoint_activations(self.model)
        self.wrapped = wrap(self.model, cfg.parallel, dist_)
        self.optimizer = adamw(self.model, cfg, self.peak_lr, no_decay)
        self.forward = torch.compile(self.wrapped) if cfg.compile else self.wrapped
        on_cuda = dist_.device.type == "cuda"
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
        probe = torch.zeros(1, 1, 1, device=dist_.device)
        self.scan_backend = resolve_backend(probe, cfg.scan_backend or None) if self.is_mamba else None
        self.flops_per_token = self.model.training_flops_per_token(cfg.seq_len)

        self.checkpoints = CheckpointStore(Path(cfg.out) / "ckpt", cfg.keep_checkpoints)
        self.fingerprint = run_fingerprint(cfg, data.sha256)
        self.step, self.train_seconds, self.history = 0, 0.0, []
        self.run_id: str | None = None  # the MLflow run of the history a checkpoint continues
        self.metrics_file: Path | None = None  # set by open_outputs; without it nothing is written
        self.tracking = None
        self.logged_until, self.pending = -1, []

    @property
    def is_mamba(self) -> bool:
        return isinstance(self.model, Mamba)

    @classmethod
    def from_tokens(cls, cfg: TrainConfig, data: TokenData) -> "Trainer":
        """A single-process trainer on tokens in memory (a benchmark's): ``train`` writes nothing."""
        return cls(cfg, data, Distributed())

    def resume(self) -> None:
        """Continue from the newest whole checkpoint of this config, and its MLflow run; checkpoints
        of another config (or all, with force_restart) are moved aside, and the run starts at step 0."""
        path, ckpt = self.checkpoints.newest()
        if ckpt is None:
            return
        if self.cfg.force_restart or ckpt.get("fingerprint") != self.fingerprint:
            reason = (
                "--force-restart"
                if self.cfg.force_restart
                else describe_changes(ckpt.get("fingerprint"), self.fingerprint)
            )
            self.dist.barrier()  # every process has read the checkpoint before it moves
            if self.dist.main:
                discarded = self.checkpoints.discard()
                print(
                    f"not resuming from {path} ({reason}): starting at step 0; "
                    f"the old checkpoints are in {discarded}",
                    flush=True,
                )
            self.dist.barrier()
            return
        load_full_state_dicts(self.model, self.optimizer, ckpt["model"], ckpt["optimizer"], self.sharded)
        torch.set_rng_state(ckpt["rng"])
        self.step, self.train_seconds, self.history = ckpt["step"], ckpt["train_seconds"], ckpt["history"]
        self.run_id = ckpt.get("mlflow_run_id")
        print(f"resuming from {path} at step {self.step}", flush=True)

    def open_outputs(self) -> None:
        """metrics.jsonl as of the checkpoint (steps after it are forgotten), and the MLflow run."""
        if not self.dist.main:
            return
        out = Path(self.cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        self.metrics_file = out / "metrics.jsonl"
        text = "".join(json.dumps(r) + "\n" for r in self.history)
        atomic_write(self.metrics_file, lambda tmp: Path(tmp).write_text(text))
        self.tracking = self.open_tracking()
        self.logged_until = self.tracking.run.last_step(TRAINING_HISTORY) if self.tracking else -1

    def open_tracking(self):
        """The training history's MLflow run, written through a journal beside the outputs: a resume
        continues its checkpoint's run (a changed resumable setting is tagged with the step it took
        effect at), a start at step 0 gets a run of its own (ModelRun says when)."""
        cfg = self.cfg
        if cfg.tracking_uri == "none":
            return None
        from seqarena.tracking import MetricsJournal, ModelRun, default_uri, server_patience

        out = Path(cfg.out)
        uri = cfg.tracking_uri or default_uri(out.resolve().parent.parent)
        server_patience(uri)
        tags = {
            "seqarena.arch": self.arch,
            "seqarena.size": self.size,
            "seqarena.dataset": cfg.dataset or self.data.name,
            "seqarena.scan_backend": self.scan_backend or "n/a",
            "seqarena.tracking": "server" if uri.startswith("http") else "sqlite",
            "seqarena.seed": str(cfg.seed),  # a server refuses tags that are not strings
        }
        # what the config's zeros and defaults came to (train.lr 0: the registry's), and the architecture
        resolved = {
            "steps": self.steps,
            "tokens": self.steps * cfg.batch_tokens,
            "grad_accum": self.accum,
            "parameters": self.n_params,
            "parameters_without_embedding": self.n_params_without_embedding,
        } | recipe(cfg, self.steps, self.peak_lr)
        ignored = ("out", "tracking_uri", "force_restart")
        params = {
            "train": {k: v for k, v in asdict(cfg).items() if k not in ignored},
            "resolved": resolved,
            "model": self.model.config_dict(),
        }
        run = ModelRun(
            uri,
            cfg.experiment,
            cfg.run_name or cfg.model,
            tags=tags,
            params=params,
            run_id=self.run_id,
            fresh=self.step == 0,
            reopen=True,
        )
        if run.changed:
            changes = "; ".join(f"{key}: {old} -> {new}" for key, (old, new) in sorted(run.changed.items()))
            run.tag(f"seqarena.resumed_at_step_{self.step}", changes)
        return MetricsJournal(run, out / "mlflow-journal.jsonl")

    def train(self) -> list[dict]:
        """The loop: a step, its validation when due, its record, a checkpoint when due."""
        self.wrapped.train()
        bar = tqdm(
            range(self.step, self.steps),
            initial=self.step,
            total=self.steps,
            desc=self.cfg.model,
            disable=not self.dist.main,
            mininterval=1 if sys.stderr.isatty() else 30,  # a log file gets a line every 30 s
        )
        with use_backend(self.scan_backend):
            for _ in bar:
                row = self.train_step()
                if self.step % self.cfg.eval_interval == 0 or self.step == self.steps:
                    row |= {"val_loss": self.evaluate(), "val_windows": len(self.val_x)}
                self.record(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
                self.maybe_checkpoint()
        return self.history

    def train_step(self) -> dict:
        """One optimizer step over ``accum`` micro-batches per process; its row of metrics."""
        cfg, step = self.cfg, self.step
        started = time.perf_counter()
        lr = lr_at(step, self.steps, cfg, self.peak_lr)
        set_lr(self.optimizer, lr)
        loss_sum = torch.zeros((), device=self.dist.device)
        for micro in range(self.accum):
            index = self.dist.rank * self.accum + micro
            x, y = windows(self.data.train, cfg.seed, step, index, cfg.micro_batch, cfg.seq_len)
            loss_sum += self.backward(x, y, sync=micro == self.accum - 1)
        loss = self.dist.mean(loss_sum).item()
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"{cfg.model}: loss is {loss} at step {step + 1}; stopped. The last good "
                f"checkpoint is {self.checkpoints.newest()[0] or 'none'}; lower lr or raise warmup and rerun."
            )
        grad_norm = torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), cfg.grad_clip).item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - started
        self.train_seconds += elapsed
        self.step = step + 1
        return {
            "step": self.step,
            "tokens": self.step * cfg.batch_tokens,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": cfg.batch_tokens / elapsed,
        }

    def backward(self, x: torch.Tensor, y: torch.Tensor, sync: bool) -> torch.Tensor:
        """A micro-batch's loss (scaled for accumulation) and its gradients; DDP all-reduces them only
        where ``sync`` (the last micro-batch), and FSDP always (it has no no_sync)."""
        sync = sync or self.dist.world == 1 or self.sharded
        with contextlib.nullcontext() if sync else self.wrapped.no_sync(), self.autocast:
            logits = self.forward(x.to(self.dist.device))
            loss = (
                F.cross_entropy(logits.float().flatten(0, 1), y.to(self.dist.device).flatten()) / self.accum
            )
            loss.backward()
        return loss.detach()

    def evaluate(self) -> float:
        """Mean loss per token on the fixed validation windows."""
        self.wrapped.eval()
        total, batch, device = 0.0, self.cfg.micro_batch, self.dist.device
        with torch.no_grad(), self.autocast:
            for i in range(0, len(self.val_x), batch):
                logits = self.forward(self.val_x[i : i + batch].to(device)).float()
                y = self.val_y[i : i + batch].to(device)
                total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        self.wrapped.train()
        return total / self.val_y.numel()

    def record(self, row: dict) -> None:
        """The row into the history, metrics.jsonl and (from a resume: past what it holds) MLflow's queue."""
        if not self.dist.main:
            return
        self.history.append(row)
        if self.metrics_file is not None:
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.tracking and row["step"] > self.logged_until:
            from seqarena.tracking import training_metrics

            self.pending += training_metrics(row)

    def maybe_checkpoint(self) -> None:
        """A checkpoint every ckpt_interval steps, and one before stopping on a signal."""
        stopping = self.stop is not None and self.stop.requested(self.dist) and self.step < self.steps
        if stopping or (self.step % self.cfg.ckpt_interval == 0 and self.step < self.steps):
            saved = self.checkpoint()
        if stopping:
            if self.tracking and self.tracking.reachable:
                self.tracking.run.finish("KILLED")  # the rerun reopens it
            raise TrainingStopped(
                f"{self.cfg.model}: stopped by {self.stop.received or 'a signal to another process'} after "
                f"step {self.step} of {self.steps}; checkpoint {saved or self.checkpoints.folder}. "
                "Rerun the same command to resume."
            )

    def checkpoint(self) -> Path | None:
        """Save the run's state (every process takes part; the main one writes); its file, or None
        on other processes."""
        model_state, optim_state = full_state_dicts(self.model, self.optimizer, self.sharded)
        saved = None
        if self.dist.main:
            # The metrics first (journaled, then sent): a checkpoint must never be ahead of them, or
            # a job killed between the two would resume past steps that MLflow never received.
            if self.tracking:
                self.tracking.log(self.pending)
            self.pending = []
            state = {
                "model": model_state,
                "optimizer": optim_state,
                "step": self.step,
                "rng": torch.get_rng_state(),
                "train_seconds": self.train_seconds,
                "config": asdict(self.cfg),
                "fingerprint": self.fingerprint,
                "history": self.history,
                "mlflow_run_id": self.tracking.run.run_id if self.tracking else None,
            }
            saved = self.checkpoints.save(self.step, state)
        self.dist.barrier()
        return saved

    def summary(self) -> dict:
        """What summary.json says about the run so far."""
        cfg, device = self.cfg, self.dist.device
        val_loss = self.history[-1]["val_loss"]
        tokens_seen = self.steps * cfg.batch_tokens
        tokens_per_s = tokens_seen / self.train_seconds
        peak = peak_tflops(cfg.peak_tflops, device)
        achieved = self.flops_per_token * tokens_per_s / 1e12
        return {
            "model": cfg.model,
            "seed": cfg.seed,
            "parameters": self.n_params,
            "parameters_without_embedding": self.n_params_without_embedding,
            "steps": self.steps,
            "tokens": tokens_seen,
            "training_flops": self.flops_per_token * tokens_seen,
            "recipe": recipe(cfg, self.steps, self.peak_lr),
            "final_val_loss": val_loss,
            "final_val_perplexity": math.exp(val_loss),
            "final_train_loss": self.history[-1]["loss"],
            "wall_seconds": self.train_seconds,
            "tokens_per_s": tokens_per_s,
            "flops_per_token": self.flops_per_token,
            "achieved_tflops": achieved,
            "mfu": achieved / (peak * self.dist.world) if peak else None,  # per GPU: tokens/s is the world's
            "peak_memory_bytes": peak_memory_bytes(device),
            "device": device_name(device),
            "processes": self.dist.world,
            "scan_backend": self.scan_backend,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "mlflow_run_id": self.tracking.run.run_id if self.tracking else None,
        }

    def finish(self) -> dict:
        """Final weights, tokenizer, loss curve, summary.json (Snakemake's target), then the run's end."""
        model_state, _ = full_state_dicts(self.model, self.optimizer, self.sharded)
        if not self.dist.main:
            return {}
        model, out = self.model, Path(self.cfg.out)
        if self.sharded:  # FSDP sharded the model: an unsharded copy to save
            model = build_model(self.cfg.model, vocab_size=self.data.vocab_size)
            model.load_state_dict(model_state)
        model.save_pretrained(out)
        if self.data.tokenizer is not None:
            shutil.copyfile(self.data.tokenizer, out / "tokenizer.json")
        from seqarena.report.figures import loss_curves_figure, save_figure

        save_figure(
            loss_curves_figure({self.cfg.model: self.history}, title=self.cfg.model), out / "loss_curve.png"
        )
        summary = self.summary()
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text))
        if self.tracking:
            self.end_tracking(summary)
        return summary

    def end_tracking(self, summary: dict) -> None:
        """The last metrics, then the outputs as artifacts and the run FINISHED; where the store does
        not answer, the journal keeps them for ``seqarena tracking sync``."""
        from seqarena.tracking import final_training_metrics, finish_training_run

        if self.tracking.log(self.pending + final_training_metrics(summary)):
            finish_training_run(self.tracking.run.client, self.tracking.run.run_id, Path(self.cfg.out))
        else:
            print(
                f"the tracking store does not answer: the run's metrics wait in {self.tracking.path}; "
                f"`seqarena tracking sync {self.tracking.path}` sends them, the outputs, and ends the run",
                file=sys.stderr,
            )


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """With ``enabled``, PyTorch's deterministic algorithms for the run (mamba_ssm's Triton SSD
    follows the same switch), restored after. An op without one warns, naming itself, rather than
    fail: on a GPU, reruns then still differ in the last bits where such ops run. cuBLAS needs a
    fixed workspace for it."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) one model on its tokenized folder; write its weights, metrics.jsonl and
    summary.json. Returns the summary (on the main process; {} on the others)."""
    dist_ = Distributed()
    try:
        with StopSignals() as stop, deterministic_algorithms(cfg.deterministic):
            trainer = Trainer(cfg, TokenData.from_folder(cfg.data, cfg.verify_data), dist_, stop)
            trainer.resume()
            trainer.open_outputs()
            trainer.train()
            return trainer.finish()
    finally:
        dist_.close()


def train_command(cfg: TrainConfig) -> None:
    """Train (or resume) one model; stopped by a signal, exit with STOPPED_EXIT_STATUS (75), which
    the train rule and SLURM's requeue read as "resume me"."""
    try:
        summary = train(cfg)
    except TrainingStopped as stopped:
        print(stopped, file=sys.stderr, flush=True)
        sys.exit(STOPPED_EXIT_STATUS)
    if summary:
        print(json.dumps(summary, indent=2))
