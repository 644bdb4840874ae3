"""Checkpoint averaging: ``python -m core_attn.training.average <run>/checkpoints/epoch_*.ckpt --out averaged.ckpt``.

The weights of several checkpoints of one run, averaged element by element (Vaswani et al. 2017 averaged
the last 5 or 20 checkpoints; ESPnet and NeMo average the N best by validation score). Late in training
the weights wander around a minimum; their mean usually sits nearer its centre than any one of them, which
helps most where a small data set is fitted for many epochs. Keep the N best with
``callbacks.model_checkpoint.save_top_k=N`` and pass those files.

Floating-point tensors of the ``state_dict`` (weights and normalisation statistics) are averaged in fp32
and stored in their own dtype; integer ones (``num_batches_tracked``) and everything else (the run config,
hyper-parameters) come from the last file given. The optimizer and scheduler states are left out: the
result is for ``evaluate``, ``export``, ``transcribe``/``predict`` and ``init_from``, not for resuming. The
file is written atomically, and the list of files averaged is recorded under ``averaged_from``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from core_attn.training.checkpoint_io import save_atomic
from core_attn.training.runtime import load_checkpoint

__all__ = ["average_best", "average_checkpoints", "check_average_best", "main"]

_RESUME_ONLY = ("optimizer_states", "lr_schedulers", "loops", "callbacks")


def _state(path: Path, ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{str(path)!r} has no 'state_dict' of weights: not a Lightning checkpoint of this project")
    return state


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, Any]:
    """One checkpoint whose weights are the mean of ``paths``' (see the module docstring).

    Raises:
        ValueError: no paths, a file that is not a checkpoint, or checkpoints of different networks (the
            first key or shape that differs is named with its file).
        FileNotFoundError: a path names no file.
    """
    if not paths:
        raise ValueError("no checkpoints to average: pass at least one .ckpt file")
    paths = [Path(p) for p in paths]
    last = load_checkpoint(paths[0])
    first = _state(paths[0], last)
    sums = {k: v.to(torch.float32).clone() for k, v in first.items() if v.is_floating_point()}
    for path in paths[1:]:
        last = load_checkpoint(path)
        state = _state(path, last)
        if state.keys() != first.keys():
            diff = sorted(state.keys() ^ first.keys())
            raise ValueError(f"{str(path)!r} holds other weights than {str(paths[0])!r} (first differing key "
                             f"{diff[0]!r}): average checkpoints of one run only")
        for k, total in sums.items():
            if state[k].shape != total.shape:
                raise ValueError(f"{str(path)!r}: {k!r} has shape {tuple(state[k].shape)}, {str(paths[0])!r} "
                                 f"{tuple(total.shape)}: average checkpoints of one run only")
            total += state[k].to(torch.float32)
    state = _state(paths[-1], last)
    for k, total in sums.items():
        state[k] = (total / len(paths)).to(state[k].dtype)
    for key in _RESUME_ONLY:
        last.pop(key, None)
    last["averaged_from"] = [str(p) for p in paths]
    return last


def check_average_best(n: Any, save_top_k: Any) -> int:
    """``average_best`` as an int (0: off), checked against ``callbacks.model_checkpoint.save_top_k`` before
    training starts: averaging the N best checkpoints needs the N best kept.

    Raises:
        ValueError: a negative or non-integer N, or a ``save_top_k`` below N (not -1, which keeps all).
    """
    from core_attn.validation import check_int

    n = check_int("average_best", n or 0, min_value=0)
    if n > 1 and save_top_k != -1 and (save_top_k is None or save_top_k < n):
        raise ValueError(f"average_best={n} needs the {n} best checkpoints, but callbacks.model_checkpoint.save_top_k="
                         f"{save_top_k} keeps fewer: set callbacks.model_checkpoint.save_top_k={n} (or -1)")
    return n


def average_best(best_k_models: dict[str, Any], n: int, mode: str, out: str | Path) -> list[str]:
    """Average the ``n`` best of ``best_k_models`` (``ModelCheckpoint.best_k_models``: path -> monitored score;
    ``mode`` ``min`` or ``max``) into ``out`` (written atomically); return the files averaged, best first."""
    ranked = sorted(best_k_models, key=lambda p: float(best_k_models[p]), reverse=mode == "max")[:n]
    if not ranked:
        raise ValueError("average_best: no checkpoint was kept (no validation ran?)")
    save_atomic(average_checkpoints(ranked[::-1]), out)  # the best last: its run config and step are kept
    return ranked


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core_attn.training.average",
                                     description="Average the weights of several checkpoints of one run.")
    parser.add_argument("checkpoints", nargs="+", help="the .ckpt files (e.g. <run>/checkpoints/epoch_*.ckpt)")
    parser.add_argument("--out", required=True, help="the averaged checkpoint to write")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if any(out.resolve() == Path(p).resolve() for p in args.checkpoints):
        raise ValueError(f"--out {args.out!r} is one of the checkpoints to average: write to another file")
    averaged = average_checkpoints(args.checkpoints)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(averaged, out)
    print(f"{out}: the mean of {len(args.checkpoints)} checkpoints")
    return 0


if __name__ == "__main__":
    from core_attn.errors import run_main

    run_main(main)
