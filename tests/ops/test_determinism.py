"""Two in-process runs with the same seed give identical metrics and weights; another seed does not."""

from __future__ import annotations

import torch

from core_attn.training import train
from tests.training.tiny import TINY, compose_config

FAST = [*TINY, "trainer=fast", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "logger=csv"]


def _run(tmp_path, name, *overrides):
    out = tmp_path / name
    metrics = train(compose_config("vision", [*FAST, *overrides], out))
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return metrics, state


def _comparable(metrics):
    return {k: metrics[k] for k in ("final", "test", "steps", "params")}


def test_same_seed_same_run(tmp_path):
    m1, s1 = _run(tmp_path, "a", "seed=3")
    m2, s2 = _run(tmp_path, "b", "seed=3")
    assert m1["steps"] == 3 and "train/loss_epoch" in m1["final"]
    assert _comparable(m1) == _comparable(m2)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    m3, s3 = _run(tmp_path, "c", "seed=4")
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    assert m3["final"]["train/loss_epoch"] != m1["final"]["train/loss_epoch"]
