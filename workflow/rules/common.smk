"""Helpers shared by the rules: paths, the resolved model list, CLI arguments from config, resources.

The driver stays light: only the standard library and Snakemake, never torch or seqarena (a
login node submits with Snakemake alone; each rule's software lives in its env). Model ids are
checked by the schema (its list of ids is tested against the package's size registry).
"""

import glob
import os
import re
import shlex
import urllib.error
import urllib.request

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

RESULTS = config["results"]


wildcard_constraints:
    model=r"[^/]+",
    task=r"[a-z_]+",
    arch=r"mamba|mamba_lti|mamba2|hybrid|transformer|transformer_abs",
    width=r"[0-9]+",
    seed=r"[0-9]+",
    ref=r"[^/]+",
    dataset=r"[^/]+",


# One conda env for every rule: the CPU env, or the GPU env whose post-deploy script builds
# mamba-ssm and causal-conv1d for the configured CUDA architectures.
ENV = f"../../envs/{'gpu' if config['device'] == 'cuda' else 'cpu'}.yaml"
# The envs' post-deploy scripts run in this process's environment: they install seqarena from
# this workflow's folder (a path in the env file would not survive Snakemake's copy of it), and
# the GPU env's builds the kernels for these archs. Every job computes on the config's device, a
# requirement (seqarena.device); with cuda, Mamba's scan runs on mamba_ssm's kernels or fails.
os.environ.update(
    SEQARENA_WORKFLOW_DIR=os.path.abspath(workflow.basedir),
    SEQARENA_CUDA_ARCHS=";".join(config["kernels"]["cuda_archs"]),
    SEQARENA_DEVICE=config["device"],
)
if config["device"] == "cuda":
    os.environ.setdefault("SEQARENA_SCAN_BACKEND", "cuda")


def check_dataset():
    """The training data must be one of `data`, before any job runs."""
    if config["train"]["dataset"] not in config["data"]:
        raise ValueError(
            f"config key train.dataset: {config['train']['dataset']!r} is not one of data: {sorted(config['data'])}"
        )


check_dataset()


def model_size(model):
    """mamba-130m -> 130m (the schema has checked the id)."""
    return model.split("-", 1)[1]


def pretrained_name(model_id):
    """state-spaces/mamba-130m -> state-spaces--mamba-130m: a file name, as seqarena.models names it."""
    return "--".join(model_id.split("/"))


# Stages that never use a GPU, whatever the device.
CPU_STAGES = ("download", "tokenize")
# One thread a job: on a CPU, two small jobs side by side finish sooner than one after the other at
# two threads each (a training step is 1.4x faster at 2 threads, not 2x; benchmarks/README.md).
# Benchmarks ask for 8: locally (capped at --cores) they then run alone, not beside training.
BUILTIN_RESOURCES = {"gpu": 1, "nodes": 1, "mem_mb": 8000, "runtime": 120, "threads": 1}
BUILTIN_STAGE_RESOURCES = {"bench": {"threads": 8}}


def configured(stage, key, wildcards):
    """A resource as the config sets it: the entry for the job's model size, else the stage's
    default, else the built-in default."""
    table = config["resources"].get(stage, {})
    size = model_size(wildcards["model"]) if "model" in wildcards.keys() else None
    return {
        **BUILTIN_RESOURCES,
        **BUILTIN_STAGE_RESOURCES.get(stage, {}),
        **table.get("default", {}),
        **table.get(size, {}),
    }[key]


def job_resources(stage, key):
    """A resource of one job as Snakemake (and SLURM) see it. runtime (minutes) grows with the
    attempt, so a retry of a job killed by its time limit gets longer. On a CPU config a job asks
    for no GPU: its `gpu` entry is how many processes training runs (a rehearsal of the GPU launch).
    """

    def value(wildcards, attempt):
        if key == "gpu" and (config["device"] == "cpu" or stage in CPU_STAGES):
            return 0
        if key == "runtime":
            return configured(stage, key, wildcards) * attempt
        return configured(stage, key, wildcards)

    return value


def gpu_slot(wildcards, resources):
    """A GPU job runs under `seqarena gpus`, which gives it GPUs of its own (CUDA_VISIBLE_DEVICES)
    when it shares a machine with other jobs; inside a SLURM allocation it keeps the allocation's.
    """
    return f"seqarena gpus --count {resources.gpu} -- " if resources.get("gpu") else ""


def train_nodes(wildcards):
    return configured("train", "nodes", wildcards)


def multinode(key):
    """SLURM resources of a training job on several nodes (None drops them for one node): one task
    per node that srun starts (`mpi`), and the GPUs as a per-node gres."""

    def value(wildcards):
        nodes = train_nodes(wildcards)
        if nodes == 1:
            return None
        gpus = (
            configured("train", "gpu", wildcards) if config["device"] == "cuda" else 0
        )
        return {
            "nodes": nodes,
            "tasks": nodes,
            "mpi": "srun",
            "gres": f"gpu:{gpus}" if gpus else None,
            "tasks_per_gpu": 0 if gpus else None,
        }[key]

    return value


def train_gpus(wildcards, attempt):
    """GPUs of a one-node training job (a job on several nodes asks for them per node: `gres`)."""
    return (
        None
        if train_nodes(wildcards) > 1
        else job_resources("train", "gpu")(wildcards, attempt)
    )


def launcher(wildcards, resources):
    """`seqarena`, or `seqarena launch` with one process per GPU (per `gpu` entry on a CPU) on each
    of the job's nodes: torchrun on one node, srun + torchrun across several."""
    nodes = train_nodes(wildcards)
    processes = max(1, configured("train", "gpu", wildcards))
    slot = gpu_slot(wildcards, resources)
    if nodes == 1 and processes == 1:
        return f"{slot}seqarena"
    return f"{slot}seqarena launch --nodes {nodes} --nproc-per-node {processes} --"


def tracking_uri():
    return config["tracking_uri"] or f"sqlite:///{os.path.abspath(RESULTS)}/mlflow.db"


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


def download_args(wildcards):
    return cli_flags(config["data"][wildcards.dataset]["source"])


def tokenize_args(wildcards):
    tokenizer = dict(config["data"][wildcards.dataset]["tokenizer"])
    flags = {"tokenizer": tokenizer.pop("kind"), **tokenizer}
    return cli_flags(flags)


def train_data():
    return f"{RESULTS}/data/{config['train']['dataset']}"


def train_args(wildcards):
    options = {
        k: v for k, v in config["train"].items() if k not in ("dataset", "seeds")
    }
    # train_seed: a repeat at another seed, with an MLflow run of its own
    if "seed" in wildcards.keys():
        seed = wildcards.seed
        options |= {"seed": int(seed), "run_name": f"{wildcards.model}/seed{seed}"}
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


def train_seed_summaries():
    """The repeats of each model's training at train.seeds (but its own seed, train.seed)."""
    own = config["train"].get("seed", 0)
    return expand(
        f"{RESULTS}/train/{{model}}/seed{{seed}}/summary.json",
        model=config["models"],
        seed=[s for s in config["train"]["seeds"] if s != own],
    )


def bench_args(kind):
    """The bench's own options; the training bench compiles as training does."""
    training = kind == "training"
    compiles = {"compile": config["train"].get("compile", False)} if training else {}
    return cli_flags(
        {
            **config["bench"][kind],
            **compiles,
            "experiment": config["experiment"],
            "tracking_uri": tracking_uri(),
        }
    )


def bench_results():
    return [
        f"{RESULTS}/bench/kernels.csv",
        *expand(f"{RESULTS}/bench/generation/{{model}}.json", model=config["models"]),
        *expand(f"{RESULTS}/bench/training/{{model}}.json", model=config["models"]),
    ]


def eval_args(wildcards):
    """Our checkpoints carry their tokenizer; the published ones get eval.tokenizer."""
    options = {
        k: v for k, v in config["eval"].items() if k not in ("pretrained", "tokenizer")
    }
    return cli_flags(
        {**options, "experiment": config["experiment"], "tracking_uri": tracking_uri()}
    )


def pretrained_eval_args(wildcards):
    return f"{eval_args(wildcards)} {cli_flags({'tokenizer': config['eval']['tokenizer']})}"


def pretrained_id(wildcards):
    return next(
        p for p in config["eval"]["pretrained"] if pretrained_name(p) == wildcards.ref
    )


def eval_results():
    return [
        *expand(f"{RESULTS}/eval/{{model}}.json", model=config["models"]),
        *expand(
            f"{RESULTS}/eval/pretrained/{{ref}}.json",
            ref=[pretrained_name(p) for p in config["eval"]["pretrained"]],
        ),
    ]


# The families that transformers has a class for (seqarena.hf); it has none for the hybrids,
# mamba_lti or absolute sinusoidal positions (transformer_abs).
HF_EXPORTABLE = ("mamba", "mamba2", "transformer")


def export_args(wildcards):
    return cli_flags(
        {
            "model_id": wildcards.model,
            "experiment": config["experiment"],
            "tracking_uri": tracking_uri(),
        }
    )


def hf_exports():
    return [
        f"{RESULTS}/hf/{model}/config.json"
        for model in config["models"]
        if model.split("-", 1)[0] in HF_EXPORTABLE
    ]


def synthetic_args(wildcards):
    """The task's options, with its by_arch entry for this architecture over them."""
    task = config["synthetic"]["tasks"][wildcards.task]
    options = {
        **{k: v for k, v in task.items() if k not in ("d_model", "archs", "by_arch")},
        **task.get("by_arch", {}).get(wildcards.arch, {}),
    }
    return cli_flags(
        {**options, "experiment": config["experiment"], "tracking_uri": tracking_uri()}
    )


def synthetic_results():
    return [
        f"{RESULTS}/synthetic/{task}/{arch}-d{width}/seed{seed}.json"
        for task, options in config["synthetic"]["tasks"].items()
        for arch in options.get("archs", config["synthetic"]["archs"])
        for width in options["d_model"]
        for seed in config["synthetic"]["seeds"]
    ]


# --- Before any job runs (onstart: real runs only, never dry runs or a cluster job's own run) ---


def local_task_names():
    """The lm-eval tasks this run has on disk: the package's shipped ones and eval.include_path's."""
    folders = [os.path.join(workflow.basedir, "src/seqarena/embedded/tasks")]
    folders += (
        [config["eval"]["include_path"]] if config["eval"].get("include_path") else []
    )
    names = set()
    for folder in folders:
        for path in glob.glob(os.path.join(folder, "**", "*.yaml"), recursive=True):
            with open(path) as f:
                names.update(re.findall(r"^task:\s*(\S+)", f.read(), flags=re.M))
    return names


def hub_inputs():
    """(config key, what) for each thing this run would fetch from the hub because the output
    that needs it is still missing."""
    needed, dataset = [], config["train"]["dataset"]
    data = config["data"][dataset]
    if data["source"]["kind"] == "hf" and not os.path.exists(
        f"{RESULTS}/data/{dataset}/raw/source.json"
    ):
        needed.append((f"data.{dataset}.source.path", data["source"]["path"]))
    name = data["tokenizer"].get("tokenizer_name", "")
    if data["tokenizer"]["kind"] == "hf" and not os.path.isfile(name):
        if not os.path.exists(f"{RESULTS}/data/{dataset}/meta.json"):
            needed.append((f"data.{dataset}.tokenizer.tokenizer_name", name))
    if not all(os.path.exists(path) for path in eval_results()):
        hub_tasks = sorted(set(config["eval"]["tasks"]) - local_task_names())
        if hub_tasks:
            needed.append(("eval.tasks", ", ".join(hub_tasks)))
        hub_models = [p for p in config["eval"]["pretrained"] if not os.path.isdir(p)]
        if hub_models:
            needed.append(("eval.pretrained", ", ".join(hub_models)))
    return needed


def check_hub():
    """Fail at once, naming what needs the hub, when the hub does not answer: not after hours of
    jobs that need no network."""
    needed = hub_inputs()
    if not needed:
        return
    what = "; ".join(f"{key}: {value}" for key, value in needed)
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", ""):
        logger.warning(
            f"HF_HUB_OFFLINE is set: these must be in the Hugging Face cache: {what}"
        )
        return
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:  # urllib honours the proxy variables, as the hub's own client does
        urllib.request.urlopen(
            urllib.request.Request(endpoint, method="HEAD"), timeout=10
        )
    except urllib.error.HTTPError:
        pass  # it answered
    except OSError as e:
        raise WorkflowError(
            f"this config needs the Hugging Face hub, which does not answer "
            f"({endpoint}: {e}), for {what}. Without a network, run the embedded "
            f"default (config/config.yaml: data and tasks shipped in the package), or point "
            f"these keys at local files (data: kind local; eval.include_path: local task YAMLs)."
        ) from None


CONFIG_RECORD = f"{RESULTS}/configfiles.txt"


def check_config_record():
    """One results folder holds one config's results: the config files of its first run are
    recorded there, and a run with other config files is refused, naming both."""
    files = sorted({os.path.abspath(f) for f in workflow.configfiles})
    if os.path.exists(CONFIG_RECORD):
        with open(CONFIG_RECORD) as f:
            recorded = f.read().splitlines()
        if recorded != files:
            raise WorkflowError(
                f"{RESULTS}/ holds the results of config files {recorded} ({CONFIG_RECORD}); "
                f"this run's are {files}. Results of different configs are not mixed: run with "
                f"the same --configfile, give this config its own `results:` folder, or delete "
                f"{CONFIG_RECORD} to mix them."
            )
        return
    os.makedirs(RESULTS, exist_ok=True)
    with open(f"{CONFIG_RECORD}.tmp", "w") as f:
        f.write("\n".join(files) + "\n")
    os.replace(f"{CONFIG_RECORD}.tmp", CONFIG_RECORD)


onstart:
    check_hub()
    check_config_record()
