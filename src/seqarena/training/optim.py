"""The optimizer recipe shared by language-model and synthetic-task training: AdamW with weight
decay on matrices and embeddings only, linear warmup then cosine decay to a floor, and clipping.

``cfg`` is any config with the recipe's fields: ``weight_decay``, ``beta1``, ``beta2``,
``grad_clip``, ``warmup`` (a fraction of the steps), ``min_lr`` and ``min_lr_ratio``.
"""

import math

import torch


def lr_floor(cfg, peak: float) -> float:
    """Where the cosine ends: min_lr if set, else peak * min_lr_ratio."""
    return cfg.min_lr or peak * cfg.min_lr_ratio


def lr_at(step: int, total: int, cfg, peak: float) -> float:
    """Linear warmup to peak, then cosine to the floor (``lr_floor``) at the last step."""
    warmup = int(cfg.warmup * total)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup - 1)
    floor = lr_floor(cfg, peak)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def no_decay_names(model) -> set[str]:
    """Parameters that get no weight decay: norms, biases, A_log and D (``_no_weight_decay``).

    Taken by name before FSDP shards the model: its DTensor parameters lose the attribute."""
    return {n for n, p in model.named_parameters() if p.dim() < 2 or getattr(p, "_no_weight_decay", False)}


def param_groups(model, weight_decay: float, no_decay: set[str]) -> list[dict]:
    """Decay weight matrices and embeddings, not the parameters named in ``no_decay``."""
    decay, keep = [], []
    for name, p in model.named_parameters():  # tied weights once
        (keep if name in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def adamw(model, cfg, peak_lr: float, no_decay: set[str] | None = None) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameter groups; ``no_decay`` as taken before any sharding."""
    groups = param_groups(model, cfg.weight_decay, no_decay_names(model) if no_decay is None else no_decay)
    return torch.optim.AdamW(groups, lr=peak_lr, betas=(cfg.beta1, cfg.beta2), foreach=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
