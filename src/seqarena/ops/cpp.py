"""The ``cpp`` backend: seqarena's own CPU selective scan (csrc/selective_scan_cpu.cpp).

Compiled just in time with ``torch.utils.cpp_extension.load`` (ninja from PyPI), once per
machine and torch version, into ``$SEQARENA_EXTENSIONS_DIR`` (default
``~/.cache/seqarena/extensions``), so ``pip install`` needs neither a compiler nor torch at
build time. Where it cannot be built (no compiler, no sources), the backend reports why
and automatic choice falls back to ``torch``.
"""

import functools
import hashlib
import os
import platform
import shutil
import warnings
from pathlib import Path

import torch

from seqarena.ops.scan import ScanBackend, register_backend

SOURCE = Path(__file__).resolve().parents[3] / "csrc" / "selective_scan_cpu.cpp"
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]


def _build_dir() -> Path:
    """One folder per source, flags, torch, Python and CPU model (-march=native)."""
    cpu = ""
    if Path("/proc/cpuinfo").is_file():
        cpu = next(
            (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), ""
        )
    key = hashlib.sha256(
        "|".join([SOURCE.read_text(), *CFLAGS, torch.__version__, platform.python_version(), cpu]).encode()
    ).hexdigest()[:16]
    root = Path(os.environ.get("SEQARENA_EXTENSIONS_DIR", Path.home() / ".cache" / "seqarena" / "extensions"))
    return root / f"selective_scan_cpu-{key}"


@functools.cache
def _load():
    """(module, None) once built, or (None, reason) if it cannot be."""
    if not SOURCE.is_file():
        return None, f"C++ source {SOURCE} not found (install seqarena from a clone, pip install -e .)"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        reason = f"no C++ compiler: {compiler!r} (from $CXX, default c++) is not on PATH; install g++"
        warnings.warn(f"seqarena: the cpp scan backend is unavailable: {reason}", stacklevel=3)
        return None, reason
    from torch.utils.cpp_extension import load

    build_dir = _build_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        module = load(
            name="seqarena_selective_scan_cpu",
            sources=[str(SOURCE)],
            extra_cflags=CFLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            verbose=False,
        )
    except Exception as e:  # no compiler, no ninja, a compile error: say so, use torch
        reason = f"building {SOURCE.name} failed ({type(e).__name__}: {str(e).strip()[-500:]})"
        warnings.warn(f"seqarena: the cpp scan backend is unavailable: {reason}", stacklevel=3)
        return None, reason
    return module, None


def _why_not(u: torch.Tensor) -> str | None:
    if u.device.type != "cpu":
        return f"it runs on CPU tensors, these are on {u.device}"
    return _load()[1]


class SelectiveScanCpp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        out, checkpoints, last_state = _load()[0].fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, checkpoints)
        ctx.delta_softplus = delta_softplus
        ctx.set_materialize_grads(False)  # no gradient for an unused last_state: None, not zeros
        return out, last_state

    @staticmethod
    def backward(ctx, grad_out, grad_last_state):
        u, delta, A, B, C, D, z, delta_bias, checkpoints = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(u)
        grads = _load()[0].bwd(
            u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, checkpoints,
            grad_out.contiguous(), grad_last_state,
        )  # fmt: skip
        return (*grads, None)  # absent inputs come back as None; nothing for delta_softplus


def _bc_layout(BC: torch.Tensor) -> torch.Tensor:
    """B or C as the kernel reads it: (batch, groups, L, N), or (dim, N) if time-invariant."""
    if BC.dim() == 3:
        BC = BC.unsqueeze(1)
    return BC if BC.dim() == 2 else BC.transpose(-1, -2)


def selective_scan_cpp(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    dtype_in = u.dtype
    compute = torch.promote_types(dtype_in, torch.float32)

    def prep(t):
        return None if t is None else t.to(compute).contiguous()

    out, last_state = SelectiveScanCpp.apply(
        prep(u), prep(delta), prep(A), prep(_bc_layout(B)), prep(_bc_layout(C)),
        prep(D), prep(z), prep(delta_bias), delta_softplus,
    )  # fmt: skip
    out = out.to(dtype_in)
    return (out, last_state) if return_last_state else out


def selective_state_update_cpp(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decoding step on the CPU kernel; ``state`` (contiguous) is updated in place."""
    return _load()[0].step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


register_backend(
    ScanBackend("cpp", selective_scan_cpp, selective_state_update_cpp, priority=10, why_not=_why_not)
)
