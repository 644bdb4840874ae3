"""timm ViTs with core_attn attention: parity with timm, local weight files, the Hydra option."""

from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from core_attn import build_attention
from core_attn.attention.dense import DenseAttention
from core_attn.attention.linformer import LinformerAttention
from core_attn.attention.local import LocalAttention
from vision.module import ImageClassifier
from vision.timm_model import SwappedAttention, build_timm_vit, load_weights_file, swap_attention

TINY = dict(img_size=64, in_chans=1, num_classes=10, depth=2)  # 16 patches + cls = 17 tokens


def _timm(**kw):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY, **kw})


def _swapped(attention, **kw):
    return build_timm_vit(name="vit_tiny_patch16_224", attention=attention, **{**TINY, **kw})


def test_dense_swap_matches_timm_with_the_same_weights():
    ref = _timm().eval()
    model = _swapped(functools.partial(build_attention, "dense")).eval()
    model.load_state_dict(ref.state_dict())  # strict: the swap keeps timm's parameter names
    swapped = [m for m in model.modules() if isinstance(m, SwappedAttention)]
    assert len(swapped) == 2 and all(isinstance(m.attention, DenseAttention) for m in swapped)
    assert not [m for m in model.modules() if type(m) is timm.layers.Attention]
    x = torch.randn(3, 1, 64, 64)
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)


def test_swap_in_place_keeps_the_modules_and_matches_with_qk_norm():
    ref = _timm(qk_norm=True).eval()
    for blk in ref.blocks:  # non-trivial q/k norms, so skipping them would show
        torch.nn.init.normal_(blk.attn.q_norm.weight, 1.0, 0.3)
        torch.nn.init.normal_(blk.attn.k_norm.bias, 0.0, 0.3)
    model = copy.deepcopy(ref)
    assert swap_attention(model, None, max_seq_len=17) == 2
    assert model.blocks[0].attn.qkv is not ref.blocks[0].attn.qkv and model.blocks[0].attn.q_norm.weight.requires_grad
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)


def test_local_window_covering_everything_equals_timm():
    # the blocked sparse kernel on a pattern that happens to be full: the wiring of a sparse variant
    ref = _timm().eval()
    model = copy.deepcopy(ref)
    swap_attention(model, build_attention("local", window=17, backend="blocked"))
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)


def test_local_variant_forward_backward_and_factory_per_block():
    model = _swapped(functools.partial(build_attention, "local", window=4, global_tokens=[0]))
    variants = [m.attention for m in model.modules() if isinstance(m, SwappedAttention)]
    assert all(isinstance(v, LocalAttention) and v.window == 4 for v in variants) and variants[0] is not variants[1]
    logits = model(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_parametrised_variant_gets_the_sequence_length():
    # linformer requires max_seq_len: filled with patches + prefix tokens, as core_attn.layers does
    model = _swapped(functools.partial(LinformerAttention, k=4))  # what a Hydra `_partial_` config gives
    assert model.blocks[0].attn.attention.max_seq_len == 17
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)


def test_local_class_token_warning(caplog):
    with caplog.at_level("WARNING", logger="vision.timm_model"):
        _swapped(functools.partial(build_attention, "local", window=4))
    assert "sees only 5 of 17 tokens" in caplog.text and "global_tokens=[0]" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="vision.timm_model"):
        _swapped(functools.partial(build_attention, "local", window=4, global_tokens=[0]))
    assert "sees only" not in caplog.text


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_loads_with_pos_embed_resampled(tmp_path, suffix):
    src = _timm(img_size=32)  # 2x2 grid: the file's position embeddings are resampled to 4x4
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(src.state_dict(), str(path))
    else:
        torch.save({"state_dict": src.state_dict()}, path)
    model = _swapped(functools.partial(build_attention, "dense"), checkpoint_path=str(path))
    assert torch.equal(model.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)
    assert torch.equal(model.head.weight, src.head.weight)
    expected = resample_abs_pos_embed(src.pos_embed.detach(), new_size=(4, 4), old_size=(2, 2), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected)


def test_weights_file_adapts_channels_and_drops_another_head(tmp_path):
    src = _timm(in_chans=3, num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "rgb.pth")
    model = _timm()
    assert load_weights_file(model, tmp_path / "rgb.pth") == {"dropped": ["head.weight", "head.bias"]}
    torch.testing.assert_close(model.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))


def test_weights_file_errors(tmp_path):
    missing = r"model.checkpoint_path='.*missing.pth': no such file .*nothing is downloaded"
    with pytest.raises(FileNotFoundError, match=missing):
        _swapped(None, checkpoint_path=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"model.checkpoint_path='.*junk.pth': unreadable weight file"):
        _swapped(None, checkpoint_path=str(tmp_path / "junk.pth"))
    torch.save(_timm(depth=1).state_dict(), tmp_path / "shallow.pth")
    with pytest.raises(ValueError, match=r"shallow.pth' does not fit VisionTransformer: .*missing keys \['blocks.1"):
        _swapped(None, checkpoint_path=str(tmp_path / "shallow.pth"))


def test_bad_arguments_are_named():
    bad_name = r"model.name='vit_tinny_patch16_224' is not a timm model.*Did you mean 'vit_tiny_patch16_224'"
    with pytest.raises(ValueError, match=bad_name):
        build_timm_vit(name="vit_tinny_patch16_224", **TINY)
    with pytest.raises(ValueError, match=r"refused its arguments .*unexpected keyword argument 'qk_nrom'"):
        _swapped(None, timm_kwargs={"qk_nrom": True})
    with pytest.raises(ValueError, match=r"attn_drop_rate=0.1 is not supported"):
        _swapped(None, timm_kwargs={"attn_drop_rate": 0.1})
    with pytest.raises(ValueError, match=r"Sequential has no timm.layers.Attention modules to swap"):
        swap_attention(torch.nn.Sequential(torch.nn.Linear(2, 2)), None)
    with pytest.raises(ValueError, match=r"attn_mask / is_causal are not supported"):
        _swapped(None).blocks[0].attn(torch.randn(1, 17, 192), is_causal=True)


MODEL_CFG = {"_target_": "vision.timm_model.build_timm_vit", "name": "vit_tiny_patch16_224", "img_size": 32,
             "in_chans": 1, "num_classes": 4, "depth": 1,
             "attention": {"_target_": "core_attn.attention.local.LocalAttention", "_partial_": True, "window": 2}}
OPT_CFG = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}


def test_module_saves_no_weight_file_path(tmp_path):
    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=32, in_chans=1, num_classes=4, depth=1).state_dict(),
               tmp_path / "init.pth")
    module = ImageClassifier(model={**MODEL_CFG, "checkpoint_path": str(tmp_path / "init.pth")}, optimizer=OPT_CFG)
    assert module.hparams.model["checkpoint_path"] is None
    (tmp_path / "init.pth").unlink()  # a module checkpoint rebuilds without the file
    clone = ImageClassifier(**module.hparams)
    clone.load_state_dict(module.state_dict())
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(module.eval()(x), clone.eval()(x))


def test_fast_dev_run_of_vision_train_with_timm_vit(tmp_path):
    from core_attn.training import train
    from tests.training.tiny import compose_config

    cfg = compose_config("vision", [
        "model=timm_vit", "model.depth=1", "attention.window=8", "attention.global_tokens=[0]",
        "data.image_size=64", "data.digit_size=16", "data.clutter_size=4", "data.num_clutter=4",
        "data.train_samples=8", "data.val_samples=8", "data.test_samples=8", "data.batch_size=4",
        "trainer.fast_dev_run=true", "extras.print_config=false", "callbacks.rich_progress_bar=null", "logger=csv",
    ], tmp_path / "run")
    assert cfg.model.in_chans == 1 and cfg.model.img_size == 64
    metrics = train(cfg)
    assert metrics["status"] == "ok" and metrics["variant"] == "local" and metrics["steps"] == 1
    assert 0.0 <= metrics["metric"] <= 1.0 and metrics["params"] > 0
