"""Callbacks the runtime always attaches: throughput/memory measurement and the config record."""

from __future__ import annotations

import itertools
import resource
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

CONFIG_KEY = "longattn_config"  # where the run's resolved config lives inside a checkpoint
CLASS_NAMES_KEY = "longattn_class_names"  # the datamodule's class names (index order), when it has them


def _batch_size(batch: Any) -> int:
    """Samples in a batch: the leading dimension of its first tensor."""
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            n = _batch_size(item)
            if n:
                return n
    return 0


def reset_peak_memory() -> None:
    """Start a new peak-memory window: CUDA's allocator peak and, on Linux, the process RSS high-water mark
    (writing 5 to /proc/self/clear_refs), so jobs run one after another in one process do not inherit peaks."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb() -> dict[str, float | None]:
    """Peak resident memory of this process and, on CUDA, the allocator's peak (MiB); ``peak_memory_mb``
    is the CUDA peak when there is one, else the RSS peak."""
    rss = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) / 1024
    except OSError:
        pass
    if rss is None:  # ru_maxrss is KiB on Linux: a lifetime peak, not reset between jobs
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    rss, cuda = round(rss, 1), None if cuda is None else round(cuda, 1)
    return {"peak_rss_mb": rss, "cuda_peak_memory_mb": cuda, "peak_memory_mb": rss if cuda is None else cuda}


class _Timer:
    """Sums samples and seconds over batches, skipping the first ``skip`` (warm-up)."""

    def __init__(self, skip: int):
        self.skip = skip
        self.reset()

    def reset(self) -> None:
        self.batches = self.samples = 0
        self.seconds = 0.0
        self.all_samples = 0
        self.all_seconds = 0.0
        self._start = None

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self, n: int) -> None:
        if self._start is None:
            return
        dt = time.perf_counter() - self._start
        self._start = None
        self.batches += 1
        self.all_samples += n
        self.all_seconds += dt
        if self.batches > self.skip:
            self.samples += n
            self.seconds += dt

    def rate(self) -> float | None:
        """Samples per second after warm-up (over all batches when there were too few to skip)."""
        if self.seconds > 0:
            return self.samples / self.seconds
        return self.all_samples / self.all_seconds if self.all_seconds > 0 else None


def _sync(trainer: pl.Trainer) -> None:
    if trainer.strategy.root_device.type == "cuda":
        torch.cuda.synchronize(trainer.strategy.root_device)


class ThroughputMonitor(pl.Callback):
    """Measures samples per second of each training step (forward, backward, optimizer) and of each test
    batch, excluding data loading; the first ``skip_batches`` batches of each are warm-up and not counted.

    ``train_samples_per_s`` and ``test_samples_per_s`` are per process (multiply by the world size for DDP).
    """

    def __init__(self, skip_batches: int = 2):
        self.train = _Timer(skip_batches)
        self.test = _Timer(skip_batches)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _sync(trainer)
        self.train.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _sync(trainer)
        self.train.stop(_batch_size(batch))

    def on_test_start(self, trainer, pl_module) -> None:
        self.test.reset()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        _sync(trainer)
        self.test.start()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        _sync(trainer)
        self.test.stop(_batch_size(batch))

    def results(self) -> dict[str, float | None]:
        """``{"train_samples_per_s": ..., "test_samples_per_s": ...}`` (None where nothing ran)."""
        rnd = lambda r: None if r is None else round(r, 2)  # noqa: E731
        return {"train_samples_per_s": rnd(self.train.rate()), "test_samples_per_s": rnd(self.test.rate())}


class SpanMonitor(pl.Callback):
    """For networks with learned spans (``attention=adaptive_span``): logs ``train/mean_span`` (tokens, over
    every head of every layer) at the end of each training epoch, and :meth:`results` gives the last value
    (``mean_span``) and the largest head's (``max_span_learned``) for metrics.json. Nothing for other networks."""

    def __init__(self):
        self.spans: list[float] | None = None

    @staticmethod
    def _read(pl_module) -> list[float] | None:
        from core_attn.attention.adaptive_span import learned_spans

        return [z for layer in learned_spans(pl_module) for z in layer.tolist()] or None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.spans = self._read(pl_module)
        if self.spans:
            pl_module.log("train/mean_span", sum(self.spans) / len(self.spans))

    def on_test_start(self, trainer, pl_module) -> None:
        self.spans = self._read(pl_module) or self.spans

    def results(self) -> dict[str, float]:
        if not self.spans:
            return {}
        return {"mean_span": round(sum(self.spans) / len(self.spans), 2), "max_span_learned": round(max(self.spans), 2)}


class ConfigInCheckpoint(pl.Callback):
    """Stores the run's resolved config in every checkpoint (under ``"longattn_config"``), so
    ``evaluate`` can rebuild the data pipeline of a checkpoint without the original run directory; and,
    when the datamodule has a ``class_names()`` method, the class names in label order (under
    ``"longattn_class_names"``), so a checkpoint still knows its classes once the training data is gone."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config
        class_names = getattr(trainer.datamodule, "class_names", None)
        names = class_names() if callable(class_names) else None
        if names:
            checkpoint[CLASS_NAMES_KEY] = [str(n) for n in names]


class PreciseBatchNorm(pl.Callback):
    """Recomputes every BatchNorm layer's running statistics with the current weights before each
    validation during fitting: ``num_samples`` training samples are passed through the network in training
    mode (no gradients) and their batch statistics averaged (``torch.optim.swa_utils.update_bn``).

    Why: evaluation normalises with running averages (momentum 0.1) of statistics that the weights keep
    changing. When the pooled features of different images differ little (a few small objects on a large
    plain background), the trailing averages are many standard deviations off the current features and an
    eval-mode network predicts one class while its training accuracy climbs. Precise statistics make
    validation, the checkpoint chosen by it and the test measure the network that was trained (Wu & Johnson
    2021, "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576, section 3: PreciseBN).

    Batches are ``(input, target)`` pairs of the training loader and the module is called on the input; a
    model without BatchNorm layers costs nothing.

    Args:
        num_samples: training samples the statistics are averaged over (whole batches, at least one).
    """

    def __init__(self, *, num_samples: int = 512):
        from core_attn.validation import check_int

        self.num_samples = check_int("num_samples", num_samples, min_value=1)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in pl_module.modules()):
            return
        loader = trainer.train_dataloader
        # a loader of its own over the same data: iterating the fit loop's loader (persistent workers)
        # would restart the epoch in progress when validation runs mid-epoch. Its own generator, and the
        # forked global state for the augmentations, leave the training that follows as it would be
        # without this callback
        generator = torch.Generator().manual_seed(trainer.global_step)
        own = torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=True,
                                          collate_fn=loader.collate_fn, generator=generator)
        batches = itertools.islice(own, max(1, -(-self.num_samples // loader.batch_size)))
        with torch.random.fork_rng(devices=[]), torch.no_grad(), trainer.precision_plugin.forward_context():
            torch.optim.swa_utils.update_bn(batches, pl_module, device=pl_module.device)
        pl_module.eval()  # update_bn restores the mode it found; validation runs in eval mode
