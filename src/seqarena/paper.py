"""Facts from the Mamba paper (Gu & Dao 2023) that the pipeline compares against."""

# Table 3's zero-shot tasks, in lm-evaluation-harness names.
PAPER_TASKS = ["lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande"]

# The metric Table 3 reports for each task: "accuracy for LAMBADA, WinoGrande, PIQA, and ARC-easy,
# and accuracy normalized by sequence length for HellaSwag and ARC-challenge" (Appendix E.2.3).
PAPER_METRIC = {
    "lambada_openai": "acc",
    "hellaswag": "acc_norm",
    "piqa": "acc",
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "winogrande": "acc",
}


def paper_task(task: str) -> str | None:
    """The Table 3 task an lm-eval task stands for: itself, or a local copy named ``<task>_local``."""
    name = task.removesuffix("_local")
    return name if name in PAPER_METRIC else None
