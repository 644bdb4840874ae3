"""Train the genomics app: ``python -m genomics.train [overrides]`` (Hydra; config ``conf/genomics.yaml``).

    python -m genomics.train                                      # DNA LM on the built-in synthetic genome
    python -m genomics.data prepare leptospira && python -m genomics.train experiment=genomics_dna_lm
    python -m genomics.train experiment=genomics_classify_16s attention=dense
    python -m genomics.train -m experiment=genomics_dna_lm attention=local,linear   # summary.csv/md
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from core_attn.training import sweep_objective, train
from core_attn.training.cli import CONF_DIR, run
from genomics.evaluate import report
from genomics.module import check_task


@hydra.main(config_path=str(CONF_DIR), config_name="genomics", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns the objective for Hydra sweepers: ``optimized_metric`` (e.g. ``val/acc_best``), or the test
    metric when it is null (:func:`core_attn.training.sweep_objective`)."""
    check_task(cfg.data.get("task"), cfg.module.get("_target_"))
    metrics = train(cfg)
    report(metrics)
    return sweep_objective(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    run(main, "genomics")  # Hydra's errors plus "did you mean" for mistyped overrides
