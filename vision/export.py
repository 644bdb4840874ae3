"""Export a vision checkpoint for inference: ``python -m vision.export ckpt_path=... format=exported|torchscript|onnx``.

The network (``ImageClassifier.net``: images (B, C, H, W) -> logits (B, num_classes)) is rebuilt from the
checkpoint, traced at ``batch_size`` images of the training size, checked against the eager model on a
random batch, and written atomically next to the checkpoint (or to ``out=...``); config
``conf/vision_export.yaml``. ``attention_backend=dense`` runs a pattern variant (local, bigbird, ...) through
SDPA with its dense mask (needed for TorchScript, which cannot save the block-sparse kernel).
``format=onnx quantize=int8`` also writes ``<name>.int8.onnx`` (linear layers' weights in int8, checked
against eager within ``int8_tolerance`` of the logits' scale). The run's ``metrics.json`` records the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from core_attn.training.cli import CONF_DIR, run
from core_attn.training.export import artefact_path, checkpoint_network, export_artefact, report_export
from vision.module import ImageClassifier


def input_shape(model: Mapping[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) of the images a network takes, from its model config (``in_chans`` and
    ``img_size``, an int or [height, width]: the keys of ``conf/model/vit.yaml`` and ``timm_vit.yaml``).

    Read from the config rather than the network because the two model families store them differently
    (timm's ``PatchEmbed`` keeps no ``in_chans``).
    """
    missing = [k for k in ("in_chans", "img_size") if k not in model]
    if missing:
        raise ValueError(f"the checkpoint's model config ({model.get('_target_')}) has no {missing}; vision.export "
                         "needs model.in_chans and model.img_size to build the example input")
    size = model["img_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(model["in_chans"]), int(h), int(w)


def export(*, ckpt_path: str, format: str, out: str | None = None, batch_size: int = 1, seed: int = 0,
           atol: float = 1e-4, attention_backend: str | None = None, quantize: str = "none",
           int8_tolerance: float = 0.05) -> dict[str, Any]:
    """Export the network of the vision checkpoint ``ckpt_path``; return ``{"path", "format", "max_abs_diff",
    "size_bytes", "quantize", "input_shape"}`` (and the ``int8_*`` keys of
    :func:`core_attn.training.export.quantize_onnx` with ``quantize="int8"``).

    ``out`` defaults to the checkpoint's path with the format's suffix (``.pt2``, ``.pt``, ``.onnx``);
    ``attention_backend`` (``dense``, ``blocked``, ...) replaces the pattern variants' backend before export;
    ``quantize="int8"`` (``format="onnx"``) also writes the int8 model, checked within ``int8_tolerance``.
    """
    module, net = checkpoint_network(ImageClassifier, ckpt_path, attention_backend=attention_backend)
    c, h, w = input_shape(module.hparams.model)
    x = torch.randn(batch_size, c, h, w, generator=torch.Generator().manual_seed(seed))
    path = artefact_path(ckpt_path, format, out)
    result = export_artefact(net, x, format, path, atol=atol, quantize=quantize, int8_tolerance=int8_tolerance)
    return {**result, "input_shape": list(x.shape)}


@hydra.main(config_path=str(CONF_DIR), config_name="vision_export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = export(ckpt_path=cfg.ckpt_path, format=cfg.format, out=cfg.out, batch_size=cfg.batch_size,
                    seed=cfg.seed, atol=cfg.atol, attention_backend=cfg.attention_backend, quantize=cfg.quantize,
                    int8_tolerance=cfg.int8_tolerance)
    report_export(result, cfg.paths.output_dir, f"wrote {result['path']} ({result['format']}, input "
                  f"{result['input_shape']}, max |artefact - eager| = {result['max_abs_diff']:.2e})")


if __name__ == "__main__":
    run(main, "vision_export")  # Hydra's errors plus "did you mean" for mistyped overrides
