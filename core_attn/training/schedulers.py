"""Learning-rate schedules stepped once per optimizer step."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosineLR(LRScheduler):
    """Linear warmup from 0 to the base lr, then cosine decay to ``min_lr_ratio * base lr``.

    Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm Restarts" (the cosine),
    Goyal et al. 2017, "Accurate, Large Minibatch SGD" (the warmup).

    Args:
        optimizer: the wrapped optimizer.
        total_steps: optimizer steps of the whole run (filled in by the module).
        warmup_fraction: fraction of ``total_steps`` spent warming up, in [0, 1).
        min_lr_ratio: final lr as a fraction of the base lr, in [0, 1].
        last_epoch: index of the last step (-1: start).
    """

    def __init__(self, optimizer: Optimizer, *, total_steps: int, warmup_fraction: float = 0.05,
                 min_lr_ratio: float = 0.0, last_epoch: int = -1):
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps={total_steps!r} must be an integer >= 1")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction={warmup_fraction!r} is out of range; expected 0 <= warmup_fraction < 1")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio={min_lr_ratio!r} is out of range; expected 0 <= min_lr_ratio <= 1")
        self.total_steps = total_steps
        self.warmup_steps = int(warmup_fraction * total_steps)
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The lr multiplier at optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]
