"""The training-memory estimate against what a real step holds on this CPU, and the plan's warnings."""

import pytest
import torch
import torch.nn.functional as F

from seqarena.models import build_model
from seqarena.training.memory import MemoryJob, estimate_training_memory, job_warnings, kept_for_backward
from seqarena.training.parallel import checkpoint_activations

VOCAB, BATCH, LENGTH = 4096, 8, 512


# (model, checkpointed): the blocks whose CPU path keeps what the GPU path keeps. Mamba-2's SSD on
# the CPU keeps its within-chunk products too (twice the estimate), which its Triton kernels recompute.
CASES = [
    *[(f"transformer-{size}", ckpt) for size in ("tiny", "mini", "small") for ckpt in (False, True)],
    *[
        (f"{arch}-small", True)
        for arch in ("mamba", "mamba2", "hybrid", "mamba_lti", "mamba3", "mamba3_mimo")
    ],
    ("mamba-tiny", False),
    ("mamba_lti-small", False),
]


@pytest.mark.parametrize("model_id, checkpointed", CASES)
def test_the_estimate_is_what_autograd_keeps_at_the_small_sizes(model_id, checkpointed):
    torch.manual_seed(0)
    model = build_model(model_id, vocab_size=VOCAB)
    if checkpointed:
        checkpoint_activations(model)
    measured = kept_for_backward(model, torch.randint(0, VOCAB, (BATCH, LENGTH + 1)))
    estimate = estimate_training_memory(
        model_id, VOCAB, BATCH, LENGTH, activation_checkpointing=checkpointed, activation_bytes=4
    )
    assert 0.85 < measured / (estimate.activations + estimate.logits) < 1.2, (measured, estimate)


def test_the_state_is_weights_gradients_and_adamw_moments():
    model = build_model("mamba-tiny", vocab_size=VOCAB)
    optimizer = torch.optim.AdamW(model.parameters())
    F.cross_entropy(model(torch.randint(0, VOCAB, (2, 16))).flatten(0, 1), torch.zeros(32).long()).backward()
    optimizer.step()
    held = sum(p.nbytes + p.grad.nbytes for p in model.parameters())
    held += sum(t.nbytes for state in optimizer.state.values() for t in state.values() if t.dim())
    assert estimate_training_memory("mamba-tiny", VOCAB, 1, 16, activation_bytes=4).state == held


def test_checkpointing_and_fsdp_shrink_the_estimate_where_they_should():
    shape = ("mamba-2.8b", 50277, 8, 2048)
    plain = estimate_training_memory(*shape)
    checkpointed = estimate_training_memory(*shape, activation_checkpointing=True)
    sharded = estimate_training_memory(*shape, processes=8, parallel="fsdp", activation_checkpointing=True)
    ddp = estimate_training_memory(*shape, processes=8, parallel="ddp")
    assert checkpointed.activations < plain.activations / 2.5 and checkpointed.state == plain.state
    assert sharded.state == plain.state // 8 and ddp.state == plain.state * 20 // 16
    assert plain.total > 80e9 > sharded.total  # past an 80 GB GPU, and within it on eight with FSDP


def job(**fields) -> MemoryJob:
    where = dict(processes=1, device="cuda", mem_mb=64000)
    return MemoryJob(
        **dict(train={"micro_batch": 8, "seq_len": 2048}, tokenizer={"kind": "hf"}) | where | fields
    )


def test_a_size_that_does_not_fit_is_named_with_both_numbers():
    (warning,) = job_warnings(job(model="mamba-2.8b", gpu_memory_gb=80))
    assert warning.startswith("mamba-2.8b: training needs about 1") and "gpu_memory_gb 80" in warning
    assert job_warnings(job(model="mamba-130m", gpu_memory_gb=80)) == []
    sharded = {"micro_batch": 8, "seq_len": 2048, "parallel": "fsdp", "activation_checkpointing": True}
    (host,) = job_warnings(
        job(model="mamba-2.8b", mem_mb=16000, processes=8, train=sharded, gpu_memory_gb=80)
    )
    assert "its checkpoint's full state on the host needs about 44,294 MB" in host and "16,000" in host
    (cpu,) = job_warnings(job(model="mamba-small", device="cpu", mem_mb=100, tokenizer={"kind": "byte"}))
    assert "mamba-small: training (micro_batch 8 x seq_len 2048" in cpu and "mem_mb 100:" in cpu
