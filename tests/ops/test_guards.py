"""A non-finite loss stops training naming the step and leaves the last good checkpoint intact."""

from __future__ import annotations

import pytest
import torch

from core_attn.training import train
from tests.training.tiny import TINY, compose_config


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    # 3 steps per epoch: epoch 0 ends at global step 3 and saves last.ckpt; weights poisoned before step 4
    cfg = compose_config("vision", [*TINY, "trainer=fast", "trainer.max_epochs=3", "logger=csv",
                                    "+callbacks.poison._target_=tests.ops.helpers.PoisonAt", "+callbacks.poison.step=4"],
                         out)
    last = out / "checkpoints" / "last.ckpt"
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at global step 4 \(epoch 1\); "
                                                 r"training stopped before the optimizer step and the last "
                                                 r"checkpoint, .*last\.ckpt, is from before it"):
        train(cfg)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())
    assert not list(last.parent.glob(".*.tmp"))


def test_guard_can_be_dropped(tmp_path):
    cfg = compose_config("vision", [*TINY, "callbacks.nonfinite_loss=null"], tmp_path / "run")
    assert cfg.callbacks.nonfinite_loss is None
    assert compose_config("vision", TINY, tmp_path / "run").callbacks.nonfinite_loss._target_ == (
        "core_attn.training.guards.StopOnNonFiniteLoss")
