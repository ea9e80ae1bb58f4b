"""Kernel backends: each implements the selective scan, Mamba-2's SSD, Mamba-3's SSM, their
decoding steps, and the causal conv, and may fuse Mamba-1's and Mamba-2's mixers of them into one op
each (``fused_mamba_inner``, ``fused_mamba2_inner``).

Backends, best first: ``cuda`` (mamba_ssm and causal_conv1d, on GPU tensors), ``cpp``
(seqarena's C++ kernels, on CPU tensors) and ``torch`` (the readable references, anywhere).
The functions below run on the backend that ``resolve_backend`` picks.
"""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from seqarena.ops.conv import causal_conv1d_torch, causal_conv1d_update_torch
from seqarena.ops.mamba3 import mamba3_chunk_scan_torch, mamba3_state_update_torch
from seqarena.ops.scan import selective_scan_torch, selective_state_update_torch
from seqarena.ops.ssd import NO_DT_LIMIT, ssd_chunk_scan_torch, ssd_state_update_torch

BACKEND_ENV_VAR = "SEQARENA_SCAN_BACKEND"


@dataclass(frozen=True)
class KernelBackend:
    """One implementation of the sequence-mixing kernels (signatures as in scan.py, ssd.py, mamba3.py
    and conv.py).

    ``priority`` orders automatic choice (higher first); ``why_not(u)`` is None when the
    backend can run on tensors like ``u`` here (device, build), else the reason it cannot.
    """

    name: str
    scan: Callable
    step: Callable
    conv: Callable
    conv_step: Callable
    ssd: Callable
    ssd_step: Callable
    mamba3: Callable
    mamba3_step: Callable
    priority: int
    why_not: Callable[[torch.Tensor], str | None]
    scan_continues: bool = True  # its scan takes an initial_state
    inner: Callable | None = None  # its fused_mamba_inner op; None: the mixer composes the ops
    mamba2_inner: Callable | None = None  # its fused_mamba2_inner op; None: as above


_BACKENDS: dict[str, KernelBackend] = {}


def register_backend(backend: KernelBackend) -> None:
    _BACKENDS[backend.name] = backend


def backend_names() -> list[str]:
    """Every registered backend, best first."""
    return [b.name for b in sorted(_BACKENDS.values(), key=lambda b: -b.priority)]


def available_backends(u: torch.Tensor) -> list[str]:
    """The backends that can run on tensors like ``u`` here, best first."""
    return [name for name in backend_names() if _BACKENDS[name].why_not(u) is None]


_chosen: str | None = None  # set by ``use_backend``


@contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Every kernel called inside runs on backend ``name`` (None: as ``resolve_backend`` chooses).
    A training run passes its configured backend this way, leaving the environment as it was."""
    global _chosen
    before, _chosen = _chosen, name
    try:
        yield
    finally:
        _chosen = before


def resolve_backend(u: torch.Tensor, backend: str | None = None) -> str:
    """The backend that the kernels will use for ``u``.

    An explicit ``backend`` wins, then ``use_backend``'s, then the ``SEQARENA_SCAN_BACKEND``
    environment variable, then the best available one. A named backend that cannot run is an
    error, never a silent fallback, so results always say truthfully what produced them.
    """
    requested = backend or _chosen or os.environ.get(BACKEND_ENV_VAR) or None
    if requested is None:
        return available_backends(u)[0]
    if requested not in _BACKENDS:
        raise ValueError(f"unknown selective-scan backend {requested!r}; known: {', '.join(backend_names())}")
    reason = _BACKENDS[requested].why_not(u)
    if reason is not None:
        if backend or _chosen:
            source = "argument" if backend else "run's configuration"
        else:
            source = f"environment variable {BACKEND_ENV_VAR}"
        raise RuntimeError(
            f"selective-scan backend {requested!r} (from the {source}) is unavailable: {reason}"
        )
    return requested


def selective_scan(
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
    backend: str | None = None,
):
    """The selective scan (see scan.py) on the chosen backend."""
    impl = _BACKENDS[resolve_backend(u, backend)].scan
    return impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state)


def scan_continues(u: torch.Tensor, backend: str | None = None) -> bool:
    """Whether the scan backend for tensors like ``u`` takes an ``initial_state`` (cpp and torch do;
    mamba_ssm's CUDA kernel does not)."""
    return _BACKENDS[resolve_backend(u, backend)].scan_continues


def selective_state_update(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, backend: str | None = None
):
    """One step of the recurrence for decoding: updates ``state`` in place, returns y.

    state (batch, dim, N); x, dt, z (batch, dim); B, C (batch, N); A (dim, N).
    """
    impl = _BACKENDS[resolve_backend(x, backend)].step
    return impl(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def ssd_chunk_scan(
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
    backend: str | None = None,
):
    """Mamba-2's chunked SSD (see ssd.py) on the chosen backend."""
    impl = _BACKENDS[resolve_backend(x, backend)].ssd
    return impl(
        x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_state, return_final_state
    )


def ssd_state_update(
    state,
    x,
    dt,
    A,
    B,
    C,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=NO_DT_LIMIT,
    backend: str | None = None,
):
    """One SSD decoding step: updates ``state`` (batch, nheads, headdim, N) in place, returns y."""
    impl = _BACKENDS[resolve_backend(x, backend)].ssd_step
    return impl(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)


def mamba3_chunk_scan(q, k, x, *args, backend: str | None = None, **kwargs):
    """Mamba-3's chunked SSM (see mamba3.py) on the chosen backend."""
    return _BACKENDS[resolve_backend(x, backend)].mamba3(q, k, x, *args, **kwargs)


def mamba3_state_update(states, q, k, x, *args, backend: str | None = None, **kwargs):
    """One Mamba-3 decoding step: updates ``states`` (angle, ssm, k, x) in place, returns y."""
    return _BACKENDS[resolve_backend(x, backend)].mamba3_step(states, q, k, x, *args, **kwargs)


def fused_mamba_inner(u: torch.Tensor, backend: str | None = None) -> Callable | None:
    """The chosen backend's one op for Mamba-1's mixer after in_proj over whole sequences (mamba_ssm's
    ``mamba_inner_fn``), or None where it has none and the mixer composes the conv and the scan itself.

    The op: (xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, out_proj_weight,
    out_proj_bias, A, D, delta_bias) -> out, from in_proj's output xz (batch, L, 2 d_inner) to the
    mixer's output (batch, L, d_model): x convolved (+SiLU), x_proj's dt, B and C, dt_proj's delta
    (bias and softplus in the scan), z's gate, out_proj. conv_weight is (d_inner, d_conv).
    """
    return _BACKENDS[resolve_backend(u, backend)].inner


def fused_mamba2_inner(u: torch.Tensor, backend: str | None = None) -> Callable | None:
    """The chosen backend's one op for Mamba-2's mixer after in_proj over whole sequences (mamba_ssm's
    ``mamba_split_conv1d_scan_combined``, its Mamba2's ``use_mem_eff_path``), or None where it has
    none and the mixer composes the conv, the SSD and the gated norm itself.

    The op: (zxbcdt, conv_weight, conv_bias, dt_bias, A, D, *, chunk_size, dt_limit, headdim,
    ngroups, rmsnorm_weight, rmsnorm_eps, norm_before_gate, out_proj_weight, out_proj_bias) -> out,
    from in_proj's output zxbcdt (batch, L, channels) to the mixer's output (batch, L, d_model):
    xBC convolved (+SiLU), the SSD (dt's bias and softplus in it), the gated RMSNorm with z (or
    SiLU(z)'s gate without rmsnorm_weight), the MLP channels beside it, out_proj. conv_weight is
    (channels, d_conv); D is (nheads,) or (nheads, headdim).
    """
    return _BACKENDS[resolve_backend(u, backend)].mamba2_inner


def causal_conv1d(x, weight, bias=None, activation=None, backend: str | None = None):
    """Depthwise causal convolution (see conv.py) on the chosen backend."""
    return _BACKENDS[resolve_backend(x, backend)].conv(x, weight, bias, activation)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, backend: str | None = None):
    """One decoding step of the conv: shifts x into conv_state in place."""
    return _BACKENDS[resolve_backend(x, backend)].conv_step(x, conv_state, weight, bias, activation)


register_backend(
    KernelBackend(
        "torch",
        selective_scan_torch,
        selective_state_update_torch,
        causal_conv1d_torch,
        causal_conv1d_update_torch,
        ssd_chunk_scan_torch,
        ssd_state_update_torch,
        mamba3_chunk_scan_torch,
        mamba3_state_update_torch,
        priority=0,
        why_not=lambda u: None,
    )
)
