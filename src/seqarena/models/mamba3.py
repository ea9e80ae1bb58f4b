"""Mamba-3's mixer (Lahoti et al. 2026, arXiv 2603.15569) in plain PyTorch.

Parameter for parameter mamba_ssm's ``Mamba3`` (mamba_ssm/modules/mamba3.py): one ``in_proj`` gives
z, x, B, C, dt, A, the trapezoid's gate and the rotary angles at once; there is no conv. Each head
has a ``dt_bias``; A is data-dependent, dt-scaled and floored; B and C are RMS-normalised per
state and biased per head; their rotation by the cumulative angles is the paper's complex state.
MIMO (``is_mimo``) carries ``mimo_rank`` B and C per head, and projects x and z up to that rank
(``mimo_x``, ``mimo_z``) and the outputs back down (``mimo_o``). ``is_outproj_norm`` gates a
per-head RMSNorm with z instead of a SiLU(z) gate.

The sequence mixing is ``seqarena.ops.mamba3_chunk_scan`` (matmuls within chunks, a recurrence
across them); decoding advances the (angle, ssm, k, x) states with ``mamba3_state_update``.

``A_activation`` is ours, not mamba_ssm's: A = -activation(dd_A). mamba_ssm's main branch takes
the heavy-tail activation (state-spaces/mamba #962: 1 + a for a >= 0, 1 / (1 - a) below) and
2.3.2 took softplus; each checkpoint gives its own outputs with its own.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqarena.models.base import dt_bias_init
from seqarena.models.mamba2 import RMSNormGated
from seqarena.ops import mamba3_chunk_scan, mamba3_state_update

# mamba_ssm.modules.mamba3.Mamba3's keyword arguments and defaults, and ours (A_activation).
MAMBA3_DEFAULTS = dict(
    d_state=128,
    expand=2,
    headdim=64,
    ngroups=1,
    rope_fraction=0.5,
    dt_min=0.001,
    dt_max=0.1,
    dt_init_floor=1e-4,
    A_floor=1e-4,
    is_outproj_norm=False,
    is_mimo=False,
    mimo_rank=4,
    chunk_size=64,
    A_activation="heavy_tail",
)
# Keys mamba_ssm accepts that change no weight or result here (its kernel fusion, its dropout).
MAMBA3_IGNORED = frozenset({"dropout", "fuse_pregate_headwise_norm"})


def heavy_tail(a: torch.Tensor) -> torch.Tensor:
    """1 + a for a >= 0, 1 / (1 - a) below: positive, continuous and smooth at 0."""
    return a.clamp_min(0) + torch.reciprocal(1 - a.clamp_max(0))


A_ACTIVATIONS = {"heavy_tail": heavy_tail, "softplus": F.softplus}


def rope_angles(d_state: int, rope_fraction: float) -> int:
    """How many rotary angles (pairs of state dimensions) rotate: d_state * rope_fraction / 2, even."""
    rotated = int(d_state * rope_fraction)
    return (rotated - rotated % 2) // 2


def check_mamba3_shape(d_model: int, cfg: dict) -> None:
    """Raise, naming the field, where mamba_ssm's Mamba3 would fail an assertion (or we would)."""
    d_inner = cfg["expand"] * d_model
    if cfg["rope_fraction"] not in (0.5, 1.0):
        raise ValueError(f"ssm_cfg.rope_fraction={cfg['rope_fraction']} must be 0.5 or 1.0")
    if d_inner % cfg["headdim"]:
        raise ValueError(
            f"ssm_cfg.headdim={cfg['headdim']} does not divide d_inner = expand * d_model = {d_inner}"
        )
    if (d_inner // cfg["headdim"]) % cfg["ngroups"]:
        raise ValueError(
            f"ssm_cfg.ngroups={cfg['ngroups']} does not divide nheads={d_inner // cfg['headdim']}"
        )
    if rope_angles(cfg["d_state"], cfg["rope_fraction"]) < 1:
        raise ValueError(
            f"ssm_cfg.d_state={cfg['d_state']} leaves no rotary angle at rope_fraction {cfg['rope_fraction']}"
        )
    if cfg["A_activation"] not in A_ACTIVATIONS:
        raise ValueError(
            f"ssm_cfg.A_activation={cfg['A_activation']!r}: unknown; known: {sorted(A_ACTIVATIONS)}"
        )


def mamba3_kept_per_token(d_model: int, cfg: dict) -> float:
    """Elements the mixer keeps for the backward pass per token, as mamba_ssm's Triton path does:
    in_proj's output, the normalised B and C, the output before out_proj and its gate."""
    d_inner = cfg["expand"] * d_model
    rank = cfg["mimo_rank"] if cfg["is_mimo"] else 1
    bc = 2 * cfg["ngroups"] * cfg["d_state"] * rank
    heads = d_inner // cfg["headdim"]
    return (2 * d_inner + bc + 3 * heads) + bc + 2 * d_inner


@dataclass
class Mamba3LayerCache:
    """A Mamba-3 layer's decoding state, mamba_ssm's four: fixed-size, whatever the sequence length."""

    angle_state: torch.Tensor  # (batch, nheads, rotary angles), float32
    ssm_state: torch.Tensor  # (batch, nheads, headdim, d_state), float32
    k_state: torch.Tensor  # (batch, R, nheads, d_state): the last step's rotated k
    x_state: torch.Tensor  # (batch, nheads, headdim): the last step's x

    def states(self) -> tuple:
        return self.angle_state, self.ssm_state, self.k_state, self.x_state


class Mamba3Mixer(nn.Module):
    """in_proj -> (z, x, B, C, dt, A, trap, angles); the Mamba-3 SSM; the gate (or gated norm),
    MIMO's down-projection, out_proj."""

    def __init__(
        self,
        d_model,
        d_state,
        expand,
        headdim,
        ngroups,
        rope_fraction,
        dt_min,
        dt_max,
        dt_init_floor,
        A_floor,
        is_outproj_norm,
        is_mimo,
        mimo_rank,
        chunk_size,
        A_activation,
    ):
        super().__init__()
        self.d_state, self.headdim, self.ngroups, self.chunk_size = d_state, headdim, ngroups, chunk_size
        self.d_inner = expand * d_model
        self.nheads = self.d_inner // headdim
        self.is_mimo, self.is_outproj_norm = is_mimo, is_outproj_norm
        self.rank = mimo_rank if is_mimo else 1
        self.A_floor, self.A_activation = A_floor, A_ACTIVATIONS[A_activation]
        self.num_angles = rope_angles(d_state, rope_fraction)
        bc = d_state * ngroups * self.rank
        # Order: [z, x, B, C, dd_dt, dd_A, trap, angles]
        self.split_sizes = [self.d_inner, self.d_inner, bc, bc, self.nheads, self.nheads, self.nheads]
        self.split_sizes.append(self.num_angles)
        self.in_proj = nn.Linear(d_model, sum(self.split_sizes), bias=False)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.B_bias = nn.Parameter(torch.ones(self.nheads, self.rank, d_state))
        self.C_bias = nn.Parameter(torch.ones(self.nheads, self.rank, d_state))
        self.B_norm = RMSNormGated(d_state, eps=1e-5)
        self.C_norm = RMSNormGated(d_state, eps=1e-5)
        if is_mimo:
            self.mimo_x = nn.Parameter(torch.full((self.nheads, self.rank, headdim), 1 / self.rank))
            self.mimo_z = nn.Parameter(torch.ones(self.nheads, self.rank, headdim))
            self.mimo_o = nn.Parameter(torch.full((self.nheads, self.rank, headdim), 1 / self.rank))
        self.D = nn.Parameter(torch.ones(self.nheads))
        if is_outproj_norm:
            self.norm = RMSNormGated(self.d_inner, eps=1e-5, norm_before_gate=True, group_size=headdim)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self._init_dt(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_dt(self, dt_min, dt_max, dt_init_floor):
        self.dt_bias.copy_(dt_bias_init(self.nheads, dt_min, dt_max, dt_init_floor))
        self.dt_bias._no_weight_decay = self.D._no_weight_decay = True

    def _ssm_inputs(self, projected: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """The SSM's inputs from in_proj's output (..., features), for a sequence (batch, L, ...)
        or one token (batch, ...): heads, groups and ranks split out, A and dt discretised, B and
        C normalised; and z, which gates after the SSM."""
        z, x, B, C, dd_dt, dd_A, trap, angles = projected.split(self.split_sizes, dim=-1)
        A = -self.A_activation(dd_A.float()).clamp_min(self.A_floor)  # at most -A_floor
        dt = F.softplus(dd_dt + self.dt_bias)
        bc = (self.rank, self.ngroups, self.d_state)
        inputs = dict(
            q=self.C_norm(C.unflatten(-1, bc)),
            k=self.B_norm(B.unflatten(-1, bc)),
            x=x.unflatten(-1, (self.nheads, self.headdim)),
            adt=A * dt,
            dt=dt,
            trap=trap,
            q_bias=self.C_bias,
            k_bias=self.B_bias,
            angles=angles.unsqueeze(-2).expand(*angles.shape[:-1], self.nheads, self.num_angles),
            D=self.D,
            z=None if self.is_outproj_norm else z.unflatten(-1, (self.nheads, self.headdim)),
            mimo_x=self.mimo_x if self.is_mimo else None,
            mimo_z=self.mimo_z if self.is_mimo else None,
            rotate_pairwise=not self.is_mimo,  # mamba_ssm's SISO kernel pairs (2i, 2i+1), MIMO's (i, i+N/2)
        )
        return inputs, z

    def _output(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y (..., R, nheads, headdim) per rank: the gated norm (per rank, with MIMO's z), MIMO's
        down-projection, out_proj."""
        compute = torch.promote_types(y.dtype, torch.float32)  # MIMO's projections in float32, as mamba_ssm's
        if self.is_outproj_norm:
            z = z.unflatten(-1, (self.nheads, self.headdim)).unsqueeze(-3)
            if self.is_mimo:
                z = z.to(compute) * self.mimo_z.transpose(0, 1).to(compute)
            y = self.norm(y.flatten(-2), z.flatten(-2)).unflatten(-1, (self.nheads, self.headdim))
        if self.is_mimo:
            y = torch.einsum("...rhp,hrp->...hp", y.to(compute), self.mimo_o.to(compute))
        else:
            y = y.squeeze(-3)
        return self.out_proj(y.flatten(-2).to(self.out_proj.weight.dtype))

    def forward(self, hidden: torch.Tensor, cache: Mamba3LayerCache | None = None, continuing: bool = False):
        """hidden (batch, L, d_model); a cache, if given, receives the final states. ``continuing``:
        the chunk continues the sequence whose states the cache holds."""
        inputs, z = self._ssm_inputs(self.in_proj(hidden))
        for name in ("adt", "dt", "trap"):
            inputs[name] = inputs[name].transpose(1, 2)  # (batch, nheads, L), as the kernels take them
        y = mamba3_chunk_scan(
            **inputs,
            chunk_size=self.chunk_size,
            initial_states=cache.states() if continuing else None,
            return_final_states=cache is not None,
        )
        if cache is not None:
            y, final = y
            for held, new in zip(cache.states(), final, strict=True):
                held.copy_(new)
        return self._output(y, z)

    def step(self, hidden: torch.Tensor, cache: Mamba3LayerCache) -> torch.Tensor:
        """hidden (batch, d_model) for one token; advances the cache in place."""
        inputs, z = self._ssm_inputs(self.in_proj(hidden))
        return self._output(mamba3_state_update(cache.states(), **inputs), z)

    def allocate_cache(self, batch_size: int, max_seqlen: int, weight: torch.Tensor) -> Mamba3LayerCache:
        state_dtype = torch.promote_types(weight.dtype, torch.float32)
        return Mamba3LayerCache(
            angle_state=weight.new_zeros(batch_size, self.nheads, self.num_angles, dtype=state_dtype),
            ssm_state=weight.new_zeros(
                batch_size, self.nheads, self.headdim, self.d_state, dtype=state_dtype
            ),
            k_state=weight.new_zeros(batch_size, self.rank, self.nheads, self.d_state),
            x_state=weight.new_zeros(batch_size, self.nheads, self.headdim),
        )
