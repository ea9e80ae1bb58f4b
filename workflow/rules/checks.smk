"""Checks before any job runs: the config's dataset, the hub where this run needs it, and one config
per results folder. `onstart` runs them on real runs only, never dry runs or a cluster job's own run.
"""

import glob
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger


def check_dataset():
    """The training data must be one of `data`, before any job runs."""
    if config["train"]["dataset"] not in config["data"]:
        raise ValueError(
            f"config key train.dataset: {config['train']['dataset']!r} is not one of data: {sorted(config['data'])}"
        )


check_dataset()


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


class JobWildcards(dict):
    """A job's wildcards before there is a job: by key and by attribute, as input functions read them."""

    __getattr__ = dict.__getitem__


def memory_plan():
    """Each training job as `seqarena memory` reads it: its model, options and resources."""
    tokenizer = config["data"][config["train"]["dataset"]]["tokenizer"]
    plan = []
    for model in config["models"]:
        wildcards = JobWildcards(model=model)
        plan.append(
            {
                "model": model,
                "train": train_options(wildcards),
                "tokenizer": tokenizer,
                "processes": configured("train", "gpu", wildcards),
                "device": config["device"],
                "mem_mb": configured("train", "mem_mb", wildcards),
                "gpu_memory_gb": config.get("gpu_memory_gb"),
            }
        )
    return plan


def check_memory():
    """Name, before anything is submitted, the GPU training jobs whose estimated memory passes
    their GPU's or their mem_mb (seqarena.training.memory; the driver runs the command, as it
    never imports the package)."""
    seqarena = shutil.which("seqarena")
    if (
        not workflow.is_main_process
        or config["device"] != "cuda"
        or not config["models"]
    ):
        return  # a job's own Snakemake (on a node) does not check again
    if seqarena is None:
        logger.info(
            "no memory estimate: the seqarena command is not on this host's PATH"
        )
        return
    done = subprocess.run(
        [seqarena, "memory", "--plan", json.dumps(memory_plan())],
        capture_output=True,
        text=True,
    )
    for line in done.stdout.splitlines():
        logger.warning(f"memory: {line}")
    if done.returncode:
        logger.warning(f"the memory estimate failed: {done.stderr.strip()[-2000:]}")


check_memory()


CONFIG_RECORD = f"{RESULTS}/configfiles.txt"
# --config keys that say where results and their tracking go, not what they are
PLACEMENT_KEYS = ("results", "tracking_uri")


def dotted(options, prefix=""):
    """{'train': {'steps': 20}} -> {'train.steps': 20}."""
    flat = {}
    for key, value in options.items():
        if isinstance(value, dict):
            flat |= dotted(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_record():
    """This run's config files (relative to the working directory: a results folder moved with
    its checkout keeps its record) and its --config overrides, but where the results go.
    """
    overrides = dotted(dict(workflow.config_settings.config))
    return [
        *sorted({os.path.relpath(f) for f in workflow.configfiles}),
        *sorted(
            f"--config {key}={value}"
            for key, value in overrides.items()
            if key.split(".")[0] not in PLACEMENT_KEYS
        ),
    ]


def check_config_record():
    """One results folder holds one config's results: the config files and --config overrides
    of its first run are recorded there, and a run with others is refused, naming both (an
    override such as train.steps changes what a model is: give it a results folder of its own).
    """
    record = config_record()
    if os.path.exists(CONFIG_RECORD):
        with open(CONFIG_RECORD) as f:
            recorded = f.read().splitlines()
        if recorded != record:
            raise WorkflowError(
                f"{RESULTS}/ holds the results of {recorded} ({CONFIG_RECORD}); this run's "
                f"config is {record}. Results of different configs are not mixed: run with the "
                f"same --configfile and --config, give this run its own folder (--config "
                f"results=results/other), or delete {CONFIG_RECORD} to mix them."
            )
        return
    os.makedirs(RESULTS, exist_ok=True)
    with open(f"{CONFIG_RECORD}.tmp", "w") as f:
        f.write("\n".join(record) + "\n")
    os.replace(f"{CONFIG_RECORD}.tmp", CONFIG_RECORD)


onstart:
    check_hub()
    check_config_record()


onsuccess:
    report_html = f"{RESULTS}/reports/report.html"
    if (
        os.path.exists(report_html)
        and workflow.is_main_process
        and not workflow.dryrun
    ):
        logger.info(
            f"The report: {report_html}. The runs, in MLflow's UI: "
            f"seqarena ui --results {shlex.quote(RESULTS)} "
            f"--experiment {shlex.quote(config['experiment'])}"
        )
