"""Env stage: build the kernels, check every backend against the reference, record the software.

``results/env/kernels.json`` says what every later result ran on: Python, torch, CUDA and
GPU, the compiled extensions, which scan backends load and whether each one passes a
numeric self-check (forward and gradients against the float64 PyTorch reference), and
where tracking goes. A backend that cannot run here (no GPU, no mamba_ssm build) is
recorded with its reason, not raised: a CPU machine is a supported machine.
"""

import functools
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from seqarena import __version__
from seqarena.device import DEVICE_ENV_VAR, compute_device
from seqarena.files import atomic_write
from seqarena.ops import backends, selective_scan, selective_scan_torch
from seqarena.ops.conv import causal_conv1d_torch
from seqarena.ops.mamba3 import mamba3_chunk_scan_torch
from seqarena.ops.ssd import ssd_chunk_scan_torch
from seqarena.ops.triton_compile import as_check
from seqarena.options import option
from seqarena.tracking import default_uri, git_commit, init_store

# Largest relative error a kernel may have against the float64 reference: float32 kernels, and
# bfloat16 inputs, where rounding the inputs alone costs about 1e-2.
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2}
# mamba_ssm's Triton SSD (the cuda backend's) multiplies float32 inputs in TF32, a 10-bit mantissa;
# its own tests allow a relative 1e-2 there, and so does this check, for that kernel in float32.
TF32_KERNELS = {("cuda", "ssd")}
# mamba_ssm's Mamba-3 SISO wrapper casts float32 inputs to bfloat16: bfloat16's tolerance there.
BF16_KERNELS = {("cuda", "mamba3")}


def tolerance(backend: str, op: str, dtype: torch.dtype) -> float:
    """The largest relative error ``op`` (scan, ssd, conv, mamba3) may show on ``backend`` in ``dtype``."""
    if (backend, op) in BF16_KERNELS:
        return TOLERANCE[torch.bfloat16]
    if dtype == torch.float32 and (backend, op) in TF32_KERNELS:
        return 1e-2
    return TOLERANCE[dtype]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _max_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def _rounded(inputs: dict, weights: tuple, device: torch.device, dtype: torch.dtype) -> dict:
    """The references' inputs, rounded to ``dtype`` (the ``weights`` to float32), on ``device``."""
    return {
        k: v.detach().to(device, torch.float32 if k in weights else dtype).requires_grad_()
        for k, v in inputs.items()
    }


def _relative_errors(name: str, got, want, got_inputs: dict, want_inputs: dict) -> dict:
    """{name: output's error, name_grad_<input>: each gradient's}, against the reference's."""
    grads = torch.autograd.grad(got.float().sum(), list(got_inputs.values()))
    want_grads = torch.autograd.grad(want.sum(), list(want_inputs.values()))
    errors = {name: _max_relative_error(got, want.detach())}
    for key, g, w in zip(got_inputs, grads, want_grads, strict=True):
        errors[f"{name}_grad_{key}"] = _max_relative_error(g, w)
    return errors


def self_check(backend: str, device: torch.device, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Scan (with z, D, delta bias, softplus; input-dependent B and C), Mamba-2's SSD (grouped B and
    C, a length that is no multiple of the chunk), causal conv and Mamba-3's SSM (SISO, with z and
    D) on ``backend`` against the float64 references: outputs and every gradient, largest relative
    error each. ``dtype`` is that of the activations and the conv; the scan's A, D and delta bias,
    and Mamba-3's decays, angles, biases and D, stay float32 (the mixers cast them so)."""
    gen = torch.Generator().manual_seed(seed)
    batch, dim, state, length = 2, 8, 4, 37

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()

    errors = {}
    scan_inputs = {
        "u": rand(batch, dim, length),
        "delta": rand(batch, dim, length, scale=0.5),
        "A": (-torch.rand(dim, state, generator=gen, dtype=torch.float64) - 0.5).requires_grad_(),
        "B": rand(batch, state, length),
        "C": rand(batch, state, length),
        "D": rand(dim),
        "z": rand(batch, dim, length),
        "delta_bias": rand(dim, scale=0.1),
    }
    scan_ours = _rounded(scan_inputs, ("A", "D", "delta_bias"), device, dtype)
    got = selective_scan(**scan_ours, delta_softplus=True, backend=backend)
    want = selective_scan_torch(**scan_inputs, delta_softplus=True)
    errors |= _relative_errors("scan", got, want, scan_ours, scan_inputs)

    nheads, headdim, groups = 4, 3, 2
    ssd_inputs = {
        "x": rand(batch, length, nheads, headdim),
        "dt": rand(batch, length, nheads, scale=0.5),
        "A": (-torch.rand(nheads, generator=gen, dtype=torch.float64) - 0.5).requires_grad_(),
        "B": rand(batch, length, groups, state),
        "C": rand(batch, length, groups, state),
        "D": rand(nheads),
        "z": rand(batch, length, nheads, headdim),
        "dt_bias": rand(nheads, scale=0.1),
    }
    ssd_ours = _rounded(ssd_inputs, ("A", "D", "dt_bias"), device, dtype)
    got = backends.ssd_chunk_scan(**ssd_ours, chunk_size=16, dt_softplus=True, backend=backend)
    want = ssd_chunk_scan_torch(**ssd_inputs, chunk_size=16, dt_softplus=True)
    errors |= _relative_errors("ssd", got, want, ssd_ours, ssd_inputs)

    conv_inputs = {"x": rand(batch, dim, length), "weight": rand(dim, 4), "bias": rand(dim)}
    conv_ours = _rounded(conv_inputs, (), device, dtype)  # all in dtype, as in a model cast to bfloat16
    got = backends.causal_conv1d(*conv_ours.values(), activation="silu", backend=backend)
    want = causal_conv1d_torch(*conv_inputs.values(), "silu")
    errors |= _relative_errors("conv", got, want, conv_ours, conv_inputs)

    nheads, d_state = 2, 16  # the Triton kernels' dot products need 16-wide operands
    dt = (torch.rand(batch, nheads, length, generator=gen, dtype=torch.float64) * 0.5 + 0.05).requires_grad_()
    mamba3_inputs = {
        "q": rand(batch, length, 1, 1, d_state),
        "k": rand(batch, length, 1, 1, d_state),
        "x": rand(batch, length, nheads, d_state),
        "adt": (
            -torch.rand(batch, nheads, length, generator=gen, dtype=torch.float64) * dt.detach()
        ).requires_grad_(),
        "dt": dt,
        "trap": rand(batch, nheads, length),
        "q_bias": rand(nheads, 1, d_state),
        "k_bias": rand(nheads, 1, d_state),
        "angles": rand(batch, length, nheads, d_state // 4),
        "D": rand(nheads),
        "z": rand(batch, length, nheads, d_state),
    }
    mamba3_ours = _rounded(mamba3_inputs, ("adt", "dt", "q_bias", "k_bias", "angles", "D"), device, dtype)
    got = backends.mamba3_chunk_scan(**mamba3_ours, chunk_size=16, backend=backend)
    want = mamba3_chunk_scan_torch(**mamba3_inputs, chunk_size=16)
    errors |= _relative_errors("mamba3", got, want, mamba3_ours, mamba3_inputs)
    tolerances = {op: tolerance(backend, op, dtype) for op in ("scan", "ssd", "conv", "mamba3")}
    failed = sorted(name for name, error in errors.items() if error > tolerances[name.split("_")[0]])
    worst = max(errors.values())
    return {
        "passed": not failed,
        "failed": failed,
        "max_relative_error": worst,
        "tolerances": tolerances,
        "errors": errors,
    }


def backend_record(name: str, dtype: torch.dtype = torch.float32) -> dict:
    """Whether ``name`` runs here (on the device it is built for) and, if so, its self-check."""
    device = torch.device("cuda" if name == "cuda" and torch.cuda.is_available() else "cpu")
    reason = backends._BACKENDS[name].why_not(torch.empty(0, device=device))
    if reason is not None:
        return {"available": False, "reason": reason}
    start = time.perf_counter()  # the first call of the cpp backend includes its compilation
    run_check = functools.partial(self_check, name, device, dtype=dtype)
    check = as_check(run_check, device) if name == "cuda" else run_check()  # its Triton kernels untuned
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
    With config ``device: cuda`` it fails, before writing anything, unless there is a CUDA device
    and the cuda backend (mamba_ssm's kernels) runs and passes: the GPU jobs after it would
    otherwise train Mamba through the Python-loop reference scan.
    """
    try:
        compute_device()
    except RuntimeError as e:
        sys.exit(str(e))
    record = environment_record(tracking_uri)
    failed = {
        name: {check: b["errors"][check] for check in b["failed"]} | {"tolerances": b["tolerances"]}
        for name, b in record["backends"].items()
        if b["available"] and not b["passed"]
    }
    if failed:
        sys.exit(f"kernel self-check failed (relative errors above the tolerances): {failed}")
    cuda = record["backends"]["cuda"]
    if os.environ.get(DEVICE_ENV_VAR) == "cuda" and not cuda["available"]:
        sys.exit(f"config device: cuda, but the cuda backend cannot run: {cuda['reason']}")
    init_store(tracking_uri)
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(Path(out), lambda tmp: Path(tmp).write_text(text))
    return record


@dataclass
class EnvConfig:
    out: str = option("results/env/kernels.json", help="the record to write")
    tracking_uri: str = option("", help="default: sqlite:///<results>/mlflow.db beside --out's results")


def check_environment(cfg: EnvConfig) -> None:
    """Build the kernels, self-check every backend, write kernels.json, create the MLflow store."""
    out = Path(cfg.out)
    record = write_kernels_record(out, cfg.tracking_uri or default_uri(out.parents[1]))
    print(json.dumps(record, indent=2))
