"""What both architectures share: checkpoint writing, parameter counting, generation.

A model implements ``forward(input_ids, cache=None, num_last_tokens=0) -> logits``, ``allocate_cache(batch,
max_seqlen)`` and ``step(tokens, cache) -> logits``; ``forward`` with a cache fills it
(prefill), ``step`` consumes one token per sequence and advances it, in place and at fixed shapes
(``Decoder`` may capture it as a CUDA graph).
"""

import dataclasses
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from seqarena.files import atomic_write

GPT_NEOX_VOCAB = 50277  # the paper's tokenizer (and mamba_ssm's default); padded to 50280 in the embedding
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def pad_vocab(vocab_size: int, multiple: int) -> int:
    """The embedding rows: vocab_size rounded up to a multiple (mamba_ssm pads to 8)."""
    return -(-vocab_size // multiple) * multiple


def dt_bias_init(size: int, dt_min: float, dt_max: float, dt_init_floor: float) -> torch.Tensor:
    """mamba_ssm's dt bias: dt drawn log-uniform in [dt_min, dt_max] (at least dt_init_floor) per
    channel or head, as its inverse softplus, so that softplus(bias) starts at that dt."""
    log_dt = torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = torch.exp(log_dt).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


@dataclass
class MambaLayerCache:
    """A Mamba-1 or Mamba-2 layer's decoding state: fixed-size, whatever the sequence length."""

    conv_state: torch.Tensor  # (batch, conv channels, d_conv): the last d_conv conv inputs
    ssm_state: torch.Tensor  # Mamba-1 (batch, d_inner, d_state); Mamba-2 (batch, nheads, headdim, d_state)


class LanguageModel(nn.Module):
    config: object

    def config_dict(self) -> dict:
        """The contents of config.json."""
        return asdict(self.config)

    def num_parameters(self, exclude_embedding: bool = False) -> int:
        """Distinct parameters (tied weights counted once); ``exclude_embedding``: without the token
        embedding, under whichever name a tied head also holds it (Kaplan et al.'s N)."""
        named = list(self.named_parameters(remove_duplicate=False))
        seen = {id(p) for name, p in named if "embedding" in name} if exclude_embedding else set()
        total = 0
        for _, p in named:
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total

    def training_flops_per_token(self, seq_len: int) -> float:
        """Forward+backward FLOPs per token: 6 per parameter (matmuls, lm_head included),
        plus what the sequence mixer adds beyond its weights (see the subclasses)."""
        return 6.0 * self.num_parameters() + self.mixer_flops_per_token(seq_len)

    def mixer_flops_per_token(self, seq_len: int) -> float:
        raise NotImplementedError

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json``, each atomically.

        Every state-dict key is written, tied ``lm_head.weight`` included, because
        mamba_ssm's ``load_state_dict`` expects the full key set.
        """
        directory = Path(directory)
        tensors, seen = {}, set()
        for key, value in self.state_dict().items():
            value = value.detach().cpu().contiguous()
            if value.data_ptr() in seen:  # a tied weight: safetensors refuses shared storage
                value = value.clone()
            seen.add(value.data_ptr())
            tensors[key] = value
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp))
        text = json.dumps(self.config_dict(), indent=2) + "\n"
        atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
        return directory

    def allocate_cache(self, batch_size: int, max_seqlen: int):
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, cache) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
        """Prompt (batch, L) -> (batch, L + max_new_tokens): ``Decoder.generate`` (its ``sampling``
        arguments: temperature, top_k, generator) with a cache of that length."""
        batch, length = input_ids.shape
        return Decoder(self, batch, length + max_new_tokens).generate(input_ids, max_new_tokens, **sampling)


def cache_tensors(cache) -> Iterator[torch.Tensor]:
    """Every tensor of a decoding cache: a model's cache is a dataclass of tensors, lists of them
    and layer caches."""
    if isinstance(cache, torch.Tensor):
        yield cache
    elif dataclasses.is_dataclass(cache):
        for f in dataclasses.fields(cache):
            yield from cache_tensors(getattr(cache, f.name))
    elif isinstance(cache, list | tuple):
        for c in cache:
            yield from cache_tensors(c)


class Decoder:
    """A model's decoding at one batch size and maximum length: its cache, allocated once, and its
    step; with ``cuda_graph``, the step captured once as a CUDA graph and replayed a token at a
    time, as mamba_ssm's generation does (``cg=True``): one launch a token, not one a kernel, the
    launches that bound decoding at small batch.

    A replay reruns the recorded kernels and nothing else, so a model's ``step`` keeps all it
    changes in the cache's tensors, in place, at fixed shapes: the position too (a 0-d tensor),
    and a key/value cache is attended whole, the positions past the current one masked."""

    def __init__(self, model: LanguageModel, batch_size: int, max_seqlen: int, cuda_graph: bool = False):
        self.model, self.batch_size, self.max_seqlen = model, batch_size, max_seqlen
        self.cache = model.allocate_cache(batch_size, max_seqlen)
        self.step = self._captured_step() if cuda_graph else partial(model.step, cache=self.cache)

    def _clear(self) -> None:
        for t in cache_tensors(self.cache):
            t.zero_()

    def _captured_step(self, warmups: int = 2):
        """The step as a CUDA graph. Warmed up first on a side stream, as capture requires (Triton
        autotunes and kernels load there); capturing records the kernels without running them."""
        device = next(cache_tensors(self.cache)).device
        tokens = torch.zeros(self.batch_size, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmups):
                self.model.step(tokens, self.cache)
                self._clear()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            logits = self.model.step(tokens, self.cache)

        def replay(next_tokens: torch.Tensor) -> torch.Tensor:
            tokens.copy_(next_tokens)
            graph.replay()
            return logits  # the graph's output buffer: read before the next replay

        return replay

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, num_last_tokens: int = 0) -> torch.Tensor:
        """The prompt's logits (``num_last_tokens``: the model's argument), its states filling the
        cleared cache; then ``step`` consumes one token per sequence."""
        self._clear()
        return self.model(input_ids, cache=self.cache, num_last_tokens=num_last_tokens)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Prompt (batch, L) -> (batch, L + max_new_tokens).

        ``temperature`` 0 is greedy; otherwise sample from the softmax at that temperature,
        restricted to the ``top_k`` most likely tokens if given. Padding rows of the
        embedding (ids >= vocab_size) are never produced.
        """
        batch, length = input_ids.shape
        if batch != self.batch_size or length + max_new_tokens > self.max_seqlen:
            raise ValueError(
                f"batch {batch}, {length} + {max_new_tokens} tokens: this decoder holds batch "
                f"{self.batch_size} up to {self.max_seqlen} tokens"
            )
        logits = self.prefill(input_ids, num_last_tokens=1)[:, -1]
        tokens = [input_ids]
        for i in range(max_new_tokens):
            next_token = self._pick(logits, temperature, top_k, generator)
            tokens.append(next_token[:, None])
            if i + 1 < max_new_tokens:
                logits = self.step(next_token)
        return torch.cat(tokens, dim=1)

    def _pick(self, logits, temperature, top_k, generator) -> torch.Tensor:
        logits = logits[:, : self.model.config.vocab_size].float()
        if temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1, None]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
