"""The shipped slices as lm-eval datasets (``custom_dataset: !function utils.NAME`` in the YAMLs)."""

from seqarena.embedded import task_dataset


def lambada_openai(**_):
    return task_dataset("lambada_openai.jsonl.gz", "test")


def piqa(**_):
    return task_dataset("piqa.jsonl.gz", "validation")
