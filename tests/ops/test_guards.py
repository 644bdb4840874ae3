"""A non-finite loss stops training naming the step and leaves the last good checkpoint intact."""

from __future__ import annotations

from tests.ops.helpers import POISON_AT_4, assert_nonfinite_stops_and_keeps_last_good
from tests.training.tiny import TINY, compose_config


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = compose_config("vision", [*TINY, "trainer=fast", "logger=csv", *POISON_AT_4], tmp_path / "run")
    assert_nonfinite_stops_and_keeps_last_good(cfg)


def test_inf_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = compose_config("vision", [*TINY, "trainer=fast", "logger=csv", *POISON_AT_4, "+callbacks.poison.value=inf"],
                         tmp_path / "run")
    assert_nonfinite_stops_and_keeps_last_good(cfg, value="inf")


def test_guard_can_be_dropped(tmp_path):
    cfg = compose_config("vision", [*TINY, "callbacks.nonfinite_loss=null"], tmp_path / "run")
    assert cfg.callbacks.nonfinite_loss is None
    assert compose_config("vision", TINY, tmp_path / "run").callbacks.nonfinite_loss._target_ == (
        "core_attn.training.guards.StopOnNonFiniteLoss")
