"""Benchmark stage: scan kernels (Mamba-1's scan, Mamba-2's SSD, Mamba-3's SSM) vs attention, generation
throughput, training throughput.

Each runs on a GPU when there is one and, with a smaller default grid, on a CPU. Timings
are medians of repeated runs after a warm-up, with the device synchronised around each.
Results go to files (the pipeline's contract) and, where a tracking URI is given, to the
model's MLflow run (the kernels to a run of their own).
"""

import csv
import dataclasses
import io
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from seqarena.device import compute_device
from seqarena.files import atomic_write
from seqarena.models import build_model, from_pretrained, parse_model_id
from seqarena.models.base import GPT_NEOX_VOCAB, Decoder, cache_tensors
from seqarena.models.mamba2 import MAMBA2_DEFAULTS
from seqarena.models.mamba3 import MAMBA3_DEFAULTS
from seqarena.models.sizes import MAMBA2_CPU, MAMBA3_CPU
from seqarena.ops import available_backends, mamba3_chunk_scan, selective_scan, ssd_chunk_scan
from seqarena.ops.baselines import fft_conv, selective_scan_parallel
from seqarena.ops.triton_compile import compile_ahead
from seqarena.options import Tracked, option
from seqarena.tracking import generation_metrics, kernel_metrics, log_stage, training_bench_metrics
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


def _fwd_and_fwd_bwd(inputs: list[torch.Tensor], op, device, repeats, triton=False):
    """(forward ms, forward+backward ms) of op(*inputs), None where the device ran out of memory.
    The inputs, and the output's gradient, are made once, on the device, before anything is
    timed: only the op is measured, every op alike. An op that launches Triton kernels
    (``triton``) has them compiled on every core first, on a GPU, as the warm-up would one by one."""
    leaves = [t for t in inputs if t.requires_grad]

    def forward():
        with torch.no_grad():
            return op(*inputs)

    def forward_backward():
        torch.autograd.grad(op(*inputs), leaves, dout)

    ahead = triton and device.type == "cuda"
    times = []
    try:
        if ahead:
            compile_ahead(forward)
        dout = torch.randn_like(forward())
        times.append(median_ms(forward, device, repeats))
        if ahead:
            compile_ahead(forward_backward)
        times.append(median_ms(forward_backward, device, repeats))
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return tuple(times + [None] * (2 - len(times)))


def _random_input(gen, device, dtype, *shape, shift=0.0):
    """Standard normal (plus ``shift``), drawn on the CPU from ``gen`` so every device sees the same,
    then moved to the device once; a leaf that takes gradients."""
    return (torch.randn(*shape, generator=gen) + shift).to(device, dtype).requires_grad_()


# The kernel grid's dtype, Mamba-2's chunk length and Mamba-3's: on a GPU bfloat16 and mamba_ssm's
# defaults, on a CPU float32 and the CPU sizes' chunks.
ON_GPU = torch.bfloat16, MAMBA2_DEFAULTS["chunk_size"], MAMBA3_DEFAULTS["chunk_size"]
ON_CPU = torch.float32, MAMBA2_CPU["chunk_size"], MAMBA3_CPU["chunk_size"]


@dataclasses.dataclass(frozen=True)
class KernelGrid:
    """The shape of one kernel comparison and where it runs (one sequence length at a time)."""

    batch: int
    dim: int  # Mamba-1's channels D; Mamba-2's and attention's heads are dim // head_dim
    state: int  # Mamba-1's d_state
    ssd_state: int  # Mamba-2's d_state
    head_dim: int
    device: torch.device
    repeats: int
    dtype: torch.dtype  # ON_GPU or ON_CPU, these three
    ssd_chunk: int  # Mamba-2's chunk length
    mamba3_chunk: int  # Mamba-3's

    def random(self, gen, *shape, shift=0.0):
        return _random_input(gen, self.device, self.dtype, *shape, shift=shift)

    def time(self, inputs, op, triton=False):
        return _fwd_and_fwd_bwd(inputs, op, self.device, self.repeats, triton)


def _scan_timings(grid: KernelGrid, length: int, backends: list[str], gen):
    """(op, backend, times) of Mamba-1's selective scan per backend, the PyTorch parallel scan and
    the FFT convolution (the paper's Fig. 8 baselines)."""
    b, d, n = grid.batch, grid.dim, grid.state
    A = (-torch.rand(d, n, generator=gen) - 0.5).to(grid.device).requires_grad_()
    u, delta = grid.random(gen, b, d, length), grid.random(gen, b, d, length, shift=-2.0)
    inputs = [u, delta, A, grid.random(gen, b, n, length), grid.random(gen, b, n, length)]
    inputs.append(grid.random(gen, b, d, length))  # z
    for name in backends:

        def scan(u, delta, A, B, C, z, name=name):
            return selective_scan(u, delta, A, B, C, None, z, None, True, backend=name)

        yield "scan", name, grid.time(inputs, scan)

    def parallel_scan(u, delta, A, B, C, z):
        return selective_scan_parallel(u, delta, A, B, C, None, z, delta_softplus=True)

    yield "scan", "pytorch-parallel", grid.time(inputs, parallel_scan)
    yield "conv", "fft", grid.time([u, grid.random(gen, d, length)], fft_conv)


def _ssd_timings(grid: KernelGrid, length: int, backends: list[str], gen):
    """(op, backend, times) of Mamba-2's SSD per backend, in chunks of ``grid.ssd_chunk`` steps."""
    heads, b, n = max(1, grid.dim // grid.head_dim), grid.batch, grid.ssd_state
    A = (-torch.rand(heads, generator=gen) - 0.5).to(grid.device).requires_grad_()
    inputs = [
        grid.random(gen, b, length, heads, grid.head_dim),
        grid.random(gen, b, length, heads, shift=-2.0),
    ]
    inputs += [A, grid.random(gen, b, length, 1, n), grid.random(gen, b, length, 1, n)]
    for name in backends:

        def ssd(x, dt, A, B, C, name=name):
            return ssd_chunk_scan(x, dt, A, B, C, grid.ssd_chunk, dt_softplus=True, backend=name)

        yield "ssd", name, grid.time(inputs, ssd, triton=name == "cuda")


def _mamba3_timings(grid: KernelGrid, length: int, backends: list[str], gen):
    """(op, backend, times) of Mamba-3's SISO SSM per backend, at the SSD's heads and state, in
    chunks of ``grid.mamba3_chunk`` steps; dt and A discretised inside, as its mixer does."""
    heads, b, n = max(1, grid.dim // grid.head_dim), grid.batch, grid.ssd_state
    A = (-torch.rand(heads, generator=gen) - 0.5).to(grid.device).requires_grad_()
    inputs = [grid.random(gen, b, length, 1, 1, n), grid.random(gen, b, length, 1, 1, n)]  # C, B
    inputs += [
        grid.random(gen, b, length, heads, grid.head_dim),
        grid.random(gen, b, heads, length, shift=-2.0),
    ]
    inputs += [
        A,
        grid.random(gen, b, heads, length),
        grid.random(gen, b, length, heads, n // 4),
    ]  # trap, angles
    inputs += [grid.random(gen, heads, 1, n), grid.random(gen, heads, 1, n)]  # the biases
    for name in backends:

        def mamba3(q, k, x, dt, A, trap, angles, q_bias, k_bias, name=name):
            dt = F.softplus(dt.float())
            adt = dt * A[:, None]
            return mamba3_chunk_scan(
                q, k, x, adt, dt, trap, q_bias, k_bias, angles, chunk_size=grid.mamba3_chunk, backend=name
            )

        yield "mamba3", name, grid.time(inputs, mamba3, triton=name == "cuda")


def _attention_timings(grid: KernelGrid, length: int):
    """(op, backend, times) of causal attention (FlashAttention-2 on a GPU)."""
    shape = (grid.batch, max(1, grid.dim // grid.head_dim), length, grid.head_dim)
    inputs = [torch.randn(shape, device=grid.device, dtype=grid.dtype).requires_grad_() for _ in range(3)]

    def attention(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    yield "attention", "sdpa", grid.time(inputs, attention)


def bench_kernels(
    lengths, batch=1, dim=1024, state=16, ssd_state=64, head_dim=64, repeats=5, backends=None, device=None
):
    """Rows of KERNEL_COLUMNS: each backend's selective scan (Mamba-1, d_state ``state``), SSD
    (Mamba-2, heads of ``head_dim`` channels, d_state ``ssd_state``) and Mamba-3 SSM (SISO, the
    SSD's heads and state), causal attention (heads of
    ``head_dim``), and the paper's other two baselines (Fig. 8): the PyTorch parallel scan and an
    FFT convolution, per sequence length. A measurement that runs out of device memory is left
    out. Each op's inputs are freed before the next op's are made (its generator has ended)."""
    device = device or compute_device()
    dtype_and_chunks = ON_GPU if device.type == "cuda" else ON_CPU
    grid = KernelGrid(batch, dim, state, ssd_state, head_dim, device, repeats, *dtype_and_chunks)
    probe = torch.zeros(1, 1, 1, device=device)
    backends = backends or [b for b in available_backends(probe) if b != "torch"] or ["torch"]
    rows = []
    for length in sorted(lengths):
        gen = torch.Generator().manual_seed(length)
        timings = itertools.chain(
            _scan_timings(grid, length, backends, gen),
            _ssd_timings(grid, length, backends, gen),
            _mamba3_timings(grid, length, backends, gen),
            _attention_timings(grid, length),
        )
        for op, backend, times in timings:
            for name, ms in zip(("fwd", "fwd+bwd"), times, strict=True):
                if ms is None:
                    continue  # out of memory
                row = {"op": op, "backend": backend, "batch": batch, "dim": dim}
                row |= {"state": {"scan": state, "ssd": ssd_state, "mamba3": ssd_state}.get(op, "")}
                row |= {"seq_len": length}
                row |= {"pass": name, "median_ms": round(ms, 4), "device": device_name(device)}
                rows.append(row | {"dtype": str(grid.dtype).removeprefix("torch.")})
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
    values (allocated for the whole sequence); not the position, a 0-d counter."""
    return sum(t.nbytes for t in cache_tensors(cache) if t.dim() > 0)


def _generation_ms(net, prompt, new_tokens, cuda_graph, repeats) -> float:
    """The median ms of ``generate`` with one decoder, made (and its step captured) before the timed
    calls and freed after."""
    decoder = Decoder(net, prompt.shape[0], prompt.shape[1] + new_tokens, cuda_graph=cuda_graph)
    return median_ms(lambda: decoder.generate(prompt, new_tokens), prompt.device, repeats)


def bench_generation(
    model, prompt_len, new_tokens, batch_sizes, repeats=3, vocab_size=GPT_NEOX_VOCAB, device=None
):
    """Prompt processing + decoding with the model's cache, tokens/s per batch size; and the cache's
    bytes per sequence at the final length (constant in length for Mamba, growing for a KV cache).
    On a GPU, in bfloat16 and each step one CUDA graph replay, for every model alike, as mamba_ssm's
    benchmark decodes (``cg=True``); the cache and the graph are made once per batch size, outside
    the timed calls, as mamba_ssm keeps them between calls."""
    device = device or compute_device()
    net = load_model(model, vocab_size, device).eval()
    cuda_graph = device.type == "cuda"
    if cuda_graph:
        net = net.to(torch.bfloat16)
    results = []
    for batch in batch_sizes:
        prompt = torch.randint(0, net.config.vocab_size, (batch, prompt_len), device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            ms = _generation_ms(net, prompt, new_tokens, cuda_graph, repeats)
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
        "cuda_graph": cuda_graph,
        "cache_bytes_per_sequence": cache_bytes(net.allocate_cache(1, prompt_len + new_tokens)),
        "results": results,
    }


def bench_training(
    model_id, steps, seq_len, micro_batch, vocab_size=GPT_NEOX_VOCAB, warmup_steps=1, compile=False
):
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


@dataclasses.dataclass(kw_only=True)
class BenchConfig(Tracked):
    out: str = option(help="the table to write")


@dataclasses.dataclass(kw_only=True)
class TimedBenchConfig(BenchConfig):
    repeats: int = option(5, help="timed runs of each measurement (their median is kept)")


@dataclasses.dataclass(kw_only=True)
class KernelBenchConfig(TimedBenchConfig):
    lengths: list[int] = option([512, 1024, 2048, 4096, 8192, 16384], help="sequence lengths")
    batch: int = 1
    dim: int = option(1024, help="Mamba-1's channels; Mamba-2's and attention's heads are dim // 64")
    state: int = option(16, help="Mamba-1's d_state")
    backends: str = option("", help="comma-separated; default: all available but torch")


def kernels_command(cfg: KernelBenchConfig) -> None:
    """The selective scan's backends, the SSD's and Mamba-3's against causal attention, per length,
    logged to the experiment ``<experiment>-kernels``."""
    backends = cfg.backends.split(",") if cfg.backends else None
    rows = bench_kernels(cfg.lengths, cfg.batch, cfg.dim, cfg.state, repeats=cfg.repeats, backends=backends)
    write_csv(rows, Path(cfg.out))
    experiment = f"{cfg.experiment}-kernels"  # not a model: kept out of the model runs' comparisons
    log_stage(cfg.tracking_uri, experiment, "kernels", kernel_metrics(rows), Path(cfg.out), "bench/kernels")
    print(Path(cfg.out).read_text())


@dataclasses.dataclass(kw_only=True)
class GenerationBenchConfig(TimedBenchConfig):
    model: str = option(help="checkpoint folder, hub id, or model id (random weights)")
    prompt_len: int = 2048
    new_tokens: int = 128
    batch_sizes: list[int] = option([1, 2, 4, 8, 16, 32, 64, 128], help="comma-separated")
    vocab_size: int = option(GPT_NEOX_VOCAB, help="for a model built by id")


def generation_command(cfg: GenerationBenchConfig) -> None:
    """Prompt and decoding throughput per batch size, logged to the model's run."""
    result = bench_generation(
        cfg.model, cfg.prompt_len, cfg.new_tokens, cfg.batch_sizes, cfg.repeats, cfg.vocab_size
    )
    write_json(result, Path(cfg.out))
    run_name = Path(cfg.model).name
    metrics = generation_metrics(result)
    log_stage(cfg.tracking_uri, cfg.experiment, run_name, metrics, Path(cfg.out), "bench/generation")
    print(json.dumps(result, indent=2))


@dataclasses.dataclass(kw_only=True)
class TrainingBenchConfig(BenchConfig):
    model: str = option(help="model id")
    steps: int = 5
    seq_len: int = 2048
    micro_batch: int = 8
    warmup_steps: int = option(1, help="steps left out of tokens/s")
    compile: bool = option(False, help="torch.compile, as training (train.compile)")
    vocab_size: int = option(GPT_NEOX_VOCAB, help="of the random tokens and the model")


def training_command(cfg: TrainingBenchConfig) -> None:
    """Tokens/s, MFU and memory of a few steps of the training loop, logged to the model's run."""
    result = bench_training(
        cfg.model, cfg.steps, cfg.seq_len, cfg.micro_batch, cfg.vocab_size, cfg.warmup_steps, cfg.compile
    )
    write_json(result, Path(cfg.out))
    metrics = training_bench_metrics(result)
    log_stage(cfg.tracking_uri, cfg.experiment, cfg.model, metrics, Path(cfg.out), "bench/training")
    print(json.dumps(result, indent=2))
