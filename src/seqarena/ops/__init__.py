"""Sequence-mixing kernels: the selective scan, Mamba-2's SSD, Mamba-3's SSM and the causal conv,
with run-time backends.

Importing this package registers every backend: ``cuda`` (mamba_ssm, GPU), ``cpp`` (ours,
CPU) and ``torch`` (the references, anywhere); ``resolve_backend`` says which one runs.
"""

from seqarena.ops import cpp, cuda  # noqa: F401  (they register their backends)
from seqarena.ops.backends import (
    BACKEND_ENV_VAR,
    KernelBackend,
    available_backends,
    backend_names,
    causal_conv1d,
    causal_conv1d_update,
    fused_mamba2_inner,
    fused_mamba_inner,
    mamba3_chunk_scan,
    mamba3_state_update,
    register_backend,
    resolve_backend,
    scan_continues,
    selective_scan,
    selective_state_update,
    ssd_chunk_scan,
    ssd_state_update,
    use_backend,
)
from seqarena.ops.conv import causal_conv1d_torch, causal_conv1d_update_torch
from seqarena.ops.mamba3 import mamba3_chunk_scan_torch, mamba3_state_update_torch
from seqarena.ops.scan import selective_scan_torch, selective_state_update_torch
from seqarena.ops.ssd import ssd_chunk_scan_torch, ssd_state_update_torch

__all__ = [
    "BACKEND_ENV_VAR",
    "KernelBackend",
    "available_backends",
    "backend_names",
    "causal_conv1d",
    "causal_conv1d_torch",
    "causal_conv1d_update",
    "causal_conv1d_update_torch",
    "fused_mamba2_inner",
    "fused_mamba_inner",
    "mamba3_chunk_scan",
    "mamba3_chunk_scan_torch",
    "mamba3_state_update",
    "mamba3_state_update_torch",
    "register_backend",
    "resolve_backend",
    "scan_continues",
    "selective_scan",
    "selective_scan_torch",
    "selective_state_update",
    "selective_state_update_torch",
    "ssd_chunk_scan",
    "ssd_chunk_scan_torch",
    "ssd_state_update",
    "ssd_state_update_torch",
    "use_backend",
]
