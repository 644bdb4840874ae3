"""Train the audio app: ``python -m audio.train [overrides]`` (Hydra; config ``conf/audio.yaml``).

    python -m audio.train                                          # built-in synthetic corpus, CPU
    python -m audio.train data=audio_librispeech data.root=/data/LibriSpeech model=audio_conformer_medium trainer=gpu
    python -m audio.train -m attention=local,bigbird,linear        # summary.csv/md in the sweep dir
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from core_attn.training import sweep_objective, train
from core_attn.training.cli import CONF_DIR, run


@hydra.main(config_path=str(CONF_DIR), config_name="audio", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns the objective for Hydra sweepers: ``optimized_metric`` (e.g. ``val/acc_best``), or the test
    metric when it is null (:func:`core_attn.training.sweep_objective`)."""
    return sweep_objective(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    run(main, "audio")  # Hydra's errors plus "did you mean" for mistyped overrides
