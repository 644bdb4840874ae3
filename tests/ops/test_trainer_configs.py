"""The scale-out trainer configs build what they promise (FSDP itself needs GPUs: only its strategy is built here)."""

from __future__ import annotations

from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from core_attn.layers import TransformerBlock
from tests.training.tiny import TINY, compose_config


def test_fsdp_strategy_wraps_transformer_blocks(tmp_path):
    cfg = compose_config("vision", [*TINY, "trainer=fsdp"], tmp_path)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.plugins[0]._target_.endswith("AtomicCheckpointIO")
    assert cfg.trainer.gradient_clip_val is None  # FSDPPrecision refuses norm clipping
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {TransformerBlock}


def test_ddp_cpu_turns_sync_batchnorm_off(tmp_path):
    cfg = compose_config("vision", [*TINY, "trainer=ddp_cpu"], tmp_path)
    assert (cfg.trainer.strategy, cfg.trainer.accelerator, cfg.trainer.devices) == ("ddp", "cpu", 2)
    assert cfg.trainer.sync_batchnorm is False  # SyncBatchNorm raises on CPU modules
