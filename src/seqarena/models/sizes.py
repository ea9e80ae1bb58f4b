"""The one registry of named model sizes; a model id is ``{arch}-{size}``.

Paper sizes follow the Mamba paper (Gu & Dao 2023, Table 12 and §4.2): Mamba uses twice
the layers of the Transformer++ at the same width, since one Mamba block holds about
half the parameters of an attention+MLP block. Tiny sizes train on a laptop CPU in minutes.
``lr`` is the peak learning rate of the paper's "++" recipe: GPT-3's rate for that size x5.
"""

from dataclasses import dataclass

from seqarena.models.mamba import Mamba, MambaConfig
from seqarena.models.transformer import Transformer, TransformerConfig

GPT_NEOX_VOCAB = 50277  # the paper's tokenizer; padded to 50280 in the embedding

ARCHITECTURES = {"mamba": (Mamba, MambaConfig), "transformer": (Transformer, TransformerConfig)}


@dataclass(frozen=True)
class Size:
    dims: dict
    lr: float
    nominal_params: int | None = None  # the paper's name for it; None for CPU sizes


SIZES: dict[str, dict[str, Size]] = {
    "mamba": {
        "tiny": Size(dict(d_model=64, n_layer=4), 3e-3),
        "mini": Size(dict(d_model=128, n_layer=4), 3e-3),
        "small": Size(dict(d_model=256, n_layer=8), 2e-3),
        "130m": Size(dict(d_model=768, n_layer=24), 3e-3, 130_000_000),
        "370m": Size(dict(d_model=1024, n_layer=48), 1.5e-3, 370_000_000),
        "790m": Size(dict(d_model=1536, n_layer=48), 1.25e-3, 790_000_000),
        "1.4b": Size(dict(d_model=2048, n_layer=48), 1e-3, 1_400_000_000),
        "2.8b": Size(dict(d_model=2560, n_layer=64), 8e-4, 2_800_000_000),
    },
    "transformer": {
        "tiny": Size(dict(d_model=64, n_layer=2, n_head=4), 3e-3),
        "mini": Size(dict(d_model=128, n_layer=2, n_head=4), 3e-3),
        "small": Size(dict(d_model=256, n_layer=4, n_head=8), 2e-3),
        "125m": Size(dict(d_model=768, n_layer=12, n_head=12), 3e-3, 125_000_000),
        "350m": Size(dict(d_model=1024, n_layer=24, n_head=16), 1.5e-3, 350_000_000),
        "760m": Size(dict(d_model=1536, n_layer=24, n_head=16), 1.25e-3, 760_000_000),
        "1.3b": Size(dict(d_model=2048, n_layer=24, n_head=32), 1e-3, 1_300_000_000),
        "2.7b": Size(dict(d_model=2560, n_layer=32, n_head=32), 8e-4, 2_700_000_000),
    },
}


def parse_model_id(model_id: str) -> tuple[str, str]:
    """``mamba-1.4b`` -> ("mamba", "1.4b"), with a clear error for unknown names."""
    arch, _, size = model_id.partition("-")
    if arch not in SIZES:
        raise ValueError(f"model id {model_id!r}: unknown architecture {arch!r}; known: {sorted(SIZES)}")
    if size not in SIZES[arch]:
        raise ValueError(f"model id {model_id!r}: unknown {arch} size {size!r}; known: {list(SIZES[arch])}")
    return arch, size


def model_config(model_id: str, vocab_size: int = GPT_NEOX_VOCAB, **overrides):
    """The config of a named size; ``overrides`` replace single fields."""
    arch, size = parse_model_id(model_id)
    config_cls = ARCHITECTURES[arch][1]
    return config_cls(**{**SIZES[arch][size].dims, "vocab_size": vocab_size, **overrides})


def build_model(model_id: str, vocab_size: int = GPT_NEOX_VOCAB, **overrides):
    """A freshly initialised model of a named size, e.g. ``build_model("mamba-tiny", 256)``."""
    config = model_config(model_id, vocab_size, **overrides)
    model_cls = ARCHITECTURES[parse_model_id(model_id)[0]][0]
    return model_cls(config)


def model_ids() -> list[str]:
    return [f"{arch}-{size}" for arch, sizes in SIZES.items() for size in sizes]
