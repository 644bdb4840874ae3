"""The vision defaults as composed by Hydra: the settings the measured default run depends on."""

from __future__ import annotations

from hydra.utils import instantiate

from tests.training.tiny import compose_config


def test_default_run_settings(tmp_path):
    cfg = compose_config("vision", [], tmp_path)
    assert cfg.data.image_size == 512 and cfg.model.patch_size == 16  # 1,024 tokens
    assert cfg.model.pool_norm == "batch" and cfg.model.stem == "conv"
    # conf/vision/attention/local.yaml narrows the shared window (256) to 64 tokens for this app only
    assert cfg.attention.window == 64 and cfg.attention._target_.endswith("LocalAttention")
    assert instantiate(cfg.attention)().window == 64
    assert "max_time" not in cfg.trainer and cfg.trainer.max_steps == -1  # a fixed number of epochs


def test_vision_attention_settings_follow_the_chosen_variant(tmp_path):
    dense = compose_config("vision", ["attention=dense"], tmp_path)
    assert "window" not in dense.attention  # only local has vision-specific settings
    instantiate(dense.attention)()
    wider = compose_config("vision", ["attention.window=128"], tmp_path)
    assert wider.attention.window == 128  # the command line still wins
    big = compose_config("vision", ["experiment=vision_2048"], tmp_path)
    assert big.attention.window == 256  # and so do experiments
