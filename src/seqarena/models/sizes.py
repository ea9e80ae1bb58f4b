"""The one registry of named model sizes; a model id is ``{arch}-{size}``.

Paper sizes follow the Mamba paper (Gu & Dao 2023, Table 12 and §4.2): Mamba uses twice
the layers of the Transformer++ at the same width, since one Mamba block holds about
half the parameters of an attention+MLP block. The CPU sizes train on a laptop CPU in minutes:
micro (d_model 32), tiny (64), compact (96) and mini (128) at the same depth are the CPU
scaling ladder (config/scaling-cpu.yaml), small (256, twice as deep) the largest.
``lr`` is the peak learning rate of the paper's "++" recipe: GPT-3's rate for that size x5
(Appendix E.2.1), except Mamba-2.8B, trained at 3x (4.8e-4: state-spaces/mamba issue #144). The
numbers and their sources: ``seqarena.paper`` (``paper_data/table12.csv``, ``recipe.csv``).

``mamba2`` sizes are those of the Mamba-2 paper (Dao & Gu 2024, the state-spaces/mamba2-*
checkpoints: the Mamba-1 widths and depths, mamba_ssm's Mamba2 defaults, d_state 128,
headdim 64). ``hybrid`` is Mamba-2 with attention in about one layer in ten, spread evenly
(the Mamba-2 paper's hybrid ablation, section 9.2.3, found about 10% attention layers
best); its attention layers are mamba_ssm's MHA with 64-wide heads, full rotary embeddings,
causal, without biases. ``mamba_lti`` is Mamba with a time-invariant SSM (the paper's Table 1
ablation, S4 inside the Mamba block; ``models.mamba.LTIMixer``) at Mamba's sizes;
``transformer_abs`` is Transformer++ with absolute sinusoidal positions instead of rotary ones
(Table 11's MHA-Abs) at Transformer++'s sizes. ``mamba3`` and ``mamba3_mimo`` are Mamba-3 (SISO;
MIMO at rank 4, the Mamba-3 paper's, arXiv 2603.15569) at the CPU sizes, with Mamba-2's widths,
depths, state and head sizes; ``mamba3`` also at Mamba-2's paper sizes (ours, not the Mamba-3
paper's configurations, which seqarena has no source for). CPU sizes of the Mamba-2 families use
d_state 32, headdim 32 and 32-step chunks (the fastest chunk for a training step on a CPU:
benchmarks/README.md).
"""

import math
from dataclasses import dataclass

from seqarena.models.base import GPT_NEOX_VOCAB
from seqarena.models.families import FAMILIES, family_of
from seqarena.options import option

MAMBA2_CPU = dict(layer="Mamba2", d_state=32, headdim=32, chunk_size=32)
MAMBA3_CPU = dict(layer="Mamba3", d_state=32, headdim=32, chunk_size=32)
MAMBA3_MIMO_CPU = MAMBA3_CPU | dict(is_mimo=True, mimo_rank=4, chunk_size=8)  # chunk 32 / rank, as advised


def attention_layers(n_layer: int) -> list[int]:
    """About one layer in ten (at least one), each in the middle of an equal share of the depth."""
    count = max(1, round(n_layer / 10))
    return [int((i + 0.5) * n_layer / count) for i in range(count)]


def mamba2_dims(d_model: int, n_layer: int, cpu: bool) -> dict:
    return dict(d_model=d_model, n_layer=n_layer, ssm_cfg=MAMBA2_CPU if cpu else {"layer": "Mamba2"})


def hybrid_dims(d_model: int, n_layer: int, cpu: bool) -> dict:
    head_dim = 16 if cpu else 64
    attn = dict(num_heads=d_model // head_dim, rotary_emb_dim=head_dim, causal=True)
    attn |= dict(qkv_proj_bias=False, out_proj_bias=False)
    return mamba2_dims(d_model, n_layer, cpu) | dict(attn_layer_idx=attention_layers(n_layer), attn_cfg=attn)


@dataclass(frozen=True)
class Size:
    dims: dict
    lr: float
    nominal_params: int | None = None  # the paper's name for it; None for CPU sizes


SIZES: dict[str, dict[str, Size]] = {
    "mamba": {
        "micro": Size(dict(d_model=32, n_layer=4), 3e-3),
        "tiny": Size(dict(d_model=64, n_layer=4), 3e-3),
        "compact": Size(dict(d_model=96, n_layer=4), 3e-3),
        "mini": Size(dict(d_model=128, n_layer=4), 3e-3),
        "small": Size(dict(d_model=256, n_layer=8), 2e-3),
        "130m": Size(dict(d_model=768, n_layer=24), 3e-3, 130_000_000),
        "370m": Size(dict(d_model=1024, n_layer=48), 1.5e-3, 370_000_000),
        "790m": Size(dict(d_model=1536, n_layer=48), 1.25e-3, 790_000_000),
        "1.4b": Size(dict(d_model=2048, n_layer=48), 1e-3, 1_400_000_000),
        "2.8b": Size(dict(d_model=2560, n_layer=64), 4.8e-4, 2_800_000_000),  # 3x GPT-3's, not 5x
    },
    "mamba2": {
        "micro": Size(mamba2_dims(32, 4, cpu=True), 3e-3),
        "tiny": Size(mamba2_dims(64, 4, cpu=True), 3e-3),
        "compact": Size(mamba2_dims(96, 4, cpu=True), 3e-3),
        "mini": Size(mamba2_dims(128, 4, cpu=True), 3e-3),
        "small": Size(mamba2_dims(256, 8, cpu=True), 2e-3),
        "130m": Size(mamba2_dims(768, 24, cpu=False), 3e-3, 130_000_000),
        "370m": Size(mamba2_dims(1024, 48, cpu=False), 1.5e-3, 370_000_000),
        "780m": Size(mamba2_dims(1536, 48, cpu=False), 1.25e-3, 780_000_000),
        "1.3b": Size(mamba2_dims(2048, 48, cpu=False), 1e-3, 1_300_000_000),
        "2.7b": Size(mamba2_dims(2560, 64, cpu=False), 8e-4, 2_700_000_000),
    },
    "hybrid": {
        "micro": Size(hybrid_dims(32, 4, cpu=True), 3e-3),
        "tiny": Size(hybrid_dims(64, 4, cpu=True), 3e-3),
        "compact": Size(hybrid_dims(96, 4, cpu=True), 3e-3),
        "mini": Size(hybrid_dims(128, 4, cpu=True), 3e-3),
        "small": Size(hybrid_dims(256, 8, cpu=True), 2e-3),
        "370m": Size(hybrid_dims(1024, 48, cpu=False), 1.5e-3, 370_000_000),
        "1.3b": Size(hybrid_dims(2048, 48, cpu=False), 1e-3, 1_300_000_000),
        "2.7b": Size(hybrid_dims(2560, 64, cpu=False), 8e-4, 2_700_000_000),
    },
    "transformer": {
        "micro": Size(dict(d_model=32, n_layer=2, n_head=2), 3e-3),
        "tiny": Size(dict(d_model=64, n_layer=2, n_head=4), 3e-3),
        "compact": Size(dict(d_model=96, n_layer=2, n_head=4), 3e-3),
        "mini": Size(dict(d_model=128, n_layer=2, n_head=4), 3e-3),
        "small": Size(dict(d_model=256, n_layer=4, n_head=8), 2e-3),
        "125m": Size(dict(d_model=768, n_layer=12, n_head=12), 3e-3, 125_000_000),
        "350m": Size(dict(d_model=1024, n_layer=24, n_head=16), 1.5e-3, 350_000_000),
        "760m": Size(dict(d_model=1536, n_layer=24, n_head=16), 1.25e-3, 760_000_000),
        "1.3b": Size(dict(d_model=2048, n_layer=24, n_head=32), 1e-3, 1_300_000_000),
        "2.7b": Size(dict(d_model=2560, n_layer=32, n_head=32), 8e-4, 2_700_000_000),
    },
}

# Mamba-3 on Mamba-2's widths, depths and rates: SISO and MIMO (rank 4) at the CPU sizes; SISO also
# at Mamba-2's paper sizes with mamba_ssm's Mamba3 defaults (d_state 128, headdim 64, 64-step
# chunks), within 5% of their parameters. These are ours: the Mamba-3 paper's configurations are
# not in seqarena.paper's data. MIMO has no paper size: at rank 4 its B and C projections add 6-12%.
SIZES["mamba3"] = {
    size: Size(
        {**spec.dims, "ssm_cfg": {"layer": "Mamba3"} if spec.nominal_params else MAMBA3_CPU},
        spec.lr,
        spec.nominal_params,
    )
    for size, spec in SIZES["mamba2"].items()
}
SIZES["mamba3_mimo"] = {
    size: Size({**spec.dims, "ssm_cfg": MAMBA3_MIMO_CPU}, spec.lr)
    for size, spec in SIZES["mamba2"].items()
    if spec.nominal_params is None
}
# The paper's non-selective ablation (Table 1's S4 inside the Mamba block): Mamba's shapes and rates.
SIZES["mamba_lti"] = {
    size: Size({**spec.dims, "ssm_cfg": {"layer": "MambaLTI"}}, spec.lr, spec.nominal_params)
    for size, spec in SIZES["mamba"].items()
}
# Table 11's MHA-Abs: Transformer++ with absolute sinusoidal positions instead of RoPE.
SIZES["transformer_abs"] = {
    size: Size({**spec.dims, "position": "sinusoidal"}, spec.lr, spec.nominal_params)
    for size, spec in SIZES["transformer"].items()
}


def parse_model_id(model_id: str) -> tuple[str, str]:
    """``mamba-1.4b`` -> ("mamba", "1.4b"), with a clear error for unknown names."""
    arch, _, size = model_id.partition("-")  # "mamba2-1.3b" -> ("mamba2", "1.3b")
    if arch not in SIZES:
        raise ValueError(f"model id {model_id!r}: unknown architecture {arch!r}; known: {sorted(SIZES)}")
    if size not in SIZES[arch]:
        raise ValueError(f"model id {model_id!r}: unknown {arch} size {size!r}; known: {list(SIZES[arch])}")
    return arch, size


def matched_model(model_id: str, arch: str) -> str | None:
    """The model of ``arch`` that the papers set beside ``model_id``: a CPU size's namesake, else the
    paper size nearest in nominal parameters within 25% (mamba-130m -> transformer-125m, 790m ->
    760m, 1.4b -> 1.3b, 2.8b -> 2.7b, as the Mamba paper pairs them); None where ``arch`` has none."""
    own, size = parse_model_id(model_id)
    nominal = SIZES[own][size].nominal_params
    if nominal is None:
        return f"{arch}-{size}" if size in SIZES[arch] else None
    paper = {s: spec.nominal_params for s, spec in SIZES[arch].items() if spec.nominal_params}
    nearest = min(paper, key=lambda s: abs(math.log(paper[s] / nominal)), default=None)
    if nearest is None or abs(math.log(paper[nearest] / nominal)) > math.log(1.25):
        return None
    return f"{arch}-{nearest}"


def model_config(model_id: str, vocab_size: int = GPT_NEOX_VOCAB, **overrides):
    """The config of a named size; ``overrides`` replace single fields."""
    arch, size = parse_model_id(model_id)
    config_cls = FAMILIES[arch].config
    dims = SIZES[arch][size].dims
    if arch == "hybrid" and {"d_model", "n_layer"} & overrides.keys():  # the attention layout follows
        shape = {k: overrides.get(k, dims[k]) for k in ("d_model", "n_layer")}
        dims = hybrid_dims(**shape, cpu=SIZES[arch][size].nominal_params is None)
    return config_cls(**{**dims, "vocab_size": vocab_size, **overrides})


def build_model(model_id: str, vocab_size: int = GPT_NEOX_VOCAB, **overrides):
    """A freshly initialised model of a named size, e.g. ``build_model("mamba-tiny", 256)``."""
    config = model_config(model_id, vocab_size, **overrides)
    return family_of(model_id).model(config)


def model_ids() -> list[str]:
    return [f"{arch}-{size}" for arch, sizes in SIZES.items() for size in sizes]


@dataclass
class SizesConfig:
    vocab_size: int = option(GPT_NEOX_VOCAB, help="the vocabulary the counts are for (default: GPT-NeoX's)")
    micro_batch: int = option(0, help="also estimate training memory per GPU at this micro-batch (0: not)")
    seq_len: int = option(2048, help="the micro-batch's sequence length, for the memory estimate")
    gpus: int = option(1, help="training processes, for the memory estimate")
    parallel: str = option("ddp", help="ddp or fsdp, for the memory estimate", choices=["ddp", "fsdp"])


def print_sizes(cfg: SizesConfig) -> None:
    """The size registry with parameter counts computed from the real modules, at the vocabulary
    it says (the embedding and head are a large share of a small model's parameters), and with
    ``--micro-batch`` the estimated training memory per GPU in bf16, without and with activation
    checkpointing (seqarena.training.memory)."""
    from seqarena.training.memory import estimate_training_memory, parameters

    print(f"parameters at a vocabulary of {cfg.vocab_size:,} (--vocab-size; the paper's GPT-NeoX: 50,277)")
    header = f"{'model id':<22} {'d_model':>7} {'n_layer':>7} {'params':>14} {'nominal':>14}"
    if cfg.micro_batch:
        print(
            f"training memory per GPU (GB, bf16; an estimate): micro-batch {cfg.micro_batch} x "
            f"{cfg.seq_len} tokens, {cfg.gpus} GPU(s), {cfg.parallel}; ckpt: activation checkpointing"
        )
        header += f" {'GB':>7} {'GB ckpt':>7}"
    print(header)
    for model_id in model_ids():
        arch, size = parse_model_id(model_id)
        spec = SIZES[arch][size]
        nominal = f"{spec.nominal_params:,}" if spec.nominal_params else "-"
        dims = spec.dims
        line = f"{model_id:<22} {dims['d_model']:>7} {dims['n_layer']:>7} "
        line += f"{parameters(model_id, cfg.vocab_size):>14,} {nominal:>14}"
        if cfg.micro_batch:
            recipe = dict(processes=cfg.gpus, parallel=cfg.parallel)
            shape = (model_id, cfg.vocab_size, cfg.micro_batch, cfg.seq_len)
            plain = estimate_training_memory(*shape, **recipe).total
            checkpointed = estimate_training_memory(*shape, **recipe, activation_checkpointing=True).total
            line += f" {plain / 1e9:>7.1f} {checkpointed / 1e9:>7.1f}"
        print(line)
