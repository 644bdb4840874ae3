"""Hugging Face ViT folders loaded into VisionTransformer: parity with transformers, the errors, the Hydra option."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file, save_file

from core_attn import build_attention
from vision.hf import load_hf_vit
from vision.module import ImageClassifier

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
            patch_size=8)  # 16 patches + cls = 17 tokens


def _save(folder, cls=None, **kw):
    """A randomly initialised HF ViT (``ViTForImageClassification`` by default) saved to ``folder``."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(**{**TINY, "num_labels": 5, **kw})
    model = (cls or transformers.ViTForImageClassification)(config).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_vit")
    return folder, _save(folder)


def _edit_config(folder, **kw):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **kw}))


@torch.no_grad()
def test_logits_equal_hf(hf_folder):
    folder, hf = hf_folder
    model = load_hf_vit(folder).eval()
    assert model.num_classes == 5 and model.pool == "cls" and model.encoder.norm.eps == 1e-12
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-5, rtol=0)


@torch.no_grad()
def test_pytorch_model_bin_is_read_too(hf_folder, tmp_path):
    folder, hf = hf_folder
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    torch.save(load_file(folder / "model.safetensors"), tmp_path / "pytorch_model.bin")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(load_hf_vit(tmp_path).eval()(x), hf(pixel_values=x).logits, atol=1e-5, rtol=0)


@torch.no_grad()
def test_local_window_covering_every_token_equals_hf(hf_folder):
    # the sparse kernel on a pattern that happens to be full: the wiring of a sparse variant
    folder, hf = hf_folder
    model = load_hf_vit(folder, attention=build_attention("local", window=16, backend="blocked")).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("size", [48, 24])
def test_other_image_size_resamples_positions_as_hf(hf_folder, size, caplog):
    folder, hf = hf_folder
    with caplog.at_level(logging.INFO, logger="vision.hf"):
        model = load_hf_vit(folder, img_size=size).eval()
    grid = size // 8
    assert f"position embeddings resampled (bicubic) from a 4x4 to a {grid}x{grid} patch grid" in caplog.text
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(model(x), hf(pixel_values=x, interpolate_pos_encoding=True).logits, atol=1e-5, rtol=0)


@torch.no_grad()
def test_vit_model_backbone_gray_images_and_a_new_head(tmp_path, caplog):
    # a ViTModel save (no `vit.` prefix, a pooler, no classifier) fine-tuned on 1-channel images, 3 classes
    hf = _save(tmp_path, transformers.ViTModel)
    with caplog.at_level(logging.INFO, logger="vision.hf"):
        model = load_hf_vit(tmp_path, in_chans=1, num_classes=3).eval()
    assert "no classifier; the head (num_classes=3) keeps its initialisation" in caplog.text
    assert "patch embedding adapted from 3 to 1 input channels" in caplog.text
    x = torch.randn(2, 1, 32, 32)
    ref = hf(pixel_values=x.expand(-1, 3, -1, -1)).last_hidden_state[:, 0]  # summed channels = gray repeated
    torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), ref, atol=1e-5, rtol=0)
    assert model(x).shape == (2, 3)


def test_missing_folder_config_and_weights(tmp_path):
    with pytest.raises(ValueError, match=r"model.hf_path is not set: model=hf_vit needs model.hf_path=<a local folder"):
        load_hf_vit(None)
    with pytest.raises(FileNotFoundError, match=r"model.hf_path='.*nope': no such folder .*nothing is downloaded"):
        load_hf_vit(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"model.hf_path='.*' has no config.json"):
        load_hf_vit(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json: unreadable config.json"):
        load_hf_vit(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", **TINY}))
    with pytest.raises(FileNotFoundError, match=r"has no model.safetensors or pytorch_model.bin \(found: \['config"):
        load_hf_vit(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"model.safetensors: unreadable weight file"):
        load_hf_vit(tmp_path)


@pytest.mark.parametrize("key,value,match", [
    ("model_type", "deit", r"model_type='deit' is not supported; expected 'vit'"),
    ("hidden_act", "gelu_new", (r"hidden_act='gelu_new' is not supported by vision.model.VisionTransformer; "
                                r"supported: \['gelu'\]")),
    ("qkv_bias", False, r"qkv_bias=False is not supported .*supported: \[True\]"),
    ("attention_probs_dropout_prob", 0.1, r"attention_probs_dropout_prob=0.1 is not supported .*supported: \[0.0\]"),
    ("patch_size", [8, 4], r"patch_size=\[8, 4\] is not supported; supported: square patches"),
    ("image_size", 0, r"image_size=0 must be a positive int or \[height, width\]"),
])
def test_unsupported_config_values_are_named(hf_folder, tmp_path, key, value, match):
    (tmp_path / "config.json").write_text((hf_folder[0] / "config.json").read_text())
    _edit_config(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=match):
        load_hf_vit(tmp_path)


def test_missing_unexpected_and_misshaped_tensors_are_named(hf_folder, tmp_path):
    folder = hf_folder[0]
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    state = load_file(folder / "model.safetensors")
    key = "vit.encoder.layer.1.attention.attention.key.weight"
    save_file({k: v for k, v in state.items() if k != key}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"does not fit its config.json \(num_hidden_layers=2\): missing keys "
                                         r"\['encoder.layer.1.attention.attention.key.weight'\], unexpected keys \[\]"):
        load_hf_vit(tmp_path)
    save_file({**state, "vit.embeddings.mask_token": torch.zeros(1, 1, 32)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \[\], unexpected keys \['embeddings.mask_token'\]"):
        load_hf_vit(tmp_path)
    save_file(state, tmp_path / "model.safetensors")
    _edit_config(tmp_path, intermediate_size=48)
    with pytest.raises(ValueError, match=r"shape does not fit the model built from config.json: "
                                         r"\['encoder.layer.0.intermediate.dense.weight \(64, 32\) -> "
                                         r"encoder.blocks.0.mlp.fc1.weight \(48, 32\)'"):
        load_hf_vit(tmp_path)



@torch.no_grad()
def test_hydra_option_and_checkpoints_rebuild_without_the_folder(hf_folder, tmp_path):
    from tests.training.tiny import compose_config

    folder, hf = hf_folder
    cfg = compose_config("vision", ["model=hf_vit", f"model.hf_path={folder}", "data.image_size=32", "data.channels=3",
                                    "data.num_classes=5", "attention=local", "attention.window=16",
                                    "attention.global_tokens=[0]"], tmp_path)
    module = instantiate(cfg.module, _recursive_=False, _convert_="all").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(module(x), hf(pixel_values=x).logits, atol=1e-5, rtol=0)
    saved = module.hparams.model
    assert saved["_target_"] == "vision.model.VisionTransformer" and "hf_path" not in saved
    assert (saved["dim"], saved["depth"], saved["norm_eps"], saved["attention"]["window"]) == (32, 2, 1e-12, 16)
    clone = ImageClassifier(**module.hparams)  # what load_from_checkpoint does
    clone.load_state_dict(module.state_dict())
    assert torch.equal(clone.eval()(x), module(x))


def test_fast_dev_run_of_vision_train_from_hf_weights(hf_folder, tmp_path):
    # the default data (1-channel MegaMNIST, 10 classes) at 64 px: channels adapted, positions resampled, new head
    from core_attn.training import train
    from tests.training.tiny import compose_config

    cfg = compose_config("vision", [
        "model=hf_vit", f"model.hf_path={hf_folder[0]}", "attention.window=16", "attention.global_tokens=[0]",
        "data.image_size=64", "data.digit_size=16", "data.clutter_size=4", "data.num_clutter=4",
        "data.train_samples=8", "data.val_samples=8", "data.test_samples=8", "data.batch_size=4",
        "trainer.fast_dev_run=true", "extras.print_config=false", "callbacks.rich_progress_bar=null", "logger=csv",
    ], tmp_path / "run")
    metrics = train(cfg)
    assert metrics["status"] == "ok" and metrics["variant"] == "local" and metrics["steps"] == 1
