"""The selective scan (Mamba's S6 recurrence) behind one function, with run-time backends.

Semantics are mamba_ssm's ``selective_scan_fn``: for each batch b, channel d and time t,

    dt      = softplus(delta + delta_bias)            (softplus only if delta_softplus)
    x_t     = exp(dt * A) * x_{t-1} + dt * B_t * u_t  (x is the (N,) state of channel d)
    y_t     = <x_t, C_t> + D * u_t
    out_t   = y_t * silu(z_t)                          (only if z is given)

Shapes: u, delta, z (batch, dim, L); A (dim, N); B and C either (dim, N) (time-invariant),
(batch, N, L) (input-dependent, as Mamba uses them) or (batch, G, N, L) (G groups of
channels); D and delta_bias (dim,). With return_last_state the final x (batch, dim, N)
is returned as well.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKEND_ENV_VAR = "SEQARENA_SCAN_BACKEND"


@dataclass(frozen=True)
class ScanBackend:
    """One implementation of ``selective_scan`` and of its single-step decoding update.

    ``priority`` orders automatic choice (higher first); ``why_not(u)`` is None when the
    backend can run on tensors like ``u`` here (device, build), else the reason it cannot.
    """

    name: str
    scan: Callable
    step: Callable
    priority: int
    why_not: Callable[[torch.Tensor], str | None]

    def supports(self, u: torch.Tensor) -> bool:
        return self.why_not(u) is None


_BACKENDS: dict[str, ScanBackend] = {}


def register_backend(backend: ScanBackend) -> None:
    _BACKENDS[backend.name] = backend


def backend_names() -> list[str]:
    """Every registered backend, best first."""
    return [b.name for b in sorted(_BACKENDS.values(), key=lambda b: -b.priority)]


def available_backends(u: torch.Tensor) -> list[str]:
    """The backends that can run on tensors like ``u`` here, best first."""
    return [name for name in backend_names() if _BACKENDS[name].supports(u)]


def resolve_backend(u: torch.Tensor, backend: str | None = None) -> str:
    """The backend that ``selective_scan`` will use for ``u``.

    An explicit ``backend`` wins, then the ``SEQARENA_SCAN_BACKEND`` environment variable,
    then the best available one. A named backend that cannot run is an error, never a
    silent fallback, so results always say truthfully what produced them.
    """
    requested = backend or os.environ.get(BACKEND_ENV_VAR) or None
    if requested is None:
        return available_backends(u)[0]
    if requested not in _BACKENDS:
        raise ValueError(f"unknown selective-scan backend {requested!r}; known: {', '.join(backend_names())}")
    reason = _BACKENDS[requested].why_not(u)
    if reason is not None:
        source = "argument" if backend else f"environment variable {BACKEND_ENV_VAR}"
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
    backend: str | None = None,
):
    """Run the selective scan on the chosen backend (see the module docstring)."""
    name = resolve_backend(u, backend)
    return _BACKENDS[name].scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_state_update(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, backend: str | None = None
):
    """One step of the recurrence for decoding: updates ``state`` in place, returns y.

    state (batch, dim, N); x, dt, z (batch, dim); B, C (batch, N); A (dim, N).
    """
    name = resolve_backend(x, backend)
    return _BACKENDS[name].step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def _state_input(BC: torch.Tensor, t: int, dim: int) -> torch.Tensor:
    """B or C at time t, shaped to broadcast against the (batch, dim, N) state."""
    if BC.dim() == 2:  # (dim, N): time-invariant
        return BC.unsqueeze(0)
    if BC.dim() == 3:  # (batch, N, L): shared by all channels
        return BC[:, None, :, t]
    groups = BC.shape[1]  # (batch, G, N, L): one per group of dim // G channels
    return BC[:, :, :, t].repeat_interleave(dim // groups, dim=1)


def selective_scan_torch(
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
):
    """The readable reference: the recurrence step by step, in at least float32."""
    dtype_in = u.dtype
    compute = torch.promote_types(dtype_in, torch.float32)
    u, delta, A = u.to(compute), delta.to(compute), A.to(compute)
    B, C = B.to(compute), C.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    state = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]
        state = torch.exp(dt * A) * state + dt * _state_input(B, t, dim) * u[:, :, t, None]
        ys.append((state * _state_input(C, t, dim)).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + u * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    return (y, state) if return_last_state else y


def selective_state_update_torch(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """The reference single step (see ``selective_state_update``)."""
    compute = state.dtype
    dt = dt.to(compute)
    if dt_bias is not None:
        dt = dt + dt_bias.to(compute)
    if dt_softplus:
        dt = F.softplus(dt)
    xc = x.to(compute)
    dA = torch.exp(dt[:, :, None] * A.to(compute))
    dBx = dt[:, :, None] * B.to(compute)[:, None, :] * xc[:, :, None]
    state.copy_(state * dA + dBx)
    y = (state * C.to(compute)[:, None, :]).sum(-1)
    if D is not None:
        y = y + xc * D.to(compute)
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(x.dtype)


register_backend(ScanBackend("torch", selective_scan_torch, selective_state_update_torch, 0, lambda u: None))
