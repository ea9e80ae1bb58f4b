"""GPU slots for jobs that share one machine: ``seqarena gpus --count N -- COMMAND``.

Snakemake counts GPUs (``--resources gpu=N``) but does not say which ones a job may use, so
every job would take ``cuda:0``. This claims N free GPUs with file locks that live as long as
COMMAND, sets ``CUDA_VISIBLE_DEVICES`` to them and runs COMMAND in this process. Where
``CUDA_VISIBLE_DEVICES`` is already set (a SLURM allocation sets it), the GPUs are the
allocation's and nothing is claimed.
"""

import fcntl
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from seqarena.options import option

# Machine-wide, so that two pipelines on one machine share the GPUs too.
LOCK_DIR = Path(tempfile.gettempdir()) / "seqarena-gpus"


def gpu_ids() -> list[str]:
    """The GPUs jobs may take: ``SEQARENA_GPU_IDS`` (e.g. "0,1,2,3", to keep some back), else all."""
    listed = os.environ.get("SEQARENA_GPU_IDS", "").strip()
    if listed:
        return [gpu.strip() for gpu in listed.split(",")]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def claim(count: int, ids: list[str], lock_dir: Path = LOCK_DIR, poll: float = 1.0) -> list[tuple[str, int]]:
    """Wait until ``count`` of ``ids`` are free; (GPU id, locked file descriptor) for each."""
    if count > len(ids):
        raise ValueError(
            f"the job asks for {count} GPUs and this machine offers {len(ids)} ({','.join(ids) or 'none'}): "
            "lower the config's resources.<stage>.<size>.gpu, or set SEQARENA_GPU_IDS"
        )
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        held = []
        for gpu in ids:
            fd = os.open(lock_dir / f"gpu{gpu}.lock", os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((gpu, fd))
            if len(held) == count:
                return held
        for _, fd in held:  # not enough free: give back what we took, so two jobs cannot deadlock
            os.close(fd)
        time.sleep(poll * (0.5 + random.random()))


def run_on_gpus(count: int, command: list[str]) -> None:
    """Replace this process with ``command`` on ``count`` GPUs of its own (see the module doc)."""
    if not command:
        raise ValueError("seqarena gpus: no command given after --")
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        held = claim(count, gpu_ids())
        for _, fd in held:
            os.set_inheritable(fd, True)  # the locks stay held by COMMAND (and its children)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu for gpu, _ in held)
    print(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}", file=sys.stderr, flush=True)
    os.execvp(command[0], command)


@dataclass
class GpusConfig:
    count: int = option(help="how many GPUs the command gets")
    command: list[str] = option(help="-- then the command", remainder=True)


def gpus_command(cfg: GpusConfig) -> None:
    """Run a command on GPUs of its own: seqarena gpus --count N -- COMMAND (CUDA_VISIBLE_DEVICES)."""
    run_on_gpus(cfg.count, cfg.command)
