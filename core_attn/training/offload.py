"""Activation offloading: the tensors a training forward saves for backward live in CPU memory.

Switched on by ``activation_offloading=true`` in an app's primary config; :func:`offloading_callbacks`
turns the switch into the callback that :func:`core_attn.training.train` attaches.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch import Tensor
from torch.autograd.graph import save_on_cpu


class ActivationOffloading(pl.Callback):
    """Runs the forward of every training step under ``torch.autograd.graph.save_on_cpu``.

    Every tensor autograd saves for the backward pass (layer inputs, attention probabilities, ...) is
    copied to CPU memory when saved and copied back to the accelerator when the backward pass needs it,
    so accelerator memory holds the parameters, gradients, optimizer state and one layer's working set
    instead of every layer's activations; the price is the host-device traffic (pinned memory and
    asynchronous copies on CUDA). With ``gradient_checkpointing`` only the blocks' inputs are saved, so
    the two together offload little more than the inputs.

    The hooks are entered at ``on_train_batch_start`` and left at ``on_before_backward`` (the forward of
    the step lies between the two); the backward pass, including gradient checkpointing's recomputation,
    runs without them. Validation and test never save tensors for backward and are not affected.

    On a CPU-only run saved tensors are already in CPU memory: ``save_on_cpu`` keeps them as they are
    (no copy), so the switch changes nothing there but the time of the hook calls.
    """

    def __init__(self) -> None:
        self._hooks: save_on_cpu | None = None

    def _leave(self) -> None:
        if self._hooks is not None:
            hooks, self._hooks = self._hooks, None
            hooks.__exit__(None, None, None)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._leave()
        # pinned host memory only with CUDA (pinning needs a CUDA context; CPU tensors are not copied at all)
        self._hooks = save_on_cpu(pin_memory=trainer.strategy.root_device.type == "cuda")
        self._hooks.__enter__()

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        self._leave()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._leave()  # a training_step that returned None skipped backward

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._leave()


def offloading_callbacks(value: Any) -> list[pl.Callback]:
    """``[ActivationOffloading()]`` for ``activation_offloading=true``, ``[]`` for false; ``ValueError``
    for anything but a boolean."""
    if not isinstance(value, bool):
        raise ValueError(f"activation_offloading={value!r} must be true or false")
    return [ActivationOffloading()] if value else []
