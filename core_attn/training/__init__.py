"""The Lightning + Hydra runtime shared by the vision, audio and genomics apps.

Imported only by the apps (``import core_attn`` never pulls in Lightning or Hydra). Each app's
``train.py`` is a thin ``@hydra.main`` over :func:`train`, its ``evaluate.py`` over :func:`evaluate`.
"""

from core_attn.training.train import evaluate, train

__all__ = ["evaluate", "train"]
