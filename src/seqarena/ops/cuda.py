"""The ``cuda`` backend: mamba_ssm's fused selective-scan kernels, its Triton SSD kernels (Mamba-2)
and causal_conv1d's conv.

mamba-ssm and causal-conv1d import only with CUDA; their absence never breaks seqarena:
the backend then reports why it is unavailable and automatic choice moves on. Without
causal-conv1d (but with mamba_ssm) the conv runs the PyTorch reference on the GPU.
"""

import functools

import torch

from seqarena.ops.backends import KernelBackend, register_backend
from seqarena.ops.conv import causal_conv1d_torch, causal_conv1d_update_torch
from seqarena.ops.ssd import NO_DT_LIMIT, discretised_dt


@functools.cache
def _kernels():
    """(selective_scan_fn, selective_state_update, mamba_chunk_scan_combined, None),
    or (None, None, None, reason)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as e:  # ImportError, or a CUDA/driver error raised while importing
        return None, None, None, f"mamba_ssm does not import ({type(e).__name__}: {e})"
    return selective_scan_fn, selective_state_update, mamba_chunk_scan_combined, None


def _why_not(u: torch.Tensor) -> str | None:
    if not u.is_cuda:
        return f"it runs on CUDA tensors, these are on {u.device}"
    return _kernels()[3]


def _scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
          initial_state=None):  # fmt: skip
    if initial_state is not None:
        raise ValueError("mamba_ssm's selective_scan_fn takes no initial state: continue token by token")
    return _kernels()[0](u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def _step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    return _kernels()[1](state, x, dt, A, B, C, D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)


def _ssd(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=NO_DT_LIMIT,
         initial_state=None, return_final_state=False):  # fmt: skip
    return _kernels()[2](
        x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_state,
        dt_softplus=dt_softplus, dt_limit=tuple(dt_limit), return_final_states=return_final_state,
    )  # fmt: skip


def _ssd_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=NO_DT_LIMIT):
    """mamba_ssm's selective_state_update with the per-head scalars repeated over headdim and N (as
    its Mamba2.step calls it); dt is discretised here when a dt_limit applies, which that kernel lacks."""
    headdim, d_state = state.shape[-2:]
    if tuple(dt_limit) != NO_DT_LIMIT:
        dt = discretised_dt(dt, dt_bias, dt_softplus, dt_limit, torch.float32).to(x.dtype)
        dt_bias, dt_softplus = None, False
    A = A.float()[:, None, None].expand(-1, headdim, d_state)
    dt = dt[..., None].expand(-1, -1, headdim)
    dt_bias = None if dt_bias is None else dt_bias[:, None].expand(-1, headdim)
    D = None if D is None else (D[:, None].expand(-1, headdim) if D.dim() == 1 else D)
    return _kernels()[1](state, x, dt, A, B, C, D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)


@functools.cache
def _conv_kernels():
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
    except Exception:
        return causal_conv1d_torch, causal_conv1d_update_torch
    return causal_conv1d_fn, causal_conv1d_update


def _conv(x, weight, bias=None, activation=None):
    return _conv_kernels()[0](x, weight, bias, activation)


def _conv_step(x, conv_state, weight, bias=None, activation=None):
    return _conv_kernels()[1](x, conv_state, weight, bias, activation)


register_backend(
    KernelBackend(
        "cuda",
        _scan,
        _step,
        _conv,
        _conv_step,
        _ssd,
        _ssd_step,
        priority=20,
        why_not=_why_not,
        scan_continues=False,
    )  # fmt: skip
)
