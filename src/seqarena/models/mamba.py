"""Mamba language models in plain PyTorch, parameter-for-parameter mamba_ssm's MambaLMHeadModel.

Every family that MambaLMHeadModel builds: Mamba-1 blocks, Mamba-2 blocks (``ssm_cfg.layer =
"Mamba2"``, see mamba2.py), a gated MLP after each mixer (``d_intermediate``), and hybrids with
attention layers at chosen depths (``attn_layer_idx``/``attn_cfg``, see mha.py). One more, ours:
``ssm_cfg.layer = "MambaLTI"``, the paper's non-selective ablation (``LTIMixer``), which mamba_ssm
does not build.
Parameter names, shapes and initialisation equal mamba_ssm's, and ``config.json`` carries
mamba_ssm's ``MambaConfig`` fields only, so a checkpoint moves between seqarena and
mamba_ssm in both directions and the published ``state-spaces/mamba-*`` and ``mamba2-*``
weights load. The sequence mixing goes through ``seqarena.ops``, which picks the fastest
backend available (mamba_ssm's CUDA and Triton kernels on a GPU, ours on a CPU).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from seqarena.models.base import GPT_NEOX_VOCAB, LanguageModel, MambaLayerCache, dt_bias_init, pad_vocab
from seqarena.models.mamba2 import (
    MAMBA2_DEFAULTS,
    MAMBA2_IGNORED,
    Mamba2Mixer,
    check_mamba2_shape,
    mamba2_kept_per_token,
)
from seqarena.models.mamba3 import (
    MAMBA3_DEFAULTS,
    MAMBA3_IGNORED,
    Mamba3Mixer,
    check_mamba3_shape,
    mamba3_kept_per_token,
)
from seqarena.models.mha import MHA, MHA_DEFAULTS, AttentionCache, check_mha_shape, mha_kept_per_token
from seqarena.ops import (
    causal_conv1d,
    causal_conv1d_update,
    fused_mamba_inner,
    scan_continues,
    selective_scan,
    selective_state_update,
)

# mamba_ssm.modules.mamba_simple.Mamba's keyword arguments and defaults.
SSM_DEFAULTS = dict(
    d_state=16,
    d_conv=4,
    expand=2,
    dt_rank="auto",
    dt_min=0.001,
    dt_max=0.1,
    dt_init="random",
    dt_scale=1.0,
    dt_init_floor=1e-4,
    conv_bias=True,
    bias=False,
)
# Keys mamba_ssm accepts in ssm_cfg that change no weight or result here.
SSM_IGNORED = frozenset({"use_fast_path"})


@dataclass
class MambaConfig:
    """mamba_ssm's ``MambaConfig``, field for field (what state-spaces checkpoints carry)."""

    d_model: int = 768
    d_intermediate: int = 0
    n_layer: int = 24
    vocab_size: int = GPT_NEOX_VOCAB
    ssm_cfg: dict = field(default_factory=dict)
    attn_layer_idx: list = field(default_factory=list)
    attn_cfg: dict = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True

    def __post_init__(self):
        """Every mistake mamba_ssm would make an assertion (or a wrong model) of, named by field."""
        if self.layer not in SSM_LAYERS:
            raise ValueError(f"ssm_cfg.layer={self.layer!r}: unknown; known: {sorted(SSM_LAYERS)}")
        layer = SSM_LAYERS[self.layer]
        unknown = set(self.ssm_cfg) - set(layer.defaults) - layer.ignored - {"layer"}
        if unknown:
            raise ValueError(f"unknown ssm_cfg keys for layer {self.layer}: {sorted(unknown)}")
        if layer.check_shape is not None:
            layer.check_shape(self.d_model, self.ssm)
        if self.d_intermediate < 0:
            raise ValueError(f"d_intermediate={self.d_intermediate} must be 0 (no MLP) or positive")
        outside = [i for i in self.attn_layer_idx if not 0 <= i < self.n_layer]
        if outside:
            raise ValueError(
                f"attn_layer_idx {outside} outside the {self.n_layer} layers (0..{self.n_layer - 1})"
            )
        if self.attn_layer_idx:
            unknown = set(self.attn_cfg) - set(MHA_DEFAULTS) - {"num_heads"}
            if unknown:
                raise ValueError(f"unknown attn_cfg keys: {sorted(unknown)}")
            check_mha_shape(self.d_model, self.attn_cfg)

    @classmethod
    def from_dict(cls, data: dict) -> "MambaConfig":
        """Read a config.json (mamba_ssm 1.x files lack the 2.x fields: their defaults apply)."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown Mamba config keys: {sorted(unknown)}")
        return cls(**data)

    @property
    def layer(self) -> str:
        return self.ssm_cfg.get("layer", "Mamba1")

    @property
    def ssm(self) -> dict:
        """The SSM mixer's keyword arguments, defaults filled in."""
        defaults = SSM_LAYERS[self.layer].defaults
        return {**defaults, **{k: v for k, v in self.ssm_cfg.items() if k in defaults}}

    @property
    def attn(self) -> dict:
        """The attention mixer's keyword arguments, defaults filled in."""
        return {**MHA_DEFAULTS, **self.attn_cfg}

    block_inputs = 2  # what a checkpointed block keeps: its hidden states and the residual

    def kept_per_token(self) -> list[float]:
        """Per layer, the elements its block keeps per token for the backward pass on the GPU path:
        the norm's input and output, the mixer's, and the gated MLP's when there is one."""
        ssm = SSM_LAYERS[self.layer].kept_per_token(self.d_model, self.ssm)
        attention = mha_kept_per_token(self.d_model, self.attn) if self.attn_layer_idx else 0
        mlp = 2 * self.d_model + 4 * GatedMLP.width(self.d_intermediate) if self.d_intermediate else 0
        mixers = [attention if i in self.attn_layer_idx else ssm for i in range(self.n_layer)]
        return [2 * self.d_model + mixer + mlp for mixer in mixers]


@dataclass
class MambaCache:
    layers: list[MambaLayerCache | AttentionCache]
    seqlen: torch.Tensor  # () int64: a tensor, so that a step captured as a CUDA graph advances it


def _fp32_or_wider(t: torch.Tensor) -> torch.Tensor:
    """SSM parameters and state are kept in fp32 under bf16/fp16 (as mamba_ssm does), fp64 stays."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class MambaMixer(nn.Module):
    """The selective SSM block: in_proj -> causal conv -> selective scan, gated -> out_proj."""

    def __init__(
        self,
        d_model,
        d_state,
        d_conv,
        expand,
        dt_rank,
        dt_min,
        dt_max,
        dt_init,
        dt_scale,
        dt_init_floor,
        conv_bias,
        bias,
    ):
        super().__init__()
        self.d_state, self.d_conv = d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self._init_ssm(dt_min, dt_max, dt_init, dt_scale, dt_init_floor)

    @torch.no_grad()
    def _init_ssm(self, dt_min, dt_max, dt_init, dt_scale, dt_init_floor):
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', not {dt_init!r}")
        self.dt_proj.bias.copy_(dt_bias_init(self.d_inner, dt_min, dt_max, dt_init_floor))
        self.dt_proj.bias._no_reinit = True  # as mamba_ssm marks it: _init_weights keeps it
        # S4D-real: A = -(1..N) for every channel.
        self.A_log.copy_(torch.log(torch.arange(1.0, self.d_state + 1)).repeat(self.d_inner, 1))
        self.D.fill_(1.0)
        self.A_log._no_weight_decay = self.D._no_weight_decay = True  # as mamba_ssm marks them

    def _conv_weight(self) -> torch.Tensor:
        return self.conv1d.weight.squeeze(1)  # (d_inner, d_conv)

    def forward(
        self, hidden: torch.Tensor, cache: MambaLayerCache | None = None, continuing: bool = False
    ) -> torch.Tensor:
        """hidden (batch, L, d_model); a cache, if given, receives the final conv and SSM state.
        ``continuing``: the chunk continues the sequence whose state the cache holds.

        Activations stay (batch, L, channels), as nn.Linear reads and writes them; the kernels
        take (batch, channels, L) views of them (channels contiguous), so nothing is copied.
        """
        xz = self.in_proj(hidden)
        return self._mix(xz) if cache is None else self.out_proj(self._mix_composed(xz, cache, continuing))

    def _mix(self, xz: torch.Tensor) -> torch.Tensor:
        """in_proj's output to the mixer's output over whole sequences: one fused op where the
        backend has one (cpp; cuda: mamba_ssm's mamba_inner_fn, as its fast path when there is no
        cache), else op by op."""
        fused = fused_mamba_inner(xz)
        if fused is None:
            return self.out_proj(self._mix_composed(xz))
        return fused(
            xz,
            self._conv_weight(),
            self.conv1d.bias,
            self.x_proj.weight,
            self.dt_proj.weight,
            self.out_proj.weight,
            self.out_proj.bias,
            -torch.exp(_fp32_or_wider(self.A_log)),
            _fp32_or_wider(self.D),
            _fp32_or_wider(self.dt_proj.bias),
        )

    def _mix_composed(
        self, xz: torch.Tensor, cache: MambaLayerCache | None = None, continuing: bool = False
    ) -> torch.Tensor:
        """The conv, the selection and the scan op by op, writing the final conv and SSM state
        into the cache, if given."""
        x, z = (t.transpose(1, 2) for t in xz.chunk(2, dim=-1))  # (batch, d_inner, L)
        before = self.d_conv - 1 if continuing else 0  # the conv's window reaches into the cached inputs
        if continuing:
            x = torch.cat([cache.conv_state[..., 1:], x], dim=-1)
        if cache is not None:
            cache.conv_state.copy_(F.pad(x, (self.d_conv - x.shape[-1], 0)))
        x = causal_conv1d(x, self._conv_weight(), self.conv1d.bias, activation="silu")[..., before:]
        delta, B, C, delta_bias = self._ssm_inputs(x)
        A = -torch.exp(_fp32_or_wider(self.A_log))
        y = selective_scan(
            x,
            delta,
            A,
            B,
            C,
            _fp32_or_wider(self.D),
            z=z,
            delta_bias=_fp32_or_wider(delta_bias),
            delta_softplus=True,
            return_last_state=cache is not None,
            initial_state=cache.ssm_state if continuing else None,
        )
        if cache is not None:
            y, last_state = y
            cache.ssm_state.copy_(last_state)
        return y.transpose(1, 2)

    def _ssm_inputs(self, x: torch.Tensor):
        """(delta, B, C, delta_bias) of the scan from the conv's output x (batch, d_inner, L): the
        selection, delta (batch, d_inner, L), B and C (batch, d_state, L), all computed from x."""
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # the bias is added in the scan
        return delta.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2), self.dt_proj.bias

    def step(self, hidden: torch.Tensor, cache: MambaLayerCache) -> torch.Tensor:
        """hidden (batch, d_model) for one token; advances the cache in place."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = causal_conv1d_update(x, cache.conv_state, self._conv_weight(), self.conv1d.bias, "silu")
        return self.out_proj(self._state_update(x, z, cache.ssm_state))

    def _state_update(self, x: torch.Tensor, z: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """One token of the scan: x, z (batch, d_inner) -> gated y; advances state in place."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], -1)
        return selective_state_update(
            state,
            x,
            F.linear(dt, self.dt_proj.weight),
            -torch.exp(_fp32_or_wider(self.A_log)),
            B,
            C,
            _fp32_or_wider(self.D),
            z=z,
            dt_bias=_fp32_or_wider(self.dt_proj.bias),
            dt_softplus=True,
        )

    def allocate_cache(self, batch_size: int, max_seqlen: int, weight: torch.Tensor) -> MambaLayerCache:
        return MambaLayerCache(
            conv_state=weight.new_zeros(batch_size, self.d_inner, self.d_conv),
            ssm_state=weight.new_zeros(
                batch_size, self.d_inner, self.d_state, dtype=torch.promote_types(weight.dtype, torch.float32)
            ),
        )


class LTIMixer(MambaMixer):
    """The paper's Table 1 ablation "S4 inside the Mamba block": the same block (in_proj, conv, SiLU
    gate, out_proj) around a time-invariant SSM, S4D-real-like: delta = softplus(dt_bias), B and C
    learned per channel, none of them computed from the input (no x_proj). The scan takes them
    through its time-invariant path (B, C of shape (d_inner, d_state)).

    Initialisation as Mamba's where they share a parameter (A, D, dt_bias's range); B ones and C
    normal with variance 1/d_state, as S4D draws them."""

    def __init__(self, d_model, d_state, **ssm):
        super().__init__(d_model, d_state, **ssm)
        self.dt_bias = nn.Parameter(self.dt_proj.bias.detach().clone())
        del self.x_proj, self.dt_proj
        self.B = nn.Parameter(torch.ones(self.d_inner, d_state))
        self.C = nn.Parameter(torch.randn(self.d_inner, d_state) * d_state**-0.5)
        for p in (self.dt_bias, self.B, self.C):  # SSM parameters, as A_log and D: no weight decay
            p._no_weight_decay = True

    def _ssm_inputs(self, x: torch.Tensor):
        return x.new_zeros(x.shape), self.B, self.C, self.dt_bias

    def _mix(self, xz: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self._mix_composed(xz))  # B and C per channel: the scan's time-invariant path

    def _state_update(self, x: torch.Tensor, z: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """The time-invariant recurrence for one token, in the state's precision (the
        selective_state_update kernels take B and C per sequence, not per channel)."""
        compute = state.dtype
        dt = F.softplus(self.dt_bias.to(compute))[:, None]  # (d_inner, 1)
        xc = x.to(compute)
        A = -torch.exp(self.A_log.to(compute))
        state.copy_(state * torch.exp(dt * A) + dt * self.B.to(compute) * xc[..., None])
        y = (state * self.C.to(compute)).sum(-1) + xc * self.D.to(compute)
        return (y * F.silu(z.to(compute))).to(x.dtype)


def mamba_kept_per_token(d_model: int, cfg: dict) -> float:
    """Elements the mixer keeps for the backward pass per token, as mamba_ssm's Mamba-1 path does:
    in_proj's output (x and z), the conv's output, x_proj's output (dt, B, C), the discretised dt
    and the scan's output."""
    d_inner = cfg["expand"] * d_model
    dt_rank = math.ceil(d_model / 16) if cfg["dt_rank"] == "auto" else cfg["dt_rank"]
    return 2 * d_inner + d_inner + (dt_rank + 2 * cfg["d_state"]) + d_inner + d_inner


@dataclass(frozen=True)
class SSMLayer:
    """A sequence mixer that ``ssm_cfg.layer`` names: its module, its keyword arguments' defaults,
    the keys it accepts and ignores, the elements it keeps per token for the backward pass (for the
    memory estimate), and a check of its shapes against d_model."""

    mixer: type[nn.Module]
    defaults: dict
    kept_per_token: Callable[[int, dict], float]
    ignored: frozenset = frozenset()
    check_shape: Callable[[int, dict], None] | None = None


# mamba_ssm's ``ssm_layer_map``: a new mixer is one entry. MambaLTI is ours: the paper's Table 1
# ablation (not a mamba_ssm layer), Mamba-1's block and arguments.
SSM_LAYERS = {
    "Mamba1": SSMLayer(MambaMixer, SSM_DEFAULTS, mamba_kept_per_token, SSM_IGNORED),
    "Mamba2": SSMLayer(
        Mamba2Mixer, MAMBA2_DEFAULTS, mamba2_kept_per_token, MAMBA2_IGNORED, check_mamba2_shape
    ),
    "MambaLTI": SSMLayer(LTIMixer, SSM_DEFAULTS, mamba_kept_per_token, SSM_IGNORED),
    "Mamba3": SSMLayer(
        Mamba3Mixer, MAMBA3_DEFAULTS, mamba3_kept_per_token, MAMBA3_IGNORED, check_mamba3_shape
    ),
}


class GatedMLP(nn.Module):
    """mamba_ssm's GatedMLP (``d_intermediate``): fc1 to value and gate, value * silu(gate), fc2."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        hidden = self.width(hidden)
        self.fc1 = nn.Linear(d_model, 2 * hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d_model, bias=False)

    @staticmethod
    def width(hidden: int, multiple_of: int = 128) -> int:
        """fc2's input width: ``d_intermediate`` rounded up to a multiple of 128, as mamba_ssm does."""
        return -(-hidden // multiple_of) * multiple_of

    def forward(self, x):
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * F.silu(gate))


class Block(nn.Module):
    """mamba_ssm's block order: add the residual, normalise, mix; then, with an MLP, add,
    normalise, MLP (the residual is returned beside the output)."""

    def __init__(self, config: MambaConfig, layer_idx: int):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = _norm(config)
        if layer_idx in config.attn_layer_idx:
            self.mixer = MHA(config.d_model, **config.attn)
        else:
            self.mixer = SSM_LAYERS[config.layer].mixer(config.d_model, **config.ssm)
        if config.d_intermediate > 0:
            self.norm2 = _norm(config)
            self.mlp = GatedMLP(config.d_model, config.d_intermediate)
        else:
            self.mlp = None

    def _add_norm(self, norm, hidden, residual):
        residual = hidden if residual is None else hidden + residual
        normed = norm(residual.to(norm.weight.dtype))
        if self.residual_in_fp32:
            residual = _fp32_or_wider(residual)
        return normed, residual

    def _mlp(self, hidden, residual):
        if self.mlp is None:
            return hidden, residual
        normed, residual = self._add_norm(self.norm2, hidden, residual)
        return self.mlp(normed), residual

    def forward(self, hidden, residual=None, cache=None, continuing=False):
        normed, residual = self._add_norm(self.norm, hidden, residual)
        mixed = self.mixer(normed, cache, continuing=True) if continuing else self.mixer(normed, cache)
        return self._mlp(mixed, residual)

    def step(self, hidden, residual, cache):
        normed, residual = self._add_norm(self.norm, hidden, residual)
        return self._mlp(self.mixer.step(normed, cache), residual)


def _norm(config: MambaConfig) -> nn.Module:
    return nn.RMSNorm(config.d_model, eps=1e-5) if config.rms_norm else nn.LayerNorm(config.d_model, eps=1e-5)


class MixerModel(nn.Module):
    """mamba_ssm's ``backbone``: embedding, blocks, final norm."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        vocab = pad_vocab(config.vocab_size, config.pad_vocab_size_multiple)
        self.embedding = nn.Embedding(vocab, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = _norm(config)

    def forward(self, input_ids, cache: MambaCache | None = None, continuing: bool = False):
        hidden, residual = self.embedding(input_ids), None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual, cache.layers[i] if cache else None, continuing)
        return self.norm_f((hidden + residual).to(self.norm_f.weight.dtype))

    def step(self, tokens, cache: MambaCache):
        hidden, residual = self.embedding(tokens), None
        for layer, layer_cache in zip(self.layers, cache.layers, strict=True):
            hidden, residual = layer.step(hidden, residual, layer_cache)
        return self.norm_f((hidden + residual).to(self.norm_f.weight.dtype))


def _continues(mixer: nn.Module, weight: torch.Tensor) -> bool:
    """Whether the mixer's whole-sequence form can start from a cache's states."""
    if isinstance(mixer, MambaMixer):
        return scan_continues(weight)
    return isinstance(mixer, Mamba3Mixer)


class Mamba(LanguageModel):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.backbone = MixerModel(config)
        self.lm_head = nn.Linear(config.d_model, self.backbone.embedding.num_embeddings, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def _init_weights(self, module):
        """mamba_ssm's ``_init_weights``: zero biases (but dt_proj's), embedding std 0.02, and
        every mixer's ``out_proj`` and MLP's ``fc2`` re-drawn with PyTorch's default and scaled by
        1/sqrt(n_layer) (MambaLMHeadModel's final pass, which MixerModel's 1/sqrt(2 n_layer)
        for MLP models does not survive)."""
        if isinstance(module, nn.Linear) and module.bias is not None:
            if not getattr(module.bias, "_no_reinit", False):
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        for name in ("out_proj", "fc2"):
            residual_out = getattr(module, name, None)
            if isinstance(residual_out, nn.Linear):
                nn.init.kaiming_uniform_(residual_out.weight, a=math.sqrt(5))
                with torch.no_grad():
                    residual_out.weight /= math.sqrt(self.config.n_layer)

    def forward(
        self, input_ids: torch.Tensor, cache: MambaCache | None = None, num_last_tokens: int = 0
    ) -> torch.Tensor:
        """input_ids (batch, L) -> logits (batch, L, padded vocab); ``num_last_tokens`` > 0: logits of
        the last positions only (mamba_ssm's argument), as a prefill needs.

        With a cache that already holds a sequence, the input continues it: through the chunked
        algorithms from the cached states where every layer's can start from them (Mamba-3's always,
        Mamba-1's and the LTI ablation's on a scan backend that takes an initial state: cpp, torch);
        else token by token through ``step``."""
        if cache is not None and cache.seqlen > 0:
            weight = self.lm_head.weight
            if all(_continues(layer.mixer, weight) for layer in self.backbone.layers):
                hidden = self.backbone(input_ids, cache, continuing=True)
                cache.seqlen += input_ids.shape[1]
                return self.lm_head(hidden[:, -num_last_tokens:])
            steps = [self.step(t, cache) for t in input_ids.unbind(1)]
            return torch.stack(steps, dim=1)[:, -num_last_tokens:]
        hidden = self.backbone(input_ids, cache)
        if cache is not None:
            cache.seqlen += input_ids.shape[1]
        return self.lm_head(hidden[:, -num_last_tokens:])

    def mixer_flops_per_token(self, seq_len: int) -> float:
        """Beyond the weights, forward + backward (three times the forward): the selective scan's
        about 9 FLOPs per channel and state (the paper's 9BLDN); SSD's within-chunk products
        (C.B and scores times x: 2 Q (N + headdim) per head, Q the chunk) and its state in and out
        (4 N per channel), Mamba-3's the same with R rows a step (MIMO's rank); attention's scores
        and values, 4 * heads * head_dim * T."""
        total = 0.0
        for layer in self.backbone.layers:
            mixer = layer.mixer
            if isinstance(mixer, MHA):
                total += 4.0 * mixer.num_heads * mixer.head_dim * seq_len
            elif isinstance(mixer, Mamba2Mixer):
                chunk = min(mixer.chunk_size, seq_len)
                total += 2.0 * mixer.nheads * (mixer.d_state + mixer.headdim) * chunk
                total += 4.0 * mixer.d_ssm * mixer.d_state
            elif isinstance(mixer, Mamba3Mixer):  # as the SSD's, with R rows per step
                chunk = min(mixer.chunk_size, seq_len)
                total += 2.0 * mixer.nheads * mixer.rank**2 * (mixer.d_state + mixer.headdim) * chunk
                total += 4.0 * mixer.rank * mixer.d_inner * mixer.d_state
            else:
                total += 9.0 * mixer.d_inner * mixer.d_state
        return 3 * total

    def allocate_cache(self, batch_size: int, max_seqlen: int) -> MambaCache:
        """SSM layers keep a fixed-size state; attention layers a key/value cache of max_seqlen."""
        w = self.lm_head.weight
        return MambaCache(
            [layer.mixer.allocate_cache(batch_size, max_seqlen, w) for layer in self.backbone.layers],
            seqlen=torch.zeros((), dtype=torch.long, device=w.device),
        )

    def step(self, tokens: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """tokens (batch,) -> logits (batch, padded vocab); advances the cache."""
        hidden = self.backbone.step(tokens, cache)
        cache.seqlen += 1
        return self.lm_head(hidden)
