"""``python -m vision.predict``: classify one image from a checkpoint and draw the attention overlay."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from core_attn import build_attention
from core_attn.training.callbacks import CONFIG_KEY
from vision import predict as vp
from vision.data import MegaMNISTDataModule

CANVAS = dict(image_size=64, digit_size=16, clutter_size=4, num_clutter=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of one training step on 64x64 canvases (local attention), and a test canvas as PNG."""
    from core_attn.training import train
    from tests.training.tiny import TINY, compose_config

    root = tmp_path_factory.mktemp("predict")
    cfg = compose_config("vision", [*TINY, "trainer=fast", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                                    "test=false", "~logger", "callbacks.lr_monitor=null"], root / "run")
    ckpt = train(cfg)["last_ckpt"]
    dm = MegaMNISTDataModule(**CANVAS)
    dm.setup()
    canvas, _ = dm.datasets["test"][0]  # (1, 64, 64) in [0, 1]
    png = root / "canvas.png"
    Image.fromarray((canvas[0].numpy() * 255).round().astype(np.uint8)).save(png)
    return ckpt, png


def test_positional_image_on_the_command_line(trained, tmp_path, monkeypatch, capsys):
    ckpt, png = trained
    monkeypatch.setattr(sys, "argv", ["vision.predict", str(png), f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}"])
    vp.main()
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("predicted: "))
    assert 0 <= int(line.split()[1]) <= 9
    assert "top-5: " in out and "attention map (local, last block)" in out
    overlay = tmp_path / "canvas_attention.png"
    assert overlay.is_file() and Image.open(overlay).size == (64, 64)


def test_predict_returns_probabilities_and_writes_output(trained, tmp_path):
    ckpt, png = trained
    result = vp.predict(image=str(png), ckpt_path=ckpt, output=str(tmp_path / "sub" / "map.png"), topk=3)
    assert len(result["top"]) == 3 and result["predicted"] == result["top"][0][0]
    probs = [p for _, _, p in result["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    assert result["predicted_name"] == str(result["predicted"]) and result["exact_map"]
    with Image.open(tmp_path / "sub" / "map.png") as im:
        assert im.size == (64, 64) and im.mode == "RGB"


def test_overlay_keeps_any_image_size(trained, tmp_path):
    ckpt, png = trained
    big = tmp_path / "big.png"
    Image.open(png).convert("RGB").resize((96, 80)).save(big)  # RGB and not square: converted, resized
    result = vp.predict(image=str(big), ckpt_path=ckpt, output_dir=str(tmp_path))
    assert Image.open(result["output"]).size == (96, 80)


def test_timm_checkpoint_map_uses_the_class_token(tmp_path):
    # a checkpoint written the way Lightning does (hyper-parameters, state dict, stored run config)
    from vision.module import ImageClassifier

    model = {"_target_": "vision.timm_model.build_timm_vit", "name": "vit_tiny_patch16_224", "img_size": 64,
             "in_chans": 1, "num_classes": 10, "depth": 1,
             "attention": {"_target_": "core_attn.attention.local.LocalAttention", "_partial_": True, "window": 4,
                           "global_tokens": [0]}}
    module = ImageClassifier(model=model, optimizer={"_target_": "torch.optim.AdamW", "_partial_": True})
    data = {"_target_": "vision.data.MegaMNISTDataModule", **CANVAS}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), CONFIG_KEY: {"data": data}},
               tmp_path / "timm.ckpt")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "blank.png")
    net, _ = vp.load_checkpoint_model(tmp_path / "timm.ckpt")
    assert vp._net_layout(net) == (1, (4, 4), True)
    result = vp.predict(image=str(tmp_path / "blank.png"), ckpt_path=str(tmp_path / "timm.ckpt"), output_dir=str(tmp_path))
    assert result["variant"] == "local" and Image.open(result["output"]).size == (64, 64)


@pytest.mark.parametrize("variant,kwargs", [("local", {"window": 3, "global_tokens": [0]}), ("dense", {}),
                                            ("bigbird", {"block_size": 4, "num_random_blocks": 1})])
def test_attention_received_is_the_masked_softmax(variant, kwargs):
    attn = build_attention(variant, **kwargs)
    q, k = torch.randn(1, 3, 24, 8), torch.randn(1, 3, 24, 8)
    mask = attn.dense_mask(24) if variant != "dense" else torch.ones(24, 24, dtype=torch.bool)
    probs = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~mask, float("-inf")).softmax(-1)[0]  # (H, N, N)
    queries = torch.tensor([0, 5, 23])
    expected = probs[:, queries].mean(dim=(0, 1))
    torch.testing.assert_close(vp.attention_received(q, k, attn, queries), expected)
    vp.QUERY_CHUNK_ELEMENTS, old = 3 * 24, vp.QUERY_CHUNK_ELEMENTS  # one query per chunk: same answer
    try:
        torch.testing.assert_close(vp.attention_received(q, k, attn, torch.arange(24)), probs.mean(dim=(0, 1)))
    finally:
        vp.QUERY_CHUNK_ELEMENTS = old


def test_image_overrides(tmp_path):
    existing = tmp_path / "scan"  # an existing file without an image suffix
    existing.write_bytes(b"x")
    argv = ["photo.JPG", str(existing), "ckpt_path=a.ckpt", "-m", "my image.png", "topk=3"]
    assert vp.image_overrides(argv) == ["image=photo.JPG", f"image={existing}", "ckpt_path=a.ckpt", "-m",
                                        "image='my image.png'", "topk=3"]


def test_errors_name_the_file(trained, tmp_path):
    ckpt, png = trained
    with pytest.raises(FileNotFoundError, match=r"image='.*nope.png': no such file"):
        vp.predict(image=str(tmp_path / "nope.png"), ckpt_path=ckpt, output_dir=str(tmp_path))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"unreadable image .*broken.png"):
        vp.predict(image=str(bad), ckpt_path=ckpt, output_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"ckpt_path='.*missing.ckpt': no such checkpoint file"):
        vp.predict(image=str(png), ckpt_path=str(tmp_path / "missing.ckpt"), output_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"topk=0 is out of range"):
        vp.predict(image=str(png), ckpt_path=ckpt, topk=0)


def test_image_folder_eval_box_is_the_region_the_transform_keeps(tmp_path):
    from vision.data import ImageFolderDataModule

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    dm = ImageFolderDataModule(root=str(tmp_path), num_classes=2, image_size=64, crop_pct=0.8, channels=1,
                               mean=[0.0], std=[1.0])
    assert dm.class_names() == ["a", "b"]
    assert dm.eval_box(200, 100) == (60.0, 10.0, 140.0, 90.0)  # shorter side 100 -> 80, then the centred 64 crop
    ramp = Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (100, 1)))  # pixel value = its x
    x = dm.eval_transform()(ramp)[0] * 255  # (64, 64)
    assert x.shape == (64, 64)
    assert abs(float(x[:, 0].mean()) - 60.6) < 1.5 and abs(float(x[:, -1].mean()) - 139.4) < 1.5


def test_evaluate_writes_the_confusion_matrix_of_the_test_split(trained, tmp_path):
    import csv

    from tests.training.tiny import compose_config
    from vision.evaluate import evaluate_vision

    ckpt, _ = trained
    cfg = compose_config("vision_eval", [f"ckpt_path={ckpt}", "trainer.limit_test_batches=1",
                                         "extras.print_config=false"], tmp_path)
    metrics = evaluate_vision(cfg)
    assert metrics["split"] == "test" and metrics["images"] == 8  # one batch of the stored data config
    with open(tmp_path / "confusion_matrix.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == ["true/predicted", *(str(d) for d in range(10))]  # MegaMNIST's class names: the digits
    assert sum(int(v) for r in rows for v in r[1:]) == 8 and (tmp_path / "confusion_matrix.png").is_file()
