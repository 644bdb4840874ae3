"""The LightningModule of the vision app: image classification with cross-entropy."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor, nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from core_attn.attention.adaptive_span import total_span_loss
from core_attn.training.bases import TaskModule
from vision.hf import resample_positions, vision_transformer_config
from vision.model import VisionTransformer

POS_KEY = "net.encoder.pos_embed"


class ImageClassifier(TaskModule):
    """Trains any image model with cross-entropy; logs ``{train,val,test}/{loss,acc}`` and ``val/acc_best``.

    Its hyper-parameters are plain configs (saved with ``save_hyperparameters``), so
    ``ImageClassifier.load_from_checkpoint(path)`` rebuilds the same network.

    Args:
        model: the network's config (``_target_`` plus arguments, e.g. ``vision.model.VisionTransformer``
            with its ``attention`` as a ``_partial_`` config); the network exposes ``num_classes``. A
            ``checkpoint_path`` in it (initial weights from a file) is saved as ``None``: the module's
            checkpoints carry the weights. Likewise for an ``hf_path`` (a Hugging Face ViT folder,
            :func:`vision.hf.load_hf_vit`): the config saved is the ``VisionTransformer`` it describes.
        optimizer: a ``_partial_`` optimizer config (called with parameter groups).
        scheduler: a ``_partial_`` scheduler config (called with the optimizer and ``total_steps``,
            stepped every optimizer step), or ``None``/empty for a constant learning rate.
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(self, *, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module = instantiate(model)
        if isinstance(model, Mapping) and model.get("checkpoint_path"):
            # a weight file only initialises the network, and every Lightning checkpoint carries the
            # weights: rebuilding from one (evaluate, export, predict) must not need that file
            self.hparams["model"] = {**model, "checkpoint_path": None}
        if isinstance(model, Mapping) and model.get("hf_path"):
            self.hparams["model"] = vision_transformer_config(model)
        num_classes = self.net.num_classes
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str, acc) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        acc(logits.argmax(dim=-1), y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}/acc", acc, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_acc) + total_span_loss(self.net)  # 0 unless adaptive_span

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def adapt_init_state(self, state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
        """``init_from`` a run at another image size: its learned position embeddings resampled (bicubic, timm's
        ``resample_abs_pos_embed``) from its patch grid to this model's; the prefix token's kept. The old grid
        has this grid's aspect ratio (a square image gives a square grid); any other shape is left for the
        shape check to report."""
        net = self.net
        if not isinstance(net, VisionTransformer) or net.encoder.pos_embed is None or POS_KEY not in state:
            return state
        pos, ours = state[POS_KEY], net.encoder.pos_embed
        if pos.shape == ours.shape or pos.dim() != 3 or pos.shape[-1] != ours.shape[-1]:
            return state
        (gh, gw), prefix = net.patch_embed.grid, net.num_prefix_tokens
        n = pos.shape[1] - prefix
        old = (round(math.sqrt(n * gh / gw)), round(math.sqrt(n * gw / gh)))
        if old[0] * old[1] != n:
            return state
        return {**state, POS_KEY: resample_positions(pos, old, (gh, gw), f"init_from={path}", num_prefix_tokens=prefix,
                                                     antialias=True)}

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        """Class probabilities (B, num_classes)."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self(x), dim=-1)
