"""Benchmark stage: scan kernels (Mamba-1's scan, Mamba-2's SSD) vs attention, generation
throughput, training throughput.

Each runs on a GPU when there is one and, with a smaller default grid, on a CPU. Timings
are medians of repeated runs after a warm-up, with the device synchronised around each.
Results go to files (the pipeline's contract) and, where a tracking URI is given, to the
model's MLflow run (the kernels to a run of their own).
"""

import csv
import dataclasses
import functools
import io
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from seqarena.device import compute_device
from seqarena.models import build_model, from_pretrained, parse_model_id
from seqarena.models.base import atomic_write
from seqarena.ops import available_backends, selective_scan, ssd_chunk_scan
from seqarena.ops.baselines import fft_conv, selective_scan_parallel
from seqarena.training import TokenData, TrainConfig, Trainer
from seqarena.training.summary import device_name, peak_memory_bytes

KERNEL_COLUMNS = ["op", "backend", "batch", "dim", "state", "seq_len", "pass", "median_ms", "device", "dtype"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, repeats: int, budget_s: float = 5.0) -> float:
    """The median of ``repeats`` timed runs after a warm-up, fewer (one at least) once the timed
    runs have taken ``budget_s``: a 512K-step attention takes seconds a run."""
    fn()  # warm-up (and, for the cpp backend, the first-use build)
    _sync(device)
    times = []
    while len(times) < repeats and sum(times) < budget_s:
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _fwd_and_fwd_bwd(inputs: list[torch.Tensor], op, device, repeats):
    """(forward ms, forward+backward ms) of op(*inputs), None where the device ran out of memory.
    The inputs, and the output's gradient, are made once, on the device, before anything is
    timed: only the op is measured, every op alike."""
    leaves = [t for t in inputs if t.requires_grad]

    def forward():
        with torch.no_grad():
            op(*inputs)

    def forward_backward():
        torch.autograd.grad(op(*inputs), leaves, dout)

    times = []
    try:
        with torch.no_grad():
            dout = torch.randn_like(op(*inputs))
        times.append(median_ms(forward, device, repeats))
        times.append(median_ms(forward_backward, device, repeats))
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return tuple(times + [None] * (2 - len(times)))


def _random_input(gen, device, dtype, *shape, shift=0.0):
    """Standard normal (plus ``shift``), drawn on the CPU from ``gen`` so every device sees the same,
    then moved to the device once; a leaf that takes gradients."""
    return (torch.randn(*shape, generator=gen) + shift).to(device, dtype).requires_grad_()


def bench_kernels(
    lengths, batch=1, dim=1024, state=16, ssd_state=64, head_dim=64, repeats=5, backends=None, device=None
):
    """Rows of KERNEL_COLUMNS: each backend's selective scan (Mamba-1, d_state ``state``) and SSD
    (Mamba-2, heads of ``head_dim`` channels, d_state ``ssd_state``; 256-step chunks on a GPU,
    32 on a CPU), causal attention (heads of ``head_dim``; FlashAttention-2 on a GPU), and the
    paper's other two baselines (Fig. 8): the PyTorch parallel scan and an FFT convolution, per
    sequence length. A measurement that runs out of device memory is left out."""
    device = device or compute_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    probe = torch.zeros(1, 1, 1, device=device)
    backends = backends or [b for b in available_backends(probe) if b != "torch"] or ["torch"]
    rows = []

    def record(op, backend, length, times):
        for name, ms in zip(("fwd", "fwd+bwd"), times, strict=True):
            if ms is None:
                continue  # out of memory
            rows.append(
                {
                    "op": op,
                    "backend": backend,
                    "batch": batch,
                    "dim": dim,
                    "state": {"scan": state, "ssd": ssd_state}.get(op, ""),
                    "seq_len": length,
                    "pass": name,
                    "median_ms": round(ms, 4),
                    "device": device_name(device),
                    "dtype": str(dtype).removeprefix("torch."),
                }
            )

    for length in sorted(lengths):
        g = torch.Generator().manual_seed(length)
        t = functools.partial(_random_input, g, device, dtype)
        A = (-torch.rand(dim, state, generator=g) - 0.5).to(device).requires_grad_()
        scan_inputs = [
            t(batch, dim, length),
            t(batch, dim, length, shift=-2.0),
            A,
            t(batch, state, length),
            t(batch, state, length),
            t(batch, dim, length),
        ]
        for name in backends:

            def scan(u, delta, A, B, C, z, name=name):
                return selective_scan(u, delta, A, B, C, None, z, None, True, backend=name)

            record("scan", name, length, _fwd_and_fwd_bwd(scan_inputs, scan, device, repeats))

        def parallel_scan(u, delta, A, B, C, z):
            return selective_scan_parallel(u, delta, A, B, C, None, z, delta_softplus=True)

        record(
            "scan", "pytorch-parallel", length, _fwd_and_fwd_bwd(scan_inputs, parallel_scan, device, repeats)
        )
        conv_inputs = [scan_inputs[0], t(dim, length)]
        record("conv", "fft", length, _fwd_and_fwd_bwd(conv_inputs, fft_conv, device, repeats))
        del scan_inputs, conv_inputs

        heads = max(1, dim // head_dim)
        A = (-torch.rand(heads, generator=g) - 0.5).to(device).requires_grad_()
        ssd_inputs = [
            t(batch, length, heads, head_dim),
            t(batch, length, heads, shift=-2.0),
            A,
            t(batch, length, 1, ssd_state),
            t(batch, length, 1, ssd_state),
        ]
        for name in backends:

            def ssd(x, dt, A, B, C, name=name):
                chunk = 256 if device.type == "cuda" else 32
                return ssd_chunk_scan(x, dt, A, B, C, chunk, dt_softplus=True, backend=name)

            record("ssd", name, length, _fwd_and_fwd_bwd(ssd_inputs, ssd, device, repeats))
        del ssd_inputs

        shape = (batch, heads, length, head_dim)
        attention_inputs = [torch.randn(shape, device=device, dtype=dtype).requires_grad_() for _ in range(3)]

        def attention(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        record("attention", "sdpa", length, _fwd_and_fwd_bwd(attention_inputs, attention, device, repeats))
        del attention_inputs
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=KERNEL_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def write_json(data: dict, path: Path) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def load_model(model: str, vocab_size: int, device: torch.device):
    """A checkpoint folder or hub id, or a model id built at random (throughput needs no training)."""
    if Path(model).is_dir() or "/" in model:
        return from_pretrained(model, device=device)
    parse_model_id(model)
    return build_model(model, vocab_size=vocab_size).to(device)


def cache_bytes(cache) -> int:
    """Bytes held by a decoding cache's tensors: a Mamba's fixed-size state, a Transformer's keys and
    values (allocated for the whole sequence)."""
    if isinstance(cache, torch.Tensor):
        return cache.nbytes
    if dataclasses.is_dataclass(cache):
        return sum(cache_bytes(getattr(cache, f.name)) for f in dataclasses.fields(cache))
    if isinstance(cache, list | tuple):
        return sum(cache_bytes(c) for c in cache)
    return 0


def bench_generation(model, prompt_len, new_tokens, batch_sizes, repeats=3, vocab_size=50277, device=None):
    """Prompt processing + decoding with the model's cache, tokens/s per batch size; and the cache's
    bytes per sequence at the final length (constant in length for Mamba, growing for a KV cache)."""
    device = device or compute_device()
    net = load_model(model, vocab_size, device).eval()
    if device.type == "cuda":
        net = net.to(torch.bfloat16)
    results = []
    for batch in batch_sizes:
        prompt = torch.randint(0, net.config.vocab_size, (batch, prompt_len), device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            ms = median_ms(lambda prompt=prompt: net.generate(prompt, new_tokens), device, repeats)
        except torch.OutOfMemoryError:
            results.append({"batch": batch, "oom": True})
            torch.cuda.empty_cache()
            continue
        results.append(
            {
                "batch": batch,
                "oom": False,
                "median_ms": round(ms, 3),
                "tokens_per_s": batch * new_tokens / (ms / 1e3),
                "peak_memory_bytes": peak_memory_bytes(device),
            }
        )
    return {
        "model": model,
        "parameters": net.num_parameters(),
        "device": device_name(device),
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "cache_bytes_per_sequence": cache_bytes(net.allocate_cache(1, prompt_len + new_tokens)),
        "results": results,
    }


def bench_training(model_id, steps, seq_len, micro_batch, vocab_size=50277, warmup_steps=1, compile=False):
    """A few steps of the real training loop on random tokens: tokens/s (the median of the steps after
    ``warmup_steps``, which pay for compilation, autotuning and the allocator's growth), MFU, peak
    memory. ``compile`` as training's (config train.compile)."""
    if not 0 <= warmup_steps < steps:
        raise ValueError(
            f"bench training: --warmup-steps {warmup_steps} (config bench.training.warmup_steps) must be "
            f"0 or more and leave a timed step of --steps {steps} (bench.training.steps)"
        )
    data = TokenData.random(vocab_size, train_tokens=64 * seq_len * micro_batch, val_tokens=4 * seq_len)
    cfg = TrainConfig(
        model=model_id,
        data=data.name,
        out="",
        steps=steps,
        batch_tokens=seq_len * micro_batch,
        micro_batch=micro_batch,
        seq_len=seq_len,
        eval_interval=steps,
        eval_windows=1,
        ckpt_interval=steps,
        tracking_uri="none",
        compile=compile,
    )
    trainer = Trainer.from_tokens(cfg, data)
    by_step = [r["tokens_per_s"] for r in trainer.train()]
    summary = trainer.summary()
    tokens_per_s = statistics.median(by_step[warmup_steps:])
    achieved = summary["flops_per_token"] * tokens_per_s / 1e12
    mfu = None if summary["mfu"] is None else summary["mfu"] * tokens_per_s / summary["tokens_per_s"]
    keep = ("parameters", "flops_per_token", "peak_memory_bytes", "device", "scan_backend")
    return {
        "model": model_id,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "seq_len": seq_len,
        "micro_batch": micro_batch,
        "compile": compile,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_by_step": by_step,
        "achieved_tflops": achieved,
        "mfu": mfu,
        **{k: summary[k] for k in keep},
    }
