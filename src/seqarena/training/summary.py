"""What a finished training reports: throughput, MFU, memory and the recipe it ran, in summary.json."""

import resource

import torch

from seqarena.training.optim import lr_floor

# bf16 dense peak of the GPUs we know, for MFU; elsewhere pass --peak-tflops.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated memory on a GPU; the process's peak resident set on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_tflops(configured: float, device: torch.device) -> float | None:
    """The configured peak, else the known peak of the GPU, else None (no MFU)."""
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


def recipe(cfg, steps: int, peak_lr: float) -> dict:
    """The recipe as the report sets it beside the paper's (Table 12, Appendix E.2.1)."""
    return {
        "peak_lr": peak_lr,
        "warmup_steps": int(cfg.warmup * steps),
        "min_lr": lr_floor(cfg, peak_lr),
        "batch_tokens": cfg.batch_tokens,
        "seq_len": cfg.seq_len,
        "weight_decay": cfg.weight_decay,
        "betas": [cfg.beta1, cfg.beta2],
        "grad_clip": cfg.grad_clip,
    }
