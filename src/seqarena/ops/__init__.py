"""Sequence-mixing kernels: the selective scan (with run-time backends) and the causal conv.

Importing this package registers every backend: ``cuda`` (mamba_ssm, GPU), ``cpp`` (ours,
CPU) and ``torch`` (the reference, anywhere); see ``scan.resolve_backend`` for the choice.
"""

from seqarena.ops import cpp, cuda  # noqa: F401  (they register their backends)
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
    selective_state_update_torch,
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
    "selective_state_update_torch",
]
