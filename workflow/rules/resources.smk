"""What a job runs with: its conda env, the device every job computes on, and its resources (threads,
memory, runtime, GPUs, nodes) from the config's `resources` table."""

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


def cuda_series(env_file):
    """The CUDA series an env file pins (its cuda-version=X.Y)."""
    with open(env_file) as f:
        dependencies = yaml.safe_load(f)["dependencies"]
    pins = [d for d in dependencies if isinstance(d, str)]
    return next(d.split("=", 1)[1] for d in pins if d.startswith("cuda-version="))


# Snakemake creates the envs in this process, on the host you submit from, which often has no
# GPU: conda then sees no `__cuda` virtual package and refuses packages that require one. The
# GPU env's CUDA series stands in for it (conda's documented override), unless already set.
if config["device"] == "cuda":
    os.environ.setdefault(
        "CONDA_OVERRIDE_CUDA",
        cuda_series(os.path.join(workflow.basedir, "envs/gpu.yaml")),
    )


# With the downloads on the submit host, the jobs that read the hub (tokenizing, evaluation) read
# only the cache that the prefetch job filled there: compute nodes often have no internet.
OFFLINE = (
    "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "
    if config["download_on_submit_host"]
    else ""
)


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
