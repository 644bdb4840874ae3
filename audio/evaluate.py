"""Evaluate an audio checkpoint: ``python -m audio.evaluate ckpt_path=... [data=...]`` (config ``conf/audio_eval.yaml``).

First the shared test loop (test/wer, test/cer on the test split). Then, on the built-in corpus, the
long-form comparison: the long-form recordings (several minutes each) transcribed in one pass and in
overlapping chunks, beside the very same utterances cut out and transcribed one by one; WER/CER of each
and the real-time factor go under ``longform`` in metrics.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from audio.data import SyntheticSpeechDataModule, load_audio, read_manifest
from audio.decoding import error_rates
from audio.model import ConformerCTC
from audio.text import CharTokenizer, normalize_text
from audio.transcribe import best_warp, load_recognizer, transcribe, warp_log_probs
from core_attn.training import evaluate
from core_attn.training.atomic import write_json_atomic
from core_attn.training.cli import CONF_DIR, run as cli_run
from core_attn.training.runtime import load_run_config
from core_attn.training.train import module_overrides

log = logging.getLogger(__name__)


def longform_report(model: ConformerCTC, datamodule: SyntheticSpeechDataModule, *, chunk_seconds: float = 20.0,
                    overlap_seconds: float = 2.0, decoder=None, warps: list[float] | None = None) -> dict[str, Any]:
    """WER/CER of the long-form recordings (one pass and chunked) and of their utterances one by one, all
    decoded by ``decoder`` (``None``: greedy); with ``warps``, each utterance keeps its best-scoring warp
    (as the test does); in one pass, a beam decoder gives each stretch between pauses its best-scoring warp
    and greedy decoding each recording the warp that scores best on its first minute (:func:`transcribe`)."""
    tok = CharTokenizer()
    recordings = read_manifest(datamodule.manifest("long-form"))
    segments = read_manifest(datamodule.manifest("long-form-segments"))
    out: dict[str, Any] = {"recordings": len(recordings), "utterances": len(segments)}
    t0 = time.perf_counter()
    hyps = []
    for seg in segments:
        wave = load_audio(seg, model.features.sample_rate)
        # the transcript of the best-scoring warp, as the test keeps
        hyps.append(best_warp(decoder, warp_log_probs(model, wave, warps or [1.0]), tok))
    refs = [normalize_text(s.text) for s in segments]
    out["segments"] = {**error_rates(hyps, refs), "seconds": round(time.perf_counter() - t0, 1)}
    refs = [normalize_text(r.text) for r in recordings]
    for mode in ("full", "chunked"):
        hyps, audio_s, run_s = [], 0.0, 0.0
        for rec in recordings:
            tr, stats = transcribe(model, rec.audio, mode=mode, chunk_seconds=chunk_seconds,
                                   overlap_seconds=overlap_seconds, decoder=decoder, warps=warps)
            hyps.append(tr.text)
            audio_s += stats["duration"]
            run_s += stats["seconds"]
        out[mode] = {**error_rates(hyps, refs), "real_time_factor": round(run_s / audio_s, 5)}
    out["audio_minutes"] = round(audio_s / 60, 2)
    out["full_minus_segments_wer_points"] = round(100 * (out["full"]["wer"] - out["segments"]["wer"]), 2)
    out["chunked_minus_segments_wer_points"] = round(100 * (out["chunked"]["wer"] - out["segments"]["wer"]), 2)
    out["chunk_seconds"], out["overlap_seconds"] = chunk_seconds, overlap_seconds
    return out


def _datamodule(cfg: DictConfig):
    if cfg.get("data") is not None:
        return instantiate(cfg.data)
    stored = load_run_config(cfg.ckpt_path)
    return instantiate(stored["data"]) if stored.get("data") is not None else None


def run(cfg: DictConfig) -> dict[str, Any]:
    """The shared :func:`core_attn.training.evaluate`, plus the long-form report when enabled."""
    metrics = evaluate(cfg)
    lf = cfg.get("longform") or {}
    if not lf.get("enabled", False):
        return metrics
    datamodule = _datamodule(cfg)
    if not isinstance(datamodule, SyntheticSpeechDataModule) or datamodule.spec.longform_recordings == 0:
        log.info("long-form evaluation skipped: it needs the built-in corpus with data.longform_recordings > 0")
        metrics["longform"] = None
    else:
        recognizer = load_recognizer(cfg.ckpt_path, **module_overrides(cfg))
        metrics["longform"] = longform_report(recognizer.net, datamodule,
                                              chunk_seconds=float(lf.get("chunk_seconds", 20.0)),
                                              overlap_seconds=float(lf.get("overlap_seconds", 2.0)),
                                              decoder=recognizer.make_test_decoder(datamodule),
                                              warps=recognizer.test_warps)
        metrics["longform"]["decoder"] = recognizer.hparams.decoder
        metrics["longform"]["warps"] = recognizer.test_warps
        log.info("long-form: %s", metrics["longform"])
    write_json_atomic(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    return metrics


@hydra.main(config_path=str(CONF_DIR), config_name="audio_eval", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns the test metric (test/wer)."""
    return run(cfg).get("metric")


if __name__ == "__main__":
    cli_run(main, "audio_eval")  # Hydra's errors plus "did you mean" for mistyped overrides
