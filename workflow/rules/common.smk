"""Helpers shared by the rules: paths, the resolved model list, CLI arguments from config."""

import os
import shlex

from seqarena.models import parse_model_id

RESULTS = config["results"]


def check_models():
    """Unknown architectures or sizes fail before any job runs, naming the config key."""
    for i, model in enumerate(config["models"]):
        try:
            parse_model_id(model)
        except ValueError as e:
            raise ValueError(f"config key models[{i}]: {e}") from None
    if config["train"]["dataset"] not in config["data"]:
        raise ValueError(
            f"config key train.dataset: {config['train']['dataset']!r} is not one of data: {sorted(config['data'])}"
        )


check_models()


def tracking_uri():
    return config["tracking_uri"] or f"sqlite:///{os.path.abspath(RESULTS)}/mlflow.db"


def cli_flags(options: dict) -> str:
    """{'vocab_size': 4096, 'streaming': True} -> '--vocab-size 4096 --streaming' (None and False dropped)."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value not in (None, False):
            flags += [flag, shlex.quote(str(value))]
    return " ".join(flags)


def download_args(wildcards):
    return cli_flags(config["data"][wildcards.dataset]["source"])


def tokenize_args(wildcards):
    tokenizer = dict(config["data"][wildcards.dataset]["tokenizer"])
    flags = {"tokenizer": tokenizer.pop("kind"), **tokenizer}
    return cli_flags(flags)


def train_data():
    return f"{RESULTS}/data/{config['train']['dataset']}"


def train_args(wildcards):
    options = {k: v for k, v in config["train"].items() if k != "dataset"}
    return cli_flags(
        {
            **options,
            "dataset": config["train"]["dataset"],
            "experiment": config["experiment"],
            "tracking_uri": tracking_uri(),
        }
    )


def train_summaries():
    return expand(f"{RESULTS}/train/{{model}}/summary.json", model=config["models"])
