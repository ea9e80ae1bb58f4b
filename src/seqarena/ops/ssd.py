"""Mamba-2's SSD (state space duality): the chunked algorithm in PyTorch, and its decoding step.

Semantics are mamba_ssm's ``mamba_chunk_scan_combined``: per head h, with a scalar decay,

    dt      = clamp(softplus(dt + dt_bias), *dt_limit)   (softplus only if dt_softplus)
    S_t     = exp(dt * A_h) * S_{t-1} + dt * x_t B_t^T     (S is the (headdim, N) state of head h)
    y_t     = S_t C_t + D_h * x_t
    out_t   = y_t * silu(z_t)                              (only if z is given)

Shapes: x, z (batch, L, nheads, headdim); dt (batch, L, nheads); A and dt_bias (nheads,);
B, C (batch, L, ngroups, N), head h reading group h // (nheads / ngroups); D (nheads,) or
(nheads, headdim); states (batch, nheads, headdim, N).

Because the decay is a scalar per head, the recurrence inside a chunk of Q steps is a masked
matrix product (the "attention" form, Q x Q), and only the chunk boundaries are passed on
sequentially: the work is matmuls, which a CPU does at full speed (Mamba-2 paper, section 6).
"""

import torch
import torch.nn.functional as F

NO_DT_LIMIT = (0.0, float("inf"))


def discretised_dt(dt, dt_bias, dt_softplus, dt_limit, compute):
    dt = dt.to(compute)
    if dt_bias is not None:
        dt = dt + dt_bias.to(compute)
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != NO_DT_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _per_head(BC: torch.Tensor, nheads: int, dim: int) -> torch.Tensor:
    """Groups -> heads along ``dim``: consecutive heads share a group, as in mamba_ssm."""
    return BC.repeat_interleave(nheads // BC.shape[dim], dim=dim)


def _segment_sums(a: torch.Tensor) -> torch.Tensor:
    """a (..., Q) -> (..., Q, Q) with [i, j] = a[j+1] + ... + a[i] for j <= i, -inf above.

    Summed from the masked terms rather than as a difference of cumulative sums, which
    loses precision when the sums are large."""
    q = a.shape[-1]
    terms = a[..., None, :].expand(*a.shape, q).transpose(-1, -2)  # [i, j] = a[i]
    strictly_lower = torch.ones(q, q, dtype=torch.bool, device=a.device).tril(-1)
    sums = terms.masked_fill(~strictly_lower, 0).cumsum(dim=-2)
    lower = torch.ones(q, q, dtype=torch.bool, device=a.device).tril()
    return sums.masked_fill(~lower, float("-inf"))


def ssd_chunk_scan_torch(
    x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=NO_DT_LIMIT,
    initial_state=None, return_final_state=False,
):  # fmt: skip
    """The chunked SSD in at least float32; any length (the last chunk is padded with dt = 0,
    which neither decays nor feeds the state, so the final state is exact)."""
    dtype_in = x.dtype
    compute = torch.promote_types(dtype_in, torch.float32)
    batch, length, nheads, headdim = x.shape
    dt = discretised_dt(dt, dt_bias, dt_softplus, dt_limit, compute)
    xc = x.to(compute)
    B, C = _per_head(B.to(compute), nheads, 2), _per_head(C.to(compute), nheads, 2)

    q = chunk_size
    pad = -length % q
    if pad:
        xc, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xc, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    n_chunks = (length + pad) // q
    # (batch, chunks, Q, heads, ...) and the decays as (batch, heads, chunks, Q)
    xc, B, C = (t.reshape(batch, n_chunks, q, nheads, -1) for t in (xc, B, C))
    dt = dt.reshape(batch, n_chunks, q, nheads)
    dA = (dt * A.to(compute)).permute(0, 3, 1, 2)
    dA_cumsum = dA.cumsum(dim=-1)
    x_dt = xc * dt[..., None]

    # 1. Within each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(dA_{j+1} + ... + dA_i) dt_j x_j
    decay = torch.exp(_segment_sums(dA))  # (batch, heads, chunks, Q, Q)
    scores = torch.einsum("bclhn,bcshn->bhcls", C, B) * decay
    y = torch.einsum("bhcls,bcshp->bclhp", scores, x_dt)

    # 2. The state each chunk adds, decayed to the chunk's end
    decay_to_end = torch.exp(dA_cumsum[..., -1:] - dA_cumsum)  # (batch, heads, chunks, Q)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_to_end, x_dt)

    # 3. Pass the states across chunk boundaries (a short sequential loop over chunks)
    state = (
        xc.new_zeros(batch, nheads, headdim, B.shape[-1])
        if initial_state is None
        else initial_state.to(compute)
    )
    chunk_decay = torch.exp(dA_cumsum[..., -1])  # (batch, heads, chunks)
    entering = []
    for c in range(n_chunks):
        entering.append(state)
        state = state * chunk_decay[:, :, c, None, None] + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)  # (batch, chunks, heads, headdim, N)

    # 4. What the entering state contributes to each output of its chunk
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", C, entering, torch.exp(dA_cumsum))

    y = y.reshape(batch, n_chunks * q, nheads, headdim)[:, :length]
    if D is not None:
        D = D.to(compute)
        y = y + xc.reshape(batch, -1, nheads, headdim)[:, :length] * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    return (y, state) if return_final_state else y


def ssd_state_update_torch(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=NO_DT_LIMIT
):
    """One decoding step: updates ``state`` (batch, nheads, headdim, N) in place and returns y.

    x, z (batch, nheads, headdim); dt (batch, nheads); B, C (batch, ngroups, N)."""
    compute = state.dtype
    nheads = state.shape[1]
    dt = discretised_dt(dt, dt_bias, dt_softplus, dt_limit, compute)
    xc = x.to(compute)
    B, C = _per_head(B.to(compute), nheads, 1), _per_head(C.to(compute), nheads, 1)
    dA = torch.exp(dt * A.to(compute))[:, :, None, None]
    state.copy_(state * dA + (xc * dt[..., None])[..., None] * B[:, :, None, :])
    y = (state @ C[..., None]).squeeze(-1)
    if D is not None:
        D = D.to(compute)
        y = y + xc * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(x.dtype)
