"""The selective scan (Mamba's S6 recurrence): the readable PyTorch reference.

Semantics are mamba_ssm's ``selective_scan_fn``: for each batch b, channel d and time t,

    dt      = softplus(delta + delta_bias)            (softplus only if delta_softplus)
    x_t     = exp(dt * A) * x_{t-1} + dt * B_t * u_t  (x is the (N,) state of channel d)
    y_t     = <x_t, C_t> + D * u_t
    out_t   = y_t * silu(z_t)                          (only if z is given)

Shapes: u, delta, z (batch, dim, L); A (dim, N); B and C either (dim, N) (time-invariant),
(batch, N, L) (input-dependent, as Mamba uses them) or (batch, G, N, L) (G groups of
channels); D and delta_bias (dim,). With return_last_state the final x (batch, dim, N)
is returned as well; an initial_state (batch, dim, N) is the x before the first step (zeros
otherwise), for a scan that continues a sequence. ``seqarena.ops.selective_scan`` runs the
fastest backend available.
"""

import torch
import torch.nn.functional as F


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
    initial_state=None,
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
    state = u.new_zeros(batch, dim, A.shape[1]) if initial_state is None else initial_state.to(compute)
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
