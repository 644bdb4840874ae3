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


def _state_at_fit(monkeypatch) -> dict:
    """Make ``Trainer.fit`` record the module's weights instead of training; returns where they land."""
    import lightning.pytorch as pl

    seen = {}

    def fit(self, module, datamodule=None, ckpt_path=None):
        seen["state"] = {k: v.clone() for k, v in module.state_dict().items()}
        seen["module"] = module

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    return seen


def test_init_from_another_image_size_resamples_positions(first_run, tiny_cfg, monkeypatch, caplog):
    from timm.layers import resample_abs_pos_embed

    ckpt, _ = first_run
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    seen = _state_at_fit(monkeypatch)
    with caplog.at_level("INFO"):
        train(tiny_cfg("trainer=fast", "test=false", "data.image_size=128", f"init_from={ckpt}"))
    pos = seen["state"]["net.encoder.pos_embed"]
    assert saved["net.encoder.pos_embed"].shape == (1, 64, 32) and pos.shape == (1, 256, 32)  # 8x8 -> 16x16 patches
    assert torch.equal(pos, resample_abs_pos_embed(saved["net.encoder.pos_embed"], [16, 16], [8, 8], num_prefix_tokens=0))
    assert all(torch.equal(seen["state"][k], v) for k, v in saved.items() if k != "net.encoder.pos_embed")
    assert "resampled (bicubic) from a 8x8 to a 16x16 patch grid" in caplog.text


def test_init_from_into_another_attention_variant(first_run, monkeypatch, caplog, tmp_path):
    """A local (or dense) run fine-tuned as adaptive_span: the spans start from their initialisation; back
    again, the spans are left out. Everything else is copied."""
    ckpt, _ = first_run
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    seen = _state_at_fit(monkeypatch)
    no_window = [o for o in TINY if not o.startswith("attention.window")]

    def cfg(*overrides):
        return compose_config("vision", [*no_window, "trainer=fast", "test=false", *overrides], tmp_path / "run")

    with caplog.at_level("WARNING"):
        train(cfg("attention=adaptive_span", "attention.max_span=16", "attention.span_init=0.5", f"init_from={ckpt}"))
    new = [k for k in seen["state"] if k not in saved]
    assert new == ["net.encoder.blocks.0.attn.attention.span_fraction"]
    assert torch.equal(seen["state"][new[0]], torch.full((2,), 0.5))
    assert all(torch.equal(seen["state"][k], v) for k, v in saved.items())
    assert "1 attention parameters are not in the checkpoint and keep their initialisation" in caplog.text

    span_state = {k: v.clone() for k, v in seen["state"].items()}
    span_state[new[0]].fill_(0.25)
    full = torch.load(ckpt, map_location="cpu", weights_only=False)
    full["state_dict"] = span_state
    torch.save(full, tmp_path / "span.ckpt")
    caplog.clear()
    with caplog.at_level("WARNING"):
        train(cfg("attention=dense", f"init_from={tmp_path / 'span.ckpt'}"))
    assert set(seen["state"]) == set(saved)
    assert all(torch.equal(seen["state"][k], v) for k, v in saved.items())
    assert "1 attention parameters of the checkpoint are not used by this attention variant" in caplog.text


def test_init_from_other_parameters_still_checked(first_run, tiny_cfg, tmp_path):
    """Only an attention variant's own parameters may be missing: any other tensor missing is an error."""
    ckpt, _ = first_run
    full = torch.load(ckpt, map_location="cpu", weights_only=False)
    del full["state_dict"]["net.head.weight"]
    torch.save(full, tmp_path / "cut.ckpt")
    with pytest.raises(ValueError, match=r"1 tensors differ: net\.head\.weight: not in the checkpoint"):
        train(tiny_cfg("trainer=fast", f"init_from={tmp_path / 'cut.ckpt'}"))
