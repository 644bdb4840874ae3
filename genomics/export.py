"""Export a genomics checkpoint: ``python -m genomics.export ckpt_path=... format=exported|torchscript|onnx``.

The network of any task (``GenomicsModule.net``, a :class:`genomics.model.SequenceTransformer`: token ids
(B, L) int64 -> per-base logits (B, L, num_outputs) or per-sequence logits (B, num_outputs)) is rebuilt from
the checkpoint, traced at ``batch_size`` sequences of ``length`` tokens without padding, checked against the
eager model on random tokens of the alphabet, and written atomically next to the checkpoint (or to
``out=...``); config ``conf/genomics_export.yaml``. The artefact takes exactly that shape (sparse patterns
are built for one length); ``length`` defaults to the training window stored in the checkpoint.
``attention_backend=dense`` runs a pattern variant (the default ``local``, ``bigbird``, ...) through SDPA with
its dense mask, the form ``torch.export`` can trace (core_attn's block-sparse kernel cannot be).
``format=onnx quantize=int8`` also writes ``<name>.int8.onnx`` (linear layers' weights in int8, checked
against eager within ``int8_tolerance`` of the logits' scale). The run's ``metrics.json`` records the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from core_attn.training.cli import CONF_DIR, run
from core_attn.training.export import artefact_path, checkpoint_network, export_artefact, report_export
from core_attn.training.runtime import load_run_config
from core_attn.validation import check_int
from genomics.module import GenomicsModule
from genomics.tokenizers import SPECIALS


def stored_length(ckpt_path: str | Path) -> int | None:
    """The training input length stored in the checkpoint's run config (``data.window`` for genomes,
    ``data.max_len`` for records), or ``None`` when it stores none."""
    data = load_run_config(ckpt_path).get("data") or {}
    return data.get("window") or data.get("max_len")


def export(*, ckpt_path: str, format: str, out: str | None = None, length: int | None = None, batch_size: int = 1,
           seed: int = 0, atol: float = 1e-4, attention_backend: str | None = None, quantize: str = "none",
           int8_tolerance: float = 0.05) -> dict[str, Any]:
    """Export the network of the genomics checkpoint ``ckpt_path``; return ``{"path", "format",
    "max_abs_diff", "size_bytes", "quantize", "input_shape", "task"}`` (and the ``int8_*`` keys of
    :func:`core_attn.training.export.quantize_onnx` with ``quantize="int8"``).

    Args:
        ckpt_path: a checkpoint of any genomics task (the module class comes from its stored config).
        format: ``exported`` (.pt2), ``torchscript`` (.pt) or ``onnx`` (.onnx).
        out: the artefact's path; default: the checkpoint's path with the format's suffix.
        length: tokens per sequence baked into the artefact (a multiple of the model's ``patch_size``);
            ``None``: the checkpoint's ``data.window`` / ``data.max_len``.
        batch_size: sequences per call baked into the artefact.
        seed: of the random tokens the artefact is checked on.
        atol: the largest |artefact - eager| accepted.
        attention_backend: replaces the pattern variants' backend before export (``dense`` traces).
        quantize: ``none`` | ``int8`` (``format="onnx"``: also ``<name>.int8.onnx``).
        int8_tolerance: the largest max |int8 - eager| / max |eager| accepted.
    """
    module, net = checkpoint_network(GenomicsModule, ckpt_path, attention_backend=attention_backend)
    if length is None:
        length = stored_length(ckpt_path)
        if length is None:
            raise ValueError(f"length=null and {ckpt_path} stores no data.window or data.max_len; pass length=<tokens>")
    check_int("length", length, min_value=1)
    check_int("batch_size", batch_size, min_value=1)
    if length % net.patch_size:
        raise ValueError(f"length={length} is not a multiple of the model's patch_size={net.patch_size}")
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(len(SPECIALS), net.vocab_size, (batch_size, length), generator=gen)  # (B, L) symbols
    path = artefact_path(ckpt_path, format, out)
    result = export_artefact(net, tokens, format, path, atol=atol, quantize=quantize, int8_tolerance=int8_tolerance)
    return {**result, "input_shape": list(tokens.shape), "task": type(module).__name__}


@hydra.main(config_path=str(CONF_DIR), config_name="genomics_export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = export(ckpt_path=cfg.ckpt_path, format=cfg.format, out=cfg.out, length=cfg.length,
                    batch_size=cfg.batch_size, seed=cfg.seed, atol=cfg.atol, attention_backend=cfg.attention_backend,
                    quantize=cfg.quantize, int8_tolerance=cfg.int8_tolerance)
    report_export(result, cfg.paths.output_dir, f"wrote {result['path']} ({result['format']}, {result['task']}, "
                  f"input {result['input_shape']}, max |artefact - eager| = {result['max_abs_diff']:.2e})")


if __name__ == "__main__":
    run(main, "genomics_export")  # Hydra's errors plus "did you mean" for mistyped overrides
