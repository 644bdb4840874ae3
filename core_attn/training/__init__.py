"""The Lightning + Hydra runtime shared by the vision, audio and genomics apps.

Imported only by the apps (``import core_attn`` never pulls in Lightning or Hydra). Each app's
``train.py`` is a thin ``@hydra.main`` over :func:`train` (returning :func:`sweep_objective` for sweepers),
its ``evaluate.py`` over :func:`evaluate`.
"""

from core_attn.training.train import evaluate, sweep_objective, train

__all__ = ["evaluate", "sweep_objective", "train"]
