"""Evaluate a genomics checkpoint on its test split: ``python -m genomics.evaluate ckpt_path=... [data=...]``.

The task's LightningModule (language model, classifier, ...) and, without ``data=...``, the data config
are read from the checkpoint (config ``conf/genomics_eval.yaml``). The same command prints the model's
test metrics beside its baseline (Markov bits per base, unigram perplexity, majority accuracy,
open-reading-frame MCC).
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig, open_dict

from core_attn.training import evaluate
from core_attn.training.cli import CONF_DIR
from core_attn.training.cli import run as cli_run
from core_attn.training.runtime import load_run_config

log = logging.getLogger(__name__)

# (model metric, baseline metric, lower is better) per task
PAIRS = (("test/bpb", "test/markov_bpb", True), ("test/ppl", "test/unigram_ppl", True),
         ("test/acc", "test/majority_acc", False), ("test/mcc", "test/orf_mcc", False))


def report(metrics: dict[str, Any]) -> None:
    """Log the test metrics next to the baseline the task measured."""
    test = metrics.get("test") or {}
    for model_key, base_key, lower in PAIRS:
        if model_key in test and base_key in test:
            m, b = test[model_key], test[base_key]
            better = m < b if lower else m > b
            log.info("%s = %.4f vs baseline %s = %.4f: the model is %s", model_key, m, base_key, b,
                     "better" if better else "NOT better")
            print(f"{model_key} {m:.4f}  baseline {base_key} {b:.4f}  ({'better' if better else 'not better'})")


def stored_config(ckpt_path: str) -> dict[str, Any]:
    """The run config the runtime stored in a checkpoint (empty when there is none)."""
    return load_run_config(ckpt_path)


def run(cfg: DictConfig) -> dict[str, Any]:
    """``evaluate(cfg)`` with ``monitor`` (which test metric is reported) taken from the checkpoint when not
    given; ``genomics.module.GenomicsModule`` loads the checkpoint as its task's module."""
    stored = stored_config(cfg.ckpt_path)
    with open_dict(cfg):
        if not cfg.get("monitor"):
            cfg.monitor = stored.get("monitor") or "val/loss"
    metrics = evaluate(cfg)
    report(metrics)
    return metrics


@hydra.main(config_path=str(CONF_DIR), config_name="genomics_eval", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns the test metric."""
    return run(cfg).get("metric")


if __name__ == "__main__":
    cli_run(main, "genomics_eval")  # Hydra's errors plus "did you mean" for mistyped overrides
