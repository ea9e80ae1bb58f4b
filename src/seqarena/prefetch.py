"""Everything a run fetches from the Hugging Face hub, fetched once on the host with the network.

Cluster compute nodes often have no internet. The pipeline's `prefetch` job runs where Snakemake
runs (beside the download) and fills the hub's cache with what the later jobs read: the
tokenizers, the published checkpoints' files, and the datasets of lm-eval's hub tasks. Those
jobs then run with ``HF_HUB_OFFLINE=1`` and ``HF_DATASETS_OFFLINE=1`` and read the cache (which
must be on a file system the nodes share: ``HF_HOME``). Each item is fetched by the call its job
makes, so the cache holds exactly what that call looks up.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from seqarena.files import atomic_write
from seqarena.options import option


@dataclass
class PrefetchConfig:
    out: str = option(help="the record of what was fetched (JSON)")
    tokenizers: list[str] = option([], help="tokenizer hub ids, comma-separated")
    models: list[str] = option([], help="published checkpoints' hub ids, comma-separated")
    tasks: list[str] = option([], help="lm-eval tasks whose datasets to fetch, comma-separated")
    include_path: str | None = option(None, help="a folder of local task YAMLs (their datasets too)")


def prefetch(cfg: PrefetchConfig) -> dict:
    """Fetch each item into the hub's cache; the record names each with the revision it got."""
    from huggingface_hub import snapshot_download

    from seqarena.data import load_hf_tokenizer
    from seqarena.eval import LOADED_FILES

    record = {"tokenizers": {}, "models": {}, "tasks": list(cfg.tasks)}
    for name in cfg.tokenizers:
        load_hf_tokenizer(name)  # as the tokenize job and the evaluation load it
        record["tokenizers"][name] = "tokenizer.json"
    for model in cfg.models:
        folder = snapshot_download(model, allow_patterns=list(LOADED_FILES))
        record["models"][model] = Path(folder).name  # the snapshot's commit
    if cfg.tasks:
        from lm_eval.tasks import get_task_dict

        from seqarena.embedded import TASKS
        from seqarena.eval import task_manager

        include = [TASKS, cfg.include_path] if cfg.include_path else [TASKS]
        get_task_dict(cfg.tasks, task_manager(cfg.tasks, include))  # each task loads its dataset
    return record


def prefetch_command(cfg: PrefetchConfig) -> None:
    """Fill the Hugging Face cache with what the run's jobs fetch, for compute nodes offline."""
    record = prefetch(cfg)
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(Path(cfg.out), lambda tmp: Path(tmp).write_text(text))
    print(text)
