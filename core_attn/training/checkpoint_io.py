"""Checkpoints that are never half-written, and written often enough to lose little to a kill.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction, whose local temporary file is
made by ``tempfile.mkstemp()`` in the *system* temp folder and then ``shutil.move``-d into place. When
that folder is on another filesystem than the run directory (``/tmp`` on a node-local disk, outputs on
NFS/Lustre, the usual cluster layout) the move is a copy into the final path: a job killed during the
copy leaves a truncated ``last.ckpt``, and the temp file leaks in ``/tmp``. Nothing is fsync-ed either.

:class:`AtomicCheckpointIO` writes local paths to ``.<name>.<random>.tmp`` beside the target, fsyncs it and
renames it over the target (atomic on POSIX within one filesystem); a reader, or a job resuming with
``ckpt_path=last``, sees the old checkpoint or the new one, never a mix. Remote URLs (``s3://`` ...) keep
Lightning's behaviour. Selected in ``conf/trainer/default.yaml`` (``plugins``).

:class:`PeriodicCheckpoint` writes ``last.ckpt`` every N optimizer steps and/or every M minutes from the first
step on, and once more when training ends. Lightning's ``ModelCheckpoint(every_n_train_steps=...)`` defers its
saves until the monitored metric (``val/acc``) exists, so before the first validation it protects nothing; and
its ``save_last=True`` writes ``last.ckpt`` only beside a new top-k checkpoint, so after the monitored metric's
last improvement ``last.ckpt`` would stop following the weights.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from core_attn.training.atomic import open_atomic


def _is_local(path: Any) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file in the same folder, fsync and ``os.replace``
    (:func:`core_attn.training.atomic.open_atomic`)."""
    with open_atomic(str(path).removeprefix("file://"), "wb", fsync=True) as f:
        torch.save(obj, f)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic, fsync-ed writes to local paths (:func:`save_atomic`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        save_atomic(checkpoint, path)


def checkpoint_dir(trainer: pl.Trainer, output_dir: str | Path | None = None) -> Path:
    """The folder of the run's checkpoints: the first ``ModelCheckpoint``'s ``dirpath``, else
    ``<output_dir>/checkpoints`` (``output_dir`` defaults to ``trainer.default_root_dir``). ``ckpt_path=auto``
    looks for ``last.ckpt`` there and :class:`PeriodicCheckpoint` writes it there."""
    cb = trainer.checkpoint_callback
    if isinstance(cb, ModelCheckpoint) and cb.dirpath:
        return Path(cb.dirpath)
    return Path(output_dir if output_dir is not None else trainer.default_root_dir) / "checkpoints"


class PeriodicCheckpoint(pl.Callback):
    """Writes ``last.ckpt`` (in :func:`checkpoint_dir`, where ``ckpt_path=auto`` resumes from) every
    ``every_n_steps`` optimizer steps and/or every ``every_minutes`` minutes, from the first step on and
    whether or not the monitored validation metric exists yet: the preemption setting.

    The checkpoint is a full one (weights, optimizer, scheduler, loop position and every callback's state,
    including the best-checkpoint record of ``ModelCheckpoint``), written after the optimizer step of the
    batch, as Lightning's own step checkpoints are. When training ends (max_steps, max_epochs, max_time,
    early stopping) ``last.ckpt`` is written once more unless this callback wrote it at that step: it always
    holds the final weights. The clock restarts at every checkpoint the run writes
    (the end-of-validation ones included). Under DDP rank 0's clock decides for all ranks.

    Args:
        every_n_steps: save when the global step is a multiple of it (null: no step rule).
        every_minutes: save when that many minutes have passed since the last checkpoint (null: no clock rule).
    """

    def __init__(self, *, every_n_steps: int | None = None, every_minutes: float | None = 10.0):
        from core_attn.validation import check_float, check_int

        self.every_n_steps = None if every_n_steps is None else check_int("every_n_steps", every_n_steps, min_value=1)
        self.every_seconds = None if every_minutes is None else 60 * check_float(
            "every_minutes", every_minutes, min_value=0)
        self._clock = time.monotonic()
        self._step: int | None = None
        self._written_step: int | None = None  # the global step this callback last wrote last.ckpt at

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock, self._step = time.monotonic(), trainer.global_step

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._clock = time.monotonic()

    def _due(self, trainer: pl.Trainer) -> bool:
        due = self.every_n_steps is not None and trainer.global_step % self.every_n_steps == 0
        if self.every_seconds is not None and trainer.world_size > 1:  # one decision for all ranks
            return bool(trainer.strategy.broadcast(due or time.monotonic() - self._clock >= self.every_seconds))
        return due or (self.every_seconds is not None and time.monotonic() - self._clock >= self.every_seconds)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.global_step == self._step or trainer.fast_dev_run:
            return  # no optimizer step since the last batch (gradient accumulation), or a smoke run
        self._step = trainer.global_step
        if self._due(trainer):
            self._save_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._written_step != trainer.global_step and not trainer.fast_dev_run:
            self._save_last(trainer)

    def _save_last(self, trainer: pl.Trainer) -> None:
        path = checkpoint_dir(trainer) / "last.ckpt"
        for cb in trainer.checkpoint_callbacks:  # so ModelCheckpoint's record of last.ckpt stays true
            if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath and Path(cb.dirpath) == path.parent:
                cb.last_model_path = str(path)
        trainer.save_checkpoint(path)
        self._written_step = trainer.global_step
