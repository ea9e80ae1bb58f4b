"""The ``cuda`` backend: mamba_ssm's kernels (the fused selective scan and Mamba-1 mixer, the Triton
SSD and decoding step, Mamba-3's Triton SISO kernels) and causal_conv1d's conv, called as
mamba_ssm's own modules call them, with every optional argument by keyword.

mamba-ssm and causal-conv1d import only where they were built with CUDA; their absence never breaks
seqarena: the backend then says why it is unavailable (the import error and the installed
versions), and automatic choice moves on. Both are required: mamba_ssm's fused Mamba-1 mixer
calls causal_conv1d, so a cuda backend without it would not be mamba_ssm's fast path.
tests/cuda_emulation.py runs this module through both packages' own code on a CPU.
"""

import functools
from importlib import metadata
from types import SimpleNamespace

import torch

from seqarena.ops.backends import KernelBackend, register_backend
from seqarena.ops.ssd import NO_DT_LIMIT, discretised_dt

PACKAGES = ("mamba-ssm", "causal-conv1d", "triton", "torch")


def installed_versions() -> str:
    """ "mamba-ssm 2.3.2.post1, causal-conv1d not installed, ..." for error messages."""

    def version(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return ", ".join(f"{p} {version(p)}" for p in PACKAGES)


@functools.cache
def kernels() -> SimpleNamespace:
    """mamba_ssm's and causal_conv1d's entry points, or a namespace whose ``reason`` says why not."""
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
        from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import mamba3_siso_combined
        from mamba_ssm.ops.triton.mamba3.mamba3_siso_step import mamba3_siso_step
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as e:  # ImportError, or a CUDA/driver error raised while importing
        return SimpleNamespace(
            reason=f"mamba_ssm or causal_conv1d does not import ({type(e).__name__}: {e}; "
            f"{installed_versions()})"
        )
    return SimpleNamespace(
        reason=None,
        scan=selective_scan_fn,
        inner=mamba_inner_fn,
        step=selective_state_update,
        ssd=mamba_chunk_scan_combined,
        conv=causal_conv1d_fn,
        conv_step=causal_conv1d_update,
        mamba3=mamba3_siso_combined,
        mamba3_step=mamba3_siso_step,
    )


def _why_not(u: torch.Tensor) -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if not u.is_cuda:
        return f"it runs on CUDA tensors, these are on {u.device}"
    return kernels().reason


def _scan(
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
    if initial_state is not None:
        raise ValueError("mamba_ssm's selective_scan_fn takes no initial state: continue token by token")
    return kernels().scan(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )


def _inner(
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
    """mamba_ssm's mamba_inner_fn, as its Mamba's forward calls it without a cache; it takes xz as
    (batch, 2 d_inner, L) and the conv weight as nn.Conv1d holds it."""
    return kernels().inner(
        xz.transpose(1, 2),
        conv_weight.unsqueeze(1),
        conv_bias,
        x_proj_weight,
        dt_proj_weight,
        out_proj_weight,
        out_proj_bias,
        A,
        D=D,
        delta_bias=delta_bias,
        delta_softplus=True,
    )


def _step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    return kernels().step(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)


def _ssd(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=NO_DT_LIMIT,
    initial_state=None,
    return_final_state=False,
):
    return kernels().ssd(
        x,
        dt,
        A,
        B,
        C,
        chunk_size,
        D=D,
        z=z,
        dt_bias=dt_bias,
        initial_states=initial_state,
        dt_softplus=dt_softplus,
        dt_limit=tuple(dt_limit),
        return_final_states=return_final_state,
    )


def _ssd_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=NO_DT_LIMIT):
    """mamba_ssm's selective_state_update with the per-head scalars repeated over headdim and N (as
    its Mamba2.step calls it). That kernel has no dt_limit: where one applies, dt is discretised
    here and the kernel gets a zero bias, never None (with dt and A tied over headdim it reads
    dt_bias's strides)."""
    headdim, d_state = state.shape[-2:]
    if dt_bias is None:
        dt_bias = torch.zeros(A.shape[0], device=x.device, dtype=torch.float32)
    if tuple(dt_limit) != NO_DT_LIMIT:
        dt = discretised_dt(dt, dt_bias, dt_softplus, dt_limit, torch.float32).to(x.dtype)
        dt_bias, dt_softplus = torch.zeros_like(dt_bias), False
    A = A.float()[:, None, None].expand(-1, headdim, d_state)
    dt = dt[..., None].expand(-1, -1, headdim)
    dt_bias = dt_bias[:, None].expand(-1, headdim)
    D = None if D is None else (D[:, None].expand(-1, headdim) if D.dim() == 1 else D)
    return kernels().step(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)


def _siso_only(q: torch.Tensor, mimo_x) -> None:
    if q.shape[-3] != 1 or mimo_x is not None:
        raise ValueError(
            "the cuda backend runs Mamba-3 SISO on mamba_ssm's Triton kernels; its MIMO kernels (TileLang, "
            "CuTe DSL) are not wired in: run MIMO models with scan_backend torch"
        )


def _mamba3(
    q,
    k,
    x,
    adt,
    dt,
    trap,
    q_bias,
    k_bias,
    angles,
    D=None,
    z=None,
    mimo_x=None,
    mimo_z=None,
    chunk_size=64,
    rotate_pairwise=True,
    initial_states=None,
    return_final_states=False,
):
    """mamba_ssm's mamba3_siso_combined, as its Mamba3 calls it (SISO pairs its rotary dimensions
    (2i, 2i+1), as rotate_pairwise says); the rank dimension of q, k, the biases and the states is 1."""
    _siso_only(q, mimo_x)
    states = None
    if initial_states is not None:
        angle, ssm, k_state, x_state = initial_states
        states = (angle, ssm, k_state[:, 0], x_state)
    out = kernels().mamba3(
        q[:, :, 0],
        k[:, :, 0],
        x,
        adt,
        dt,
        trap,
        q_bias[:, 0],
        k_bias[:, 0],
        angles.float(),
        D=D,
        Z=z,
        Input_States=states,
        chunk_size=chunk_size,
        return_final_states=return_final_states,
    )
    if not return_final_states:
        return out.unsqueeze(2)
    y, angle, ssm, last_k, last_x = out[:5]
    return y.unsqueeze(2), (angle, ssm, last_k.unsqueeze(1), last_x)


def _mamba3_step(
    states,
    q,
    k,
    x,
    adt,
    dt,
    trap,
    q_bias,
    k_bias,
    angles,
    D=None,
    z=None,
    mimo_x=None,
    mimo_z=None,
    rotate_pairwise=True,
):
    """mamba_ssm's Triton mamba3_siso_step (its Mamba3.step takes the CuTe DSL kernel, H100 only);
    it returns new states, copied into ``states``."""
    _siso_only(q, mimo_x)
    angle, ssm, k_state, x_state = states
    y, new = kernels().mamba3_step(
        q[:, 0],
        k[:, 0],
        x,
        adt,
        dt,
        trap,
        q_bias[:, 0],
        k_bias[:, 0],
        angles.float(),
        D=D,
        Z=z,
        Input_States=(angle, ssm, k_state[:, 0], x_state),
    )
    for held, value in zip((angle, ssm, k_state[:, 0], x_state), new, strict=True):
        held.copy_(value)
    return y.unsqueeze(1)


def _conv_layout(x: torch.Tensor) -> torch.Tensor:
    """x (batch, dim, L) as causal_conv1d takes it: L-contiguous, or channel-last with dim and the
    batch and time strides multiples of 8. A channel-last view outside that (Mamba-2's xBC, a
    split of in_proj's output whose width is no multiple of 8 when nheads is not) is copied."""
    channel_last = x.stride(1) == 1 and x.stride(2) > 1
    if channel_last and not (x.shape[1] % 8 or x.stride(2) % 8 or x.stride(0) % 8):
        return x
    return x if x.stride(2) == 1 else x.contiguous()


def _conv(x, weight, bias=None, activation=None):
    return kernels().conv(_conv_layout(x), weight, bias=bias, activation=activation)


def _conv_step(x, conv_state, weight, bias=None, activation=None):
    return kernels().conv_step(x, conv_state, weight, bias=bias, activation=activation)


register_backend(
    KernelBackend(
        "cuda",
        _scan,
        _step,
        _conv,
        _conv_step,
        _ssd,
        _ssd_step,
        _mamba3,
        _mamba3_step,
        priority=20,
        why_not=_why_not,
        scan_continues=False,
        inner=_inner,
    )
)
