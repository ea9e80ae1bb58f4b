"""The ``cuda`` backend: mamba_ssm's fused selective-scan kernels, where they are built.

mamba-ssm and causal-conv1d import only with CUDA; their absence never breaks seqarena:
the backend then reports why it is unavailable and automatic choice moves on.
"""

import functools

import torch

from seqarena.ops.scan import ScanBackend, register_backend


@functools.cache
def _kernels():
    """(selective_scan_fn, selective_state_update, None), or (None, None, reason)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    except Exception as e:  # ImportError, or a CUDA/driver error raised while importing
        return None, None, f"mamba_ssm does not import ({type(e).__name__}: {e})"
    return selective_scan_fn, selective_state_update, None


def _why_not(u: torch.Tensor) -> str | None:
    if not u.is_cuda:
        return f"it runs on CUDA tensors, these are on {u.device}"
    return _kernels()[2]


def _scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    return _kernels()[0](u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def _step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    return _kernels()[1](state, x, dt, A, B, C, D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)


register_backend(ScanBackend("cuda", _scan, _step, priority=20, why_not=_why_not))
