"""Stop training at the first non-finite loss, before it reaches the weights or a checkpoint."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor


class StopOnNonFiniteLoss(pl.Callback):
    """Raise ``FloatingPointError`` naming the step when the training loss is NaN or infinite.

    The check runs before ``backward`` (``on_before_backward``), so neither the optimizer step nor a
    checkpoint ever sees the bad loss: the last checkpoint on disk (``last.ckpt``) holds the last good
    step and ``ckpt_path=last`` resumes from it. Under DDP the decision is reduced over ranks (any rank's
    non-finite loss stops every rank), so no rank is left waiting in a gradient all-reduce.
    Selected in ``conf/callbacks/default.yaml`` (``callbacks.nonfinite_loss=null`` turns it off).
    """

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        cb = trainer.checkpoint_callback
        last = (cb.last_model_path or cb.best_model_path) if cb is not None else ""
        keep = f"the last checkpoint, {last}, is from before it" if last else "no checkpoint had been saved yet"
        value = float(loss.detach().float().reshape(-1)[0]) if bad else "finite here, non-finite on another rank"
        raise FloatingPointError(
            f"non-finite training loss ({value}) at global step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"training stopped before the optimizer step and {keep}. Lower optimizer.lr, keep gradient_clip_val "
            "set, or use precision=32-true; resume with ckpt_path=last")
