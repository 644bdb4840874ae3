"""Train the vision app: ``python -m vision.train [overrides]`` (Hydra; config ``conf/vision.yaml``).

    python -m vision.train                                        # MegaMNIST 512x512, local attention
    python -m vision.train attention=bigbird model.depth=6 trainer=gpu
    python -m vision.train -m attention=dense,local,bigbird,linear  # summary.csv/md in the sweep dir
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from core_attn.training import sweep_objective, train
from core_attn.training.cli import CONF_DIR, run


@hydra.main(config_path=str(CONF_DIR), config_name="vision", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns the objective for Hydra sweepers: ``optimized_metric`` (e.g. ``val/acc_best``), or the test
    metric when it is null (:func:`core_attn.training.sweep_objective`)."""
    return sweep_objective(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    run(main, "vision")  # Hydra's errors plus "did you mean" for mistyped overrides
