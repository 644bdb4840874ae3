"""The scale-out trainer configs build what they promise (FSDP itself needs GPUs: only its strategy is built here)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from core_attn.errors import EXIT_USER_ERROR
from core_attn.layers import TransformerBlock
from core_attn.training.train import check_max_time, check_trainer_device
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


@pytest.mark.parametrize("trainer", ["gpu", "ddp", "fsdp"])
def test_gpu_trainers_say_they_need_a_gpu(trainer, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_config("vision", [*TINY, f"trainer={trainer}"], tmp_path)
    with pytest.raises(ValueError, match=r"trainer.accelerator=gpu needs a CUDA GPU .* use trainer=cpu, or trainer=ddp_cpu"):
        check_trainer_device(cfg.trainer)


def test_sync_batchnorm_on_cpu_names_ddp_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_config("vision", [*TINY, "trainer=ddp", "trainer.accelerator=cpu"], tmp_path)
    with pytest.raises(ValueError, match=r"trainer.sync_batchnorm=true needs GPUs .* use trainer=ddp_cpu"):
        check_trainer_device(cfg.trainer)
    for ok in (["trainer=ddp_cpu"], ["trainer=cpu"], ["trainer=ddp", "trainer.accelerator=cpu",
                                                      "trainer.sync_batchnorm=false"]):
        check_trainer_device(compose_config("vision", [*TINY, *ok], tmp_path).trainer)


@pytest.mark.parametrize("value", ["01:20:00", "80 minutes", "3600"])
def test_max_time_that_lightning_cannot_read(value, tmp_path):
    cfg = compose_config("audio", [f"trainer.max_time={value}"], tmp_path)
    with pytest.raises(ValueError, match=r"trainer.max_time=.* is not a duration Lightning reads; expected "
                                         r"DD:HH:MM:SS .*trainer.max_time=00:01:20:00"):
        check_max_time(cfg.trainer)
    for ok in ("00:01:20:00", "null", "{hours: 2}"):
        check_max_time(compose_config("audio", [f"trainer.max_time={ok}"], tmp_path).trainer)


def test_gpu_trainer_without_gpu_is_one_line(tmp_path):
    """Through the command line: exit 2 and one line, not Lightning's traceback."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "vision.train", "trainer=gpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == (
        "vision.train: error: trainer.accelerator=gpu needs a CUDA GPU and torch finds none on this machine "
        "(trainer=gpu, ddp and fsdp train on GPUs); use trainer=cpu, or trainer=ddp_cpu for data-parallel CPU "
        "processes"), proc.stderr[-2000:]
