"""Hugging Face ``transformers`` format, both ways.

``export_hf`` writes a folder that ``transformers.AutoModelForCausalLM.from_pretrained`` loads
with our logits: Transformer++ as ``LlamaForCausalLM`` (the same recipe: RMSNorm, rotary in the
half-split layout, SwiGLU, no biases), Mamba-1 as ``MambaForCausalLM`` and Mamba-2 as
``Mamba2ForCausalLM`` (mamba_ssm's parameter names but the embedding's), with a
``PreTrainedTokenizerFast`` beside them. The exported vocabulary is the tokenizer's: the padding
rows of our embedding are never a token, so they are left out, and transformers' softmax is
then exactly ours.

``config_from_hf`` and ``state_from_hf`` read those three layouts back (the published
``state-spaces/*-hf`` checkpoints too), so ``seqarena.models.from_pretrained`` opens them.
"""

import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from seqarena.models import HF_MODEL_TYPES
from seqarena.models.base import LanguageModel, pad_vocab
from seqarena.models.mamba import SSM_DEFAULTS, Mamba, MambaConfig
from seqarena.models.transformer import TransformerConfig
from seqarena.options import option
from seqarena.tracking import register_hf_model

# seqarena's evaluation window (SeqarenaLM.max_length): an exported model tells lm-eval the same.
EVAL_MAX_LENGTH = 2048


class NotExportable(ValueError):
    """A model that no transformers class builds."""


def _refuse(family: str, what: str, needed: str) -> None:
    raise NotExportable(f"cannot export {family} to Hugging Face format: {what}; {needed}")


# ---------------------------------------------------------------------------------------------
# seqarena -> transformers


def hf_config(model: LanguageModel, eos_id: int) -> dict:
    """The transformers config (as a dict with ``model_type``) of one of our models."""
    config = model.config
    special = dict(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, dtype="float32")
    if isinstance(config, TransformerConfig):
        return _llama_config(config, special)
    family = "Mamba-2" if config.layer == "Mamba2" else "Mamba"
    _check_mamba_exportable(config, family)
    common = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layer,
        layer_norm_epsilon=1e-5,
        hidden_act="silu",
        residual_in_fp32=config.residual_in_fp32,
        tie_word_embeddings=config.tie_embeddings,
        use_cache=True,
        **special,
    )
    mixer = model.backbone.layers[0].mixer
    if config.layer == "Mamba2":
        return _mamba2_config(config.ssm, mixer, family) | common
    return _mamba_config(config.ssm, mixer) | common


def _llama_config(config: TransformerConfig, special: dict) -> dict:
    if config.position != "rope":
        _refuse(
            "a Transformer with absolute sinusoidal positions (transformer_abs)",
            f"position={config.position!r}",
            "LlamaForCausalLM has rotary positions only (it would need a GPT-2-like class)",
        )
    return dict(
        model_type="llama",
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_head,
        hidden_act="silu",
        max_position_embeddings=EVAL_MAX_LENGTH,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=config.tie_embeddings,
        **special,
    )


def _check_mamba_exportable(config: MambaConfig, family: str) -> None:
    """Refuse, naming the field, a Mamba that transformers' Mamba and Mamba2 classes cannot build."""
    if config.layer == "Mamba3":
        _refuse(
            "Mamba-3 (ssm_cfg.layer Mamba3)",
            "its trapezoidal SSM with data-dependent rotary angles",
            "transformers has no Mamba-3 class (mamba_ssm's MambaLMHeadModel loads our folder as it is)",
        )
    if config.layer == "MambaLTI":
        _refuse(
            "the non-selective Mamba (ssm_cfg.layer MambaLTI)",
            "B, C and delta are not computed from the input",
            "transformers has no class for it (it would need a time-invariant MambaMixer)",
        )
    if config.attn_layer_idx:
        _refuse(
            f"a {family} hybrid",
            f"attention layers at {config.attn_layer_idx}",
            "transformers has no class for mamba_ssm's hybrids (it would need a MambaLMHeadModel port)",
        )
    if config.d_intermediate:
        _refuse(
            family,
            f"d_intermediate={config.d_intermediate} (an MLP after each mixer)",
            "transformers' Mamba classes have no MLP; it would need a class with one",
        )
    if not config.rms_norm:
        _refuse(family, "rms_norm=False (LayerNorm)", "transformers' Mamba classes use RMSNorm only")


def _mamba2_config(ssm: dict, mixer, family: str) -> dict:
    for field, supported in (("D_has_hdim", False), ("norm_before_gate", False), ("rmsnorm", True)):
        if ssm[field] != supported:
            _refuse(
                family, f"ssm_cfg.{field}={ssm[field]!r}", f"transformers' Mamba2 has {field}={supported}"
            )
    if mixer.d_ssm != mixer.d_inner:
        _refuse(
            family,
            f"ssm_cfg.d_ssm={mixer.d_ssm} below expand * d_model = {mixer.d_inner}",
            "transformers' Mamba2 has no gated-MLP channels beside the SSM",
        )
    return dict(
        model_type="mamba2",
        num_heads=mixer.nheads,
        head_dim=ssm["headdim"],
        state_size=ssm["d_state"],
        expand=ssm["expand"],
        conv_kernel=ssm["d_conv"],
        n_groups=ssm["ngroups"],
        use_bias=ssm["bias"],
        use_conv_bias=ssm["conv_bias"],
        time_step_min=ssm["dt_min"],
        time_step_max=ssm["dt_max"],
        time_step_floor=ssm["dt_init_floor"],
        time_step_limit=list(ssm["dt_limit"]),
        chunk_size=ssm["chunk_size"],
    )


def _mamba_config(ssm: dict, mixer) -> dict:
    return dict(
        model_type="mamba",
        state_size=ssm["d_state"],
        expand=ssm["expand"],
        conv_kernel=ssm["d_conv"],
        use_bias=ssm["bias"],
        use_conv_bias=ssm["conv_bias"],
        time_step_rank=mixer.dt_rank,
        time_step_scale=ssm["dt_scale"],
        time_step_min=ssm["dt_min"],
        time_step_max=ssm["dt_max"],
        time_step_init_scheme=ssm["dt_init"],
        time_step_floor=ssm["dt_init_floor"],
    )


def _llama_names(n_layer: int) -> list[tuple[str, str]]:
    """(our name, transformers' name) of every Transformer++ weight but the fused qkv_proj."""
    names = [
        ("embedding.weight", "model.embed_tokens.weight"),
        ("norm_f.weight", "model.norm.weight"),
        ("lm_head.weight", "lm_head.weight"),
    ]
    for i in range(n_layer):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        names += [
            (ours + "attn.out_proj.weight", theirs + "self_attn.o_proj.weight"),
            (ours + "attn_norm.weight", theirs + "input_layernorm.weight"),
            (ours + "mlp_norm.weight", theirs + "post_attention_layernorm.weight"),
        ]
        names += [
            (ours + f"mlp.{p}.weight", theirs + f"mlp.{p}.weight")
            for p in ("gate_proj", "up_proj", "down_proj")
        ]
    return names


# Weights with a row per token: cut to the vocabulary on export, padded to our width on import.
VOCAB_ROWS = {"backbone.embedding.weight", "embedding.weight", "lm_head.weight"}
MAMBA_EMBEDDING = ("backbone.embedding.", "backbone.embeddings.")  # ours, transformers'


def hf_state(model: LanguageModel) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names, the embedding cut to the real vocabulary."""
    vocab = model.config.vocab_size
    state = {k: v[:vocab] if k in VOCAB_ROWS else v for k, v in model.state_dict().items()}
    if isinstance(model, Mamba):
        return {k.replace(*MAMBA_EMBEDDING): v for k, v in state.items()}
    out = {theirs: state[ours] for ours, theirs in _llama_names(model.config.n_layer)}
    for i in range(model.config.n_layer):
        qkv = state[f"layers.{i}.attn.qkv_proj.weight"].chunk(3, dim=0)
        out |= {f"model.layers.{i}.self_attn.{p}_proj.weight": w for p, w in zip("qkv", qkv, strict=True)}
    return out


def hf_tokenizer(tokenizer_file: Path):
    """Our tokenizer.json as a PreTrainedTokenizerFast; EOS serves as BOS, padding and unknown too,
    as in GPT-NeoX's tokenizer (lm-eval's ``hf`` model then starts an empty context with EOS, as ours)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from seqarena.data import EOS

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(tokenizer_file)),
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=EVAL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )


def export_hf(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``model_dir`` (a seqarena or mamba_ssm checkpoint with its tokenizer.json) as a
    transformers folder at ``out_dir``: config.json, model.safetensors, tokenizer files. The folder
    is written beside ``out_dir`` and renamed into place, so a failure leaves the old one whole."""
    import transformers

    from seqarena.models import from_pretrained

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"{tokenizer_file} is missing: an exported model needs its tokenizer")
    model = from_pretrained(str(model_dir)).float()
    tokenizer = hf_tokenizer(tokenizer_file)
    config = hf_config(model, tokenizer.eos_token_id)
    model_type = config.pop("model_type")
    config_cls = transformers.AutoConfig.for_model(model_type).__class__
    hf_cls = getattr(transformers, HF_MODEL_TYPES[model_type])
    with torch.device("meta"):
        hf_model = hf_cls(config_cls(**config))
    missing, unexpected = hf_model.load_state_dict(hf_state(model), strict=False, assign=True)
    tied = {"lm_head.weight"} if config["tie_word_embeddings"] else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"{model_dir}: weights do not map onto {hf_cls.__name__}: "
            f"missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}"
        )
    hf_model.tie_weights()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        hf_model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        old = out_dir.with_name(f".{out_dir.name}.old")
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


@dataclass
class ExportConfig:
    model_dir: str = option(help="a seqarena checkpoint folder with its tokenizer.json", positional=True)
    out_dir: str = option(help="the folder to write (replaced whole)", positional=True)
    format: str = option("hf", help="hf: Llama, Mamba or Mamba2 classes", choices=["hf"])
    tracking_uri: str = option("none", help="also register it in this MLflow store; none: do not")
    experiment: str = option("seqarena", help="where its run is looked for if need be")
    model_id: str | None = option(None, help="the registered name (default: the checkpoint folder's name)")


def export_command(cfg: ExportConfig) -> None:
    """A checkpoint as a transformers folder; with a tracking store, also an MLflow model registered
    under its model id and linked to its training run."""
    try:
        out = export_hf(cfg.model_dir, cfg.out_dir)
    except NotExportable as e:
        sys.exit(str(e))
    print(f"exported {cfg.model_dir} to {out} (transformers' AutoModelForCausalLM.from_pretrained reads it)")
    if cfg.tracking_uri != "none":
        model_id = cfg.model_id or Path(cfg.model_dir).name
        version = register_hf_model(cfg.tracking_uri, cfg.experiment, model_id, Path(cfg.model_dir), out)
        print(
            f"registered as {model_id!r} version {version.version} (run {version.run_id}): "
            f"mlflow.transformers.load_model('models:/{model_id}/{version.version}')"
        )


# ---------------------------------------------------------------------------------------------
# transformers -> seqarena


def _require(hf, config_file: Path, field: str, wanted) -> None:
    value = getattr(hf, field, wanted)
    if value != wanted:
        raise ValueError(
            f"{config_file}: {field}={value!r}; seqarena's {hf.model_type} model needs {wanted!r}"
        )


def config_from_hf(config_file: Path) -> MambaConfig | TransformerConfig:
    """Our config of a transformers Llama, Mamba or Mamba2 config.json (read by transformers, so its
    defaults and older spellings apply); what seqarena cannot build is named, with the file."""
    import transformers

    hf = transformers.AutoConfig.from_pretrained(Path(config_file).parent)
    _require(hf, config_file, "hidden_act", "silu")
    common = dict(
        n_layer=hf.num_hidden_layers,
        d_model=hf.hidden_size,
        vocab_size=hf.vocab_size,
        tie_embeddings=hf.tie_word_embeddings,
    )
    if hf.model_type == "llama":
        return _config_from_llama(hf, config_file, common)
    _require(hf, config_file, "layer_norm_epsilon", 1e-5)  # mamba_ssm's norms (ours) use 1e-5
    ssm = _mamba2_ssm_cfg(hf, config_file) if hf.model_type == "mamba2" else _mamba_ssm_cfg(hf)
    return MambaConfig(ssm_cfg=ssm, residual_in_fp32=hf.residual_in_fp32, **common)


def _config_from_llama(hf, config_file: Path, common: dict) -> TransformerConfig:
    rope = dict(getattr(hf, "rope_parameters", None) or {"rope_theta": getattr(hf, "rope_theta", 10000.0)})
    _require(hf, config_file, "num_key_value_heads", hf.num_attention_heads)
    _require(hf, config_file, "head_dim", hf.hidden_size // hf.num_attention_heads)
    _require(hf, config_file, "attention_bias", False)
    _require(hf, config_file, "mlp_bias", False)
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"{config_file}: rope_type={rope['rope_type']!r}; seqarena's llama needs 'default'")
    return TransformerConfig(
        n_head=hf.num_attention_heads,
        d_ff=hf.intermediate_size,
        rope_theta=rope["rope_theta"],
        norm_eps=hf.rms_norm_eps,
        **common,
    )


def _mamba2_ssm_cfg(hf, config_file: Path) -> dict:
    _require(hf, config_file, "num_heads", hf.expand * hf.hidden_size // hf.head_dim)
    return dict(
        layer="Mamba2",
        d_state=hf.state_size,
        d_conv=hf.conv_kernel,
        expand=hf.expand,
        headdim=hf.head_dim,
        ngroups=hf.n_groups,
        bias=hf.use_bias,
        conv_bias=hf.use_conv_bias,
        dt_min=hf.time_step_min,
        dt_max=hf.time_step_max,
        dt_init_floor=hf.time_step_floor,
        dt_limit=tuple(hf.time_step_limit),
        chunk_size=hf.chunk_size,
    )


def _mamba_ssm_cfg(hf) -> dict:
    """Mamba-1's ssm_cfg, holding only what differs from mamba_ssm's defaults (as mamba_ssm's own)."""
    ssm = dict(
        d_state=hf.state_size,
        d_conv=hf.conv_kernel,
        expand=hf.expand,
        dt_rank=hf.time_step_rank,
        bias=hf.use_bias,
        conv_bias=hf.use_conv_bias,
        dt_min=hf.time_step_min,
        dt_max=hf.time_step_max,
        dt_init=hf.time_step_init_scheme,
        dt_scale=hf.time_step_scale,
        dt_init_floor=hf.time_step_floor,
    )
    if ssm["dt_rank"] == math.ceil(hf.hidden_size / 16):
        ssm["dt_rank"] = "auto"
    return {k: v for k, v in ssm.items() if v != SSM_DEFAULTS[k]}


def state_from_hf(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """transformers' weights under our names, the embedding padded with zero rows to our width
    (a tied lm_head may be absent: from_pretrained ties it)."""
    if isinstance(config, MambaConfig):
        out = {k.replace(*MAMBA_EMBEDDING[::-1]): v for k, v in state.items()}
    else:
        out = {ours: state[theirs] for ours, theirs in _llama_names(config.n_layer) if theirs in state}
        for i in range(config.n_layer):
            qkv = [state[f"model.layers.{i}.self_attn.{name}_proj.weight"] for name in "qkv"]
            out[f"layers.{i}.attn.qkv_proj.weight"] = torch.cat(qkv, dim=0)
    rows = pad_vocab(config.vocab_size, config.pad_vocab_size_multiple)
    for key in VOCAB_ROWS & out.keys():
        weight = out[key]
        out[key] = torch.cat([weight, weight.new_zeros(rows - weight.shape[0], *weight.shape[1:])])
    return out
