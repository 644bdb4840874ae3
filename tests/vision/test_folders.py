"""Folders of the user's own images: ``vision.predict <folder>`` (predictions.csv) and ``vision.evaluate
data.root=<folder>`` (every image of a folder the model has never seen, confusion matrix CSV and PNG)."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from core_attn.training.callbacks import CLASS_NAMES_KEY, CONFIG_KEY
from tests.training.tiny import compose_config
from vision import evaluate as ve
from vision import predict as vp
from vision.data import labelled_images

CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox"]  # 6 classes, so a top-5 exists


def write_png(path, cls: int, seed: int, size=(40, 36)) -> None:
    """A small RGB PNG whose colour depends on the class."""
    rng = np.random.default_rng(seed)
    base = np.array([(cls * 40) % 256, (255 - cls * 40) % 256, (cls * 90) % 256], dtype=np.float32)
    pixels = (base + rng.normal(0, 20, size=(size[1], size[0], 3))).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A checkpoint of one training step on a 6-class image folder (5 PNGs per class, 32x32 input)."""
    from core_attn.training import train

    root = tmp_path_factory.mktemp("folders")
    for c, name in enumerate(CLASSES):
        for i in range(5):
            write_png(root / "train_images" / name / f"{i}.png", c, seed=10 * c + i)
    overrides = ["data=image_folder", f"data.root={root / 'train_images'}", "data.num_classes=6", "data.image_size=32",
                 "data.batch_size=4", "data.val_fraction=0.2", "data.test_fraction=0.2", "data.min_train_samples=null",
                 "model.patch_size=8",
                 "model.stem=patch", "model.dim=32", "model.depth=1", "model.num_heads=2", "attention.window=16",
                 "trainer=fast", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false",
                 "~logger", "callbacks.lr_monitor=null", "callbacks.rich_progress_bar=null", "extras.print_config=false"]
    path = train(compose_config("vision", overrides, root / "run"))["last_ckpt"]
    return path, root / "train_images"


@pytest.fixture()
def photos(tmp_path):
    """An unlabelled folder: nested images, one JPEG, a hidden file and a text file."""
    write_png(tmp_path / "photos" / "a" / "x.png", 0, seed=1)
    write_png(tmp_path / "photos" / "a" / "deeper" / "y.png", 3, seed=2, size=(50, 30))
    Image.open(tmp_path / "photos" / "a" / "x.png").save(tmp_path / "photos" / "z.jpg")
    write_png(tmp_path / "photos" / ".thumbs" / "t.png", 1, seed=3)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    return tmp_path / "photos"


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- predict ---------------------------------------------------------------------------------------
def test_predict_folder_on_the_command_line(ckpt, photos, tmp_path, monkeypatch, capsys):
    path, _ = ckpt
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["vision.predict", str(photos), f"ckpt_path={path}", f"output={out}",
                                      "batch_size=2", f"hydra.run.dir={tmp_path / 'run'}"])
    vp.main()
    printed = capsys.readouterr().out
    assert "3 images classified" in printed and f"predictions: {out / 'predictions.csv'}" in printed
    rows = read_rows(out / "predictions.csv")
    assert [r["file"] for r in rows] == ["a/deeper/y.png", "a/x.png", "z.jpg"]  # sorted, relative, hidden left out
    assert list(rows[0]) == ["file", "label", "probability"] + [f"top{k}_{c}" for k in range(2, 6)
                                                                for c in ("label", "probability")]
    for r in rows:
        probs = [float(r["probability"])] + [float(r[f"top{k}_probability"]) for k in range(2, 6)]
        assert all(0.0 <= p <= 1.0 for p in probs) and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        labels = [r["label"]] + [r[f"top{k}_label"] for k in range(2, 6)]
        assert set(labels) <= set(CLASSES) and len(set(labels)) == 5
    for rel, size in (("a/deeper/y_attention.png", (50, 30)), ("a/x_attention.png", (40, 36)), ("z_attention.png", (40, 36))):
        with Image.open(out / "overlays" / rel) as im:
            assert im.size == size


def test_predict_folder_batches_match_one_image(ckpt, photos, tmp_path):
    path, _ = ckpt
    result = vp.predict_folder(folder=str(photos), ckpt_path=path, output=str(tmp_path / "out"), topk=3, batch_size=2,
                               overlays=False)
    assert result["images"] == 3 and result["overlays"] is None and not (tmp_path / "out" / "overlays").exists()
    rows = {r["file"]: r for r in read_rows(result["csv"])}
    assert "top4_label" not in rows["z.jpg"] and "top3_label" in rows["z.jpg"]
    one = vp.predict(image=str(photos / "a" / "deeper" / "y.png"), ckpt_path=path, output_dir=str(tmp_path), topk=3)
    row = rows["a/deeper/y.png"]
    assert row["label"] == one["predicted_name"]
    assert float(row["top3_probability"]) == pytest.approx(one["top"][2][2], abs=1e-5)


def test_predict_folder_unreadable_image(ckpt, photos, tmp_path):
    path, _ = ckpt
    (photos / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"unreadable image .*broken\.png.*set skip_bad=true"):
        vp.predict_folder(folder=str(photos), ckpt_path=path, output=str(tmp_path / "out"), overlays=False)
    out = photos / "predictions"  # inside the folder: its files are never read back as inputs
    for _ in range(2):
        result = vp.predict_folder(folder=str(photos), ckpt_path=path, output=str(out), skip_bad=True)
        assert result["images"] == 3 and result["skipped"] == [str(photos / "a" / "broken.png")]
    assert len(read_rows(out / "predictions.csv")) == 3


def test_predict_folder_errors(ckpt, tmp_path):
    path, _ = ckpt
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"image='.*empty': no image files \(\.jpg"):
        vp.predict_folder(folder=str(tmp_path / "empty"), ckpt_path=path)
    with pytest.raises(ValueError, match=r"batch_size=0 is out of range"):
        vp.predict_folder(folder=str(tmp_path / "empty"), ckpt_path=path, batch_size=0)
    assert vp.image_overrides([str(tmp_path / "empty"), "topk=2"]) == [f"image={tmp_path / 'empty'}", "topk=2"]


# -- evaluate --------------------------------------------------------------------------------------
def unseen_folder(root, per_class: dict[str, int]):
    for name, n in per_class.items():
        for i in range(n):
            write_png(root / name / ("nested" if i % 2 else "") / f"{name}{i}.png", CLASSES.index(name), seed=100 + i)
    return root


def read_confusion(path):
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, {r[0]: [int(v) for v in r[1:]] for r in rows}


def test_checkpoint_records_its_class_names(ckpt):
    path, _ = ckpt
    assert torch.load(path, map_location="cpu", weights_only=False)[CLASS_NAMES_KEY] == CLASSES


def test_evaluate_scores_every_image_of_an_unseen_folder(ckpt, tmp_path, monkeypatch):
    path, _ = ckpt
    folder = unseen_folder(tmp_path / "unseen", {"bee": 3, "fox": 4})  # fewer classes than the model knows
    run = tmp_path / "eval"
    monkeypatch.setattr(sys, "argv", ["vision.evaluate", f"ckpt_path={path}", f"data.root={folder}",
                                      f"hydra.run.dir={run}", "extras.print_config=false"])
    ve.main()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "all" and metrics["images"] == 7 and metrics["classes_present"] == ["bee", "fox"]
    assert 0.0 <= metrics["metric"] <= 1.0
    header, rows = read_confusion(run / "confusion_matrix.csv")
    assert header == ["true/predicted", *CLASSES] and list(rows) == CLASSES
    assert sum(map(sum, rows.values())) == 7 and sum(rows["bee"]) == 3 and sum(rows["fox"]) == 4
    assert sum(rows["ant"]) == 0
    correct = rows["bee"][CLASSES.index("bee")] + rows["fox"][CLASSES.index("fox")]
    assert metrics["test"]["test/acc"] == pytest.approx(correct / 7)
    with Image.open(run / "confusion_matrix.png") as im:
        assert im.format == "PNG" and min(im.size) > 200


def test_evaluate_split_choices(ckpt, tmp_path):
    path, train_root = ckpt

    def run(name, *overrides):
        cfg = compose_config("vision_eval", [f"ckpt_path={path}", "extras.print_config=false", *overrides],
                             tmp_path / name)
        return ve.evaluate_vision(cfg)

    assert run("own", )["split"] == "test" and run("own")["images"] == 6  # the carved test split: 1 per class
    split_folder = tmp_path / "splits"
    unseen_folder(split_folder / "train", {"ant": 2})
    unseen_folder(split_folder / "test", {"cat": 2, "dog": 1})
    metrics = run("auto", f"++data.root={split_folder}")
    assert metrics["split"] == "test" and metrics["images"] == 3
    metrics = run("all", f"++data.root={split_folder}", "split=all")
    assert metrics["split"] == "all" and metrics["images"] == 5


def test_evaluate_errors(ckpt, tmp_path):
    path, _ = ckpt

    def run(*overrides):
        return ve.evaluate_vision(compose_config("vision_eval", [f"ckpt_path={path}", *overrides], tmp_path / "e"))

    unknown = unseen_folder(tmp_path / "wolves", {"cat": 1})
    write_png(unknown / "wolf" / "w.png", 0, seed=0)
    with pytest.raises(ValueError, match=r"class folder 'wolf' in .*wolves is not a class of the model; its classes: "
                                         r"\['ant', 'bee', 'cat', 'dog', 'eel', 'fox'\]"):
        run(f"++data.root={unknown}")
    plain = unseen_folder(tmp_path / "plain", {"cat": 2})
    with pytest.raises(ValueError, match=r"split='test': .*plain has no test/ folder, and carving one needs the "
                                         r"checkpoint's classes"):
        run(f"++data.root={plain}", "split=test")
    with pytest.raises(ValueError, match=r"split='every' is not allowed; expected one of"):
        run(f"++data.root={plain}", "split=every")


def test_evaluate_split_all_needs_an_image_folder(tmp_path):
    data = {"_target_": "vision.data.MegaMNISTDataModule", "image_size": 64, "digit_size": 16}
    torch.save({CONFIG_KEY: {"data": data}}, tmp_path / "mega.ckpt")
    cfg = compose_config("vision_eval", [f"ckpt_path={tmp_path / 'mega.ckpt'}", "split=all"], tmp_path)
    with pytest.raises(ValueError, match=r"split='all' needs an image folder \(data.root=<folder>\)"):
        ve.evaluate_vision(cfg)


def test_labelled_images_use_the_model_class_order(tmp_path):
    unseen_folder(tmp_path / "f", {"fox": 1, "bee": 2})
    assert [(p.relative_to(tmp_path / "f").as_posix(), t) for p, t in labelled_images(tmp_path / "f", CLASSES)] == [
        ("bee/bee0.png", 1), ("bee/nested/bee1.png", 1), ("fox/fox0.png", 5)]


def test_data_overrides():
    assert ve.data_overrides(["ckpt_path=a", "data.root=/x", "data.batch_size=4", "+data.y=1"]) == [
        "ckpt_path=a", "++data.root=/x", "++data.batch_size=4", "+data.y=1"]
    keep = ["data=image_folder", "data.root=/x"]
    assert ve.data_overrides(keep) == keep
