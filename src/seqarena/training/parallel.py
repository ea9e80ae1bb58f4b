"""Several processes: torchrun's environment, DDP or FSDP2 around the model, full state dicts."""

import functools
import os
from datetime import timedelta

import torch

from seqarena.device import compute_device

# How long a collective may wait: the other ranks wait at a barrier while rank 0 writes a checkpoint
# (at 2.8B parameters with AdamW's state about 34 GB: 6 minutes at 100 MB/s), longer than NCCL's
# default of 10 minutes allows on a slow shared file system.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


class Distributed:
    """World size, rank and device from torchrun's environment (one process: no-ops)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = compute_device(local)
        if self.world > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(value, op=dist.ReduceOp.AVG if self.device.type == "cuda" else dist.ReduceOp.SUM)
            if self.device.type != "cuda":  # gloo has no AVG
                value /= self.world
        return value

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def blocks(model) -> torch.nn.ModuleList:
    """The model's residual blocks: a Mamba's backbone.layers, a Transformer's layers."""
    return model.backbone.layers if hasattr(model, "backbone") else model.layers


def checkpoint_activations(model) -> None:
    """Each block's activations recomputed in the backward pass instead of kept from the forward:
    memory for the blocks' inputs and one block's activations, for one more forward of compute.
    The blocks stay the same modules (their state dicts do not change)."""
    from torch.utils.checkpoint import checkpoint

    for block in blocks(model):
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def wrap(model, parallel: str, dist_: Distributed):
    """DDP or FSDP2 (``parallel``) around the model when there are several processes."""
    if dist_.world == 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in blocks(model):
            fully_shard(block)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[dist_.device.index] if dist_.device.type == "cuda" else None
    )


def full_state_dicts(model, optimizer, sharded: bool):
    """Full (unsharded) model and optimizer state, for checkpoints and the final weights.

    ``model`` is the unwrapped module (DDP's wrapper would prefix every key with
    ``module.``); FSDP2 shards that same module in place.
    """
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return model.state_dict(), optimizer.state_dict()


def load_full_state_dicts(model, optimizer, model_state, optim_state, sharded: bool):
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_state_dict(
            model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state, options=options
        )
    else:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
