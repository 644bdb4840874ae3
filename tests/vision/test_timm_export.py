"""``vision.export`` of a ``model=timm_vit`` checkpoint: a tiny timm ViT trained for two steps by
``train(cfg)``, exported, and its artefact checked against the eager network on a fresh batch."""

from __future__ import annotations

import pytest
import torch

from core_attn.training import train
from core_attn.training.export import load_exported
from tests.training.tiny import compose_config
from vision.export import export, input_shape
from vision.module import ImageClassifier

TINY_TIMM = [
    "model=timm_vit", "model.depth=1", "attention.window=8", "attention.global_tokens=[0]",
    "data.image_size=64", "data.digit_size=16", "data.clutter_size=4", "data.num_clutter=4",
    "data.train_samples=8", "data.val_samples=4", "data.test_samples=4", "data.batch_size=4",
    "trainer=fast", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false",
    "extras.print_config=false", "callbacks.rich_progress_bar=null", "logger=csv",
]


@pytest.fixture(scope="module")
def timm_ckpt(tmp_path_factory):
    """``last.ckpt`` of two training steps of a one-block vit_tiny_patch16_224 on a 64x64 canvas (local attention)."""
    out = tmp_path_factory.mktemp("timm_run")
    metrics = train(compose_config("vision", TINY_TIMM, out))
    assert metrics["status"] == "ok" and metrics["steps"] == 2
    return metrics["last_ckpt"]


# the block-sparse kernel through torch.export takes ~9 s more on 2 shared cores: slow-marked
@pytest.mark.parametrize("fmt,backend", [("exported", "dense"), ("torchscript", "dense"),
                                         pytest.param("exported", None, marks=pytest.mark.slow)])
def test_timm_vit_checkpoint_exports_and_matches_eager(timm_ckpt, fmt, backend, tmp_path):
    out = tmp_path / f"timm.{fmt}"
    result = export(ckpt_path=timm_ckpt, format=fmt, out=str(out), batch_size=2, attention_backend=backend)
    assert result["path"] == str(out) and result["input_shape"] == [2, 1, 64, 64] and result["max_abs_diff"] <= 1e-4
    net = ImageClassifier.load_from_checkpoint(timm_ckpt, map_location="cpu").net.eval()
    assert type(net).__module__.startswith("timm.")  # really the timm model, not our VisionTransformer
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))  # not the batch export checked on
    with torch.no_grad():
        torch.testing.assert_close(load_exported(out, fmt)(x), net(x), atol=1e-4, rtol=1e-4)


def test_input_shape_from_the_model_config():
    assert input_shape({"in_chans": 3, "img_size": 224}) == (3, 224, 224)
    assert input_shape({"in_chans": 1, "img_size": [64, 96]}) == (1, 64, 96)
    with pytest.raises(ValueError, match=r"the checkpoint's model config \(my.Net\) has no \['img_size'\]; "
                                         r"vision.export needs model.in_chans and model.img_size"):
        input_shape({"_target_": "my.Net", "in_chans": 1})
