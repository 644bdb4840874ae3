"""``init_from=<ckpt>``: weights only (fresh optimizer, schedule and step count), checked before use."""

from __future__ import annotations

import pytest
import torch

from core_attn.training import train
from core_attn.training.callbacks import CONFIG_KEY
from tests.training.tiny import TINY, compose_config


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("first") / "run"
    metrics = train(compose_config("vision", [*TINY, "trainer=fast", "test=false"], out))
    return metrics["last_ckpt"], metrics


def test_init_from_loads_weights_and_starts_fresh(first_run, tiny_cfg, monkeypatch):
    ckpt, _ = first_run
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    seen = {}

    def fit(self, module, datamodule=None, ckpt_path=None):  # record what training would start from
        seen["ckpt_path"], seen["state"] = ckpt_path, {k: v.clone() for k, v in module.state_dict().items()}

    import lightning.pytorch as pl

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    metrics = train(tiny_cfg("trainer=fast", "test=false", f"init_from={ckpt}"))
    assert metrics["init_from"] == ckpt and seen["ckpt_path"] is None  # not a resume: step 0, new optimizer
    assert set(seen["state"]) == set(saved)
    assert all(torch.equal(seen["state"][k], saved[k]) for k in saved)


def test_init_from_then_trains_its_own_steps(first_run, tiny_cfg):
    ckpt, first = first_run
    metrics = train(tiny_cfg("trainer=fast", "test=false", f"init_from={ckpt}"))
    assert metrics["steps"] == first["steps"] == 3  # counted from zero, not continued


def test_init_from_missing_file(tiny_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"init_from='.*nope\.ckpt': no such checkpoint file"):
        train(tiny_cfg(f"init_from={tmp_path / 'nope.ckpt'}"))


def test_init_from_other_app_or_other_model(first_run, tiny_cfg, tmp_path):
    ckpt, _ = first_run
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    saved[CONFIG_KEY]["app"] = "audio"
    torch.save(saved, tmp_path / "audio.ckpt")
    with pytest.raises(ValueError, match="is a checkpoint of the audio app, not of vision"):
        train(tiny_cfg("trainer=fast", f"init_from={tmp_path / 'audio.ckpt'}"))
    with pytest.raises(ValueError, match=r"its weights do not fit this model \(\d+ tensors differ: net\.\S+: checkpoint \(16, 1, 4, 4\), model \(24"):
        train(tiny_cfg("trainer=fast", "model.dim=48", f"init_from={ckpt}"))
