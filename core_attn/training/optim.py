"""Optimizer and scheduler from ``_partial_`` configs, as the apps' ``configure_optimizers`` need them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate
from torch import nn


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: decayed weights, and undecayed biases, norms, positions and tokens.

    Follows timm's ``param_groups_weight_decay``: 1-D parameters (biases, LayerNorm) and names listed by
    ``model.no_weight_decay()`` (e.g. ``pos_embed``, ``cls_token``) get no weight decay.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def configure_optimizers(model: nn.Module, optimizer: Mapping[str, Any], scheduler: Mapping[str, Any] | None,
                         total_steps: int) -> Any:
    """What ``LightningModule.configure_optimizers`` returns, built from ``_partial_`` configs.

    Args:
        model: the network whose parameters are optimised.
        optimizer: a ``_partial_`` optimizer config (e.g. ``torch.optim.AdamW``), called with the groups.
        scheduler: a ``_partial_`` scheduler config called with the optimizer and ``total_steps``
            (stepped every optimizer step), or ``None``/empty for a constant lr.
        total_steps: optimizer steps of the run (``trainer.estimated_stepping_batches``).
    """
    make_opt = instantiate(optimizer, _convert_="all")  # plain lists in the optimizer state
    weight_decay = make_opt.keywords.get("weight_decay", 0.0) if hasattr(make_opt, "keywords") else 0.0
    opt = make_opt(param_groups_weight_decay(model, weight_decay))
    if not scheduler:
        return opt
    sched = instantiate(scheduler, _convert_="all")(opt, total_steps=int(total_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
