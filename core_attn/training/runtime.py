"""What every app does with a run's checkpoint: check the path, read the file, read the run config in it.

The apps' ``evaluate``, ``export``, ``predict``, ``transcribe`` and ``infer`` commands all start from a
``ckpt_path=...``; they go through these functions so a wrong path, or a file that is not a checkpoint, gets the
same message everywhere, and the run config (stored by :class:`core_attn.training.callbacks.ConfigInCheckpoint`
under ``CONFIG_KEY``) is read one way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core_attn.training.callbacks import CONFIG_KEY


def check_checkpoint_path(ckpt_path: str | Path | None) -> Path:
    """``ckpt_path`` as a ``Path`` when it names a file.

    Raises:
        FileNotFoundError: ``ckpt_path`` is empty or names no file.
    """
    if not ckpt_path or not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={str(ckpt_path) if ckpt_path else ckpt_path!r}: no such checkpoint "
                                "file (pass ckpt_path=<path to a .ckpt>)")
    return Path(ckpt_path)


def load_checkpoint(ckpt_path: str | Path | None, *, mmap: bool = False) -> dict[str, Any]:
    """The dict ``torch.save`` wrote to ``ckpt_path``, on the CPU.

    Args:
        ckpt_path: the checkpoint file.
        mmap: map the tensors instead of reading them (for a caller that reads only the small entries, such as
            the run config); a file not in ``torch.save``'s zip format is read whole.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a PyTorch checkpoint, or holds something else than a dict.
    """
    path = check_checkpoint_path(ckpt_path)
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=False)  # not in the zip format
    except Exception as e:  # torch raises several types (UnpicklingError, RuntimeError, EOFError, ...)
        raise ValueError(f"ckpt_path={str(path)!r} is not a PyTorch checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"ckpt_path={str(path)!r} is not a checkpoint: it holds a {type(ckpt).__name__}, "
                         "not the dict Lightning saves")
    return ckpt


def run_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The run config stored in a loaded checkpoint (``{}`` when it stores none)."""
    return checkpoint.get(CONFIG_KEY) or {}


def load_run_config(ckpt_path: str | Path | None) -> dict[str, Any]:
    """The run config stored in the checkpoint ``ckpt_path`` (``{}`` when it stores none); only that entry is
    read, the weights are mapped, not loaded.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint.
    """
    return run_config(load_checkpoint(ckpt_path, mmap=True))
