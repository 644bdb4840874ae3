"""Fixtures of the audio tests: audio files written with soundfile, a tiny espeak-ng corpus, a tiny
trained checkpoint (the last two skip with the reason when espeak-ng is not installed)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.training.tiny import compose_config

NEEDS_ESPEAK = "espeak-ng is not installed (apt-get install espeak-ng); the built-in corpus cannot be synthesised"

TINY_AUDIO = [
    "data.train=24", "data.val=6", "data.test=6", "data.longform_recordings=1", "data.longform_minutes=0.25",
    "data.batch_size=6", "model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.num_heads=2",
    "model.encoder.subsampling_channels=8", "extras.print_config=false",
    "callbacks.rich_progress_bar=null", "trainer=fast",
]


HAS_FLASHLIGHT = importlib.util.find_spec("flashlight") is not None  # torchaudio's CTC beam/lexicon decoder
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def bench_script(name: str):
    """The module of ``benchmarks/<name>.py`` (benchmarks/ is not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def untrained_ckpt(tmp_path_factory) -> Path:
    """An untrained checkpoint of the tiny model, no lexicon, no corpus needed (for plumbing, not accuracy)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    bench_script("audio_longform").make_checkpoint(path, [o for o in TINY_AUDIO if o.startswith("model.")])
    return path


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path: Path, wave: np.ndarray, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, rate)
    return path


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A session-wide data dir holding the tiny synthetic corpus of TINY_AUDIO."""
    if shutil.which("espeak-ng") is None:
        pytest.skip(NEEDS_ESPEAK)
    return tmp_path_factory.mktemp("audio_data")


@pytest.fixture(scope="session")
def trained(corpus_dir, tmp_path_factory) -> dict:
    """One tiny training run (train(cfg) in-process): its metrics, with the checkpoints it wrote."""
    from core_attn.training import train

    out = tmp_path_factory.mktemp("audio_run")
    cfg = compose_config("audio", [*TINY_AUDIO, f"paths.data_dir={corpus_dir}"], out)
    metrics = train(cfg)
    metrics["output_dir"] = out
    metrics["data_dir"] = corpus_dir
    return metrics
