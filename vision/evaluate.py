"""Evaluate a vision checkpoint on the test split: ``python -m vision.evaluate ckpt_path=... [data=...]``.

The model is rebuilt from the checkpoint; the data defaults to the config stored in it
(config ``conf/vision_eval.yaml``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from core_attn.training import evaluate
from core_attn.training.cli import run


@hydra.main(config_path="../conf", config_name="vision_eval", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns the test metric."""
    return evaluate(cfg).get("metric")


if __name__ == "__main__":
    run(main, "vision_eval")  # Hydra's errors plus "did you mean" for mistyped overrides
