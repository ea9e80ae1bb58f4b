"""The device a job computes on. The config's ``device`` (which the workflow exports as
``SEQARENA_DEVICE``) is a requirement, not a preference: with ``cuda`` a job on a machine
without a CUDA device fails, naming why, instead of running on the CPU; with ``cpu`` it stays on
the CPU even beside a GPU. Unset (a command run by hand), a GPU is used where there is one.
"""

import os

import torch

DEVICE_ENV_VAR = "SEQARENA_DEVICE"


def compute_device(index: int = 0) -> torch.device:
    """cuda:``index`` or cpu, as the config's ``device`` requires (see the module's docstring)."""
    required = os.environ.get(DEVICE_ENV_VAR, "")
    if required not in ("", "cpu", "cuda"):
        raise ValueError(f"{DEVICE_ENV_VAR}={required!r}: must be cpu or cuda (the config key device)")
    if required == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"config device: cuda ({DEVICE_ENV_VAR}=cuda), but torch {torch.__version__} "
            f"(CUDA {torch.version.cuda or 'none: a CPU build'}) sees no CUDA device here; "
            "nothing falls back to the CPU. Run on a GPU node, or set device: cpu to run on the CPU"
        )
    if required == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{index}")
