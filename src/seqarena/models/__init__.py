"""Transformer++ and Mamba language models, the size registry, and checkpoint loading."""

import json
from pathlib import Path

import torch

from seqarena.models.base import CONFIG_NAME, WEIGHTS_NAME, LanguageModel
from seqarena.models.families import FAMILIES, Family, family_of
from seqarena.models.mamba import Mamba, MambaConfig
from seqarena.models.sizes import SIZES, build_model, matched_model, model_config, model_ids, parse_model_id
from seqarena.models.transformer import Transformer, TransformerConfig

# state-spaces/mamba-* (and mamba_ssm's save_pretrained) write PyTorch pickles.
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
# transformers' sharded safetensors (the larger state-spaces/mamba-*-hf): an index naming the shards.
SHARDED_WEIGHTS_NAME = "model.safetensors.index.json"
WEIGHT_FILES = (WEIGHTS_NAME, SHARDED_WEIGHTS_NAME, TORCH_WEIGHTS_NAME)
# transformers' model_type -> its class, for the layouts seqarena reads and writes (seqarena.hf).
HF_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}

__all__ = [
    "FAMILIES",
    "SIZES",
    "Family",
    "LanguageModel",
    "Mamba",
    "MambaConfig",
    "Transformer",
    "TransformerConfig",
    "build_model",
    "config_from_dict",
    "family_of",
    "from_pretrained",
    "matched_model",
    "model_config",
    "model_ids",
    "parse_model_id",
    "pretrained_id",
    "pretrained_name",
]


def config_from_dict(data: dict, source: str = "config") -> MambaConfig | TransformerConfig:
    """Tell the architecture from a config.json: ours says ``arch``; mamba_ssm's has ``ssm_cfg``."""
    try:
        if data.get("arch") == "transformer":
            return TransformerConfig.from_dict(data)
        if "ssm_cfg" in data:
            return MambaConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from e
    raise ValueError(f"{source}: neither a seqarena Transformer nor a Mamba (mamba_ssm) config")


def _checkpoint_files(name_or_path: str) -> tuple[Path, Path]:
    """(config.json, weights file) of a local folder or, with network, a hub repository."""
    path = Path(name_or_path)
    if path.is_dir():
        for weights in WEIGHT_FILES:
            if (path / weights).is_file():
                if not (path / CONFIG_NAME).is_file():
                    raise FileNotFoundError(f"{path / CONFIG_NAME} is missing beside {weights}")
                return path / CONFIG_NAME, path / weights
        raise FileNotFoundError(f"{path} holds none of {', '.join(WEIGHT_FILES)}")
    if path.exists() or name_or_path.count("/") != 1 or name_or_path.startswith((".", "/")):
        raise FileNotFoundError(f"no checkpoint folder at {name_or_path!r} (and it is no hub id)")
    return _hub_files(name_or_path)


def _hub_files(repo_id: str) -> tuple[Path, Path]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        config = hf_hub_download(repo_id, CONFIG_NAME)
        for weights in WEIGHT_FILES:
            try:
                weights_file = Path(hf_hub_download(repo_id, weights))
            except EntryNotFoundError:
                continue
            for shard in _shards(weights_file):  # into the same snapshot folder as the index
                hf_hub_download(repo_id, shard)
            return Path(config), weights_file
    except Exception as e:
        raise RuntimeError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "without network, download it elsewhere and pass the local folder instead"
        ) from e
    raise FileNotFoundError(f"hub repository {repo_id!r} holds none of {', '.join(WEIGHT_FILES)}")


def _shards(weights_file: Path) -> list[str]:
    """The shard files a sharded index names (none for a single weights file)."""
    if weights_file.name != SHARDED_WEIGHTS_NAME:
        return []
    return sorted(set(json.loads(weights_file.read_text())["weight_map"].values()))


def _load_weights(weights_file: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, a PyTorch pickle, or the shards beside a sharded index."""
    from safetensors.torch import load_file

    if weights_file.name == SHARDED_WEIGHTS_NAME:
        state = {}
        for shard in _shards(weights_file):
            if not (weights_file.parent / shard).is_file():
                raise FileNotFoundError(f"{weights_file.parent / shard} is missing: {weights_file} names it")
            state |= load_file(weights_file.parent / shard)
        return state
    if weights_file.suffix == ".safetensors":
        return load_file(weights_file)
    return torch.load(weights_file, map_location="cpu", weights_only=True)


def pretrained_name(model_id: str) -> str:
    """state-spaces/mamba-130m -> state-spaces--mamba-130m: a file name (the hub cache's convention)."""
    return model_id.replace("/", "--")


def pretrained_id(name: str) -> str:
    return name.replace("--", "/")


def from_pretrained(name_or_path: str, device="cpu", dtype: torch.dtype | None = None) -> LanguageModel:
    """Load a checkpoint: a seqarena folder, a state-spaces/mamba-* style folder
    (config.json + pytorch_model.bin), a transformers Llama, Mamba or Mamba2 folder (``seqarena
    export``'s, ``state-spaces/mamba-130m-hf``), or a hub id such as ``state-spaces/mamba-130m``."""
    config_file, weights_file = _checkpoint_files(str(name_or_path))
    data = json.loads(config_file.read_text())
    hf_layout = data.get("model_type") in HF_MODEL_TYPES  # transformers': our export, state-spaces/*-hf
    if hf_layout:
        from seqarena.hf import config_from_hf, state_from_hf

        config = config_from_hf(config_file)
    else:
        config = config_from_dict(data, str(config_file))
    model = (Mamba if isinstance(config, MambaConfig) else Transformer)(config)
    state = _load_weights(weights_file)
    if hf_layout:
        state = state_from_hf(state, config)
    if config.tie_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state[next(k for k in state if k.endswith("embedding.weight"))]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{weights_file} does not fit {config_file}: {e}") from e
    return model.to(device=device, dtype=dtype)
