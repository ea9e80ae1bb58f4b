"""Env stage: build the kernels, check every backend against the reference, record the software.

``results/env/kernels.json`` says what every later result ran on: Python, torch, CUDA and
GPU, the compiled extensions, which scan backends load and whether each one passes a
numeric self-check (forward and gradients against the float64 PyTorch reference), and
where tracking goes. A backend that cannot run here (no GPU, no mamba_ssm build) is
recorded with its reason, not raised: a CPU machine is a supported machine.
"""

import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from seqarena import __version__
from seqarena.models.base import atomic_write
from seqarena.ops import backends, selective_scan, selective_scan_torch
from seqarena.ops.conv import causal_conv1d_torch
from seqarena.tracking import git_commit, init_store

RELATIVE_TOLERANCE = 1e-3  # float32 kernels against the float64 reference


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _max_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def self_check(backend: str, device: torch.device, seed: int = 0) -> dict:
    """Scan (with z, D, delta bias, softplus; input-dependent B and C) and causal conv on ``backend``
    against the float64 references: outputs and every gradient, largest relative error each."""
    gen = torch.Generator().manual_seed(seed)
    batch, dim, state, length = 2, 8, 4, 37

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()

    inputs = {
        "u": rand(batch, dim, length), "delta": rand(batch, dim, length, scale=0.5),
        "A": (-torch.rand(dim, state, generator=gen, dtype=torch.float64) - 0.5).requires_grad_(),
        "B": rand(batch, state, length), "C": rand(batch, state, length), "D": rand(dim),
        "z": rand(batch, dim, length), "delta_bias": rand(dim, scale=0.1),
    }  # fmt: skip
    want_out = selective_scan_torch(**inputs, delta_softplus=True)
    want_grads = torch.autograd.grad(want_out.sum(), list(inputs.values()))
    ours = {k: v.detach().float().to(device).requires_grad_() for k, v in inputs.items()}
    out = selective_scan(**ours, delta_softplus=True, backend=backend)
    grads = torch.autograd.grad(out.sum(), list(ours.values()))
    errors = {"scan": _max_relative_error(out, want_out.detach())}
    errors.update(
        {f"scan_grad_{k}": _max_relative_error(g, w) for k, g, w in zip(ours, grads, want_grads, strict=True)}
    )

    x, weight, bias = rand(batch, dim, length), rand(dim, 4), rand(dim)
    want_conv = causal_conv1d_torch(x.detach(), weight.detach(), bias.detach(), "silu")
    conv = backends.causal_conv1d(
        *(t.detach().float().to(device) for t in (x, weight, bias)), activation="silu", backend=backend
    )
    errors["conv"] = _max_relative_error(conv, want_conv)
    worst = max(errors.values())
    return {"passed": worst <= RELATIVE_TOLERANCE, "max_relative_error": worst, "errors": errors}


def backend_record(name: str) -> dict:
    """Whether ``name`` runs here (on the device it is built for) and, if so, its self-check."""
    device = torch.device("cuda" if name == "cuda" and torch.cuda.is_available() else "cpu")
    if name == "cuda" and device.type != "cuda":
        return {"available": False, "reason": "no CUDA device (torch.cuda.is_available() is False)"}
    reason = backends._BACKENDS[name].why_not(torch.empty(0, device=device))
    if reason is not None:
        return {"available": False, "reason": reason}
    start = time.perf_counter()  # the first call of the cpp backend includes its compilation
    check = self_check(name, device)
    return {"available": True, "device": str(device), **check, "seconds": time.perf_counter() - start}


def environment_record(tracking_uri: str) -> dict:
    cuda = torch.cuda.is_available()
    return {
        "seqarena": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "packages": {
            p: _version(p) for p in ("mamba-ssm", "causal-conv1d", "lm_eval", "mlflow", "snakemake")
        },
        "backends": {name: backend_record(name) for name in backends.backend_names()},
        "tracking_uri": tracking_uri,
        "tracking": "server" if tracking_uri.startswith(("http://", "https://")) else "sqlite file",
    }


def write_kernels_record(out: Path, tracking_uri: str) -> dict:
    """Write ``kernels.json`` (atomically) and create the tracking store before parallel jobs use it.

    Fails when an available backend gives wrong numbers: every later result would be wrong too.
    """
    init_store(tracking_uri)
    record = environment_record(tracking_uri)
    failed = {n: b["errors"] for n, b in record["backends"].items() if b["available"] and not b["passed"]}
    if failed:
        sys.exit(f"kernel self-check failed (relative errors above {RELATIVE_TOLERANCE}): {failed}")
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(Path(out), lambda tmp: Path(tmp).write_text(text))
    return record
