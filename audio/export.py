"""Export an audio checkpoint for inference: ``python -m audio.export ckpt_path=... format=exported|torchscript|onnx``.

The artefact is the network of :class:`audio.model.ConformerCTC` after its front end: log-mel features
(B, T, n_mels), every frame real, -> per-frame CTC log-probabilities (B, N, vocab) with N = ceil(T /
subsampling) (:meth:`ConformerCTC.log_probs`). The log-mel front end (an STFT, ``audio.features``) stays
outside. By default the artefact takes exactly ``frames`` frames (sparse patterns are built for one
length). With ``dynamic_time=true`` (``exported`` and ``onnx``) T is a dynamic dimension: the artefact is
traced at ``frames`` frames and checked against the eager model at that length and at a second one;
variants whose pattern is cached per length (the default ``local`` with a global token) cannot be traced
that way and raise, saying which and why. ``format=onnx quantize=int8`` also writes ``<name>.int8.onnx``
(linear layers' weights in int8, checked against eager within ``int8_tolerance`` of the output's scale).
Config ``conf/audio_export.yaml``; the run's ``metrics.json`` records the result.
"""

from __future__ import annotations

from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from audio.model import ConformerCTC
from audio.module import SpeechRecognizer
from core_attn.training.cli import CONF_DIR, run
from core_attn.training.export import artefact_path, checkpoint_network, export_artefact, report_export
from core_attn.validation import check_int


class FeaturesToLogProbs(nn.Module):
    """(B, T, n_mels) features -> (B, N, vocab) log-probabilities: the one-tensor module that is exported."""

    def __init__(self, net: ConformerCTC):
        super().__init__()
        self.net = net

    def forward(self, feats: Tensor) -> Tensor:
        return self.net.log_probs(feats)


def export(*, ckpt_path: str, format: str, out: str | None = None, frames: int = 400, dynamic_time: bool = False,
           batch_size: int = 1, seed: int = 0, atol: float = 1e-4, attention_backend: str | None = None,
           quantize: str = "none", int8_tolerance: float = 0.05) -> dict[str, Any]:
    """Export the network of the audio checkpoint ``ckpt_path``; return ``{"path", "format", "max_abs_diff",
    "size_bytes", "quantize", "input_shape", "checked_frames", "dynamic_time"}`` (and the ``int8_*`` keys of
    :func:`core_attn.training.export.quantize_onnx` with ``quantize="int8"``).

    Args:
        ckpt_path: a checkpoint of ``audio.train``.
        format: ``exported`` (.pt2), ``torchscript`` (.pt, fixed length only) or ``onnx`` (.onnx).
        out: the artefact's path; default: the checkpoint's path with the format's suffix.
        frames: feature frames of the example input (10 ms each with the default front end).
        dynamic_time: keep the time dimension dynamic (checked at ``frames`` and at ``frames * 3 // 2 + 7``).
        batch_size: utterances per call baked into the artefact.
        seed: of the random features the artefact is checked on.
        atol: the largest |artefact - eager| accepted.
        attention_backend: replaces the pattern variants' backend before export (``dense`` traces).
        quantize: ``none`` | ``int8`` (``format="onnx"``: also ``<name>.int8.onnx``, checked at the same lengths).
        int8_tolerance: the largest max |int8 - eager| / max |eager| accepted.
    """
    _, net = checkpoint_network(SpeechRecognizer, ckpt_path, attention_backend=attention_backend,
                                overrides={"decoder": "greedy"})
    check_int("frames", frames, min_value=2 * net.encoder.subsampling.factor)
    check_int("batch_size", batch_size, min_value=1)
    if dynamic_time and format == "torchscript":
        raise ValueError("dynamic_time=true needs format='exported' or format='onnx' (torch.jit.trace records one "
                         "length); pass dynamic_time=false for a fixed-length TorchScript artefact")
    gen = torch.Generator().manual_seed(seed)
    n_mels = net.features.n_mels
    x = torch.randn(batch_size, frames, n_mels, generator=gen)  # (B, T, F): scale of log-mel features
    checked = [frames]
    others = []
    if dynamic_time:
        checked.append(frames * 3 // 2 + 7)  # another length, with another remainder modulo the subsampling
        others.append(torch.randn(batch_size, checked[-1], n_mels, generator=gen))
    path = artefact_path(ckpt_path, format, out)
    result = export_artefact(FeaturesToLogProbs(net).eval(), x, format, path, atol=atol,
                             dynamic_dims=(1,) if dynamic_time else (), check_inputs=others, quantize=quantize,
                             int8_tolerance=int8_tolerance)
    return {**result, "input_shape": list(x.shape), "checked_frames": checked, "dynamic_time": dynamic_time}


@hydra.main(config_path=str(CONF_DIR), config_name="audio_export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = export(ckpt_path=cfg.ckpt_path, format=cfg.format, out=cfg.out, frames=cfg.frames,
                    dynamic_time=cfg.dynamic_time, batch_size=cfg.batch_size, seed=cfg.seed, atol=cfg.atol,
                    attention_backend=cfg.attention_backend, quantize=cfg.quantize, int8_tolerance=cfg.int8_tolerance)
    time = "dynamic" if result["dynamic_time"] else f"{result['input_shape'][1]} (fixed)"
    report_export(result, cfg.paths.output_dir, f"wrote {result['path']} ({result['format']}, input "
                  f"(B={result['input_shape'][0]}, T={time}, F={result['input_shape'][2]}), checked at "
                  f"T={result['checked_frames']}, max |artefact - eager| = {result['max_abs_diff']:.2e})")


if __name__ == "__main__":
    run(main, "audio_export")  # Hydra's errors plus "did you mean" for mistyped overrides
