"""Mamba language model in plain PyTorch, parameter-for-parameter mamba_ssm's MambaLMHeadModel.

Parameter names, shapes and initialisation equal mamba_ssm's, and ``config.json`` carries
mamba_ssm's ``MambaConfig`` fields only, so a checkpoint moves between seqarena and
mamba_ssm in both directions and the published ``state-spaces/mamba-*`` weights load.
The sequence mixing goes through ``seqarena.ops``, which picks the fastest scan backend
available (mamba_ssm's CUDA kernels on a GPU, ours on a CPU).
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from seqarena.models.base import LanguageModel, pad_vocab
from seqarena.ops import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update

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
SSM_IGNORED = {"use_fast_path"}


@dataclass
class MambaConfig:
    """mamba_ssm's ``MambaConfig``, field for field (what state-spaces checkpoints carry)."""

    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50277
    ssm_cfg: dict = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True

    def __post_init__(self):
        cfg = dict(self.ssm_cfg)
        layer = cfg.pop("layer", "Mamba1")
        if layer != "Mamba1":
            raise ValueError(f"ssm_cfg.layer={layer!r}: only Mamba1 blocks are supported")
        unknown = set(cfg) - set(SSM_DEFAULTS) - SSM_IGNORED
        if unknown:
            raise ValueError(f"unknown ssm_cfg keys: {sorted(unknown)}")

    @classmethod
    def from_dict(cls, data: dict) -> "MambaConfig":
        """Read a config.json; newer mamba_ssm fields are accepted when they add nothing."""
        data = dict(data)
        if data.pop("d_intermediate", 0):
            raise ValueError("d_intermediate > 0 (an MLP after each mixer) is not supported")
        if data.pop("attn_layer_idx", None):
            raise ValueError("attn_layer_idx (hybrid attention layers) is not supported")
        data.pop("attn_cfg", None)
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown Mamba config keys: {sorted(unknown)}")
        return cls(**data)

    @property
    def ssm(self) -> dict:
        """The mixer's keyword arguments, defaults filled in."""
        given = {k: v for k, v in self.ssm_cfg.items() if k in SSM_DEFAULTS}
        return {**SSM_DEFAULTS, **given}


@dataclass
class MambaLayerCache:
    conv_state: torch.Tensor  # (batch, d_inner, d_conv): the last d_conv conv inputs
    ssm_state: torch.Tensor  # (batch, d_inner, d_state)


@dataclass
class MambaCache:
    layers: list[MambaLayerCache]
    seqlen: int = 0


def _fp32_or_wider(t: torch.Tensor) -> torch.Tensor:
    """SSM parameters and state are kept in fp32 under bf16/fp16 (as mamba_ssm does), fp64 stays."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _linear_channels_first(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear`` applied to x (batch, in_features, L), giving (batch, out_features, L)."""
    out = linear.weight @ x
    return out if linear.bias is None else out + linear.bias[:, None]


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
        # dt log-uniform in [dt_min, dt_max]; the bias is its inverse softplus.
        log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True  # as mamba_ssm marks it: _init_weights keeps it
        # S4D-real: A = -(1..N) for every channel.
        self.A_log.copy_(torch.log(torch.arange(1.0, self.d_state + 1)).repeat(self.d_inner, 1))
        self.D.fill_(1.0)
        self.A_log._no_weight_decay = self.D._no_weight_decay = True  # as mamba_ssm marks them

    def _conv_weight(self) -> torch.Tensor:
        return self.conv1d.weight.squeeze(1)  # (d_inner, d_conv)

    def forward(self, hidden: torch.Tensor, cache: MambaLayerCache | None = None) -> torch.Tensor:
        """hidden (batch, L, d_model); a cache, if given, receives the final conv and SSM state.

        Inside, activations are (batch, channels, L), the layout the kernels read: the
        projections are written W @ x, so no activation is transposed into a copy.
        """
        length = hidden.shape[1]
        xz = _linear_channels_first(self.in_proj, hidden.transpose(1, 2))  # (batch, 2 d_inner, L)
        x, z = xz.chunk(2, dim=1)
        if cache is not None:
            cache.conv_state.copy_(F.pad(x, (self.d_conv - length, 0)))
        x = causal_conv1d(x, self._conv_weight(), self.conv1d.bias, activation="silu")
        dt, B, C = (self.x_proj.weight @ x).split([self.dt_rank, self.d_state, self.d_state], dim=1)
        y = selective_scan(
            x,
            self.dt_proj.weight @ dt,  # (batch, d_inner, L); the bias is added in the scan
            -torch.exp(_fp32_or_wider(self.A_log)),
            B,
            C,
            _fp32_or_wider(self.D),
            z=z,
            delta_bias=_fp32_or_wider(self.dt_proj.bias),
            delta_softplus=True,
            return_last_state=cache is not None,
        )
        if cache is not None:
            y, last_state = y
            cache.ssm_state.copy_(last_state)
        return _linear_channels_first(self.out_proj, y).transpose(1, 2)

    def step(self, hidden: torch.Tensor, cache: MambaLayerCache) -> torch.Tensor:
        """hidden (batch, d_model) for one token; advances the cache in place."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = causal_conv1d_update(x, cache.conv_state, self._conv_weight(), self.conv1d.bias, "silu")
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], -1)
        y = selective_state_update(
            cache.ssm_state,
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
        return self.out_proj(y)


class Block(nn.Module):
    """mamba_ssm's block order: add the residual, normalise, mix (the residual is returned)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.mixer = MambaMixer(config.d_model, **config.ssm)
        self.norm = _norm(config)

    def _add_norm(self, hidden, residual):
        residual = hidden if residual is None else hidden + residual
        normed = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = _fp32_or_wider(residual)
        return normed, residual

    def forward(self, hidden, residual=None, cache: MambaLayerCache | None = None):
        normed, residual = self._add_norm(hidden, residual)
        return self.mixer(normed, cache), residual

    def step(self, hidden, residual, cache: MambaLayerCache):
        normed, residual = self._add_norm(hidden, residual)
        return self.mixer.step(normed, cache), residual


def _norm(config: MambaConfig) -> nn.Module:
    return nn.RMSNorm(config.d_model, eps=1e-5) if config.rms_norm else nn.LayerNorm(config.d_model, eps=1e-5)


class MixerModel(nn.Module):
    """mamba_ssm's ``backbone``: embedding, blocks, final norm."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        vocab = pad_vocab(config.vocab_size, config.pad_vocab_size_multiple)
        self.embedding = nn.Embedding(vocab, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = _norm(config)

    def forward(self, input_ids, cache: MambaCache | None = None):
        hidden, residual = self.embedding(input_ids), None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual, cache.layers[i] if cache else None)
        return self.norm_f((hidden + residual).to(self.norm_f.weight.dtype))

    def step(self, tokens, cache: MambaCache):
        hidden, residual = self.embedding(tokens), None
        for layer, layer_cache in zip(self.layers, cache.layers, strict=True):
            hidden, residual = layer.step(hidden, residual, layer_cache)
        return self.norm_f((hidden + residual).to(self.norm_f.weight.dtype))


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
        """mamba_ssm's ``_init_weights``: zero biases (but dt_proj's), embedding std 0.02,
        out_proj re-drawn with PyTorch's default and scaled by 1/sqrt(n_layer)."""
        if isinstance(module, nn.Linear) and module.bias is not None:
            if not getattr(module.bias, "_no_reinit", False):
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, MambaMixer):
            nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                module.out_proj.weight /= math.sqrt(self.config.n_layer)

    def forward(self, input_ids: torch.Tensor, cache: MambaCache | None = None) -> torch.Tensor:
        """input_ids (batch, L) -> logits (batch, L, padded vocab)."""
        if cache is not None and cache.seqlen > 0:  # continuing a sequence: token by token
            return torch.stack([self.step(t, cache) for t in input_ids.unbind(1)], dim=1)
        hidden = self.backbone(input_ids, cache)
        if cache is not None:
            cache.seqlen += input_ids.shape[1]
        return self.lm_head(hidden)

    def mixer_flops_per_token(self, seq_len: int) -> float:
        """The selective scan: about 9 FLOPs per channel and state forward (the paper's 9BLDN),
        three times that with the backward; it does not grow with seq_len."""
        mixer = self.backbone.layers[0].mixer
        return 3 * 9.0 * self.config.n_layer * mixer.d_inner * mixer.d_state

    def allocate_cache(self, batch_size: int, max_seqlen: int) -> MambaCache:
        """The recurrent state is fixed-size: max_seqlen does not matter."""
        w = self.lm_head.weight
        layers = []
        for layer in self.backbone.layers:
            mixer = layer.mixer
            layers.append(
                MambaLayerCache(
                    conv_state=w.new_zeros(batch_size, mixer.d_inner, mixer.d_conv),
                    ssm_state=w.new_zeros(
                        batch_size,
                        mixer.d_inner,
                        mixer.d_state,
                        dtype=torch.promote_types(w.dtype, torch.float32),
                    ),
                )
            )
        return MambaCache(layers)

    def step(self, tokens: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """tokens (batch,) -> logits (batch, padded vocab); advances the cache."""
        hidden = self.backbone.step(tokens, cache)
        cache.seqlen += 1
        return self.lm_head(hidden)
