"""The inputs of config/rehearsal.yaml, the paper path in miniature: ``python tests/rehearsal.py DIR``
writes DIR/rehearsal/ (then run snakemake from DIR with --configfile config/rehearsal.yaml).

- ``pile/``: a streaming corpus in the Pile's own on-disk format, jsonl.zst shards of
  {"text", "meta"} records, generated from Tiny Shakespeare;
- ``20B_tokenizer.json``: the GPT-NeoX tokenizer (the paper's), from ../shared/data;
- ``tasks/``: the six Table 3 tasks as local lm-eval YAMLs with the paper's metric for each
  (acc; acc_norm for HellaSwag and ARC-Challenge): LAMBADA and PIQA over the shared copies,
  the other four over generated questions of the same shape;
- ``state-spaces-mamba/``: a published-checkpoint layout (config.json without
  ``tie_embeddings`` + pytorch_model.bin, no tokenizer), as ``state-spaces/mamba-*`` ship.
"""

import json
import random
import shutil
import sys
from pathlib import Path

import torch
import zstandard

from conftest import write_multiple_choice_task

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LIMIT = 400  # lines of the shared files the local tasks read

LAMBADA = """task: lambada_openai_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _pile(folder: Path, shards: int = 3) -> None:
    """Tiny Shakespeare's paragraphs as Pile records, spread over zstd-compressed jsonl shards."""
    paragraphs = [p for p in (SHARED_DATA / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(paragraphs) // shards)
    for shard in range(shards):
        records = paragraphs[shard * per_shard : (shard + 1) * per_shard]
        lines = "".join(json.dumps({"text": t, "meta": {"pile_set_name": "Gutenberg (PG-19)"}}) + "\n"
                        for t in records)  # fmt: skip
        (folder / f"{shard:02d}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))


def _questions(rng: random.Random, count: int, choices: int) -> list[dict]:
    """Generated questions whose right answer continues the sentence, as HellaSwag, ARC and
    WinoGrande ask (their shape, not their content)."""
    subjects = ["The king", "A sailor", "The old woman", "My brother", "The soldier", "A merchant"]
    endings = ["went home to sleep.", "sold the horse at the market.", "sang a song of the sea.",
               "lit a candle in the dark.", "wrote to the queen.", "crossed the river at dawn."]  # fmt: skip
    docs = []
    for _ in range(count):
        options = rng.sample(endings, choices)
        docs.append({"question": rng.choice(subjects), **{f"c{i}": o for i, o in enumerate(options)},
                     "label": rng.randrange(choices)})  # fmt: skip
    return docs


def _tasks(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lambada = folder / "lambada.jsonl"
    lambada.write_text("".join((SHARED_DATA / "lambada_test.jsonl").read_text().splitlines(True)[:LIMIT]))
    (folder / "lambada_openai_local.yaml").write_text(LAMBADA.format(data=lambada))
    piqa = [json.loads(line) for line in (SHARED_DATA / "piqa_valid.jsonl").read_text().splitlines()[:LIMIT]]
    write_multiple_choice_task(folder, "piqa_local", piqa, "Question: {{goal}}\\nAnswer:", "{{[sol1, sol2]}}")
    rng = random.Random(0)
    for name, choices in (("hellaswag_local", 4), ("arc_easy_local", 4), ("arc_challenge_local", 4),
                          ("winogrande_local", 2)):  # fmt: skip
        options = ", ".join(f"c{i}" for i in range(choices))
        write_multiple_choice_task(
            folder, name, _questions(rng, 40, choices), "{{question}}", f"{{{{[{options}]}}}}"
        )


def _published_checkpoint(folder: Path) -> None:
    """A Mamba in the layout state-spaces/mamba-* ship: mamba_ssm's config.json, a torch pickle."""
    from seqarena.models import build_model

    torch.manual_seed(0)
    model = build_model("mamba-tiny", vocab_size=50277)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    config = model.config_dict()
    config.pop("tie_embeddings")  # the published files predate this field
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def write_rehearsal_inputs(root: Path) -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"the rehearsal reads ../shared/data (not found at {SHARED_DATA})")
    folder = Path(root) / "rehearsal"
    _pile(folder / "pile")
    shutil.copyfile(SHARED_DATA / "20B_tokenizer.json", folder / "20B_tokenizer.json")
    _tasks(folder / "tasks")
    _published_checkpoint(folder / "state-spaces-mamba")
    return folder


if __name__ == "__main__":
    print(f"rehearsal inputs in {write_rehearsal_inputs(Path(sys.argv[1] if len(sys.argv) > 1 else '.'))}")
