"""The attention layer of mamba_ssm's hybrid models (``attn_layer_idx``): its ``MHA``, in plain PyTorch.

Parameter for parameter mamba_ssm's ``MHA``: a fused ``in_proj`` for q, k and v (grouped-query
heads with ``num_heads_kv``), an optional depthwise causal conv over qkv, rotary embeddings
on the first ``rotary_emb_dim`` channels of each head (flash_attn's ``RotaryEmbedding``), an
optional gated MLP computed beside attention (``mlp_dim``) and ``out_proj``. Decoding keeps a
key/value cache.

One difference from mamba_ssm 2.3, on purpose: with ``d_conv`` > 0 its prefill stores the
conv's *outputs* as the conv state, so decoding after a prompt departs from the full forward;
here the state holds the conv's inputs, and decoding equals the full forward.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqarena.models.transformer import rotary_angles, rotate
from seqarena.ops import causal_conv1d, causal_conv1d_update

# mamba_ssm.modules.mha.MHA's keyword arguments and defaults (num_heads has none).
MHA_DEFAULTS = dict(
    num_heads_kv=None,
    head_dim=None,
    mlp_dim=0,
    qkv_proj_bias=True,
    out_proj_bias=True,
    softmax_scale=None,
    causal=False,
    d_conv=0,
    rotary_emb_dim=0,
    rotary_emb_base=10000.0,
    rotary_emb_interleaved=False,
)


def check_mha_shape(d_model: int, cfg: dict) -> None:
    """Raise, naming the field, where mamba_ssm's MHA would fail an assertion."""
    if "num_heads" not in cfg:
        raise ValueError("attn_cfg.num_heads is required")
    heads, heads_kv = cfg["num_heads"], cfg.get("num_heads_kv") or cfg["num_heads"]
    if heads % heads_kv:
        raise ValueError(f"attn_cfg.num_heads_kv={heads_kv} does not divide num_heads={heads}")
    if cfg.get("head_dim") is None and d_model % heads:
        raise ValueError(f"attn_cfg.num_heads={heads} does not divide d_model={d_model} (set head_dim)")
    head_dim = cfg.get("head_dim") or d_model // heads
    rotary = cfg.get("rotary_emb_dim", 0)
    if rotary % 2 or rotary > head_dim:
        raise ValueError(f"attn_cfg.rotary_emb_dim={rotary} must be even and at most head_dim={head_dim}")


def mha_kept_per_token(d_model: int, cfg: dict) -> float:
    """Elements kept for the backward pass per token, as FlashAttention keeps them: q, k and v, and
    the output (its per-head log-sum-exp is negligible)."""
    heads, heads_kv = cfg["num_heads"], cfg.get("num_heads_kv") or cfg["num_heads"]
    head_dim = cfg.get("head_dim") or d_model // heads
    return (2 * heads + 2 * heads_kv) * head_dim


@dataclass
class AttentionCache:
    keys: torch.Tensor  # (batch, max_seqlen, num_heads_kv, head_dim)
    values: torch.Tensor
    conv_state: torch.Tensor | None  # (batch, qkv channels, d_conv): the last d_conv conv inputs
    seqlen: torch.Tensor  # () int64: a tensor, so that a step captured as a CUDA graph advances it


class MHA(nn.Module):
    def __init__(
        self,
        d_model,
        num_heads,
        num_heads_kv,
        head_dim,
        mlp_dim,
        qkv_proj_bias,
        out_proj_bias,
        softmax_scale,
        causal,
        d_conv,
        rotary_emb_dim,
        rotary_emb_base,
        rotary_emb_interleaved,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.num_heads_kv = num_heads_kv or num_heads
        self.head_dim = head_dim or d_model // num_heads
        self.mlp_dim = math.ceil(mlp_dim / 256) * 256
        self.softmax_scale, self.causal, self.d_conv = softmax_scale, causal, d_conv
        self.rotary_emb_dim, self.rotary_emb_base = rotary_emb_dim, rotary_emb_base
        self.rotary_emb_interleaved = rotary_emb_interleaved
        self.qkv_dim = self.head_dim * (self.num_heads + 2 * self.num_heads_kv)
        self.in_proj = nn.Linear(d_model, self.qkv_dim + self.mlp_dim, bias=qkv_proj_bias)
        if d_conv > 0:
            self.conv1d = nn.Conv1d(
                self.qkv_dim, self.qkv_dim, d_conv, padding=d_conv - 1, groups=self.qkv_dim
            )
        self.out_proj = nn.Linear(self.head_dim * num_heads + self.mlp_dim // 2, d_model, bias=out_proj_bias)

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of x (batch, L, heads, head_dim) at ``positions`` (L,), on the first
        rotary_emb_dim channels (halves paired, as Transformer++, or neighbours when interleaved)."""
        rd = self.rotary_emb_dim
        cos, sin = (t[:, None] for t in rotary_angles(rd, self.rotary_emb_base, positions))
        rotated, rest = x[..., :rd], x[..., rd:]
        if self.rotary_emb_interleaved:
            x1, x2 = rotated[..., 0::2], rotated[..., 1::2]
            rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).to(x.dtype)
        else:
            rotated = rotate(rotated, cos, sin)
        return torch.cat([rotated, rest], dim=-1)

    def _project(self, hidden):
        """(qkv, gated MLP output or None) from hidden (..., d_model)."""
        qkv = self.in_proj(hidden)
        if self.mlp_dim == 0:
            return qkv, None
        qkv, mlp = qkv.split([self.qkv_dim, self.mlp_dim], dim=-1)
        up, gate = mlp.chunk(2, dim=-1)
        return qkv, up * F.silu(gate)

    def _heads(self, qkv, positions):
        """q, k, v (batch, L, heads, head_dim) of qkv (batch, L, qkv_dim) after the conv, q and k
        rotated at ``positions``."""
        q, k, v = qkv.split(
            [
                self.num_heads * self.head_dim,
                self.num_heads_kv * self.head_dim,
                self.num_heads_kv * self.head_dim,
            ],
            dim=-1,
        )
        q, k, v = (t.unflatten(-1, (-1, self.head_dim)) for t in (q, k, v))
        if self.rotary_emb_dim > 0:
            q, k = self._rotate(q, positions), self._rotate(k, positions)
        return q, k, v

    def _attend(self, q, k, v, mlp, **mask) -> torch.Tensor:
        """q (batch, L, heads, head_dim) over k, v (batch, S, heads_kv, head_dim) -> the layer's
        output (batch, L, d_model); ``mask``: scaled_dot_product_attention's is_causal or attn_mask."""
        repeats = self.num_heads // self.num_heads_kv
        k, v = k.repeat_interleave(repeats, dim=2), v.repeat_interleave(repeats, dim=2)
        context = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=self.softmax_scale, **mask
        ).transpose(1, 2)
        context = context.flatten(-2)
        if mlp is not None:
            context = torch.cat([context, mlp], dim=-1)
        return self.out_proj(context)

    def forward(self, hidden: torch.Tensor, cache: AttentionCache | None = None) -> torch.Tensor:
        """hidden (batch, L, d_model) from position 0; a cache, if given, is filled (prefill)."""
        qkv, mlp = self._project(hidden)
        if self.d_conv > 0:
            qkv_t = qkv.transpose(1, 2)
            if cache is not None:
                cache.conv_state.copy_(F.pad(qkv_t, (self.d_conv - qkv_t.shape[-1], 0)))
            qkv = causal_conv1d(qkv_t, self.conv1d.weight.squeeze(1), self.conv1d.bias).transpose(1, 2)
        length = qkv.shape[1]
        q, k, v = self._heads(qkv, torch.arange(length, device=qkv.device))
        if cache is not None:
            cache.keys[:, :length], cache.values[:, :length] = k, v
            cache.seqlen.fill_(length)
        return self._attend(q, k, v, mlp, is_causal=self.causal)

    def step(self, hidden: torch.Tensor, cache: AttentionCache) -> torch.Tensor:
        """hidden (batch, d_model) for one token; appends it to the cache and attends over the whole
        cache, the positions past it masked (fixed shapes)."""
        qkv, mlp = self._project(hidden)
        if self.d_conv > 0:
            qkv = causal_conv1d_update(qkv, cache.conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias)
        position = cache.seqlen.view(1)
        q, k, v = self._heads(qkv[:, None], position)
        cache.keys.index_copy_(1, position, k)
        cache.values.index_copy_(1, position, v)
        seen = torch.arange(cache.keys.shape[1], device=hidden.device) <= cache.seqlen
        mlp = None if mlp is None else mlp[:, None]
        out = self._attend(q, cache.keys, cache.values, mlp, attn_mask=seen[None])  # (1, max_seqlen)
        cache.seqlen += 1
        return out[:, 0]

    def allocate_cache(self, batch_size: int, max_seqlen: int, weight: torch.Tensor) -> AttentionCache:
        """Keys and values for max_seqlen positions: the memory that grows with the sequence."""
        shape = (batch_size, max_seqlen, self.num_heads_kv, self.head_dim)
        conv = weight.new_zeros(batch_size, self.qkv_dim, self.d_conv) if self.d_conv > 0 else None
        position = torch.zeros((), dtype=torch.long, device=weight.device)
        return AttentionCache(weight.new_zeros(shape), weight.new_zeros(shape), conv, position)
