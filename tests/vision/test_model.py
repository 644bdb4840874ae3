"""The vision ViT over core_attn variants, and the LightningModule around it."""

from __future__ import annotations

import functools

import pytest
import torch

from core_attn import build_attention
from core_attn.attention.local import LocalAttention
from vision.model import PatchEmbed, VisionTransformer
from vision.module import ImageClassifier


def _vit(**kw):
    args = dict(img_size=64, in_chans=1, num_classes=10, patch_size=16, dim=32, depth=2, num_heads=2)
    return VisionTransformer(**{**args, **kw})


def test_patch_embed_raster_order():
    pe = PatchEmbed(64, 16, 1, 8)
    assert pe.grid == (4, 4) and pe.num_patches == 16
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 16:32, 48:64] = 1.0  # row 1, column 3 -> token 1 * 4 + 3
    out = pe(x) - pe(torch.zeros_like(x))  # (1, 16, 8)
    changed = out.abs().sum(-1)[0].nonzero().flatten().tolist()
    assert changed == [7]


@pytest.mark.parametrize("stem", ["patch", "conv"])
@pytest.mark.parametrize("pool,positions", [("mean", "learned"), ("cls", "rotary"), ("mean", "none")])
def test_forward_backward(stem, pool, positions):
    model = _vit(stem=stem, pool=pool, positions=positions, attention=functools.partial(build_attention, "local", window=4))
    x = torch.randn(3, 1, 64, 64)
    logits = model(x)
    assert logits.shape == (3, 10)
    logits.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad), "every parameter gets a gradient"
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (3, 32)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_pool_norm_batch_forward_backward(pool):
    model = _vit(pool=pool, pool_norm="batch", attention=functools.partial(build_attention, "local", window=4))
    assert isinstance(model.fc_norm, torch.nn.BatchNorm1d)
    assert isinstance(model.encoder.norm, torch.nn.Identity)  # one norm of the pooled features, not two
    x = torch.randn(3, 1, 64, 64)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    assert model(x[:1]).shape == (1, 10)  # running statistics: one image is fine in evaluation


def test_pool_norm_batch_ignores_what_every_image_shares():
    # The reason for pool_norm=batch: a feature vector shared by every image (e.g. the mean of the
    # background tokens) does not reach the head in training, whatever its size; under layer it does
    torch.manual_seed(0)
    tokens = torch.randn(4, 16, 32)
    shared = 50.0 * torch.randn(32)
    batch, layer = _vit(pool_norm="batch").train(), _vit(pool_norm="layer").train()
    assert torch.allclose(batch.forward_head(tokens), batch.forward_head(tokens + shared), atol=1e-4)
    assert not torch.allclose(layer.forward_head(tokens), layer.forward_head(tokens + shared), atol=1e-2)


def test_patch_embed_tokens_are_contiguous():
    # channels-last stem weights make the (B, dim, gh, gw) output flatten to (B, N, dim) without a copy
    for stem in ("patch", "conv"):
        pe = PatchEmbed(64, 16, 1, 8, stem)
        out = pe(torch.rand(2, 1, 64, 64))
        assert out.shape == (2, 16, 8) and out.is_contiguous()


def test_attention_factory_builds_one_variant_per_block():
    model = _vit(attention=functools.partial(build_attention, "local", window=4))
    variants = [b.attn.attention for b in model.encoder.blocks]
    assert all(isinstance(v, LocalAttention) and v.window == 4 for v in variants)
    assert variants[0] is not variants[1]


def test_no_weight_decay_names_exist():
    model = _vit(pool="cls")
    names = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(names)


def test_rectangular_images_and_channels():
    model = _vit(img_size=[32, 64], in_chans=3)
    assert model.patch_embed.num_patches == 8
    assert model(torch.randn(2, 3, 32, 64)).shape == (2, 10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(img_size=60), r"img_size=\(60, 60\) is not divisible by patch_size=16"),
    (dict(pool="max"), r"pool='max' is not allowed; expected one of \['mean', 'cls'\]"),
    (dict(stem="resnet"), r"stem='resnet' is not allowed; expected one of \['patch', 'conv'\]"),
    (dict(pool_norm="group"), r"pool_norm='group' is not allowed; expected one of \['layer', 'batch'\]"),
    (dict(img_size=[64, 64, 3]), r"img_size=\[64, 64, 3\] must be an int or \[height, width\]"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _vit(**kwargs)


def test_wrong_input_shape_is_named():
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 64, 64\); got \(2, 1, 32, 32\)"):
        _vit()(torch.randn(2, 1, 32, 32))


MODEL_CFG = {"_target_": "vision.model.VisionTransformer", "img_size": 32, "in_chans": 1, "num_classes": 4,
             "patch_size": 8, "dim": 16, "depth": 1, "num_heads": 2,
             "attention": {"_target_": "core_attn.attention.local.LocalAttention", "_partial_": True, "window": 4}}
OPT_CFG = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.05}


def test_module_rebuilds_from_its_hyperparameters():
    module = ImageClassifier(model=MODEL_CFG, optimizer=OPT_CFG)
    assert isinstance(module.net.encoder.blocks[0].attn.attention, LocalAttention)
    clone = ImageClassifier(**module.hparams)
    clone.load_state_dict(module.state_dict())
    x = torch.randn(2, 1, 32, 32)
    module.eval(), clone.eval()
    assert torch.equal(module(x), clone(x))
    probs = module.predict_step((x, torch.zeros(2, dtype=torch.long)), 0)
    assert probs.shape == (2, 4) and torch.allclose(probs.sum(-1), torch.ones(2))
