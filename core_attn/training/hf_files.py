"""The weight file of a local Hugging Face ``save_pretrained`` folder, for the apps' HF loaders (vision/hf.py,
genomics/hf.py). Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the first one present is read


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
