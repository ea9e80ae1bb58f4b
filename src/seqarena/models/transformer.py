"""Transformer++: the strong attention baseline of the Mamba paper (the LLaMA recipe).

Decoder-only, pre-norm RMSNorm, rotary position embeddings, SwiGLU MLP, no biases, tied
input and output embeddings. Attention goes through ``scaled_dot_product_attention``, so
PyTorch picks FlashAttention on a GPU. Decoding keeps a key/value cache.

``position = "sinusoidal"`` swaps the rotary embeddings for the original Transformer's absolute
sinusoidal ones, added to the token embeddings (no parameters, defined at any length): the
paper's MHA-Abs of Table 11, beside Transformer++'s MHA-RoPE, for length extrapolation.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqarena.models.base import GPT_NEOX_VOCAB, LanguageModel, pad_vocab


def swiglu_hidden(d_model: int, multiple: int = 64) -> int:
    """SwiGLU width: 8/3 d_model (same parameters as a 4x GELU MLP), rounded up."""
    return -(-(8 * d_model // 3) // multiple) * multiple


POSITIONS = ("rope", "sinusoidal")


@dataclass
class TransformerConfig:
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    vocab_size: int = GPT_NEOX_VOCAB
    d_ff: int = 0  # 0: swiglu_hidden(d_model)
    rope_theta: float = 10000.0
    position: str = "rope"  # or "sinusoidal": absolute positions added to the embeddings
    norm_eps: float = 1e-5
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    arch: str = "transformer"  # marks our config.json apart from mamba_ssm's

    def __post_init__(self):
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(
                f"d_model={self.d_model} must split into n_head={self.n_head} heads of even size"
            )
        if self.position not in POSITIONS:
            raise ValueError(f"position={self.position!r}: unknown; known: {', '.join(POSITIONS)}")
        if self.d_ff == 0:
            self.d_ff = swiglu_hidden(self.d_model)

    block_inputs = 1  # what a checkpointed block keeps: its input x

    def kept_per_token(self) -> list[float]:
        """Per layer, the elements its block keeps per token for the backward pass: each norm's
        input and output (4 d_model), the q/k/v projection, the rotated q and k, a contiguous v,
        the attention's output and its copy in (batch, L, d_model) for out_proj (8 d_model), and
        the SwiGLU MLP's gate, value, activated gate and product (4 d_ff)."""
        return [12 * self.d_model + 4 * self.d_ff] * self.n_layer

    @classmethod
    def from_dict(cls, data: dict) -> "TransformerConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown Transformer config keys: {sorted(unknown)}")
        return cls(**data)


@dataclass
class KVCache:
    keys: torch.Tensor  # (n_layer, batch, n_head, max_seqlen, head_dim)
    values: torch.Tensor
    seqlen: torch.Tensor  # () int64: a tensor, so that a step captured as a CUDA graph advances it


def rotary_angles(dim: int, base: float, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (len(positions), dim / 2) of the rotary angles at ``positions`` (int64), in
    float32 whatever the model's dtype: a bf16 frequency table is off by 0.45 rad at position 1023."""
    exponents = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim
    angles = torch.outer(positions.float(), base**-exponents)
    return angles.cos(), angles.sin()


def sinusoidal_positions(dim: int, positions: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(len(positions), dim) absolute encodings of ``positions`` (Vaswani et al. 2017): sin in the
    even features, cos in the odd, wavelengths 2 pi to 10000 * 2 pi. Computed in float32 or wider
    (in bf16 a position past 256 is already rounded), returned in ``like``'s dtype."""
    compute = dict(device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))
    angles = positions.to(**compute)[:, None] * 10000.0 ** -(torch.arange(0, dim, 2, **compute) / dim)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1).to(like.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, GPT-NeoX/LLaMA layout (the two halves of each head are the pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.d_model // config.n_head
        self.qkv_proj = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def _heads(self, x, rotary):
        """q, k, v (batch, n_head, L, head_dim) of x (batch, L, d_model), q and k rotated."""
        batch, length, _ = x.shape
        q, k, v = self.qkv_proj(x).view(batch, length, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        return q, k, v

    def forward(self, x, rotary, layer_cache=None, offset=0):
        """x (batch, L, d_model); rotary (cos, sin), or None with absolute positions; layer_cache
        (keys, values) receives this chunk at ``offset``."""
        batch, length, _ = x.shape
        q, k, v = self._heads(x, rotary)
        if layer_cache is not None:
            keys, values = layer_cache
            keys[:, :, offset : offset + length] = k
            values[:, :, offset : offset + length] = v
            k, v = keys[:, :, : offset + length], values[:, :, : offset + length]
        if offset == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # query i sits at position offset + i and sees keys 0 .. offset + i
            mask = torch.ones(length, offset + length, dtype=torch.bool, device=x.device).tril(offset)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, -1))

    def step(self, x, rotary, layer_cache, position):
        """x (batch, 1, d_model) at ``position`` (a () tensor): its key and value written there, the
        query attending over the whole cache with the positions past it masked (fixed shapes)."""
        q, k, v = self._heads(x, rotary)
        keys, values = layer_cache
        keys.index_copy_(2, position.view(1), k)
        values.index_copy_(2, position.view(1), v)
        seen = torch.arange(keys.shape[2], device=x.device) <= position
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=seen[None])  # (1, max_seqlen)
        return self.out_proj(y.transpose(1, 2).reshape(x.shape[0], 1, -1))


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, rotary, layer_cache=None, offset=0):
        x = x + self.attn(self.attn_norm(x), rotary, layer_cache, offset)
        return x + self.mlp(self.mlp_norm(x))

    def step(self, x, rotary, layer_cache, position):
        x = x + self.attn.step(self.attn_norm(x), rotary, layer_cache, position)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(LanguageModel):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(
            pad_vocab(config.vocab_size, config.pad_vocab_size_multiple), config.d_model
        )
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, self.embedding.num_embeddings, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def _init_weights(self, module):
        """GPT-2 style: N(0, 0.02), residual output projections scaled by 1/sqrt(2 n_layer)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, (Attention, MLP)):
            last = module.out_proj if isinstance(module, Attention) else module.down_proj
            nn.init.normal_(last.weight, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def forward(
        self, input_ids: torch.Tensor, cache: KVCache | None = None, num_last_tokens: int = 0
    ) -> torch.Tensor:
        """input_ids (batch, L) -> logits (batch, L, padded vocab); a cache is filled and advanced.
        ``num_last_tokens`` > 0: logits of the last positions only (mamba_ssm's argument), as a
        prefill needs."""
        length = input_ids.shape[1]
        offset = int(cache.seqlen) if cache is not None else 0
        positions = torch.arange(offset, offset + length, device=input_ids.device)
        x, rotary = self._embed(input_ids, positions)
        for i, layer in enumerate(self.layers):
            layer_cache = (cache.keys[i], cache.values[i]) if cache is not None else None
            x = layer(x, rotary, layer_cache, offset)
        if cache is not None:
            cache.seqlen += length
        return self.lm_head(self.norm_f(x[:, -num_last_tokens:]))

    def _embed(self, input_ids, positions):
        """The token embeddings (batch, L, d_model) and the rotary (cos, sin) at ``positions``; with
        absolute positions, their encodings added and no rotary."""
        x = self.embedding(input_ids)
        if self.config.position == "rope":
            return x, self.rotary(positions)
        return x + sinusoidal_positions(self.config.d_model, positions, x), None

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head_dim = self.config.d_model // self.config.n_head
        return rotary_angles(head_dim, self.config.rope_theta, positions)

    def mixer_flops_per_token(self, seq_len: int) -> float:
        """Attention scores and values, forward+backward (PaLM's 12 * n_layer * d_model * T)."""
        return 12.0 * self.config.n_layer * self.config.d_model * seq_len

    def allocate_cache(self, batch_size: int, max_seqlen: int) -> KVCache:
        c = self.config
        shape = (c.n_layer, batch_size, c.n_head, max_seqlen, c.d_model // c.n_head)
        w = self.embedding.weight
        position = torch.zeros((), dtype=torch.long, device=w.device)
        return KVCache(keys=w.new_zeros(shape), values=w.new_zeros(shape), seqlen=position)

    def step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """tokens (batch,) -> logits (batch, padded vocab); appends to the cache."""
        x, rotary = self._embed(tokens[:, None], cache.seqlen.view(1))
        for i, layer in enumerate(self.layers):
            x = layer.step(x, rotary, (cache.keys[i], cache.values[i]), cache.seqlen)
        cache.seqlen += 1
        return self.lm_head(self.norm_f(x))[:, -1]
