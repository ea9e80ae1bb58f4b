"""How a training job starts its processes: ``seqarena launch --nodes N --nproc-per-node P -- ARGS``.

- one process: ``seqarena ARGS``;
- one node, several processes: ``torchrun --standalone`` (one per GPU; gloo on a CPU);
- several nodes: inside a SLURM allocation, ``srun`` starts one torchrun agent per task, and
  the agents meet through a c10d rendezvous on the allocation's first node (torch's own
  multi-node recipe). The agent on that node serves the rendezvous store; the others join it.
"""

import os
import subprocess
import sys
from dataclasses import dataclass

from seqarena.options import option

RENDEZVOUS_PORT = 29500  # plus the job id modulo 10000, so two jobs on one node do not collide


def first_node(job_id: str) -> str:
    """The allocation's first host: SLURM_JOB_NODELIST, or squeue where the job step's environment
    lacks it (Snakemake's jobstep executor keeps only the job id), expanded by scontrol."""
    nodelist = (
        os.environ.get("SLURM_JOB_NODELIST")
        or subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    ).stdout.split()
    if not hosts:
        raise RuntimeError(f"SLURM job {job_id}: no nodes in its node list {nodelist!r}")
    return hosts[0]


def command(nodes: int, nproc_per_node: int, args: list[str]) -> list[str]:
    """The command line that runs ``seqarena ARGS`` on nodes x nproc_per_node processes."""
    if nodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nodes and nproc_per_node must be positive, not {nodes} and {nproc_per_node}")
    if nodes == 1 and nproc_per_node == 1:
        return [sys.executable, "-m", "seqarena.cli", *args]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node)]
    if nodes == 1:
        return [*torchrun, "--standalone", "-m", "seqarena.cli", *args]
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        raise ValueError(
            f"a job on {nodes} nodes starts its processes with srun, inside a SLURM allocation "
            "(no SLURM_JOB_ID here): submit with --workflow-profile profiles/slurm, or set the config's "
            "resources.train.<size>.nodes to 1"
        )
    endpoint = f"{first_node(job_id)}:{RENDEZVOUS_PORT + int(job_id) % 10000}"
    return [
        "srun",
        "--ntasks",
        str(nodes),
        "--kill-on-bad-exit=1",
        *torchrun,
        "--nnodes",
        str(nodes),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        job_id,
        "-m",
        "seqarena.cli",
        *args,
    ]


# torchrun passes a stop signal on to its workers and kills them 30 s later by default: too soon
# for a large model's checkpoint. profiles/slurm signals 300 s before the time limit; the workers
# get 240 of them: TORCH_ELASTIC_SHUTDOWN_TIMEOUT (pytorch PR #172596; torch 2.13 reads it, an
# older torchrun ignores it and keeps its 30 s).
STOP_GRACE_S = 240


def launch(nodes: int, nproc_per_node: int, args: list[str]) -> None:
    """Replace this process with the job's processes (see ``command``)."""
    if not args:
        raise ValueError("seqarena launch: no seqarena arguments given after --")
    line = command(nodes, nproc_per_node, args)
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(STOP_GRACE_S))
    print(" ".join(line), file=sys.stderr, flush=True)
    os.execvp(line[0], line)


@dataclass(kw_only=True)
class LaunchConfig:
    nodes: int = option(1, help="several: srun inside a SLURM allocation")
    nproc_per_node: int = option(1, help="processes per node (one per GPU)")
    job: list[str] = option(help="-- then seqarena's arguments, e.g. train ...", remainder=True)


def launch_command(cfg: LaunchConfig) -> None:
    """Run seqarena on several processes: torchrun on one node, srun + torchrun on many."""
    launch(cfg.nodes, cfg.nproc_per_node, cfg.job)
