"""The weight file of a local Hugging Face ``save_pretrained`` folder, for the apps' HF loaders (vision/hf.py,
genomics/hf.py). Nothing is downloaded."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the first one present is read


def hf_folder(hf_path: str | Path, key: str) -> Path:
    """The local folder ``hf_path`` (the setting ``key``); ``FileNotFoundError`` naming it when it is not one."""
    folder = Path(hf_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{key}={str(folder)!r}: no such folder (a local folder with config.json and "
                                f"{' or '.join(WEIGHT_FILES)}, as save_pretrained writes it; nothing is downloaded)")
    return folder


def read_hf_weights(folder: Path, key: str = "hf_path") -> tuple[Path, dict[str, Tensor]]:
    """The first of :data:`WEIGHT_FILES` in ``folder`` and its tensors, as saved (``key`` names the setting
    that gave the folder in the errors).

    Raises:
        FileNotFoundError: none of the files (sharded checkpoints are not supported).
        ValueError: a file safetensors / ``torch.load(weights_only=True)`` cannot read.
    """
    path = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if path is None:
        found = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(f"{key}={str(folder)!r} has no {' or '.join(WEIGHT_FILES)} (found: {found}; "
                                "sharded checkpoints are not supported)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return path, load_file(str(path))
        return path, torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / torch.load raise many types for a corrupt or foreign file
        raise ValueError(f"{path}: unreadable weight file ({type(e).__name__}: {e})") from e


def listed(keys, n: int = 8) -> str:
    """The first ``n`` of ``keys`` for an error message, and how many more."""
    keys = list(keys)
    return f"{keys[:n]}" + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_mapped(model: nn.Module, tensors: Mapping[str, Tensor], key_map: Mapping[str, list[str]], path: Path, *,
                may_stay: Iterable[str] = (), what: str = "HF model") -> None:
    """Copy ``tensors`` (our names) into ``model`` after checking every shape (``key_map``: our name -> the HF
    names it came from, for the message); what stays unloaded must be the attention variants' own parameters
    or one of ``may_stay`` (e.g. a new classification head)."""
    from core_attn.attention.base import attention_prefixes

    own = model.state_dict()
    wrong = [f"{'+'.join(key_map[k])} {tuple(v.shape)} -> {k} {tuple(own[k].shape)}" for k, v in tensors.items()
             if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"{path}: tensors whose shape does not fit the model built from config.json: {listed(wrong)}")
    variant = attention_prefixes(model)
    result = model.load_state_dict(tensors, strict=False)
    left = sorted(set(k for k in result.missing_keys if not k.startswith(variant)) - set(may_stay))
    if left or result.unexpected_keys:
        raise RuntimeError(f"{what} mapping incomplete: {left} not loaded, {result.unexpected_keys} unused")
    kept = sum(k.startswith(variant) for k in own)
    if kept:
        log.info("%s: the attention variants' own parameters keep their initialisation (%d tensors)", path, kept)
