"""The ``cuda`` backend: mamba_ssm's kernels (the fused selective scan and Mamba-1 mixer, the Triton
SSD, fused Mamba-2 mixer and decoding step, Mamba-3's Triton SISO kernels and its TileLang MIMO
kernel) and causal_conv1d's conv, called as mamba_ssm's own modules call them, with every optional
argument by keyword.

mamba-ssm and causal-conv1d import only where they were built with CUDA; their absence never breaks
seqarena: the backend then says why it is unavailable (the import error and the installed
versions), and automatic choice moves on. Both are required: mamba_ssm's fused Mamba-1 mixer
calls causal_conv1d, so a cuda backend without it would not be mamba_ssm's fast path. Mamba-3 MIMO
also needs TileLang (mamba-ssm's optional dependency, which the GPU env installs); without it MIMO
is refused here, saying why, and everything else runs. Where mamba_ssm has no kernel for a call,
seqarena's torch form runs on the same GPU tensors, as each function below says: Mamba-3 MIMO's
decoding step (mamba_ssm's is CuTe DSL, for H100 only) and its chunks that continue a sequence
(its MIMO kernel takes no initial states).
tests/cuda_emulation.py runs this module through both packages' own code on a CPU.
"""

import functools
from importlib import metadata
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from seqarena.ops.backends import KernelBackend, register_backend
from seqarena.ops.mamba3 import mamba3_chunk_scan_torch, mamba3_state_update_torch
from seqarena.ops.ssd import NO_DT_LIMIT, discretised_dt

PACKAGES = ("mamba-ssm", "causal-conv1d", "triton", "torch", "tilelang")


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
        from mamba_ssm.ops.triton.ssd_combined import (
            mamba_chunk_scan_combined,
            mamba_split_conv1d_scan_combined,
        )
    except Exception as e:  # ImportError, or a CUDA/driver error raised while importing
        return SimpleNamespace(
            reason=f"mamba_ssm or causal_conv1d does not import ({type(e).__name__}: {e}; "
            f"{installed_versions()})"
        )
    if torch.cuda.is_available():
        _prune_for_blackwell(torch.cuda.get_device_capability()[0])
    mamba3_mimo, mimo_reason = _mimo_kernel()
    return SimpleNamespace(
        reason=None,
        scan=selective_scan_fn,
        inner=mamba_inner_fn,
        mamba2_inner=mamba_split_conv1d_scan_combined,
        step=selective_state_update,
        ssd=mamba_chunk_scan_combined,
        conv=causal_conv1d_fn,
        conv_step=causal_conv1d_update,
        mamba3=mamba3_siso_combined,
        mamba3_step=mamba3_siso_step,
        mamba3_mimo=mamba3_mimo,
        mimo_reason=mimo_reason,
    )


def _prune_for_blackwell(major: int) -> None:
    """mamba-ssm 2.3.2.post1's Mamba-3 SISO forward kernel corrupts its output, silently, on Blackwell
    (compute capability 10.x and 12.x) wherever Triton pipelines it (num_stages > 1, with triton 3.5
    to 3.7). Upstream pruned those configs from its autotuner after that release (state-spaces/mamba
    #997, e9594ce); the same pruning here, for the pinned release. Elsewhere all stay."""
    from mamba_ssm.ops.triton.mamba3.mamba3_siso_fwd import mamba3_siso_fwd_kernel

    if major in (10, 12):
        mamba3_siso_fwd_kernel.configs = [c for c in mamba3_siso_fwd_kernel.configs if c.num_stages == 1]


def _mimo_kernel():
    """mamba_ssm's Mamba-3 MIMO kernel (TileLang, compiled at its first call) and None, or None and
    why it does not import: apart from the rest, as mamba_ssm's own Mamba3 imports it."""
    try:
        from mamba_ssm.ops.tilelang.mamba3.mamba3_mimo import mamba3_mimo
    except Exception as e:  # ImportError, or TileLang failing to load its library
        return None, (
            f"mamba_ssm's Mamba-3 MIMO kernel (TileLang) does not import ({type(e).__name__}: {e}; "
            f"{installed_versions()})"
        )
    return mamba3_mimo, None


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


def _mamba2_inner(
    zxbcdt,
    conv_weight,
    conv_bias,
    dt_bias,
    A,
    D,
    *,
    chunk_size,
    dt_limit,
    headdim,
    ngroups,
    rmsnorm_weight,
    rmsnorm_eps,
    norm_before_gate,
    out_proj_weight,
    out_proj_bias,
):
    """mamba_ssm's mamba_split_conv1d_scan_combined, as its Mamba2's forward calls it without a cache
    (``use_mem_eff_path``: the conv and the gated norm recomputed in the backward pass)."""
    return kernels().mamba2_inner(
        zxbcdt,
        conv_weight,
        conv_bias,
        dt_bias,
        A,
        D=D,
        chunk_size=chunk_size,
        dt_limit=tuple(dt_limit),
        activation="silu",
        rmsnorm_weight=rmsnorm_weight,
        rmsnorm_eps=rmsnorm_eps,
        outproj_weight=out_proj_weight,
        outproj_bias=out_proj_bias,
        headdim=None if D.dim() == 2 else headdim,
        ngroups=ngroups,
        norm_before_gate=norm_before_gate,
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


def _check_pairs(rotate_pairwise: bool, mimo: bool) -> None:
    """mamba_ssm's kernels fix the rotary pairs: (2i, 2i+1) for SISO, (i, i + N/2) for MIMO."""
    if rotate_pairwise == mimo:
        raise ValueError(
            f"mamba_ssm's Mamba-3 {'MIMO' if mimo else 'SISO'} kernels rotate "
            f"{'(i, i + N/2)' if mimo else '(2i, 2i+1)'} pairs, not those that rotate_pairwise="
            f"{rotate_pairwise} asks for"
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
    """mamba_ssm's mamba3_siso_combined, as its Mamba3 calls it; the rank dimension of q, k, the
    biases and the states is 1. MIMO (``mimo_x`` given): its mamba3_mimo (``_mamba3_mimo``), which
    takes no initial states: a chunk that continues a sequence runs seqarena's chunked form."""
    _check_pairs(rotate_pairwise, mimo=mimo_x is not None)
    if mimo_x is not None:
        inputs = (q, k, x, adt, dt, trap, q_bias, k_bias, angles, D, z, mimo_x, mimo_z, chunk_size)
        if initial_states is not None:
            return mamba3_chunk_scan_torch(*inputs, False, initial_states, return_final_states)
        return _mamba3_mimo(*inputs, return_final_states)
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


def _rotary_dim_divisor(d_state: int, angles: int) -> int:
    """mamba3_mimo's ``rotary_dim_divisor``: 2 where the angles turn N // 2 pairs, 4 where they turn
    N // 4 (mamba_ssm's rope_fraction 1.0 and 0.5, its kernel's angle count); it takes no other."""
    for divisor in (2, 4):
        if angles == d_state // divisor:
            return divisor
    raise ValueError(
        f"mamba_ssm's Mamba-3 MIMO kernel rotates N/2 or N/4 pairs; d_state {d_state} with {angles} "
        "rotary angles is neither"
    )


def _mamba3_mimo(
    q, k, x, adt, dt, trap, q_bias, k_bias, angles, D, z, mimo_x, mimo_z, chunk_size, return_state
):
    """mamba_ssm's TileLang mamba3_mimo, as its Mamba3 calls it with is_outproj_norm: MIMO_Out None,
    so that it returns the output per rank, which the mixer contracts with mimo_o. That kernel gates
    with Z only where it contracts, so z's gate, silu(z * mimo_z) per rank, is applied here."""
    if kernels().mamba3_mimo is None:
        raise RuntimeError(f"{kernels().mimo_reason}: run MIMO models with scan_backend torch")
    out = kernels().mamba3_mimo(
        Q=q.to(x.dtype),  # the kernel declares the activations in dtype, the rest in float32
        K=k.to(x.dtype),
        V=x,
        ADT=adt.float(),
        DT=dt.float(),
        Trap=trap.to(x.dtype),
        Q_bias=q_bias.float(),
        K_bias=k_bias.float(),
        MIMO_V=mimo_x.float(),
        MIMO_Z=mimo_z.float(),
        MIMO_Out=None,
        Angles=angles.float(),
        D=None if D is None else D.float(),
        Z=None,
        chunk_size=chunk_size,
        rotary_dim_divisor=_rotary_dim_divisor(q.shape[-1], angles.shape[-1]),
        dtype=x.dtype,
        return_state=return_state,
    )
    y = out[0] if return_state else out  # (batch, L, R, nheads, headdim)
    if z is not None:
        gate = F.silu(z.float().unsqueeze(2) * mimo_z.float().transpose(0, 1))  # (b, L, R, h, p)
        y = (y.float() * gate).to(y.dtype)
    return (y, tuple(out[1:5])) if return_state else y


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
    it returns new states, copied into ``states``. MIMO: seqarena's step on these tensors, as
    mamba_ssm's MIMO step is CuTe DSL only."""
    _check_pairs(rotate_pairwise, mimo=mimo_x is not None)
    if mimo_x is not None:
        return mamba3_state_update_torch(
            states, q, k, x, adt, dt, trap, q_bias, k_bias, angles, D, z, mimo_x, mimo_z, rotate_pairwise
        )
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
        mamba2_inner=_mamba2_inner,
    )
)
