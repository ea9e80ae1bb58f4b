"""The inputs of config/rehearsal.yaml, the paper path in miniature: ``python tests/rehearsal.py DIR``
writes DIR/rehearsal/ (then run snakemake from DIR with --configfile config/rehearsal.yaml).

- ``pile/``: a streaming corpus in the Pile's own on-disk format, jsonl.zst shards of
  {"text", "meta"} records, generated from Tiny Shakespeare;
- ``20B_tokenizer.json``: the GPT-NeoX tokenizer (the paper's), from ../shared/data;
- ``tasks/``: the six Table 3 tasks as local lm-eval YAMLs with the paper's metric for each
  (acc; acc_norm for HellaSwag and ARC-Challenge): LAMBADA and PIQA as config/tasks/ has them,
  over the shared copies, the other four over generated questions of the same shape;
- ``state-spaces-mamba/``: a published-checkpoint layout (config.json without
  ``tie_embeddings`` + pytorch_model.bin, no tokenizer), as ``state-spaces/mamba-*`` ship.
"""

import json
import random
import shutil
import sys
from pathlib import Path

import torch

from conftest import write_multiple_choice_task, write_pile_shards

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _questions(rng: random.Random, count: int, choices: int) -> list[dict]:
    """Generated questions whose right answer continues the sentence, as HellaSwag, ARC and
    WinoGrande ask (their shape, not their content)."""
    subjects = ["The king", "A sailor", "The old woman", "My brother", "The soldier", "A merchant"]
    endings = [
        "went home to sleep.",
        "sold the horse at the market.",
        "sang a song of the sea.",
        "lit a candle in the dark.",
        "wrote to the queen.",
        "crossed the river at dawn.",
    ]
    docs = []
    for _ in range(count):
        options = rng.sample(endings, choices)
        docs.append(
            {
                "question": rng.choice(subjects),
                **{f"c{i}": o for i, o in enumerate(options)},
                "label": rng.randrange(choices),
            }
        )
    return docs


def _tasks(folder: Path) -> None:
    """LAMBADA and PIQA: the project's own local task YAMLs (config/tasks/), pointed at the shared
    files by absolute path; the other four generated."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("lambada_openai_local", "piqa_local"):
        text = (REPO / "config/tasks" / f"{name}.yaml").read_text()
        (folder / f"{name}.yaml").write_text(text.replace("../shared/data/", f"{SHARED_DATA}/"))
    rng = random.Random(0)
    for name, choices in (
        ("hellaswag_local", 4),
        ("arc_easy_local", 4),
        ("arc_challenge_local", 4),
        ("winogrande_local", 2),
    ):
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
    paragraphs = [p for p in (SHARED_DATA / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    write_pile_shards(folder / "pile", paragraphs, shards=3, set_name="Gutenberg (PG-19)")
    shutil.copyfile(SHARED_DATA / "20B_tokenizer.json", folder / "20B_tokenizer.json")
    _tasks(folder / "tasks")
    _published_checkpoint(folder / "state-spaces-mamba")
    return folder


if __name__ == "__main__":
    print(f"rehearsal inputs in {write_rehearsal_inputs(Path(sys.argv[1] if len(sys.argv) > 1 else '.'))}")
