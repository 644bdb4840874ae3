"""``init_from=<ckpt>``: start a run from another run's weights (fine-tuning).

Only the weights are taken: the optimizer, learning-rate schedule, step and epoch counters start fresh,
unlike ``ckpt_path`` which resumes a run where it stopped. Before any weight is copied, the checkpoint
must be of the same app, every tensor must match the model this run builds (same names, same shapes),
and the module may check more with a ``check_init_from(checkpoint, path)`` method (the audio app
compares vocabularies).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from core_attn.training.runtime import load_checkpoint, run_config

log = logging.getLogger(__name__)

INIT_HINT = "pass init_from=<path to a .ckpt of a trained run>, e.g. outputs/<app>/<run>/checkpoints/last.ckpt"


def check_init_path(init_from: str | Path) -> Path:
    """``init_from`` as a ``Path``; ``FileNotFoundError`` naming it when it is no file."""
    if not Path(init_from).is_file():
        raise FileNotFoundError(f"init_from={str(init_from)!r}: no such checkpoint file ({INIT_HINT})")
    return Path(init_from)


def _mismatches(ours: dict[str, torch.Tensor], theirs: dict[str, Any]) -> list[str]:
    out = [f"{k}: checkpoint {tuple(theirs[k].shape)}, model {tuple(v.shape)}"
           for k, v in ours.items() if k in theirs and tuple(theirs[k].shape) != tuple(v.shape)]
    out += [f"{k}: not in the checkpoint" for k in ours if k not in theirs]
    out += [f"{k}: not in the model" for k in theirs if k not in ours]
    return out


def init_weights(module: torch.nn.Module, init_from: str | Path, *, app: str | None = None) -> dict[str, Any]:
    """Copy the weights of the checkpoint ``init_from`` into ``module``; return the checkpoint's run config.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint; a checkpoint of another app; tensors that differ in name or shape (the
            first few are listed); or what the module's ``check_init_from`` finds.
    """
    path = check_init_path(init_from)
    ckpt = load_checkpoint(path)
    stored = run_config(ckpt)
    other = stored.get("app")
    if app and other and other != app:
        raise ValueError(f"init_from={str(path)!r} is a checkpoint of the {other} app, not of {app}; give a "
                         f"checkpoint of {app}.train")
    if "state_dict" not in ckpt:
        raise ValueError(f"init_from={str(path)!r} holds no 'state_dict': it is not a Lightning training checkpoint")
    check = getattr(module, "check_init_from", None)
    if callable(check):
        check(ckpt, path)
    bad = _mismatches(module.state_dict(), ckpt["state_dict"])
    if bad:
        raise ValueError(f"init_from={str(path)!r}: its weights do not fit this model ({len(bad)} tensors differ: "
                         f"{'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); build the same model as the run "
                         "that saved it (the same model=... and model.* settings)")
    module.load_state_dict(ckpt["state_dict"])
    log.info("init_from=%s: weights loaded (optimizer, schedule and step count start fresh)", path)
    return stored
