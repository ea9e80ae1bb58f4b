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


def _skip_and_gate(y, x, D, z):
    """y + D x (D per head or per channel), then times silu(z) if given; in y's dtype."""
    if D is not None:
        D = D.to(y.dtype)
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def _per_head(BC: torch.Tensor, nheads: int, dim: int) -> torch.Tensor:
    """Groups -> heads along ``dim``: consecutive heads share a group, as in mamba_ssm."""
    return BC.repeat_interleave(nheads // BC.shape[dim], dim=dim)


def _segment_sums(a: torch.Tensor) -> torch.Tensor:
    """a (..., T) -> (..., T, T) with [i, j] = a[j+1] + ... + a[i] for j <= i, -inf above.

    Summed from the masked terms, not as a difference of cumulative sums, which loses precision
    when the sums grow large (across a whole sequence)."""
    t = a.shape[-1]
    terms = a[..., :, None].expand(*a.shape, t)  # [i, j] = a[i]
    sums = terms.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=a.device).tril(-1), 0).cumsum(-2)
    return sums.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=a.device).tril(), float("-inf"))


def ssd_chunk_scan_torch(
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
    """The chunked SSD in at least float32; any length (the last chunk is padded with dt = 0,
    which neither decays nor feeds the state, so the final state is exact).

    Activations stay in their (batch, chunk, step, head, ...) layout; the products that do not
    depend on the head (with B and C) run once per group over all its heads' channels at once,
    so each is one batched matmul of useful size, and C.B is computed once per group."""
    dtype_in = x.dtype
    compute = torch.promote_types(dtype_in, torch.float32)
    batch, length, nheads, headdim = x.shape
    ngroups, d_state = B.shape[2:]
    per_group = nheads // ngroups
    q = chunk_size
    pad = -length % q
    n_chunks = (length + pad) // q

    def chunked(t):  # (batch, L, ...) -> (batch, chunks, Q, ...), zero-padded
        t = t.to(compute)
        if pad:
            t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.unflatten(1, (n_chunks, q))

    dt = chunked(discretised_dt(dt, dt_bias, dt_softplus, dt_limit, compute))  # (b, c, Q, h)
    x_dt = chunked(x) * dt[..., None]  # (b, c, Q, h, p)
    Bc, Cc = chunked(B).transpose(2, 3), chunked(C).transpose(2, 3)  # (b, c, g, Q, N)
    dA_cumsum = (dt * A.to(compute)).permute(0, 3, 1, 2).cumsum(dim=-1)  # (b, h, c, Q)

    # 1. Within each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(dA_{j+1} + ... + dA_i) dt_j x_j,
    #    the decays as differences of the cumulative sums (as mamba_ssm's kernels take them)
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    segment = (dA_cumsum[..., :, None] - dA_cumsum[..., None, :]).masked_fill(~causal, float("-inf"))
    scores = (Cc @ Bc.transpose(-1, -2)).transpose(1, 2)  # (b, g, c, Q, Q), once per group
    scores = (scores[:, :, None] * torch.exp(segment).unflatten(1, (ngroups, per_group))).flatten(1, 2)
    y = (scores @ x_dt.permute(0, 3, 1, 2, 4)).permute(0, 2, 3, 1, 4)  # (b, c, Q, h, p)

    # 2. The state each chunk adds, decayed to the chunk's end: (p, N) per head and chunk
    to_end = torch.exp(dA_cumsum[..., -1:] - dA_cumsum).permute(0, 2, 3, 1)  # (b, c, Q, h)
    weighted = (x_dt * to_end[..., None]).unflatten(3, (ngroups, -1)).flatten(4)  # (b, c, Q, g, hp)
    chunk_states = weighted.permute(0, 1, 3, 4, 2) @ Bc  # (b, c, g, heads of the group * p, N)
    chunk_states = chunk_states.unflatten(3, (per_group, headdim)).flatten(2, 3)  # (b, c, h, p, N)

    # 3. Pass the states across chunk boundaries: the state entering chunk z sums every earlier
    #    chunk's (and the initial) state, decayed through the chunks between: one small matmul
    decay_between = torch.exp(_segment_sums(F.pad(dA_cumsum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = decay_between[..., 1:] @ chunk_states.transpose(1, 2).flatten(3)  # (b, h, c+1, p*N)
    if initial_state is not None:
        states = states + decay_between[..., :1] * initial_state.to(compute).flatten(2)[:, :, None]
    states = states.unflatten(3, (headdim, d_state))
    entering, state = states[:, :, :-1], states[:, :, -1]  # (b, h, c, p, N), the final state

    # 4. What the entering state contributes to each output of its chunk, again per group
    entering = entering.unflatten(1, (ngroups, per_group)).permute(0, 3, 1, 5, 2, 4).flatten(4)
    y_off = (Cc @ entering).unflatten(4, (per_group, headdim))  # (b, c, g, Q, heads of the group, p)
    y_off = y_off.permute(0, 1, 3, 2, 4, 5).flatten(3, 4)  # (b, c, Q, h, p)
    y = y + y_off * torch.exp(dA_cumsum).permute(0, 2, 3, 1)[..., None]

    y = y.flatten(1, 2)[:, :length]  # (b, L, h, p)
    y = _skip_and_gate(y, x.to(compute), D, z)
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
    return _skip_and_gate(y, xc, D, z).to(x.dtype)
