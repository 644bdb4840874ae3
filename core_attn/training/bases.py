"""The bases the apps' LightningModules and LightningDataModules extend: what every app does the same way.

:class:`TaskModule` owns the optimizer and scheduler (``configure_optimizers`` from the ``_partial_`` configs in
its hyper-parameters); :class:`TaskDataModule` serves ``self.datasets[split]`` as the train/val/test loaders,
each app saying how a split is batched (:meth:`TaskDataModule.loader`: ``drop_last`` and ``pin_memory`` are
always the app's explicit choice, never a silent default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, Sampler

from core_attn.training.optim import configure_optimizers


class TaskModule(pl.LightningModule):
    """A LightningModule whose network is ``self.net`` and whose hyper-parameters hold ``optimizer`` (a
    ``_partial_`` optimizer config) and ``scheduler`` (a ``_partial_`` scheduler config, or ``None``/empty for a
    constant learning rate); see :func:`core_attn.training.optim.configure_optimizers`."""

    net: Any

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self.net, self.hparams.optimizer, self.hparams.scheduler,
                                    self.trainer.estimated_stepping_batches)


class TaskDataModule(pl.LightningDataModule):
    """Serves ``self.datasets[split]`` (filled by ``setup``; ``train``/``val`` by ``setup("fit")``, ``test`` by
    ``setup("test")``) as ``train_dataloader``, ``val_dataloader`` and ``test_dataloader``. A subclass
    implements ``_loader(split)`` with :meth:`loader`."""

    datasets: dict[str, Dataset]

    def dataset(self, split: str) -> Dataset:
        """``self.datasets[split]``, running ``setup`` first when it is not there yet."""
        if split not in self.datasets:
            self.setup("fit" if split in ("train", "val") else "test")
        return self.datasets[split]

    def loader(self, split: str, *, num_workers: int, drop_last: bool, pin_memory: bool, batch_size: int = 1,
               batch_sampler: Sampler | None = None, collate_fn: Callable | None = None) -> DataLoader:
        """A ``DataLoader`` over :meth:`dataset` ``(split)``: the training split shuffled (unless ``batch_sampler``
        orders the batches), worker processes kept between epochs.

        Args:
            split: ``train``, ``val`` or ``test``.
            num_workers: DataLoader worker processes.
            drop_last: drop a last partial batch.
            pin_memory: copy batches to page-locked memory (faster host-to-GPU copies).
            batch_size: samples per batch (with ``batch_sampler``: ignored, as ``drop_last`` is; the sampler
                decides).
            batch_sampler: yields the index lists of the batches (then no shuffling here).
            collate_fn: makes a batch of samples (``None``: PyTorch's default).
        """
        dataset = self.dataset(split)
        if batch_sampler is not None:
            return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn, num_workers=num_workers,
                              persistent_workers=num_workers > 0, pin_memory=pin_memory)
        return DataLoader(dataset, batch_size=batch_size, shuffle=split == "train", drop_last=drop_last,
                          collate_fn=collate_fn, num_workers=num_workers, persistent_workers=num_workers > 0,
                          pin_memory=pin_memory)

    def _loader(self, split: str) -> DataLoader:  # pragma: no cover - interface
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
