"""Vision datamodules: MegaMNIST (built in, generated on the fly) and any folder of images.

MegaMNIST: a large canvas with 3 copies of the label class, 2 distractor objects of two other classes and
clutter (small crops of other objects); the model must find which class appears three times, which needs
the whole canvas at full resolution: a long sequence of patches. Objects are sklearn's 1,797 8x8
handwritten digits (built in) or Fashion-MNIST items (``source=fashion``), upscaled to ``digit_size``.
"""

from __future__ import annotations

import gzip
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from core_attn.training.atomic import open_atomic
from core_attn.training.bases import TaskDataModule
from core_attn.validation import check_choice, check_float, check_int

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0  # the split of source images into train/val/test never changes
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_HINT = ("install them with `apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb /` "
                "(files land in /usr/share/datasets/fashion-mnist), or point data.fashion_root at a folder holding them")


# -- source objects --------------------------------------------------------------------------------
def _stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Indices of ``labels`` split per class into consecutive parts of the given fractions."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)[:-1]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for part, chunk in zip(parts, np.split(idx, (bounds * len(idx)).round().astype(int))):
            part.extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def load_digits_banks() -> dict[str, tuple[Tensor, Tensor]]:
    """sklearn's 1,797 handwritten 8x8 digits in [0, 1], split 60/20/20 per class into disjoint train/val/test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).float()  # (1797, 8, 8)
    labels = torch.from_numpy(digits.target).long()
    parts = _stratified_split(digits.target, (0.6, 0.2, 0.2), SPLIT_SEED)
    return {s: (images[p], labels[p]) for s, p in zip(SPLITS, parts)}


def _fashion_raw_files(fashion_root: Path, cache_dir: Path) -> Path:
    """Copy (decompressing) the four Fashion-MNIST files into ``cache_dir/FashionMNIST/raw`` where
    torchvision looks for them; return ``cache_dir``."""
    raw = cache_dir / "FashionMNIST" / "raw"
    for name in FASHION_FILES:
        if (raw / name).is_file():
            continue
        candidates = [fashion_root / n for n in (name, name + ".gz")]
        candidates += [fashion_root / "FashionMNIST" / "raw" / n for n in (name, name + ".gz")]
        src = next((c for c in candidates if c.is_file()), None)
        if src is None:
            raise FileNotFoundError(f"Fashion-MNIST file {name}[.gz] not found in {fashion_root} "
                                    f"(data.fashion_root); {FASHION_HINT}")
        with (gzip.open(src) if src.suffix == ".gz" else open(src, "rb")) as fin, open_atomic(raw / name, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    return cache_dir


def load_fashion_banks(fashion_root: str | Path, cache_dir: str | Path) -> dict[str, tuple[Tensor, Tensor]]:
    """Fashion-MNIST through ``torchvision.datasets.FashionMNIST``: train = 50,000 of its training images,
    val = the other 10,000 (fixed, stratified), test = its 10,000 test images; pixels in [0, 1]."""
    from torchvision.datasets import FashionMNIST

    root = _fashion_raw_files(Path(fashion_root), Path(cache_dir))
    train = FashionMNIST(str(root), train=True, download=False)
    test = FashionMNIST(str(root), train=False, download=False)
    tr, va = _stratified_split(train.targets.numpy(), (5 / 6, 1 / 6), SPLIT_SEED)
    x, y = train.data.float() / 255.0, train.targets.long()
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (test.data.float() / 255.0, test.targets.long())}


# -- the canvas ------------------------------------------------------------------------------------
class Placement(NamedTuple):
    """One object on the canvas: its class, index in the split's bank, and top-left corner (y, x)."""

    cls: int
    index: int
    y: int
    x: int


class Layout(NamedTuple):
    """Everything drawn on one canvas: the label, 5 objects (3 of the label class first), and the
    clutter crops ``(bank index, crop y, crop x, canvas y, canvas x)``."""

    label: int
    objects: list[Placement]
    clutter: list[tuple[int, int, int, int, int]]


class MegaMNISTDataset(Dataset):
    """Canvases generated deterministically from ``(seed, split, index)``; nothing is stored.

    Args:
        images: the split's source objects, (M, h, w) in [0, 1].
        labels: their classes (M,), 10 classes, each with at least 3 objects.
        num_samples: canvases in this split.
        image_size: canvas side S.
        digit_size: side of each upscaled object.
        num_clutter: clutter crops per canvas.
        clutter_size: side of each clutter crop (< digit_size).
        channels: 1, or 3 to repeat the gray canvas.
        seed: data seed.
        split: ``train`` | ``val`` | ``test`` (part of the per-canvas seed).
    """

    def __init__(self, images: Tensor, labels: Tensor, *, num_samples: int, image_size: int, digit_size: int,
                 num_clutter: int, clutter_size: int, channels: int, seed: int, split: str):
        self.images, self.labels = images, labels
        self.by_class = [np.flatnonzero(labels.numpy() == c) for c in range(10)]
        if min(len(b) for b in self.by_class) < 3:
            raise ValueError(f"the {split} split needs at least 3 source images of every class")
        self.num_samples, self.size, self.digit, self.channels = num_samples, image_size, digit_size, channels
        self.num_clutter, self.clutter_size, self.seed = num_clutter, clutter_size, seed
        self.split_id = SPLITS.index(split)

    def __len__(self) -> int:
        return self.num_samples

    def layout(self, index: int) -> Layout:
        """Where everything goes on canvas ``index`` (a pure function of seed, split and index)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} canvases")
        rng = np.random.default_rng([self.seed, self.split_id, index])
        label = int(rng.integers(10))
        distractors = rng.choice([c for c in range(10) if c != label], size=2, replace=False)
        picks = [(label, int(i)) for i in rng.choice(self.by_class[label], size=3, replace=False)]
        picks += [(int(c), int(rng.choice(self.by_class[c]))) for c in distractors]
        boxes = self._place(rng, picks)
        n = self.num_clutter
        source = rng.integers(len(self.labels), size=(n, 1))
        crop = rng.integers(0, self.digit - self.clutter_size + 1, size=(n, 2))
        where = rng.integers(0, self.size - self.clutter_size + 1, size=(n, 2))
        clutter = [tuple(int(v) for v in row) for row in np.concatenate([source, crop, where], axis=1)]
        return Layout(label, boxes, clutter)

    def _place(self, rng: np.random.Generator, picks: list[tuple[int, int]]) -> list[Placement]:
        """Random non-overlapping positions (rejection sampling, restarted when a canvas fills up badly)."""
        hi = self.size - self.digit + 1
        for _ in range(100):
            boxes: list[Placement] = []
            for cls, idx in picks:
                for _ in range(50):
                    y, x = (int(v) for v in rng.integers(0, hi, size=2))
                    if all(abs(y - b.y) >= self.digit or abs(x - b.x) >= self.digit for b in boxes):
                        boxes.append(Placement(cls, idx, y, x))
                        break
                else:
                    break
            if len(boxes) == len(picks):
                return boxes
        raise RuntimeError(f"could not place {len(picks)} objects of {self.digit}px without overlap on {self.size}px")

    def upscaled(self, indices: list[int]) -> Tensor:
        """Bank images ``indices`` upscaled (bilinear) to (len, digit_size, digit_size)."""
        if not indices:
            return torch.empty(0, self.digit, self.digit)
        small = self.images[torch.as_tensor(indices)][:, None]  # (k, 1, h, w)
        big = F.interpolate(small, size=(self.digit, self.digit), mode="bilinear", align_corners=False)
        return big[:, 0].clamp_(0.0, 1.0)

    def render(self, layout: Layout) -> Tensor:
        """The (channels, S, S) canvas of ``layout``; overlapping strokes combine by maximum."""
        canvas = torch.zeros(self.size, self.size)
        d, c = self.digit, self.clutter_size
        for (_, cy, cx, y, x), img in zip(layout.clutter, self.upscaled([cl[0] for cl in layout.clutter])):
            region = canvas[y:y + c, x:x + c]
            torch.maximum(region, img[cy:cy + c, cx:cx + c], out=region)
        for p, img in zip(layout.objects, self.upscaled([p.index for p in layout.objects])):
            region = canvas[p.y:p.y + d, p.x:p.x + d]
            torch.maximum(region, img, out=region)
        return canvas.expand(self.channels, -1, -1).clone()

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        layout = self.layout(index)
        return self.render(layout), layout.label


class SplitDataModule(TaskDataModule):
    """Serves ``self.datasets[split]`` (filled by ``setup``) with ``hparams.batch_size`` and
    ``hparams.num_workers``; the training split is shuffled and drops a last partial batch."""

    def _loader(self, split: str) -> DataLoader:
        batch_size = self.hparams.batch_size
        # training drops a last partial batch (as timm's loaders do): a batch of one image would stop
        # BatchNorm (model.pool_norm=batch), and the optimizer steps all see full batches
        drop_last = split == "train" and len(self.dataset(split)) >= batch_size
        return self.loader(split, batch_size=batch_size, num_workers=self.hparams.num_workers, drop_last=drop_last,
                           pin_memory=torch.cuda.is_available())

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")


class MegaMNISTDataModule(SplitDataModule):
    """MegaMNIST canvases for training, validation and test (disjoint source objects per split).

    Args:
        source: ``digits`` (sklearn's handwritten digits, built in) or ``fashion`` (Fashion-MNIST files).
        fashion_root: folder holding the Fashion-MNIST ``*-ubyte[.gz]`` files.
        cache_dir: where the decompressed Fashion-MNIST files are kept for torchvision.
        image_size: canvas side in pixels (64 to 4096).
        digit_size: side of each object in pixels (the canvas must fit 4 of them side by side).
        num_clutter: clutter crops per canvas.
        clutter_size: side of each clutter crop in pixels (smaller than ``digit_size``).
        channels: 1, or 3 (the gray canvas repeated, for RGB models).
        num_classes: always 10 (stated in the config so the model can read it).
        train_samples / val_samples / test_samples: canvases per split.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        seed: the canvases are a pure function of (seed, split, index).
    """

    def __init__(self, *, source: str = "digits", fashion_root: str = "/usr/share/datasets/fashion-mnist",
                 cache_dir: str = "data/fashion_mnist", image_size: int = 512, digit_size: int = 32,
                 num_clutter: int = 24, clutter_size: int = 8, channels: int = 1, num_classes: int = 10,
                 train_samples: int = 4000, val_samples: int = 500, test_samples: int = 1000,
                 batch_size: int = 16, num_workers: int = 0, seed: int = 0):
        super().__init__()
        check_choice("source", source, ("digits", "fashion"))
        check_int("image_size", image_size, min_value=32, max_value=4096)
        check_int("digit_size", digit_size, min_value=8, max_value=image_size // 4)
        check_int("num_clutter", num_clutter, min_value=0)
        check_int("clutter_size", clutter_size, min_value=1, max_value=digit_size - 1)
        check_choice("channels", channels, (1, 3))
        check_choice("num_classes", num_classes, (10,))
        for name, n in (("train_samples", train_samples), ("val_samples", val_samples), ("test_samples", test_samples)):
            check_int(name, n, min_value=1)
        check_int("batch_size", batch_size, min_value=1)
        check_int("num_workers", num_workers, min_value=0)
        check_int("seed", seed)
        self.save_hyperparameters()
        self.datasets: dict[str, MegaMNISTDataset] = {}

    @property
    def num_classes(self) -> int:
        return 10

    def class_names(self) -> list[str]:
        """The 10 class names: the digits, or Fashion-MNIST's item names (torchvision's list)."""
        if self.hparams.source == "digits":
            return [str(i) for i in range(10)]
        from torchvision.datasets import FashionMNIST

        return list(FashionMNIST.classes)

    def eval_transform(self):
        """PIL image (mode ``L`` for 1 channel, ``RGB`` for 3) -> (channels, image_size, image_size) in [0, 1],
        as the canvases are: the whole image resized (bilinear), no normalisation."""
        from torchvision import transforms as T

        s = self.hparams.image_size
        return T.Compose([T.Resize((s, s), interpolation=T.InterpolationMode.BILINEAR, antialias=True), T.ToTensor()])

    def eval_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region (left, top, right, bottom) of a ``width`` x ``height`` image that :meth:`eval_transform`
        keeps: all of it."""
        return 0.0, 0.0, float(width), float(height)

    def prepare_data(self) -> None:
        if self.hparams.source == "fashion":
            _fashion_raw_files(Path(self.hparams.fashion_root), Path(self.hparams.cache_dir))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        banks = load_digits_banks() if h.source == "digits" else load_fashion_banks(h.fashion_root, h.cache_dir)
        sizes = {"train": h.train_samples, "val": h.val_samples, "test": h.test_samples}
        for split, (images, labels) in banks.items():
            self.datasets[split] = MegaMNISTDataset(
                images, labels, num_samples=sizes[split], image_size=h.image_size, digit_size=h.digit_size,
                num_clutter=h.num_clutter, clutter_size=h.clutter_size, channels=h.channels, seed=h.seed, split=split)


# -- image folders ---------------------------------------------------------------------------------
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


AUGMENTATIONS = ("none", "shift", "flip_crop")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")  # PIL modes of single-channel images
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's IMAGENET_DEFAULT_*


def _class_folders(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def image_headers(paths: list[Path]) -> tuple[Counter, Counter]:
    """The PIL modes and (width, height) sizes of image files, read from their headers (no decoding);
    unreadable files are left out here (decoding them at setup names them)."""
    from PIL import Image

    modes: Counter = Counter()
    sizes: Counter = Counter()
    for path in paths:
        try:
            with Image.open(path) as im:
                modes[im.mode] += 1
                sizes[im.size] += 1
        except Exception:  # noqa: BLE001 - reported with its file when the image is decoded
            continue
    return modes, sizes


def _image_files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(path, class index) of every image file under ``folder/<class>/`` (recursively), sorted."""
    out = []
    for idx, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue
        files = sorted(p for p in (folder / name).rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        out += [(p, idx) for p in files]
    return out


def load_image(path: Path, mode: str):
    """Open ``path`` as a PIL image in ``mode`` (``L`` or ``RGB``); ``ValueError`` naming the file if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise ValueError(f"unreadable image {path}: {type(e).__name__}: {e}; fix or remove it, or set "
                         "data.skip_bad=true to skip unreadable images") from e


def image_mode(datamodule) -> str:
    """The PIL mode a datamodule's model reads: ``L`` for 1 channel, ``RGB`` otherwise."""
    return "L" if datamodule.hparams.channels == 1 else "RGB"


def readable_images(samples: list[tuple[Path, int]], mode: str,
                    skip_bad: bool) -> tuple[list[tuple[Path, int]], list[Path]]:
    """The samples whose image decodes in ``mode``, and the paths left out; with ``skip_bad=False`` the
    first unreadable image raises :func:`load_image`'s ``ValueError`` naming it."""
    good, skipped = [], []
    for path, target in samples:
        try:
            load_image(path, mode)
        except ValueError:
            if not skip_bad:
                raise
            skipped.append(path)
            continue
        good.append((path, target))
    return good, skipped


class ImageFolderDataset(Dataset):
    """``(path, class)`` samples read with PIL and a torchvision transform."""

    def __init__(self, samples: list[tuple[Path, int]], transform, mode: str):
        self.samples, self.transform, self.mode = samples, transform, mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, target = self.samples[index]
        return self.transform(load_image(path, self.mode)), target


class ImageFolderDataModule(SplitDataModule):
    """Images in class folders: ``root/{train,val,test}/<class>/*`` or ``root/<class>/*``.

    Splits missing as folders are carved from the training images (stratified per class, fixed seed).
    Every image is decoded once at setup: an unreadable one raises a ``ValueError`` naming the file,
    or, with ``skip_bad=True``, is left out and counted (``self.skipped``). Setup logs one summary line:
    the classes, the images per split and the image sizes and modes found.

    Args:
        root: the dataset folder.
        num_classes: expected number of class folders (checked; every class needs training images).
        image_size: side of the square model input.
        channels: 3 (RGB), 1 (grayscale) or ``auto``: 1 when every image file is single-channel (PIL modes
            ``L``, ``1``, ``I``, ...), else 3; resolved when the module is built (``self.hparams.channels``).
        val_fraction / test_fraction: fractions of the training images held out when the split has no folder.
        split_seed: seed of that hold-out.
        crop_pct: evaluation resizes the shorter side to ``image_size / crop_pct`` then center-crops; 1.0
            (default) keeps the whole of a square image, timm's 0.875 suits centred photographs.
        mean / std: per-channel normalisation; ``None``: timm's ImageNet mean/std (their averages for 1 channel).
        augment: training augmentation: ``none``; ``shift`` (default) moves the image by up to ``shift_pct`` of
            its side (black fill), which keeps the label of digits, text, counts and small objects;
            ``flip_crop``: timm's RandomResizedCrop + horizontal flip for photographs (crops can cut away an
            object a label depends on, flips turn some digits and letters into others). ``True``/``False``
            mean ``flip_crop``/``none``.
        shift_pct: the largest shift of ``augment=shift``, as a fraction of the image side.
        skip_bad: skip and count unreadable images instead of raising.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        min_train_samples: the training budget in samples: the runtime raises ``trainer.max_epochs`` until
            training sees at least this many (``core_attn.training.train.budget_epochs``); ``None``: epochs only.
    """

    def __init__(self, *, root: str, num_classes: int, image_size: int = 224, channels: int | str = "auto",
                 val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0, crop_pct: float = 1.0,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 augment: str | bool = "shift", shift_pct: float = 0.1, skip_bad: bool = False, batch_size: int = 8,
                 num_workers: int = 0, min_train_samples: int | None = None):
        super().__init__()
        check_int("num_classes", num_classes, min_value=2)
        check_int("image_size", image_size, min_value=8)
        check_choice("channels", channels, (1, 3, "auto"))
        check_float("val_fraction", val_fraction, min_value=0.0, max_value=0.9)
        check_float("test_fraction", test_fraction, min_value=0.0, max_value=0.9)
        check_float("crop_pct", crop_pct, min_value=0.1, max_value=1.0)
        if not isinstance(augment, bool):
            check_choice("augment", augment, AUGMENTATIONS)
        check_float("shift_pct", shift_pct, min_value=0.0, max_value=0.5)
        check_int("batch_size", batch_size, min_value=1)
        check_int("num_workers", num_workers, min_value=0)
        if min_train_samples is not None:
            check_int("min_train_samples", min_train_samples, min_value=1)
        self.save_hyperparameters()
        self.root = Path(root)
        self.classes: list[str] = []
        self.skipped: list[Path] = []
        self.datasets: dict[str, ImageFolderDataset] = {}
        self._samples: dict[str, list[tuple[Path, int]]] = {}
        if channels == "auto":
            self.hparams.channels = self._detect_channels()
        c = self.hparams.channels
        for name, v in (("mean", mean), ("std", std)):
            if v is not None and len(v) != c:
                raise ValueError(f"data.{name}={list(v)} has {len(v)} values but channels={c}; give one per "
                                 f"channel (e.g. data.mean=[0.5] data.std=[0.5] for channels=1), or null for timm's")
        self.mean = tuple(mean) if mean is not None else (IMAGENET_MEAN if c == 3 else (sum(IMAGENET_MEAN) / 3,))
        self.std = tuple(std) if std is not None else (IMAGENET_STD if c == 3 else (sum(IMAGENET_STD) / 3,))

    def _detect_channels(self) -> int:
        """1 when every image file of the folder is single-channel (read from the file headers), else 3."""
        paths = [p for samples in self._split_samples().values() for p, _ in samples]
        modes, _ = image_headers(paths)
        channels = 1 if modes and all(m in GREY_MODES for m in modes) else 3
        log.info("data.channels=auto: %d (image modes %s)", channels, dict(modes))
        return channels

    @property
    def num_classes(self) -> int:
        return self.hparams.num_classes

    def class_names(self) -> list[str] | None:
        """The class folder names (sorted, as the labels are numbered), or ``None`` when ``root`` is gone."""
        base = self.root / "train" if (self.root / "train").is_dir() else self.root
        return _class_folders(base) if base.is_dir() else None

    def eval_transform(self):
        """PIL image -> normalised (channels, image_size, image_size) tensor: the evaluation transform."""
        return self._transforms(train=False)

    def eval_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region (left, top, right, bottom) of a ``width`` x ``height`` image that :meth:`eval_transform`
        keeps: the shorter side resized to ``int(image_size / crop_pct)``, then the centred square crop."""
        h = self.hparams
        scale = int(h.image_size / h.crop_pct) / min(width, height)
        side = h.image_size / scale  # the crop's side in original pixels
        left, top = (width - side) / 2, (height - side) / 2
        return left, top, left + side, top + side

    def _split_samples(self) -> dict[str, list[tuple[Path, int]]]:
        if self._samples:
            return self._samples
        h = self.hparams
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={str(self.root)!r} is not a folder")
        base = self.root / "train" if (self.root / "train").is_dir() else self.root
        self.classes = _class_folders(base)
        if len(self.classes) < 2:
            raise ValueError(f"{base} has {len(self.classes)} class folder(s) {self.classes}: a classifier needs "
                             "images in at least 2 class folders (root/<class>/* or root/train/<class>/*)")
        if len(self.classes) != h.num_classes:
            raise ValueError(f"data.num_classes={h.num_classes} but {base} has {len(self.classes)} class folders: "
                             f"{self.classes}")
        splits = {"train": _image_files(base, self.classes)}
        counts = Counter(t for _, t in splits["train"])
        empty = [self.classes[i] for i in range(len(self.classes)) if not counts[i]]
        if empty:
            raise ValueError(f"class folder(s) {[str(base / e) for e in empty]} hold no images ({', '.join(IMG_EXTENSIONS)}): "
                             "every class needs training images; add some or remove the folder")
        for split in ("val", "test"):
            folder = self.root / split
            if base != self.root and folder.is_dir():
                extra = sorted(set(_class_folders(folder)) - set(self.classes))
                if extra:
                    raise ValueError(f"class folders {extra} in {folder} are not among the classes of {base}: {self.classes}")
                splits[split] = _image_files(folder, self.classes)
        carve = [s for s in ("val", "test") if s not in splits]
        if carve:
            fractions = {"val": h.val_fraction, "test": h.test_fraction}
            labels = np.array([t for _, t in splits["train"]])
            keep = 1.0 - sum(fractions[s] for s in carve)
            parts = _stratified_split(labels, (keep, *(fractions[s] for s in carve)), h.split_seed)
            train = splits["train"]
            splits["train"] = [train[i] for i in parts[0]]
            for s, p in zip(carve, parts[1:]):
                splits[s] = [train[i] for i in p]
        self._samples = splits
        return splits

    def _readable(self, samples: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
        good, skipped = readable_images(samples, image_mode(self), self.hparams.skip_bad)
        self.skipped += skipped
        return good

    def _transforms(self, train: bool):
        from torchvision import transforms as T

        h = self.hparams
        bicubic = T.InterpolationMode.BICUBIC
        tail = [T.ToTensor(), T.Normalize(list(self.mean), list(self.std))]
        augment = {True: "flip_crop", False: "none"}.get(h.augment, h.augment)
        if train and augment == "shift":
            return T.Compose([*self._resize(), T.RandomAffine(0, translate=(h.shift_pct, h.shift_pct), fill=0), *tail])
        if train and augment == "flip_crop":
            return T.Compose([T.RandomResizedCrop(h.image_size, interpolation=bicubic), T.RandomHorizontalFlip(), *tail])
        return T.Compose([*self._resize(), *tail])

    def _resize(self) -> list:
        """The evaluation resize: the shorter side to ``image_size / crop_pct`` (bicubic), the centred square."""
        from torchvision import transforms as T

        h = self.hparams
        return [T.Resize(int(h.image_size / h.crop_pct), interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(h.image_size)]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        mode = image_mode(self)
        self.skipped = []
        for split, samples in self._split_samples().items():
            samples = self._readable(samples)
            if not samples:
                raise ValueError(f"no readable images for the {split} split under {self.root}")
            self.datasets[split] = ImageFolderDataset(samples, self._transforms(split == "train"), mode)
        if self.skipped:
            shown = ", ".join(str(p) for p in self.skipped[:5])
            log.warning("skipped %d unreadable images (data.skip_bad=true): %s%s", len(self.skipped), shown,
                        " ..." if len(self.skipped) > 5 else "")
        log.info("%s", self.summary())

    def summary(self) -> str:
        """One line: the folder, its classes, images per split, the image sizes and modes found."""
        paths = [p for ds in self.datasets.values() for p, _ in ds.samples]
        modes, sizes = image_headers(paths)
        shown = ", ".join(self.classes[:8]) + (f", ... ({len(self.classes)})" if len(self.classes) > 8 else "")
        split = ", ".join(f"{s} {len(ds)}" for s, ds in self.datasets.items())
        common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(3))
        more = f" and {len(sizes) - 3} other sizes" if len(sizes) > 3 else ""
        return (f"image folder {self.root}: {len(self.classes)} classes [{shown}]; images {split}; sizes {common}"
                f"{more}; modes {dict(modes)} -> channels {self.hparams.channels}, resized to {self.hparams.image_size}")


# -- a whole folder, labelled by a model's classes -------------------------------------------------
def labelled_images(folder: str | Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(path, index in ``classes``) of every image under ``folder/<class>/*``, or under
    ``folder/{train,val,test}/<class>/*`` when the folder is laid out in splits (recursively, sorted).

    Class folders are matched by name against ``classes`` (a model's classes, in label order): a folder
    with fewer classes is fine, a class folder that is not one of them raises ``ValueError`` naming it.
    """
    from core_attn.validation import did_you_mean

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.root={str(folder)!r} is not a folder")
    bases = [folder / s for s in SPLITS if (folder / s).is_dir() and s not in classes] or [folder]
    out: list[tuple[Path, int]] = []
    for base in bases:
        for name in _class_folders(base):
            if name not in classes:
                raise ValueError(f"class folder {name!r} in {base} is not a class of the model; its classes: "
                                 f"{classes}.{did_you_mean(name, classes)}")
        out += _image_files(base, classes)
    if not out:
        raise ValueError(f"no image files ({', '.join(IMG_EXTENSIONS)}) in class folders under {folder}")
    return out
