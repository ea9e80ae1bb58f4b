"""Mamba-2's mixer (the SSD layer of Dao & Gu 2024, arXiv 2405.21060) in plain PyTorch.

Parameter for parameter mamba_ssm's ``Mamba2``: one ``in_proj`` gives z, x, B, C and dt at once;
a causal conv runs over x, B and C together; each head has a scalar decay ``A_log`` and a
``dt_bias``; a gated RMSNorm replaces Mamba-1's SiLU(z) gate. The sequence mixing is
``seqarena.ops.ssd_chunk_scan`` (matmuls within chunks, a recurrence across them), or on a backend
with a fused mixer (cuda, without a cache) the whole mixer as one op (``fused_mamba2_inner``);
decoding advances a (nheads, headdim, d_state) state per sequence with ``ssd_state_update``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from seqarena.models.base import MambaLayerCache, dt_bias_init
from seqarena.ops import (
    causal_conv1d,
    causal_conv1d_update,
    fused_mamba2_inner,
    ssd_chunk_scan,
    ssd_state_update,
)

# mamba_ssm.modules.mamba2.Mamba2's keyword arguments and defaults (those that shape the model).
MAMBA2_DEFAULTS = dict(
    d_state=128,
    d_conv=4,
    conv_init=None,
    expand=2,
    headdim=64,
    d_ssm=None,
    ngroups=1,
    A_init_range=(1, 16),
    D_has_hdim=False,
    rmsnorm=True,
    norm_before_gate=False,
    dt_min=0.001,
    dt_max=0.1,
    dt_init_floor=1e-4,
    dt_limit=(0.0, float("inf")),
    bias=False,
    conv_bias=True,
    chunk_size=256,
)
# Keys mamba_ssm accepts that change no weight or result here (its fused-kernel switch).
MAMBA2_IGNORED = frozenset({"use_mem_eff_path"})


def mamba2_kept_per_token(d_model: int, cfg: dict) -> float:
    """Elements the mixer keeps for the backward pass per token, as mamba_ssm's fused Mamba-2 path
    does: in_proj's output (z, xBC, dt), the conv's output, the gated norm's input and output, and
    the SSD's chunk states (float32, d_state per head channel per chunk, in 2-byte units)."""
    d_inner = cfg["expand"] * d_model
    groups = cfg["ngroups"] * cfg["d_state"]
    heads = (d_inner if cfg["d_ssm"] is None else cfg["d_ssm"]) // cfg["headdim"]
    in_proj, conv = 2 * d_inner + 2 * groups + heads, d_inner + 2 * groups
    return in_proj + conv + 2 * d_inner + 2 * d_inner * cfg["d_state"] / cfg["chunk_size"]


def check_mamba2_shape(d_model: int, cfg: dict) -> None:
    """Raise, naming the field, where mamba_ssm would fail an assertion (or build nonsense)."""
    d_inner = cfg["expand"] * d_model
    d_ssm = d_inner if cfg["d_ssm"] is None else cfg["d_ssm"]
    if d_ssm > d_inner:
        raise ValueError(f"ssm_cfg.d_ssm={d_ssm} exceeds expand * d_model = {d_inner}")
    if d_ssm % cfg["headdim"]:
        raise ValueError(f"ssm_cfg.headdim={cfg['headdim']} does not divide d_ssm={d_ssm}")
    if (d_ssm // cfg["headdim"]) % cfg["ngroups"]:
        raise ValueError(f"ssm_cfg.ngroups={cfg['ngroups']} does not divide nheads={d_ssm // cfg['headdim']}")


class RMSNormGated(nn.Module):
    """mamba_ssm's gated RMSNorm: normalise x * silu(z) (or normalise, then gate, with
    ``norm_before_gate``; without z, normalise) over groups of ``group_size`` channels, in float32."""

    def __init__(self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=False):
        super().__init__()
        self.eps, self.norm_before_gate = eps, norm_before_gate
        self.group_size = group_size or hidden_size
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x, z=None):
        dtype = x.dtype
        compute = torch.promote_types(dtype, torch.float32)
        x = x.to(compute)
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(z.to(compute))
        groups = x.unflatten(-1, (-1, self.group_size))
        out = F.rms_norm(groups, (self.group_size,), eps=self.eps).flatten(-2) * self.weight
        if z is not None and self.norm_before_gate:
            out = out * F.silu(z.to(compute))
        return out.to(dtype)


class Mamba2Mixer(nn.Module):
    """in_proj -> (z, xBC, dt); causal conv + SiLU over xBC; SSD; gated norm with z -> out_proj.

    With ``d_ssm`` < expand * d_model the remaining channels form a gated MLP beside the SSM
    (mamba_ssm's z0 and x0), as in mamba_ssm."""

    def __init__(
        self,
        d_model,
        d_state,
        d_conv,
        conv_init,
        expand,
        headdim,
        d_ssm,
        ngroups,
        A_init_range,
        D_has_hdim,
        rmsnorm,
        norm_before_gate,
        dt_min,
        dt_max,
        dt_init_floor,
        dt_limit,
        bias,
        conv_bias,
        chunk_size,
    ):
        super().__init__()
        self.d_state, self.d_conv, self.headdim, self.ngroups = d_state, d_conv, headdim, ngroups
        self.d_inner = expand * d_model
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        self.nheads = self.d_ssm // headdim
        self.d_mlp = self.d_inner - self.d_ssm
        self.chunk_size, self.dt_limit = chunk_size, tuple(dt_limit)
        self.D_has_hdim, self.rmsnorm = D_has_hdim, rmsnorm
        self.xbc_sizes = [self.d_ssm, ngroups * d_state, ngroups * d_state]
        self.conv_dim = sum(self.xbc_sizes)
        # Order: [z0, x0, z, x, B, C, dt]
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=bias)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1, bias=conv_bias
        )
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads))
        if rmsnorm:
            self.norm = RMSNormGated(
                self.d_ssm, eps=1e-5, group_size=self.d_ssm // ngroups, norm_before_gate=norm_before_gate
            )
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self._init_ssm(dt_min, dt_max, dt_init_floor, A_init_range)

    @torch.no_grad()
    def _init_ssm(self, dt_min, dt_max, dt_init_floor, A_init_range):
        self.dt_bias.copy_(dt_bias_init(self.nheads, dt_min, dt_max, dt_init_floor))
        low, high = A_init_range
        if not 0 < low <= high:
            raise ValueError(f"ssm_cfg.A_init_range={A_init_range!r} must satisfy 0 < low <= high")
        self.A_log.copy_(torch.log(torch.empty(self.nheads).uniform_(low, high)))
        self.dt_bias._no_weight_decay = self.A_log._no_weight_decay = self.D._no_weight_decay = True

    def _split(self, zxbcdt: torch.Tensor, dim: int):
        sizes = [self.d_mlp, self.d_mlp, self.d_ssm, self.conv_dim, self.nheads]
        return zxbcdt.split(sizes, dim=dim)

    def _ssd_inputs(self, xBC, dt, z):
        """(x, dt, A, B, C) for the SSD from the conv's output (..., conv_dim), split into heads
        and groups; the same for a sequence (forward) and one token (step)."""
        x, B, C = xBC.split(self.xbc_sizes, dim=-1)
        groups = (self.ngroups, self.d_state)
        return (
            x.unflatten(-1, (self.nheads, self.headdim)),
            dt,
            self._A(),
            B.unflatten(-1, groups),
            C.unflatten(-1, groups),
        )

    def _A(self) -> torch.Tensor:
        """The per-head decay rates (nheads,), negative, in float32 (as mamba_ssm's Mamba2)."""
        return -torch.exp(self.A_log.float())

    def _D(self) -> torch.Tensor:
        """D per head (nheads,), or per channel (nheads, headdim) with D_has_hdim."""
        return self.D.unflatten(0, (self.nheads, self.headdim)) if self.D_has_hdim else self.D

    def _ssd_options(self, z):
        """D, the SiLU(z) gate when there is no gated norm, dt's bias, softplus and limits."""
        return dict(
            D=self._D(),
            z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)),
            dt_bias=self.dt_bias,
            dt_softplus=True,
            dt_limit=self.dt_limit,
        )

    def _output(self, y, z, z0, x0):
        """y, z, z0, x0 (..., channels): the gate (or gated norm), the MLP part, out_proj."""
        if self.rmsnorm:
            y = self.norm(y, z)
        if self.d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)

    def forward(self, hidden: torch.Tensor, cache=None) -> torch.Tensor:
        """hidden (batch, L, d_model); a cache, if given, receives the final conv and SSM state.
        Without a cache, one fused op where the backend has one (cuda: mamba_ssm's
        mamba_split_conv1d_scan_combined, as its Mamba2's fast path), else op by op."""
        zxbcdt = self.in_proj(hidden)
        fused = fused_mamba2_inner(zxbcdt) if cache is None else None
        if fused is not None:
            return fused(
                zxbcdt,
                self.conv1d.weight.squeeze(1),
                self.conv1d.bias,
                self.dt_bias,
                self._A(),
                self._D(),
                chunk_size=self.chunk_size,
                dt_limit=self.dt_limit,
                headdim=self.headdim,
                ngroups=self.ngroups,
                rmsnorm_weight=self.norm.weight if self.rmsnorm else None,
                rmsnorm_eps=self.norm.eps if self.rmsnorm else 1e-6,
                norm_before_gate=self.norm.norm_before_gate if self.rmsnorm else False,
                out_proj_weight=self.out_proj.weight,
                out_proj_bias=self.out_proj.bias,
            )
        length = hidden.shape[1]
        z0, x0, z, xBC, dt = self._split(zxbcdt, dim=-1)
        xBC = xBC.transpose(1, 2)  # (batch, conv_dim, L): the conv kernels' layout
        if cache is not None:
            cache.conv_state.copy_(F.pad(xBC, (self.d_conv - length, 0)))
        xBC = causal_conv1d(xBC, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        y = ssd_chunk_scan(
            *self._ssd_inputs(xBC.transpose(1, 2), dt, z),
            chunk_size=self.chunk_size,
            return_final_state=cache is not None,
            **self._ssd_options(z),
        )
        if cache is not None:
            y, final_state = y
            cache.ssm_state.copy_(final_state)
        return self._output(y.flatten(-2), z, z0, x0)

    def step(self, hidden: torch.Tensor, cache) -> torch.Tensor:
        """hidden (batch, d_model) for one token; advances the cache in place."""
        z0, x0, z, xBC, dt = self._split(self.in_proj(hidden), dim=-1)
        xBC = causal_conv1d_update(
            xBC, cache.conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu"
        )
        y = ssd_state_update(cache.ssm_state, *self._ssd_inputs(xBC, dt, z), **self._ssd_options(z))
        return self._output(y.flatten(-2), z, z0, x0)

    def allocate_cache(self, batch_size: int, max_seqlen: int, weight: torch.Tensor):
        return MambaLayerCache(
            conv_state=weight.new_zeros(batch_size, self.conv_dim, self.d_conv),
            ssm_state=weight.new_zeros(
                batch_size,
                self.nheads,
                self.headdim,
                self.d_state,
                dtype=torch.promote_types(weight.dtype, torch.float32),
            ),
        )
