"""``init_from=<ckpt>``: start a run from another run's weights (fine-tuning).

Only the weights are taken: the optimizer, learning-rate schedule, step and epoch counters start fresh,
unlike ``ckpt_path`` which resumes a run where it stopped. Before any weight is copied, the checkpoint
must be of the same app, every tensor must match the model this run builds (same names, same shapes),
and the module may check more with a ``check_init_from(checkpoint, path)`` method (the audio app
compares vocabularies).

Two differences are bridged, so that a dense model can be fine-tuned into an efficient one at another input
size (how Longformer and BigBird were made from RoBERTa):

- the module's ``adapt_init_state(state_dict, path)`` may rewrite the checkpoint's tensors first (the vision
  app resamples learned position embeddings to a new patch grid);
- parameters owned by an attention variant (inside a :class:`~core_attn.attention.base.AttentionBase`, such
  as ``adaptive_span``'s spans or ``perceiver``'s latents) that the checkpoint lacks keep their
  initialisation, and the checkpoint's own attention parameters that this model's variant lacks are left
  out; both are logged. Every other tensor must match.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from core_attn.attention.base import attention_prefixes
from core_attn.training.hf_files import listed
from core_attn.training.runtime import load_checkpoint, run_config

log = logging.getLogger(__name__)

INIT_HINT = "pass init_from=<path to a .ckpt of a trained run>, e.g. outputs/<app>/<run>/checkpoints/last.ckpt"


def check_init_path(init_from: str | Path) -> Path:
    """``init_from`` as a ``Path``; ``FileNotFoundError`` naming it when it is no file."""
    if not Path(init_from).is_file():
        raise FileNotFoundError(f"init_from={str(init_from)!r}: no such checkpoint file ({INIT_HINT})")
    return Path(init_from)


def _mismatches(ours: dict[str, torch.Tensor], theirs: dict[str, Any], variant: tuple[str, ...] = ()) -> list[str]:
    out = [f"{k}: checkpoint {tuple(theirs[k].shape)}, model {tuple(v.shape)}"
           for k, v in ours.items() if k in theirs and tuple(theirs[k].shape) != tuple(v.shape)]
    out += [f"{k}: not in the checkpoint" for k in ours if k not in theirs and not k.startswith(variant)]
    out += [f"{k}: not in the model" for k in theirs if k not in ours and not k.startswith(variant)]
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
    state = dict(ckpt["state_dict"])
    adapt = getattr(module, "adapt_init_state", None)
    if callable(adapt):
        state = adapt(state, path)
    ours, variant = module.state_dict(), attention_prefixes(module)
    bad = _mismatches(ours, state, variant)
    if bad:
        raise ValueError(f"init_from={str(path)!r}: its weights do not fit this model ({len(bad)} tensors differ: "
                         f"{'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); build the same model as the run "
                         "that saved it (the same model=... and model.* settings)")
    fresh = sorted(k for k in ours if k not in state)
    dropped = sorted(k for k in state if k not in ours)
    if fresh:
        log.warning("init_from=%s: %d attention parameters are not in the checkpoint and keep their "
                    "initialisation: %s", path, len(fresh), listed(fresh))
    if dropped:
        log.warning("init_from=%s: %d attention parameters of the checkpoint are not used by this attention "
                    "variant: %s", path, len(dropped), listed(dropped))
    module.load_state_dict({k: v for k, v in state.items() if k in ours}, strict=not fresh)
    log.info("init_from=%s: weights loaded (optimizer, schedule and step count start fresh)", path)
    return stored
