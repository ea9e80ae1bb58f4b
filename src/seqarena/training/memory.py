"""What a training step holds in memory, per process, estimated from the model's config before it runs.

    bytes = state + activations + logits

- state: float32 weights, gradients and AdamW's two moments, 16 bytes a parameter; DDP with more
  than one process adds its gradient buckets (4 bytes a parameter); FSDP divides it by the
  processes.
- activations: per layer, the elements its block keeps per token for the backward pass (the
  config's ``kept_per_token``: what the GPU kernels keep; the final norm's input and output on
  top), times the tokens of a micro-batch, at 2 bytes under bf16 autocast (4 in float32). With
  activation checkpointing each block keeps only its inputs (``block_inputs``, counted in
  float32), plus one block's activations while it is recomputed.
- logits: the float32 log-softmax that the cross-entropy keeps (tokens x padded vocabulary), and
  in the backward pass the logits' gradient, in float32 and at the activation width, or with
  activation checkpointing one recomputed block, whichever is larger.

An estimate, not a measurement: the CUDA context, the allocator's fragmentation and the kernels'
workspaces come on top (``HEADROOM``). tests/test_memory.py holds it against what autograd keeps
on this CPU at the small sizes; ``seqarena sizes --micro-batch 8 --seq-len 2048`` prints it for
every size, and the workflow warns before submitting a job that it does not fit.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from seqarena.data import build_tokenizer
from seqarena.models import model_config
from seqarena.models.base import GPT_NEOX_VOCAB, pad_vocab
from seqarena.models.sizes import build_model
from seqarena.options import option
from seqarena.training.config import TrainConfig

HEADROOM = 0.9  # of a GPU's memory that the estimate may fill: the rest is context and fragmentation
STATE_BYTES = 16  # float32 weights, gradients, AdamW's exp_avg and exp_avg_sq
DDP_BUCKET_BYTES = 4  # DDP's gradient buckets, a float32 copy of the gradients


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int  # the model's, whatever its sharding
    state: int
    activations: int  # kept by the forward pass for the backward pass, the logits' softmax aside
    logits: int  # the cross-entropy's float32 log-softmax, kept for the backward pass
    backward: int  # the largest passing need of the backward: the logits' gradients, or a recomputed block

    @property
    def total(self) -> int:
        return self.state + self.activations + self.logits + self.backward


def parameters(model_id: str, vocab_size: int) -> int:
    with torch.device("meta"):  # counts without allocating memory
        return build_model(model_id, vocab_size=vocab_size).num_parameters()


def estimate_training_memory(
    model_id: str,
    vocab_size: int,
    micro_batch: int,
    seq_len: int,
    *,
    processes: int = 1,
    parallel: str = "ddp",
    activation_checkpointing: bool = False,
    activation_bytes: int = 2,
) -> MemoryEstimate:
    """One training process's memory for ``model_id`` at a micro-batch of ``micro_batch`` x
    ``seq_len`` tokens (the module docstring says what is counted)."""
    config = model_config(model_id, vocab_size)
    params = parameters(model_id, vocab_size)
    if parallel == "fsdp" and processes > 1:
        state = params * STATE_BYTES // processes
    else:
        state = params * (STATE_BYTES + (DDP_BUCKET_BYTES if processes > 1 else 0))
    tokens, kept = micro_batch * seq_len, config.kept_per_token()
    final_norm = tokens * 2 * config.d_model * activation_bytes  # its input, and its output for the head
    if activation_checkpointing:  # each block's float32 inputs, and one block's activations at a time
        activations = final_norm + tokens * len(kept) * config.block_inputs * config.d_model * 4
        recompute = tokens * max(kept) * activation_bytes
    else:
        activations, recompute = final_norm + tokens * sum(kept) * activation_bytes, 0
    logit_elements = tokens * pad_vocab(vocab_size, config.pad_vocab_size_multiple)
    logits_gradient = logit_elements * (4 + activation_bytes)  # float32, and at the logits' width
    backward = int(max(recompute, logits_gradient))
    return MemoryEstimate(params, state, int(activations), logit_elements * 4, backward)


def kept_for_backward(model, tokens) -> int:
    """Measured, to hold the estimate against: the bytes a forward pass and its loss keep for the
    backward pass, every storage autograd saves counted once (however many tensors view it), the
    parameters' own aside."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(tokens[:, :-1])
        F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    return sum(storages.values())


def tokenizer_vocab(tokenizer: dict) -> int:
    """The vocabulary a data config's tokenizer gives, without the hub: a hub tokenizer not on disk
    counts as the paper's GPT-NeoX."""
    name = tokenizer.get("tokenizer_name") or ""
    if tokenizer["kind"] == "bpe":
        return tokenizer["vocab_size"]
    if tokenizer["kind"] == "hf" and not (name and Path(name).exists()):
        return GPT_NEOX_VOCAB
    return build_tokenizer(tokenizer["kind"], name=name).get_vocab_size()


@dataclass
class MemoryJob:
    """One training job of a plan: its model, its options, its data's tokenizer, where it runs."""

    model: str
    train: dict  # train.* with its size's by_size entry, as the job gets them
    tokenizer: dict  # data.<dataset>.tokenizer
    processes: int
    device: str  # cuda or cpu
    mem_mb: int
    gpu_memory_gb: float | None = None


def job_warnings(job: MemoryJob) -> list[str]:
    """What does not fit: the per-GPU estimate against the GPU's memory (times HEADROOM); on a CPU
    the estimate, on a GPU the checkpoint's full state gathered on the host, against ``mem_mb``."""
    train = TrainConfig(model=job.model, data="", out="", **job.train)
    vocab, on_gpu = tokenizer_vocab(job.tokenizer), job.device == "cuda"
    estimate = estimate_training_memory(
        job.model,
        vocab,
        train.micro_batch,
        train.seq_len,
        processes=job.processes,
        parallel=train.parallel,
        activation_checkpointing=train.activation_checkpointing,
        activation_bytes=2 if on_gpu else 4,
    )
    recipe = (
        f"micro_batch {train.micro_batch} x seq_len {train.seq_len}, {job.processes} process(es), "
        f"{train.parallel}, activation_checkpointing {train.activation_checkpointing}"
    )
    warnings = []
    if on_gpu and job.gpu_memory_gb and estimate.total > HEADROOM * job.gpu_memory_gb * 1e9:
        warnings.append(
            f"{job.model}: training needs about {estimate.total / 1e9:.0f} GB per GPU ({recipe}), "
            f"more than {HEADROOM:.0%} of gpu_memory_gb {job.gpu_memory_gb:g}: set train.by_size "
            "micro_batch, activation_checkpointing or parallel: fsdp for this size"
        )
    host = estimate.parameters * STATE_BYTES if on_gpu else job.processes * estimate.total
    if host > job.mem_mb * 1e6:
        what = "its checkpoint's full state on the host" if on_gpu else f"training ({recipe})"
        warnings.append(
            f"{job.model}: {what} needs about {host / 1e6:,.0f} MB, more than resources.train "
            f"mem_mb {job.mem_mb:,}: raise it for this size"
        )
    return warnings


@dataclass
class MemoryCheckConfig:
    plan: str = option(help="a JSON list of training jobs, each with MemoryJob's fields")


def memory_check_command(cfg: MemoryCheckConfig) -> None:
    """Print a line for each planned training job that its memory would not hold (the workflow
    shows them as warnings before it submits anything)."""
    for job in json.loads(cfg.plan):
        for warning in job_warnings(MemoryJob(**job)):
            print(warning)
