"""The ``cpp`` backend: seqarena's own CPU kernels (csrc/): the selective scan and the causal conv.

Mamba-2's SSD is matmul-shaped, so the PyTorch chunked algorithm already runs at matmul speed
on a CPU; this backend uses it as it is.

Compiled just in time with ``torch.utils.cpp_extension.load`` (ninja from PyPI), once per
machine and torch version, into ``$SEQARENA_EXTENSIONS_DIR`` (default
``~/.cache/seqarena/extensions``), so ``pip install`` needs neither a compiler nor torch at
build time; a fresh clone or venv imports the library an earlier build left there. Where it
cannot be built (no compiler, no sources), the backend reports why and automatic choice falls
back to ``torch``.
"""

import functools
import hashlib
import importlib.util
import os
import platform
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from seqarena.ops.backends import KernelBackend, register_backend
from seqarena.ops.conv import causal_conv1d_update_torch
from seqarena.ops.mamba3 import mamba3_chunk_scan_torch, mamba3_state_update_torch
from seqarena.ops.ssd import ssd_chunk_scan_torch, ssd_state_update_torch

CSRC = Path(__file__).resolve().parents[3] / "csrc"
SOURCES = [CSRC / "selective_scan_cpu.cpp", CSRC / "causal_conv1d_cpu.cpp"]
HEADERS = [CSRC / "activations.h", CSRC / "strided.h"]
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
MODULE = "seqarena_cpu_kernels"
BUILT = "built"  # written once a build has loaded: the library in that folder is complete


def _build_dir() -> Path:
    """One folder per source and header, flags, torch, Python and CPU model (-march=native)."""
    cpu = ""
    if Path("/proc/cpuinfo").is_file():
        cpu = next(
            (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), ""
        )
    key = hashlib.sha256(
        "|".join(
            [
                *(f.read_text() for f in SOURCES + HEADERS),
                *CFLAGS,
                torch.__version__,
                platform.python_version(),
                cpu,
            ]
        ).encode()
    ).hexdigest()[:16]
    root = Path(os.environ.get("SEQARENA_EXTENSIONS_DIR", Path.home() / ".cache" / "seqarena" / "extensions"))
    return root / f"cpu_kernels-{key}"


@functools.cache
def _load():
    """(module, None) once built, or (None, reason) if it cannot be."""
    missing = [str(s) for s in SOURCES + HEADERS if not s.is_file()]
    if missing:
        return None, f"C++ sources {missing} not found (install seqarena from a clone, pip install -e .)"
    build_dir = _build_dir()
    if (build_dir / BUILT).is_file():
        try:
            return _import_built(build_dir), None
        except (ImportError, OSError) as e:  # a library that no longer loads: build it again
            warnings.warn(f"seqarena: rebuilding the C++ kernels in {build_dir} ({e})", stacklevel=3)
            (build_dir / BUILT).unlink()
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        reason = f"no C++ compiler: {compiler!r} (from $CXX, default c++) is not on PATH; install g++"
        warnings.warn(f"seqarena: the cpp scan backend is unavailable: {reason}", stacklevel=3)
        return None, reason
    from torch.utils.cpp_extension import load

    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        module = load(
            name=MODULE,
            sources=[str(s) for s in SOURCES],
            extra_cflags=CFLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            verbose=False,
        )
    except Exception as e:  # no compiler, no ninja, a compile error: say so, use torch
        reason = f"building the C++ kernels in {CSRC} failed ({type(e).__name__}: {str(e).strip()[-500:]})"
        warnings.warn(f"seqarena: the cpp scan backend is unavailable: {reason}", stacklevel=3)
        return None, reason
    (build_dir / BUILT).touch()
    return module, None


def _import_built(build_dir: Path):
    """The library a finished build left, imported as it is. Its folder's key already says it was
    built from these sources for this torch and CPU; ninja would rebuild it for any other clone or
    venv, since the paths in its command lines differ."""
    spec = importlib.util.spec_from_file_location(MODULE, build_dir / f"{MODULE}.so")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _why_not(u: torch.Tensor) -> str | None:
    if u.device.type != "cpu":
        return f"it runs on CPU tensors, these are on {u.device}"
    return _load()[1]


class SelectiveScanCpp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
        out, checkpoints, last_state = _load()[0].fwd(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state
        )
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
            u,
            delta,
            A,
            B,
            C,
            D,
            z,
            delta_bias,
            ctx.delta_softplus,
            checkpoints,
            grad_out,
            grad_last_state,
            None,
        )
        return (*grads, None, None)  # None for absent inputs, delta_softplus and initial_state


def _bc_layout(BC: torch.Tensor) -> torch.Tensor:
    """B or C as the kernel reads it: (batch, groups, L, N), or (dim, N) if time-invariant."""
    if BC.dim() == 3:
        BC = BC.unsqueeze(1)
    return BC if BC.dim() == 2 else BC.transpose(-1, -2)


def _strided(t, dtype):
    """(batch, dim, L) inputs as the kernels read them: in any layout, converted only in dtype."""
    return None if t is None else t.to(dtype)


def _dense(t, dtype):
    return None if t is None else t.to(dtype).contiguous()


def selective_scan_cpp(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    initial_state=None,
):
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if (
        initial_state is not None
        and torch.is_grad_enabled()
        and any(t is not None and t.requires_grad for t in tensors)
    ):
        raise NotImplementedError("the cpp scan has no backward from an initial_state (it is for inference)")
    dtype_in = u.dtype
    f = torch.promote_types(dtype_in, torch.float32)
    out, last_state = SelectiveScanCpp.apply(
        _strided(u, f),
        _strided(delta, f),
        _dense(A, f),
        _dense(_bc_layout(B), f),
        _dense(_bc_layout(C), f),
        _dense(D, f),
        _strided(z, f),
        _dense(delta_bias, f),
        delta_softplus,
        _dense(initial_state, f),
    )
    out = out.to(dtype_in)
    return (out, last_state) if return_last_state else out


class CausalConv1dCpp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return _load()[0].conv_fwd(x, weight, bias, silu)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = _load()[0].conv_bwd(x, weight, bias, ctx.silu, grad_out, None)
        return dx, dweight, dbias, None


def causal_conv1d_cpp(x, weight, bias=None, activation=None):
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d activation must be None, 'silu' or 'swish', not {activation!r}")
    f = torch.promote_types(x.dtype, torch.float32)
    out = CausalConv1dCpp.apply(_strided(x, f), _dense(weight, f), _dense(bias, f), activation is not None)
    return out.to(x.dtype)


class MambaInnerCpp(torch.autograd.Function):
    """Mamba-1's mixer between in_proj and out_proj as one op, as mamba_ssm's MambaInnerFn: the
    conv and SiLU, x_proj, dt_proj, and the scan with its D skip and SiLU(z) gate. Its backward
    writes the gradients of x and z straight into one tensor shaped like xz, where autograd's
    split of xz would concatenate them, and adds x_proj's input gradient into the scan's."""

    @staticmethod
    def forward(ctx, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, delta_bias):
        kernels, d_inner, rank, N = _load()[0], A.shape[0], dt_proj_weight.shape[1], A.shape[1]
        x, z = (t.transpose(1, 2) for t in xz.split(d_inner, dim=-1))  # (batch, d_inner, L) views
        u = kernels.conv_fwd(x, conv_weight, conv_bias, True)
        x_dbl = F.linear(u.transpose(1, 2), x_proj_weight)  # (batch, L, rank + 2N)
        dt, B, C = (t.unsqueeze(1).contiguous() for t in x_dbl.split([rank, N, N], dim=-1))
        delta = F.linear(dt.squeeze(1), dt_proj_weight).transpose(1, 2)
        out, checkpoints, _ = kernels.fwd(u, delta, A, B, C, D, z, delta_bias, True, None)
        ctx.save_for_backward(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, delta_bias)
        ctx.intermediates = u, dt, B, C, delta, checkpoints
        return out.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, delta_bias = ctx.saved_tensors
        u, dt, B, C, delta, checkpoints = ctx.intermediates
        kernels, d_inner = _load()[0], A.shape[0]
        x, z = (t.transpose(1, 2) for t in xz.split(d_inner, dim=-1))
        dxz = torch.empty_like(xz)
        dx, dz = (t.transpose(1, 2) for t in dxz.split(d_inner, dim=-1))
        du, ddelta, dA, dB, dC, dD, _, dbias = kernels.bwd(
            u, delta, A, B, C, D, z, delta_bias, True, checkpoints, grad_out.transpose(1, 2), None, dz
        )
        ddelta = ddelta.transpose(1, 2)  # (batch, L, d_inner)
        ddt = ddelta @ dt_proj_weight
        d_dt_proj = ddelta.flatten(0, 1).T @ dt.flatten(0, 2)
        dx_dbl = torch.cat([ddt, dB.squeeze(1), dC.squeeze(1)], dim=-1).flatten(0, 1)
        d_x_proj = dx_dbl.T @ u.transpose(1, 2).flatten(0, 1)
        # the gradient of the conv's output: the scan's and x_proj's, in one matmul
        du = torch.addmm(du.transpose(1, 2).reshape(-1, d_inner), dx_dbl, x_proj_weight)
        du = du.view(xz.shape[0], -1, d_inner).transpose(1, 2)
        _, dconv_weight, dconv_bias = kernels.conv_bwd(x, conv_weight, conv_bias, True, du, dx)
        return dxz, dconv_weight, dconv_bias, d_x_proj, d_dt_proj, dA, dD, dbias


def fused_mamba_inner_cpp(
    xz,
    conv_weight,
    conv_bias,
    x_proj_weight,
    dt_proj_weight,
    out_proj_weight,
    out_proj_bias,
    A,
    D,
    delta_bias,
):
    """The C++ op up to the gate, then out_proj (a matmul torch does as well as any kernel)."""
    f = torch.promote_types(xz.dtype, torch.float32)
    weights = conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, delta_bias
    y = MambaInnerCpp.apply(xz.to(f), *(_dense(t, f) for t in weights)).to(xz.dtype)
    return F.linear(y, out_proj_weight, out_proj_bias)


def selective_state_update_cpp(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decoding step on the CPU kernel; ``state`` (contiguous) is updated in place."""
    return _load()[0].step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


register_backend(
    KernelBackend(
        "cpp",
        selective_scan_cpp,
        selective_state_update_cpp,
        causal_conv1d_cpp,
        causal_conv1d_update_torch,
        ssd_chunk_scan_torch,
        ssd_state_update_torch,
        mamba3_chunk_scan_torch,
        mamba3_state_update_torch,
        priority=10,
        why_not=_why_not,
        inner=fused_mamba_inner_cpp,
    )
)
