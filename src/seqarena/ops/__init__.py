"""Sequence-mixing kernels: the selective scan (with run-time backends) and the causal conv."""

from seqarena.ops.conv import causal_conv1d, causal_conv1d_update
from seqarena.ops.scan import (
    BACKEND_ENV_VAR,
    ScanBackend,
    available_backends,
    backend_names,
    register_backend,
    resolve_backend,
    selective_scan,
    selective_scan_torch,
    selective_state_update,
)

__all__ = [
    "BACKEND_ENV_VAR",
    "ScanBackend",
    "available_backends",
    "backend_names",
    "causal_conv1d",
    "causal_conv1d_update",
    "register_backend",
    "resolve_backend",
    "selective_scan",
    "selective_scan_torch",
    "selective_state_update",
]
