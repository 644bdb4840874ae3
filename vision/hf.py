"""Start from a Hugging Face ViT: a local ``save_pretrained`` folder as a :class:`~vision.model.VisionTransformer`.

``load_hf_vit("/path/vit-base-patch16-224", attention=...)`` reads the folder's ``config.json`` (a
``ViTConfig``), builds the same network as a :class:`~vision.model.VisionTransformer` (single-convolution
patch embedding, learned positions, pre-norm blocks with exact GELU, class-token pooling after a final
LayerNorm, LayerNorm epsilon from the config) and copies every tensor of ``model.safetensors`` (or
``pytorch_model.bin``) onto it: HF's separate query/key/value projections are concatenated into the fused
``qkv`` of :class:`core_attn.layers.MultiheadAttention`. With dense attention the logits are HF's; with any
other variant the network fine-tunes from HF's weights. Nothing is downloaded: only local folders.

Reference: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (arXiv:2010.11929); Wolf et al. 2020,
"Transformers: State-of-the-Art Natural Language Processing" (the ``ViTModel`` checkpoint layout).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core_attn.attention.base import AttentionBase
from core_attn.training.hf_files import WEIGHT_FILES, hf_folder, listed, load_mapped, read_hf_weights
from vision.model import VisionTransformer

log = logging.getLogger(__name__)

# ViTConfig's defaults, for keys a config.json leaves out (transformers fills them in the same way)
HF_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
               "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
               "layer_norm_eps": 1e-12, "image_size": 224, "patch_size": 16, "num_channels": 3, "qkv_bias": True}
# config values the blocks of VisionTransformer can represent: exact GELU, a qkv bias, no attention dropout
SUPPORTED = {"hidden_act": ["gelu"], "qkv_bias": [True], "attention_probs_dropout_prob": [0.0]}
# one HF block -> ours; query, key and value (in that order) are concatenated into our fused qkv
BLOCK_KEYS = {"layernorm_before": "norm1", "attention.attention.query": "attn.qkv",
              "attention.attention.key": "attn.qkv", "attention.attention.value": "attn.qkv",
              "attention.output.dense": "attn.proj", "layernorm_after": "norm2", "intermediate.dense": "mlp.fc1",
              "output.dense": "mlp.fc2"}
HEAD_KEYS = ("classifier.weight", "classifier.bias")
# ViTModel's pooler (dense + tanh): ViTForImageClassification does not use it, neither does our cls pooling
UNUSED_KEYS = ("pooler.dense.weight", "pooler.dense.bias")


def _folder(hf_path: str | Path | None) -> Path:
    if not hf_path:
        raise ValueError("model.hf_path is not set: model=hf_vit needs model.hf_path=<a local folder with config.json "
                         f"and {' or '.join(WEIGHT_FILES)}>")
    return hf_folder(hf_path, "model.hf_path")


def _pair(value: int | list[int]) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


def read_hf_config(hf_path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of the folder ``hf_path``, checked and completed with ViTConfig's defaults.

    Raises:
        FileNotFoundError: no such folder, or no config.json in it.
        ValueError: unreadable JSON, a ``model_type`` other than ``vit``, or a setting the blocks of
            :class:`~vision.model.VisionTransformer` cannot represent (named with what is supported).
    """
    path = _folder(hf_path) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"model.hf_path={str(path.parent)!r} has no config.json (the folder "
                                "ViTForImageClassification.save_pretrained writes holds one)")
    try:
        config = {**HF_DEFAULTS, **json.loads(path.read_text())}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable config.json ({e})") from e
    if config.get("model_type") != "vit":
        raise ValueError(f"{path}: model_type={config.get('model_type')!r} is not supported; expected 'vit' (a "
                         "ViTModel or ViTForImageClassification checkpoint)")
    for key, allowed in SUPPORTED.items():
        if config[key] not in allowed:
            raise ValueError(f"{path}: {key}={config[key]!r} is not supported by vision.model.VisionTransformer; "
                             f"supported: {allowed}")
    for key in ("image_size", "patch_size"):
        pair = _pair(config[key]) if isinstance(config[key], (int, list)) else ()
        if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
            raise ValueError(f"{path}: {key}={config[key]!r} must be a positive int or [height, width]")
    if len(set(_pair(config["patch_size"]))) != 1:
        raise ValueError(f"{path}: patch_size={config['patch_size']!r} is not supported; supported: square patches")
    return config


def vit_kwargs(config: Mapping[str, Any], *, img_size: int | list[int] | None = None, in_chans: int | None = None,
               num_classes: int | None = None, dropout: float | None = None,
               drop_path: float = 0.0) -> dict[str, Any]:
    """The :class:`~vision.model.VisionTransformer` arguments (all but ``attention``) of an HF ViT.

    Args:
        config: its config, as :func:`read_hf_config` returns it.
        img_size: input side or [height, width] (``None``: the checkpoint's ``image_size``).
        in_chans: input channels (``None``: the checkpoint's ``num_channels``).
        num_classes: classes of the head (``None``: the checkpoint's labels, ``len(id2label)``).
        dropout: dropout in the blocks (``None``: the checkpoint's ``hidden_dropout_prob``).
        drop_path: stochastic depth of the last block.
    """
    labels = config.get("id2label")
    size = config["image_size"] if img_size is None else img_size
    classes = (len(labels) if labels else config.get("num_labels", 2)) if num_classes is None else num_classes
    return {"img_size": size if isinstance(size, int) else list(size),
            "in_chans": config["num_channels"] if in_chans is None else in_chans,
            "num_classes": classes,
            "patch_size": _pair(config["patch_size"])[0], "stem": "patch", "dim": config["hidden_size"],
            "depth": config["num_hidden_layers"], "num_heads": config["num_attention_heads"],
            "mlp_ratio": config["intermediate_size"] / config["hidden_size"], "pool": "cls", "pool_norm": "layer",
            "positions": "learned", "dropout": config["hidden_dropout_prob"] if dropout is None else dropout,
            "drop_path": drop_path, "norm_eps": config["layer_norm_eps"]}


def _read_weights(folder: Path) -> tuple[Path, dict[str, Tensor]]:
    """The first of :data:`WEIGHT_FILES` in ``folder`` and its tensors, ``vit.`` prefix removed."""
    path, state = read_hf_weights(folder, "model.hf_path")
    # ViTForImageClassification nests the ViTModel under `vit.`; a ViTModel's own save has no prefix
    return path, {k.removeprefix("vit."): v for k, v in state.items()}


def _key_map(depth: int, head: bool) -> dict[str, list[str]]:
    """Our parameter name -> the HF names its tensor is made of (concatenated along dim 0)."""
    ours: dict[str, list[str]] = {"cls_token": ["embeddings.cls_token"],
                                  "encoder.pos_embed": ["embeddings.position_embeddings"]}
    for p in ("weight", "bias"):
        ours[f"patch_embed.proj.{p}"] = [f"embeddings.patch_embeddings.projection.{p}"]
        ours[f"encoder.norm.{p}"] = [f"layernorm.{p}"]
        if head:
            ours[f"head.{p}"] = [f"classifier.{p}"]
        for i in range(depth):
            for hf, own in BLOCK_KEYS.items():
                ours.setdefault(f"encoder.blocks.{i}.{own}.{p}", []).append(f"encoder.layer.{i}.{hf}.{p}")
    return ours


def _check_keys(path: Path, state: Mapping[str, Tensor], key_map: Mapping[str, list[str]], depth: int) -> None:
    """Raise naming every HF key that is missing from the file or that nothing of ours takes."""
    needed = {hf for names in key_map.values() for hf in names}
    missing = sorted(needed - state.keys())
    unexpected = sorted(state.keys() - needed - set(UNUSED_KEYS) - set(HEAD_KEYS))
    if missing or unexpected:
        raise ValueError(f"{path} does not fit its config.json (num_hidden_layers={depth}): missing keys "
                         f"{listed(missing)}, unexpected keys {listed(unexpected)}; expected the tensors of a "
                         "ViTModel or ViTForImageClassification as save_pretrained writes them")


def resample_positions(pos: Tensor, old: tuple[int, int], new: tuple[int, int], source: str | Path, *,
                       num_prefix_tokens: int = 1, antialias: bool = False) -> Tensor:
    """(1, prefix + old grid, C) -> (1, prefix + new grid, C): the patch positions resampled bicubically (timm's
    ``resample_abs_pos_embed``), the prefix tokens' kept; logged with ``source``. HF weights resample without
    antialiasing, as HF's ``interpolate_pos_encoding``, so the model computes what HF computes at that size
    (timm's default antialiased kernel gives other values, even when upsampling)."""
    from timm.layers import resample_abs_pos_embed

    log.info("%s: position embeddings resampled (bicubic) from a %dx%d to a %dx%d patch grid", source, *old, *new)
    return resample_abs_pos_embed(pos, list(new), list(old), num_prefix_tokens=num_prefix_tokens, antialias=antialias)


def load_hf_vit(hf_path: str | Path, *, img_size: int | list[int] | None = None, in_chans: int | None = None,
                num_classes: int | None = None, dropout: float | None = None, drop_path: float = 0.0,
                attention: Callable[[], AttentionBase] | AttentionBase | None = None,
                gradient_checkpointing: bool = False) -> VisionTransformer:
    """A :class:`~vision.model.VisionTransformer` holding the weights of the local Hugging Face ViT ``hf_path``.

    Args:
        hf_path: a folder with ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``), as
            ``ViTForImageClassification.save_pretrained`` (or ``ViTModel``'s) writes it.
        img_size: input side or [height, width]; another size than the checkpoint's resamples the position
            embeddings (bicubic, logged).
        in_chans: input channels; another number than the checkpoint's adapts the patch embedding (timm's
            ``adapt_input_conv``: summed over channels for 1).
        num_classes: classes; another number than the checkpoint's classifier (or none in the file) gives a
            new head (its initialisation kept, with a warning).
        dropout: dropout in the blocks (``None``: ``hidden_dropout_prob``).
        drop_path: stochastic depth of the last block.
        attention: the variant (as :class:`~vision.model.VisionTransformer` takes it; ``None``: dense);
            parameters of its own (e.g. linformer's projections) keep their initialisation.
        gradient_checkpointing: recompute blocks in the backward pass.

    Raises:
        FileNotFoundError: no such folder, no config.json, no weight file.
        ValueError: a config the model cannot represent, or tensors missing, unexpected or mis-shaped
            (each named).
    """
    config = read_hf_config(hf_path)
    kwargs = vit_kwargs(config, img_size=img_size, in_chans=in_chans, num_classes=num_classes, dropout=dropout,
                        drop_path=drop_path)
    model = VisionTransformer(**kwargs, attention=attention, gradient_checkpointing=gradient_checkpointing)
    path, state = _read_weights(Path(hf_path))
    rows = state["classifier.weight"].shape[0] if "classifier.weight" in state else None
    head = rows is not None and rows == model.num_classes
    if not head:
        log.warning("%s: %s; the head (num_classes=%d) keeps its initialisation", path,
                    "no classifier" if rows is None else f"the classifier has {rows} classes", model.num_classes)
    key_map = _key_map(kwargs["depth"], head)
    _check_keys(path, state, key_map, kwargs["depth"])
    tensors = {own: torch.cat([state[hf] for hf in names]) for own, names in key_map.items()}
    p = kwargs["patch_size"]
    old = tuple(s // p for s in _pair(config["image_size"]))
    new, pos = model.patch_embed.grid, tensors["encoder.pos_embed"]  # pos: (1, 1 + old grid, C)
    if old != new and pos.shape[1] == 1 + old[0] * old[1]:  # another length: a shape error below
        tensors["encoder.pos_embed"] = resample_positions(pos, old, new, path)
    conv = tensors["patch_embed.proj.weight"]
    if conv.shape[1] != kwargs["in_chans"]:
        from timm.models import adapt_input_conv

        log.info("%s: patch embedding adapted from %d to %d input channels", path, conv.shape[1], kwargs["in_chans"])
        tensors["patch_embed.proj.weight"] = adapt_input_conv(kwargs["in_chans"], conv)
    load_mapped(model, tensors, key_map, path, what="HF ViT", may_stay=("head.weight", "head.bias"))
    return model


def vision_transformer_config(model: Mapping[str, Any]) -> dict[str, Any]:
    """The ``vision.model.VisionTransformer`` config of the network a ``vision.hf.load_hf_vit`` config builds
    (architecture from the folder's config.json), so a checkpoint of the run rebuilds without the folder."""
    args = {k: model[k] for k in ("img_size", "in_chans", "num_classes", "dropout", "drop_path") if k in model}
    rest = {k: model[k] for k in ("attention", "gradient_checkpointing") if k in model}
    config = read_hf_config(model["hf_path"])
    return {"_target_": "vision.model.VisionTransformer", **vit_kwargs(config, **args), **rest}
