"""MegaMNIST (determinism, labels, splits, Fashion-MNIST files) and the image-folder datamodule."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from vision.data import (
    FASHION_FILES,
    ImageFolderDataModule,
    SPLIT_SEED,
    MegaMNISTDataModule,
    _stratified_split,
    load_digits_banks,
)

SMALL = dict(image_size=64, digit_size=16, clutter_size=4, num_clutter=6, train_samples=20, val_samples=10,
             test_samples=10, batch_size=4)


@pytest.fixture(scope="module")
def mega():
    dm = MegaMNISTDataModule(**SMALL)
    dm.setup()
    return dm


def test_same_index_same_image(mega):
    again = MegaMNISTDataModule(**SMALL)
    again.setup()
    x1, y1 = mega.datasets["train"][3]
    x2, y2 = again.datasets["train"][3]
    assert torch.equal(x1, x2) and y1 == y2
    assert torch.equal(mega.datasets["train"][3][0], x1)  # and across calls
    assert not torch.equal(mega.datasets["train"][4][0], x1)
    assert not torch.equal(mega.datasets["val"][3][0], x1)  # the split is part of the seed


def test_seed_changes_canvases(mega):
    other = MegaMNISTDataModule(**{**SMALL, "seed": 1})
    other.setup()
    assert not torch.equal(other.datasets["train"][0][0], mega.datasets["train"][0][0])


def test_canvas_shape_and_range(mega):
    x, y = mega.datasets["test"][0]
    assert x.shape == (1, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert isinstance(y, int) and 0 <= y < 10
    rgb = MegaMNISTDataModule(**{**SMALL, "channels": 3})
    rgb.setup()
    x3, _ = rgb.datasets["test"][0]
    assert x3.shape == (3, 64, 64) and torch.equal(x3[0], x[0]) and torch.equal(x3[2], x[0])


def test_label_is_the_class_placed_three_times(mega):
    ds = mega.datasets["train"]
    labels = []
    for i in range(len(ds)):
        layout = ds.layout(i)
        classes = [p.cls for p in layout.objects]
        assert classes.count(layout.label) == 3 and len(classes) == 5
        distractors = classes[3:]
        assert len(set(distractors)) == 2 and layout.label not in distractors
        assert all(int(ds.labels[p.index]) == p.cls for p in layout.objects)  # the bank image has that class
        assert len({p.index for p in layout.objects[:3]}) == 3  # three different handwritten copies
        for a in layout.objects:  # objects never overlap
            for b in layout.objects:
                if a is not b:
                    assert abs(a.y - b.y) >= 16 or abs(a.x - b.x) >= 16
        labels.append(layout.label)
        assert ds[i][1] == layout.label
    assert len(set(labels)) >= 5


def test_objects_are_drawn_where_the_layout_says():
    dm = MegaMNISTDataModule(**{**SMALL, "num_clutter": 0})
    dm.setup()
    ds = dm.datasets["val"]
    layout = ds.layout(2)
    canvas = ds.render(layout)[0]
    digits = ds.upscaled([p.index for p in layout.objects])
    mask = torch.zeros_like(canvas, dtype=torch.bool)
    for p, img in zip(layout.objects, digits):
        assert torch.equal(canvas[p.y:p.y + 16, p.x:p.x + 16], img)
        mask[p.y:p.y + 16, p.x:p.x + 16] = True
    assert canvas[~mask].abs().max() == 0  # nothing else without clutter
    cluttered = MegaMNISTDataModule(**SMALL)
    cluttered.setup()
    cds = cluttered.datasets["val"]
    lay = cds.layout(2)
    assert len(lay.clutter) == 6
    canvas = cds.render(lay)[0]
    for p, img in zip(lay.objects, cds.upscaled([p.index for p in lay.objects])):
        assert (canvas[p.y:p.y + 16, p.x:p.x + 16] >= img).all()  # clutter only adds strokes


def test_splits_use_disjoint_source_images():
    labels = np.repeat(np.arange(10), 20)
    parts = _stratified_split(labels, (0.6, 0.2, 0.2), seed=0)
    assert sum(len(p) for p in parts) == 200
    assert not set(parts[0]) & set(parts[1]) and not set(parts[0]) & set(parts[2]) and not set(parts[1]) & set(parts[2])
    assert all(np.bincount(labels[p], minlength=10).min() > 0 for p in parts)  # every class in every split
    from sklearn.datasets import load_digits

    digits = load_digits()
    parts = _stratified_split(digits.target, (0.6, 0.2, 0.2), SPLIT_SEED)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1797))  # each source image in exactly one split
    banks = load_digits_banks()
    for split, p in zip(("train", "val", "test"), parts):
        images, labels = banks[split]
        assert torch.allclose(images, torch.from_numpy(digits.images[p] / 16.0).float())
        assert labels.tolist() == digits.target[p].tolist()


def test_loaders_batch(mega):
    x, y = next(iter(mega.train_dataloader()))
    assert x.shape == (4, 1, 64, 64) and y.shape == (4,)
    assert len(mega.val_dataloader().dataset) == 10


def test_training_drops_a_last_partial_batch():
    # 9 canvases at batch 4: training serves 2 full batches (a batch of one would stop BatchNorm),
    # evaluation serves every canvas; a training split smaller than a batch is still served
    dm = MegaMNISTDataModule(**{**SMALL, "train_samples": 9, "val_samples": 9})
    assert [len(y) for _, y in dm.train_dataloader()] == [4, 4]
    assert [len(y) for _, y in dm.val_dataloader()] == [4, 4, 1]
    tiny = MegaMNISTDataModule(**{**SMALL, "train_samples": 3})
    assert [len(y) for _, y in tiny.train_dataloader()] == [3]


@pytest.mark.parametrize("kwargs,match", [
    (dict(image_size=64, digit_size=32), r"digit_size=32 is out of range; expected 8 <= digit_size <= 16"),
    (dict(clutter_size=16), r"clutter_size=16 is out of range; expected 1 <= clutter_size <= 15"),
    (dict(source="mnist"), r"source='mnist' is not allowed; expected one of \['digits', 'fashion'\]"),
    (dict(channels=2), r"channels=2 is not allowed; expected one of \[1, 3\]"),
    (dict(num_classes=5), r"num_classes=5 is not allowed; expected one of \[10\]"),
    (dict(image_size=8192), r"image_size=8192 is out of range"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MegaMNISTDataModule(**{**SMALL, **kwargs})


# -- Fashion-MNIST from local files -----------------------------------------------------------------
def _write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the IDX format of (Fashion-)MNIST, gzipped."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(root, n_train=240, n_test=60) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(n, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_fashion_from_local_files(tmp_path):
    _fake_fashion(tmp_path / "fm")
    dm = MegaMNISTDataModule(**SMALL, source="fashion", fashion_root=str(tmp_path / "fm"), cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup()
    assert all((tmp_path / "cache" / "FashionMNIST" / "raw" / name).is_file() for name in FASHION_FILES)
    assert len(dm.datasets["train"].labels) == 200 and len(dm.datasets["val"].labels) == 40
    assert len(dm.datasets["test"].labels) == 60
    x, y = dm.datasets["train"][0]
    assert x.shape == (1, 64, 64) and 0 <= y < 10


def test_fashion_missing_files_names_path_and_package(tmp_path):
    dm = MegaMNISTDataModule(**SMALL, source="fashion", fashion_root=str(tmp_path / "nowhere"),
                             cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[\.gz\] not found in .*nowhere.*"
                                                r"apt-get download dataset-fashion-mnist"):
        dm.setup()


# -- image folders ---------------------------------------------------------------------------------
def _image_tree(root, layout: dict[str, int], size=20) -> None:
    rng = np.random.default_rng(0)
    for rel, count in layout.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, size=(size, size + 4, 3), dtype=np.uint8)).save(root / rel / f"{i}.png")


def _folder_dm(root, **kw):
    return ImageFolderDataModule(**{"root": str(root), "num_classes": 2, "image_size": 16, "batch_size": 4, **kw})


def test_image_folder_train_val_folders(tmp_path):
    _image_tree(tmp_path, {"train/cat": 6, "train/dog": 6, "val/cat": 2, "val/dog": 2})
    dm = _folder_dm(tmp_path, test_fraction=0.5)
    dm.setup()
    assert dm.classes == ["cat", "dog"]
    assert len(dm.datasets["val"]) == 4 and len(dm.datasets["test"]) == 6 and len(dm.datasets["train"]) == 6
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and set(y.tolist()) <= {0, 1}
    x, _ = dm.datasets["val"][0]
    assert abs(float(x.mean())) < 3  # normalised


def test_image_folder_fraction_split(tmp_path):
    _image_tree(tmp_path, {"cat": 10, "dog": 10})
    dm = _folder_dm(tmp_path, val_fraction=0.2, test_fraction=0.2, channels=1, mean=[0.5], std=[0.5])
    dm.setup()
    sizes = {s: len(d) for s, d in dm.datasets.items()}
    assert sizes == {"train": 12, "val": 4, "test": 4}
    paths = [set(p for p, _ in d.samples) for d in dm.datasets.values()]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    assert dm.datasets["test"][0][0].shape == (1, 16, 16)


def test_image_folder_corrupt_file_is_named(tmp_path):
    _image_tree(tmp_path, {"train/cat": 4, "train/dog": 4, "val/cat": 2, "val/dog": 2})
    bad = tmp_path / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"unreadable image .*broken\.png.*data\.skip_bad=true"):
        _folder_dm(tmp_path).setup()
    dm = _folder_dm(tmp_path, skip_bad=True)
    dm.setup()
    assert dm.skipped == [bad]
    assert len(dm.datasets["train"]) + len(dm.datasets["test"]) == 8


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_classes=3), r"data\.num_classes=3 but .* has 2 class folders: \['cat', 'dog'\]"),
    (dict(channels=1, mean=[0.485, 0.456, 0.406]), r"data\.mean=\[0\.485, 0\.456, 0\.406\] has 3 values but channels=1"),
])
def test_image_folder_bad_arguments(tmp_path, kwargs, match):
    _image_tree(tmp_path, {"cat": 3, "dog": 3})
    with pytest.raises(ValueError, match=match):
        _folder_dm(tmp_path, **kwargs).setup()


def test_image_folder_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.root=.*nope.* is not a folder"):
        _folder_dm(tmp_path / "nope").setup()


def test_image_folder_unknown_val_class(tmp_path):
    _image_tree(tmp_path, {"train/cat": 3, "train/dog": 3, "val/cow": 1})
    with pytest.raises(ValueError, match=r"class folders \['cow'\] in .*val are not among the classes"):
        _folder_dm(tmp_path).setup()


def test_image_folder_without_images_is_named(tmp_path):
    _image_tree(tmp_path, {"cat": 0, "dog": 0})
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"class folder\(s\) \[.*test_image_folder_without.*cat.*dog'\] hold no images"):
        _folder_dm(tmp_path).setup()
