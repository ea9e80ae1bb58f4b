"""Synthetic tasks: why Mamba differs from attention, small enough for a laptop CPU.

The paper's mechanistic experiments (Gu & Dao 2023, §4.1) and Zoology's associative recall:

- **selective copying** (§4.1.1, Table 1): data tokens scattered among noise tokens; after
  the sequence, marker tokens ask for the data tokens in order. Content-aware selection is
  needed: the data positions vary, so a time-invariant model cannot solve it.
- **induction heads** (§4.1.2, Table 11): a special token followed by a target appears
  once; at the end the special token appears again and the target must be recalled. Trained
  at one length, tested at longer ones (length extrapolation).
- **multi-query associative recall** (MQAR, Arora et al. 2023, Zoology): key-value pairs,
  then the keys again among noise; at each key the model must emit its value.
- **parity** (state tracking; the Mamba-3 paper, arXiv 2603.15569, after Grazzi et al. 2024):
  random bits; at every position the parity of the bits so far. A recurrence whose decay is real
  and positive (Mamba-1, Mamba-2) cannot flip a state sign per bit; a rotation by pi can (Mamba-3's
  complex state). Trained at one length, tested at longer ones.

Every batch is generated on the fly from a seed: a (sequence, label) pair where labels are
-100 except at the positions that are scored. Mamba is evaluated as a recurrence (its state
carried from one span of tokens to the next), so memory does not grow with the test length;
attention models through their full forward.
"""

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from seqarena.device import compute_device
from seqarena.files import atomic_write
from seqarena.models import SIZES, Mamba, build_model, model_config
from seqarena.models.families import FAMILIES
from seqarena.options import Tracked, narrowed, option
from seqarena.tracking import log_stage, synthetic_metrics
from seqarena.training.optim import adamw, lr_at, set_lr

IGNORE = -100
TASKS = ("selective_copying", "induction_heads", "mqar", "parity")
EVAL_CHUNK = 256  # sequences scored at once on the recurrent path
RECURRENT_SPAN = 1024  # tokens per call of the recurrent path
EVAL_BYTES_PER_TOKEN = 17  # the sequences and labels (int64) and the mask, per token of a chunk


def selective_copying(batch: int, length: int, vocab: int, n_data: int, gen: torch.Generator):
    """Noise (0) with ``n_data`` data tokens (1..vocab-2) at random positions among the first
    ``length``, then ``n_data`` markers (vocab-1); at the markers, the data tokens in order."""
    if n_data > length or vocab < 4:
        raise ValueError(f"selective copying needs n_data <= length and vocab >= 4 (got {n_data}, {vocab})")
    data = torch.randint(1, vocab - 1, (batch, n_data), generator=gen)
    positions = torch.rand(batch, length, generator=gen).argsort(dim=1)[:, :n_data].sort(dim=1).values
    seq = torch.zeros(batch, length + n_data, dtype=torch.long)
    seq.scatter_(1, positions, data)
    seq[:, length:] = vocab - 1
    labels = torch.full_like(seq, IGNORE)
    labels[:, length:] = data
    return seq, labels


def induction_heads(batch: int, length: int, vocab: int, gen: torch.Generator):
    """Random tokens (1..vocab-2); the special token (vocab-1) once at a random position followed
    by the target, and again last; the label of the last position is the target."""
    if length < 4 or vocab < 4:
        raise ValueError(f"induction heads needs length >= 4 and vocab >= 4 (got {length}, {vocab})")
    seq = torch.randint(1, vocab - 1, (batch, length), generator=gen)
    special = torch.randint(0, length - 2, (batch,), generator=gen)
    rows = torch.arange(batch)
    seq[rows, special] = vocab - 1
    seq[:, -1] = vocab - 1
    labels = torch.full_like(seq, IGNORE)
    labels[:, -1] = seq[rows, special + 1]
    return seq, labels


def mqar(batch: int, length: int, vocab: int, n_pairs: int, gen: torch.Generator):
    """``n_pairs`` key-value pairs (keys from the lower half of the vocabulary, values from the
    upper, keys distinct), then noise (0) with every key once at a random position; the label at
    a queried key is its value."""
    half = vocab // 2
    if n_pairs > half - 1 or 2 * n_pairs + n_pairs > length:
        raise ValueError(
            f"mqar needs n_pairs < vocab/2 and 3 n_pairs <= length (got {n_pairs}, {vocab}, {length})"
        )
    keys = 1 + torch.rand(batch, half - 1, generator=gen).argsort(dim=1)[:, :n_pairs]
    values = torch.randint(half, vocab, (batch, n_pairs), generator=gen)
    seq = torch.zeros(batch, length, dtype=torch.long)
    seq[:, 0 : 2 * n_pairs : 2], seq[:, 1 : 2 * n_pairs : 2] = keys, values
    tail = length - 2 * n_pairs
    positions = 2 * n_pairs + torch.rand(batch, tail, generator=gen).argsort(dim=1)[:, :n_pairs]
    order = torch.rand(batch, n_pairs, generator=gen).argsort(dim=1)
    seq.scatter_(1, positions, keys.gather(1, order))
    labels = torch.full_like(seq, IGNORE)
    labels.scatter_(1, positions, values.gather(1, order))
    return seq, labels


def parity(batch: int, length: int, vocab: int, gen: torch.Generator):
    """Bits as tokens 1 (0) and 2 (1); the label at every position is the parity of the bits up to
    it, as token 1 (even) or 2 (odd)."""
    if vocab < 3:
        raise ValueError(f"parity needs vocab >= 3 (got {vocab})")
    bits = torch.randint(0, 2, (batch, length), generator=gen)
    return 1 + bits, 1 + bits.cumsum(dim=1) % 2


@dataclass
class SyntheticConfig:
    task: str
    arch: str
    length: int = option(256, help="training length (of the noise/data part for selective copying)")
    vocab: int = 16
    n_data: int = option(16, help="selective copying: tokens to copy")
    n_pairs: int = option(8, help="mqar: key-value pairs")
    d_model: int = 64
    n_layer: int = 2
    d_state: int = option(
        0, help="SSM state size N of the Mamba families (0: their CPU sizes'); Transformer++ has none"
    )
    steps: int = 1000
    batch: int = 32
    lr: float = option(
        3e-3, help="peak; the schedule is training's (training.optim): warmup, then cosine to the floor"
    )
    warmup: float = option(0.05, help="fraction of the steps")
    min_lr_ratio: float = option(
        0.1, help="1 with warmup 0: a constant rate (the paper's Table 1 and Table 11 runs)"
    )
    min_lr: float = option(0.0, help="an absolute floor instead of the ratio")
    weight_decay: float = option(
        0.0,
        help="the paper's synthetic runs: Adam without weight decay (Table 11), not LM training's 0.1",
    )
    beta1: float = option(0.9, help="AdamW's betas and the gradient clip: language-model training's")
    beta2: float = 0.95
    grad_clip: float = 1.0
    test_lengths: list[int] = option([], help="default: the training length")
    eval_sequences: int = 256
    # Attention is scored by its full forward (cost quadratic in the length): past this length it
    # is not run and recorded as out of memory, as the paper's attention models past 2^14.
    max_attention_length: int = 16384
    seed: int = 0

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown synthetic task {self.task!r}; known: {', '.join(TASKS)}")
        if self.arch not in SIZES:
            raise ValueError(f"unknown architecture {self.arch!r}; known: {', '.join(SIZES)}")
        if not 0 <= self.warmup < 1 or not 0 <= self.min_lr_ratio <= 1 or self.min_lr < 0:
            raise ValueError(
                "synthetic config: warmup must be in [0, 1), min_lr_ratio in [0, 1], min_lr >= 0"
            )
        self.test_lengths = sorted(self.test_lengths or [self.length])
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        for length in self.test_lengths:
            need = EVAL_BYTES_PER_TOKEN * min(EVAL_CHUNK, self.eval_sequences) * length
            if need > memory // 2:
                raise ValueError(
                    f"synthetic config: test length {length} needs about {need / 2**30:.1f} GiB for "
                    f"{min(EVAL_CHUNK, self.eval_sequences)} sequences at once, more than half of this "
                    f"machine's {memory / 2**30:.1f} GiB: lower test_lengths or eval_sequences"
                )
        for length in {self.length, *self.test_lengths}:  # before any training: a generator's refusal
            try:
                self.batch_at(length, 1, torch.Generator())
            except ValueError as e:
                raise ValueError(f"synthetic config: length {length}: {e}") from e

    @property
    def model_name(self) -> str:
        with_state = self.d_state and self.has_state
        return f"{self.arch}-d{self.d_model}" + (f"-n{self.d_state}" if with_state else "")

    @property
    def recurrent(self) -> bool:
        """Scored as a recurrence (memory constant in the length): the families without attention."""
        return FAMILIES[self.arch].recurrent

    @property
    def has_state(self) -> bool:
        """The Mamba families have an SSM state (``d_state``); the Transformers have none."""
        return FAMILIES[self.arch].has_ssm_state

    def batch_at(self, length: int, size: int, gen: torch.Generator):
        if self.task == "selective_copying":
            return selective_copying(size, length, self.vocab, self.n_data, gen)
        if self.task == "induction_heads":
            return induction_heads(size, length, self.vocab, gen)
        if self.task == "parity":
            return parity(size, length, self.vocab, gen)
        return mqar(size, length, self.vocab, self.n_pairs, gen)


def chance(cfg: SyntheticConfig) -> float:
    """A guess's accuracy: among MQAR's values (the upper half of the vocabulary), parity's two
    answers, or the other tasks' data tokens (all but noise and the special token)."""
    if cfg.task == "mqar":
        return 1 / (cfg.vocab - cfg.vocab // 2)
    return 1 / 2 if cfg.task == "parity" else 1 / (cfg.vocab - 2)


def build(cfg: SyntheticConfig) -> torch.nn.Module:
    """A 2-layer, width-D model of the architecture (the paper's synthetic-task setting)."""
    torch.manual_seed(cfg.seed)
    overrides = dict(d_model=cfg.d_model, n_layer=cfg.n_layer)
    if cfg.d_state and cfg.has_state:
        overrides["ssm_cfg"] = {**model_config(f"{cfg.arch}-tiny").ssm_cfg, "d_state": cfg.d_state}
    return build_model(f"{cfg.arch}-tiny", vocab_size=cfg.vocab, **overrides)


@torch.no_grad()
def scored_logits(model, seq: torch.Tensor, labels: torch.Tensor, span: int = RECURRENT_SPAN) -> torch.Tensor:
    """Logits at the labelled positions only, (n_labelled, vocab). Mamba runs as a recurrence:
    ``span`` tokens at a time, its conv and SSM state carried from one span to the next (a Mamba-2
    or hybrid layer steps token by token), so memory does not grow with the length; attention
    models run their full forward."""
    mask = labels != IGNORE
    if not isinstance(model, Mamba):
        return model(seq)[mask]
    cache = model.allocate_cache(seq.shape[0], seq.shape[1])
    rows, times, kept = [], [], []
    for start in range(0, seq.shape[1], span):
        logits = model(seq[:, start : start + span], cache)
        at, t = mask[:, start : start + span].nonzero(as_tuple=True)
        rows.append(at)
        times.append(start + t)
        kept.append(logits[at, t])
    order = (torch.cat(rows) * seq.shape[1] + torch.cat(times)).argsort()  # labels[mask]'s order
    return torch.cat(kept)[order]


def accuracy(model, cfg: SyntheticConfig, length: int, sequences: int, seed: int) -> float:
    """Fraction of labelled positions predicted exactly (argmax over the real vocabulary).

    Sequences go through in chunks: for attention few enough that the (length x length) scores
    stay near 256 MB; the recurrent path holds only its state, so its chunks can be large."""
    device = next(model.parameters()).device
    chunk = EVAL_CHUNK if cfg.recurrent else max(1, min(EVAL_CHUNK, 2**26 // length**2))
    gen = torch.Generator().manual_seed(seed)
    correct = total = 0
    model.eval()
    for start in range(0, sequences, chunk):
        seq, labels = (t.to(device) for t in cfg.batch_at(length, min(chunk, sequences - start), gen))
        predicted = scored_logits(model, seq, labels)[:, : cfg.vocab].argmax(-1)
        target = labels[labels != IGNORE]
        correct += int((predicted == target).sum())
        total += target.numel()
    model.train()
    return correct / total


def fit(cfg: SyntheticConfig, log_every: int = 50) -> tuple[torch.nn.Module, list[dict]]:
    """Train on fresh batches (on a GPU if there is one): the model and its learning curve."""
    device = compute_device()
    model = build(cfg).to(device)
    optimizer = adamw(model, cfg, cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    curve = []
    bar = tqdm(range(cfg.steps), desc=f"{cfg.task} {cfg.model_name}", mininterval=5)
    for step in bar:
        set_lr(optimizer, lr_at(step, cfg.steps, cfg, cfg.lr))
        seq, labels = (t.to(device) for t in cfg.batch_at(cfg.length, cfg.batch, gen))
        logits = model(seq)[..., : cfg.vocab]
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab), labels.reshape(-1), ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            acc = accuracy(model, cfg, cfg.length, 64, seed=cfg.seed + 1)
            curve.append({"step": step + 1, "loss": loss.item(), "accuracy": acc})
            bar.set_postfix(loss=f"{loss.item():.3f}", accuracy=f"{acc:.3f}", refresh=False)
    return model, curve


def train_synthetic(cfg: SyntheticConfig, out: Path, log_every: int = 50) -> dict:
    """``fit``, evaluate at every test length, write ``out`` (JSON) atomically."""
    start = time.perf_counter()
    model, curve = fit(cfg, log_every)
    train_seconds = time.perf_counter() - start
    by_length, not_run = {}, {}
    for length in cfg.test_lengths:
        if not cfg.recurrent and length > cfg.max_attention_length:
            by_length[str(length)] = None
            not_run[str(length)] = f"attention past max_attention_length {cfg.max_attention_length}"
            continue
        try:
            by_length[str(length)] = accuracy(model, cfg, length, cfg.eval_sequences, seed=cfg.seed + 2)
        except (torch.OutOfMemoryError, MemoryError):
            by_length[str(length)] = None  # recorded as out of memory, not a crash
    result = {
        "task": cfg.task,
        "model": cfg.model_name,
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": cfg.steps,
        "final_accuracy": by_length.get(str(cfg.length), curve[-1]["accuracy"] if curve else None),
        "accuracy_by_length": by_length,  # None: out of memory, or not run (not_run says why)
        "not_run": not_run,
        "chance": chance(cfg),
        "curve": curve,
        "train_seconds": train_seconds,
        "device": str(next(model.parameters()).device),
        "wall_seconds": time.perf_counter() - start,
    }
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(Path(out), lambda tmp: Path(tmp).write_text(text))
    return result


@dataclass(kw_only=True)
class SyntheticJob(SyntheticConfig, Tracked):
    """A synthetic run as the command takes it: its config, where its result goes, and the MLflow
    experiment (runs go to ``<experiment>-synthetic``)."""

    out: str = option(help="the result JSON")


def synthetic_command(job: SyntheticJob) -> None:
    """Train and test a small model on a synthetic task; log the result to its own run."""
    cfg = narrowed(job, SyntheticConfig)
    result = train_synthetic(cfg, Path(job.out))
    run = f"{cfg.task}/{cfg.model_name}/seed{cfg.seed}"
    metrics = synthetic_metrics(cfg.task, result)
    log_stage(job.tracking_uri, f"{job.experiment}-synthetic", run, metrics, Path(job.out), "synthetic")
    print(
        json.dumps(
            {k: result[k] for k in ("task", "model", "final_accuracy", "accuracy_by_length")}, indent=2
        )
    )
