"""Paths, targets and each job's command-line options from the config (``stage_args``).

The driver stays light: only the standard library and Snakemake, never torch or seqarena (a
login node submits with Snakemake alone; each rule's software lives in its env). Model ids and
families are checked by the schema (its lists are tested against the package's registries).
resources.smk says what a job runs with; checks.smk what is checked before any job runs.
"""

import os
import shlex

RESULTS = config["results"]


wildcard_constraints:
    model=r"[^/]+",
    task=r"[a-z_]+",
    arch="|".join(SCHEMA_TREE["$defs"]["family"]["enum"]),
    width=r"[0-9]+",
    seed=r"[0-9]+",
    ref=r"[^/]+",
    dataset=r"[^/]+",


def model_size(model):
    """mamba-130m -> 130m (the schema has checked the id)."""
    return model.split("-", 1)[1]


def pretrained_name(model_id):
    """state-spaces/mamba-130m -> state-spaces--mamba-130m: a file name, as seqarena.models names it."""
    return "--".join(model_id.split("/"))


def pretrained_id(wildcards):
    return next(
        p for p in config["eval"]["pretrained"] if pretrained_name(p) == wildcards.ref
    )


def tracking_uri():
    """The config's, or the sqlite file in the results folder, relative to the working directory
    as RESULTS is: a checkout moved elsewhere runs the same commands, so nothing reruns.
    """
    return config["tracking_uri"] or f"sqlite:///{RESULTS}/mlflow.db"


def cli_flags(options: dict) -> str:
    """{'vocab_size': 4096, 'streaming': True, 'lengths': [1, 2], 'weight_decay': 0} -> '--vocab-size
    4096 --streaming --lengths 1,2 --weight-decay 0' (None, False and "" dropped; 0 kept: in
    Python 0 == False, so a test of membership in (None, False, "") would drop it)."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, list):
            value = ",".join(map(str, value))
        if value is True:
            flags.append(flag)
        elif value is not None and value is not False and value != "":
            flags += [flag, shlex.quote(str(value))]
    return " ".join(flags)


# --- Each stage's options: its config section, as `seqarena <stage>` flags ---


def tokenizer_options(wildcards):
    tokenizer = dict(config["data"][wildcards.dataset]["tokenizer"])
    return {"tokenizer": tokenizer.pop("kind"), **tokenizer}


def size_options(model):
    """train.by_size's entry for the model's size (what it sets over train.*)."""
    return config["train"].get("by_size", {}).get(model_size(model), {})


def train_options(wildcards):
    """train.*, with the model size's by_size entry over it, but the keys only the driver reads; a
    repeat at another seed (train_seed) gets an MLflow run of its own."""
    options = {
        k: v
        for k, v in (config["train"] | size_options(wildcards.model)).items()
        if k not in ("dataset", "seeds", "by_size")
    }
    if "seed" in wildcards.keys():
        seed = wildcards.seed
        options |= {"seed": int(seed), "run_name": f"{wildcards.model}/seed{seed}"}
    return {**options, "dataset": config["train"]["dataset"]}


def eval_options(wildcards):
    """eval.*; our checkpoints carry their tokenizer, the published ones get eval.tokenizer."""
    options = {
        k: v for k, v in config["eval"].items() if k not in ("pretrained", "tokenizer")
    }
    if "ref" in wildcards.keys():
        options["tokenizer"] = config["eval"]["tokenizer"]
    return options


def synthetic_options(wildcards):
    """The task's options, with its by_arch entry for this architecture over them."""
    task = config["synthetic"]["tasks"][wildcards.task]
    return {
        **{k: v for k, v in task.items() if k not in ("d_model", "archs", "by_arch")},
        **task.get("by_arch", {}).get(wildcards.arch, {}),
    }


def hub_fetches(wildcards):
    """What the run's jobs read from the Hugging Face hub: the training data's tokenizer and, with
    published checkpoints, theirs (both where not a local file), those checkpoints, and the
    evaluation tasks' datasets (lm-eval loads each, local or not)."""
    tokenizer = config["data"][config["train"]["dataset"]]["tokenizer"]
    names = [tokenizer.get("tokenizer_name", "")] if tokenizer["kind"] == "hf" else []
    models = [p for p in config["eval"]["pretrained"] if not os.path.isdir(p)]
    names += [config["eval"].get("tokenizer", "")] if models else []
    return {
        "tokenizers": list(
            dict.fromkeys(n for n in names if n and not os.path.exists(n))
        ),
        "models": models,
        "tasks": config["eval"]["tasks"],
        "include_path": config["eval"].get("include_path"),
    }


STAGE_OPTIONS = {
    "prefetch": hub_fetches,
    "download": lambda w: config["data"][w.dataset]["source"],
    "tokenize": tokenizer_options,
    "train": train_options,
    "bench_kernels": lambda w: config["bench"]["kernels"],
    "bench_generation": lambda w: config["bench"]["generation"],
    # the training bench compiles as training does
    "bench_training": lambda w: {
        **config["bench"]["training"],
        "compile": config["train"].get("compile", False),
    },
    "eval": eval_options,
    "export": lambda w: {"model_id": w.model},
    "synthetic": synthetic_options,
    "scaling": lambda w: config["scaling"],
}
# Stages that log to MLflow: they get the experiment and the tracking store.
TRACKED_STAGES = set(STAGE_OPTIONS) - {"prefetch", "download", "tokenize", "scaling"}


def stage_args(stage, wildcards):
    """The flags of one job of ``stage``: its options from the config (STAGE_OPTIONS) and, for a
    stage that logs, where to."""
    options = dict(STAGE_OPTIONS[stage](wildcards))
    if stage in TRACKED_STAGES:
        options |= {"experiment": config["experiment"], "tracking_uri": tracking_uri()}
    return cli_flags(options)


# --- Targets ---


def train_data():
    return f"{RESULTS}/data/{config['train']['dataset']}"


def train_summaries():
    return expand(f"{RESULTS}/train/{{model}}/summary.json", model=config["models"])


def train_seeds(model):
    """The seeds a model's training repeats at: its size's train.by_size.<size>.seeds, else
    train.seeds (but its own seed, train.seed)."""
    own = config["train"].get("seed", 0)
    seeds = size_options(model).get("seeds", config["train"]["seeds"])
    return [s for s in seeds if s != own]


def train_seed_summaries():
    return [
        f"{RESULTS}/train/{model}/seed{seed}/summary.json"
        for model in config["models"]
        for seed in train_seeds(model)
    ]


def bench_results():
    return [
        f"{RESULTS}/bench/kernels.csv",
        *expand(f"{RESULTS}/bench/generation/{{model}}.json", model=config["models"]),
        *expand(f"{RESULTS}/bench/training/{{model}}.json", model=config["models"]),
    ]


def eval_results():
    return [
        *expand(f"{RESULTS}/eval/{{model}}.json", model=config["models"]),
        *expand(
            f"{RESULTS}/eval/pretrained/{{ref}}.json",
            ref=[pretrained_name(p) for p in config["eval"]["pretrained"]],
        ),
    ]


def hf_exports():
    """The models whose family has a transformers class (the schema's hf_exportable_family)."""
    exportable = SCHEMA_TREE["$defs"]["hf_exportable_family"]["enum"]
    return [
        f"{RESULTS}/hf/{model}/config.json"
        for model in config["models"]
        if model.split("-", 1)[0] in exportable
    ]


def synthetic_results():
    return [
        f"{RESULTS}/synthetic/{task}/{arch}-d{width}/seed{seed}.json"
        for task, options in config["synthetic"]["tasks"].items()
        for arch in options.get("archs", config["synthetic"]["archs"])
        for width in options["d_model"]
        for seed in config["synthetic"]["seeds"]
    ]
