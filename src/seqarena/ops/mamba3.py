"""Mamba-3's SSM (arXiv 2603.15569): the chunked algorithm in PyTorch, and its decoding step.

Semantics are mamba_ssm's ``mamba3_siso_combined`` (SISO) and ``mamba3_mimo`` (MIMO, rank R; SISO
is R = 1 with no rank projections). Per head h, with a state S of shape (headdim, N):

    theta_t = theta_{t-1} + pi tanh(angle_t) dt_t               (mod 2 pi; rotary angles)
    q_t, k_t = rot(C_t + C_bias, theta_t), rot(B_t + B_bias, theta_t)   (per rank r)
    v_t     = x_t * mimo_x                                       (per rank r; SISO: x_t)
    lambda  = sigmoid(trap_t); alpha = exp(A_t dt_t)
    S_t     = alpha S_{t-1} + (1 - lambda) dt_t alpha sum_r v_{t-1,r} k_{t-1,r}^T
                            + lambda dt_t sum_r v_{t,r} k_{t,r}^T    (the trapezoidal rule)
    y_t,r   = S_t q_t,r + D_h v_t,r, times silu(z_t * mimo_z) if z is given

The rotation of B and C by the cumulative angle is the complex-valued state of the paper, taken
as data-dependent rotary embeddings. Its pairs are (2i, 2i+1) for SISO (``rotate_pairwise``),
(i, i + N/2) for MIMO, as mamba_ssm's kernels take them, over the first ``angles`` pairs.

Shapes: q, k (batch, L, R, G, N), head h reading group h // (nheads / G); x, z (batch, L, nheads,
headdim); adt (A dt), dt and trap (the gate before its sigmoid) (batch, nheads, L); q_bias,
k_bias (nheads, R, N); angles (batch, L, nheads, A) before tanh; D (nheads,); mimo_x, mimo_z
(nheads, R, headdim). The output is per rank, (batch, L, R, nheads, headdim): the mixer contracts
it with mimo_o. The states: angle (batch, nheads, A), ssm (batch, nheads, headdim, N), k
(batch, R, nheads, N) and x (batch, nheads, headdim): the previous step's rotated k and x, which
the trapezoidal rule's next step needs.

As for the SSD, the decay is a scalar per head, so within a chunk the recurrence is a masked
matrix product and only chunk boundaries pass states on. The one wrinkle is the trapezoid: step
s's outer product enters with lambda_s dt_s and again, one step later, with (1 - lambda_{s+1})
dt_{s+1}; a chunk weighs it with their sum, and subtracts the second from its own step's output.
"""

import math

import torch
import torch.nn.functional as F


def turning(theta: torch.Tensor, n: int) -> torch.Tensor:
    """A turn by theta (..., A) of the first A of N/2 pairs as unit complex numbers (..., N/2); the
    pairs beyond turn by 0."""
    theta = F.pad(theta, (0, n // 2 - theta.shape[-1]))
    return torch.polar(torch.ones_like(theta), theta)


def rotate(t: torch.Tensor, turn: torch.Tensor, pairwise: bool) -> torch.Tensor:
    """t (..., N) turned: each pair (a, b), as a + ib, times the turn's e^(i theta), the pairs being
    (2i, 2i+1) if ``pairwise``, else (i, i + N/2). One complex product: a third of the passes over
    t, forward and backward, of the real form (a cos - b sin, a sin + b cos)."""
    if pairwise:
        return torch.view_as_real(torch.view_as_complex(t.unflatten(-1, (-1, 2))) * turn).flatten(-2)
    halves = t.unflatten(-1, (2, -1)).transpose(-1, -2).contiguous()  # (..., N/2, 2)
    return torch.view_as_real(torch.view_as_complex(halves) * turn).transpose(-1, -2).flatten(-2)


def _per_step_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (..., m, k) @ b (..., k, n) at every step. Where SISO's rank makes these 1 x 1 products
    (a dot product, an outer product), broadcasting does them: a CPU takes about 3x as long for a
    batch of that many tiny matmuls."""
    if a.shape[-2] == 1 and b.shape[-1] == 1:
        return (a.transpose(-1, -2) * b).sum(-2, keepdim=True)
    if a.shape[-1] == 1:
        return a * b
    return a @ b


def _biased_per_head(t: torch.Tensor, bias: torch.Tensor, nheads: int) -> torch.Tensor:
    """t (b, L, R, G, N) plus bias (nheads, R, N) -> (b, nheads, L, R, N): consecutive heads share
    a group, as in mamba_ssm, and each adds its own bias."""
    batch, length, rank, groups, n = t.shape
    per_group = t.permute(0, 3, 1, 2, 4).unsqueeze(2)  # (b, G, 1, L, R, N)
    bias = bias.unflatten(0, (groups, nheads // groups)).unsqueeze(2)  # (G, h/G, 1, R, N)
    return (per_group + bias).flatten(1, 2)


def _ranks(x: torch.Tensor, mimo: torch.Tensor | None, rank: int) -> torch.Tensor:
    """x (b, nheads, ..., headdim) -> (b, nheads, ..., R, headdim): times mimo (nheads, R, headdim)."""
    x = x.unsqueeze(-2)
    if mimo is None:
        return x.expand(*x.shape[:-2], rank, x.shape[-1])
    return x * mimo.to(x.dtype).view(mimo.shape[0], *[1] * (x.dim() - 4), *mimo.shape[1:])


def mamba3_chunk_scan_torch(
    q,
    k,
    x,
    adt,
    dt,
    trap,
    q_bias,
    k_bias,
    angles,
    D=None,
    z=None,
    mimo_x=None,
    mimo_z=None,
    chunk_size=64,
    rotate_pairwise=True,
    initial_states=None,
    return_final_states=False,
):
    """The chunked Mamba-3 SSM in at least float32, any length (the last chunk is padded with
    steps that neither decay nor feed the state). Returns y, and with ``return_final_states`` the
    (angle, ssm, k, x) states after the last step.

    Everything runs per head in a (batch, head, step, rank, ...) layout, so that chunks are views."""
    dtype_in, compute = x.dtype, torch.promote_types(x.dtype, torch.float32)
    batch, length, rank, _, d_state = q.shape
    nheads, headdim = x.shape[2:]
    adt, dt, trap = adt.to(compute), dt.to(compute), torch.sigmoid(trap.to(compute))  # (b, h, L)

    # the rotary angles summed over the sequence, turning the biased q and k
    theta = (torch.tanh(angles.to(compute)).transpose(1, 2) * math.pi * dt[..., None]).cumsum(2)
    if initial_states is not None:
        theta = theta + initial_states[0].to(compute)[:, :, None]
    theta = torch.remainder(theta, 2 * math.pi)  # (b, h, L, A)
    q = _biased_per_head(q.to(compute), q_bias.to(compute), nheads)  # (b, h, L, R, N)
    k = _biased_per_head(k.to(compute), k_bias.to(compute), nheads)
    q_dot_k = _per_step_matmul(q, k.transpose(-1, -2))  # (b, h, L, R, r): unchanged by the turn
    turn = turning(theta[:, :, :, None], d_state)
    q, k = rotate(q, turn, rotate_pairwise), rotate(k, turn, rotate_pairwise)
    x_heads = x.to(compute).transpose(1, 2)  # (b, h, L, p)
    v = _ranks(x_heads, mimo_x, rank)  # (b, h, L, R, p)

    # each step's outer product enters with lambda dt now and (1 - lambda) dt one step later: the
    # chunks weigh it with both, and its own step takes the later one off again (beside D's skip)
    later = F.pad(dt[..., 1:] * (1 - trap[..., 1:]), (0, 1))  # (b, h, L)
    weight = dt * trap + later
    own_step = -q_dot_k * later[..., None, None]  # (b, h, L, R, r): what y_R takes of v_r
    if D is not None:
        own_step = (
            own_step + torch.eye(rank, dtype=compute, device=x.device) * D.to(compute)[:, None, None, None]
        )
    y = _per_step_matmul(own_step, v)  # (b, h, L, R, p)

    state = torch.zeros(batch, nheads, headdim, d_state, dtype=compute, device=x.device)
    if initial_states is not None:  # the previous step's product, at this first step's (1 - lambda) dt
        first = (dt[..., 0] * (1 - trap[..., 0]))[..., None, None]
        prev_v = _ranks(initial_states[3].to(compute), mimo_x, rank)  # (b, h, R, p)
        prev = torch.einsum("bhrp,brhn->bhpn", prev_v, initial_states[2].to(compute))
        state = initial_states[1].to(compute) + first * prev

    # chunks of Q steps, (step, rank) flattened to Q*R rows as mamba_ssm's MIMO reference does
    pad = -length % chunk_size
    n_chunks, rows = (length + pad) // chunk_size, chunk_size * rank

    def chunked(t, width=None):  # (b, h, L, ...) -> (b, h, c, Q * R, width) or (b, h, c, Q)
        if pad:
            t = F.pad(t, (0, 0) * (t.dim() - 3) + (0, pad))
        return t.reshape(batch, nheads, n_chunks, rows, width) if width else t.unflatten(2, (n_chunks, -1))

    qc, kc, vc = chunked(q, d_state), chunked(k, d_state), chunked(v, headdim)
    decay = chunked(adt).cumsum(-1).repeat_interleave(rank, dim=-1)  # (b, h, c, Q*R)
    weight = chunked(weight).repeat_interleave(rank, dim=-1)

    # 1. within each chunk: y_i = sum_{j <= i} (q_i . k_j) exp(adt_{j+1} + ... + adt_i) w_j v_j
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    causal = causal.repeat_interleave(rank, 0).repeat_interleave(rank, 1)
    segment = (decay[..., :, None] - decay[..., None, :]).masked_fill(~causal, float("-inf"))
    inside = ((qc @ kc.transpose(-1, -2)) * (torch.exp(segment) * weight[..., None, :])) @ vc

    # 2. across chunks: the state entering each chunk, and what it gives that chunk's outputs
    to_end = (torch.exp(decay[..., -1:] - decay) * weight)[..., None]  # (b, h, c, Q*R, 1)
    chunk_states = (vc * to_end).transpose(-1, -2) @ kc  # (b, h, c, p, N)
    entering = []
    chunk_decays = torch.exp(decay[..., -1])[..., None, None].unbind(2)  # unbound once: O(c) backward
    for chunk_decay, chunk_state in zip(chunk_decays, chunk_states.unbind(2), strict=True):
        entering.append(state)
        state = chunk_decay * state + chunk_state
    entering = torch.stack(entering, dim=2)  # (b, h, c, p, N)
    from_before = (qc * torch.exp(decay)[..., None]) @ entering.transpose(-1, -2)  # (b, h, c, Q*R, p)

    y = y + (inside + from_before).reshape(batch, nheads, -1, rank, headdim)[:, :, :length]
    if z is not None:
        y = y * F.silu(_ranks(z.to(compute).transpose(1, 2), mimo_z, rank))
    y = y.permute(0, 2, 3, 1, 4).to(dtype_in)  # (b, L, R, h, p)
    if not return_final_states:
        return y
    return y, (theta[:, :, -1], state, k[:, :, -1].transpose(1, 2).to(dtype_in), x[:, -1])


def mamba3_state_update_torch(
    states,
    q,
    k,
    x,
    adt,
    dt,
    trap,
    q_bias,
    k_bias,
    angles,
    D=None,
    z=None,
    mimo_x=None,
    mimo_z=None,
    rotate_pairwise=True,
):
    """One decoding step: updates ``states`` (angle, ssm, k, x) in place and returns y (batch, R,
    nheads, headdim). Inputs are the chunked form's at one step: q, k (batch, R, G, N); x, z
    (batch, nheads, headdim); adt, dt, trap (batch, nheads); angles (batch, nheads, A)."""
    angle_state, ssm_state, k_state, x_state = states
    compute = torch.promote_types(x.dtype, torch.float32)
    rank, nheads = q.shape[1], x.shape[1]
    adt, dt, trap = adt.to(compute), dt.to(compute), torch.sigmoid(trap.to(compute))
    theta = angle_state + torch.tanh(angles.to(compute)) * math.pi * dt[..., None]
    theta = torch.remainder(theta, 2 * math.pi)  # (b, h, A)
    q = _biased_per_head(q.to(compute).unsqueeze(1), q_bias.to(compute), nheads)[:, :, 0]  # (b, h, R, N)
    k = _biased_per_head(k.to(compute).unsqueeze(1), k_bias.to(compute), nheads)[:, :, 0]
    turn = turning(theta[:, :, None], q.shape[-1])
    q, k = rotate(q, turn, rotate_pairwise), rotate(k, turn, rotate_pairwise)
    v, prev_v = _ranks(x.to(compute), mimo_x, rank), _ranks(x_state.to(compute), mimo_x, rank)  # (b, h, R, p)

    alpha = torch.exp(adt)[..., None, None]
    now = torch.einsum("bhrp,bhrn->bhpn", v, k)
    before = torch.einsum("bhrp,brhn->bhpn", prev_v, k_state.to(compute))
    state = alpha * ssm_state.to(compute) + ((1 - trap) * dt)[..., None, None] * alpha * before
    state = state + (trap * dt)[..., None, None] * now
    y = torch.einsum("bhpn,bhrn->bhrp", state, q)
    if D is not None:
        y = y + v * D.to(compute)[:, None, None]
    if z is not None:
        y = y * F.silu(_ranks(z.to(compute), mimo_z, rank))
    angle_state.copy_(theta)
    ssm_state.copy_(state)
    k_state.copy_(k.transpose(1, 2))
    x_state.copy_(x)
    return y.transpose(1, 2).to(x.dtype)
