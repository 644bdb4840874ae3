"""Write image folders (ImageFolder layout) for trying `vision.train data=image_folder` as a user would.

Two sources, neither read through the app's own data module:

- ``digits``: canvases of sklearn's real 8x8 handwritten digits drawn by this script (3 copies of the label
  digit and 2 distractor digits of two other classes, each at its own random size, on black; no clutter);
  the source digits are split 60/20/20 per class so no test digit image appears in training.
- ``megamnist``: the built-in MegaMNIST canvases written out as PNG files (``vision.data.MegaMNISTDataset``),
  to compare the folder path with the built-in path on the same images.

    python benchmarks/image_folders.py digits /tmp/digits600 --train 600 --val 150 --test 300
    python benchmarks/image_folders.py digits /tmp/digits_new --train 0 --val 0 --test 300 --seed 7   # new canvases, held-out digits
    python benchmarks/image_folders.py megamnist /tmp/mega --train 7680 --val 500 --test 1000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")


def digit_banks(seed: int = 1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """sklearn's digits in [0, 255] split 60/20/20 per class (disjoint), by ``seed``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        a, b = int(0.6 * len(idx)), int(0.8 * len(idx))
        for s, chunk in zip(SPLITS, (idx[:a], idx[a:b], idx[b:])):
            parts[s] += chunk.tolist()
    images = (d.images / 16.0 * 255).astype(np.uint8)
    return {s: (images[p], d.target[p]) for s, p in parts.items()}


def digits_canvas(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, label: int, size: int,
                  min_digit: int, max_digit: int) -> np.ndarray:
    """One canvas: 3 copies of ``label`` and 2 distractors of two other classes, non-overlapping, on black."""
    others = rng.choice([c for c in range(10) if c != label], size=2, replace=False)
    picks = [int(rng.choice(np.flatnonzero(labels == label))) for _ in range(3)]
    picks += [int(rng.choice(np.flatnonzero(labels == c))) for c in others]
    canvas = np.zeros((size, size), np.uint8)
    boxes: list[tuple[int, int, int]] = []
    for i in picks:
        side = int(rng.integers(min_digit, max_digit + 1))
        glyph = np.asarray(Image.fromarray(images[i]).resize((side, side), Image.BICUBIC))
        for _ in range(1000):
            y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if all(y + side <= by or by + bs <= y or x + side <= bx or bx + bs <= x for by, bx, bs in boxes):
                break
        boxes.append((y, x, side))
        np.maximum(canvas[y:y + side, x:x + side], glyph, out=canvas[y:y + side, x:x + side])
    return canvas


def write_digits(out: Path, counts: dict[str, int], size: int, min_digit: int, max_digit: int, seed: int,
                 bank_seed: int) -> None:
    banks = digit_banks(bank_seed)
    for split, n in counts.items():
        images, labels = banks[split]
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        for k in range(n):
            label = k % 10  # balanced classes
            canvas = digits_canvas(rng, images, labels, label, size, min_digit, max_digit)
            path = out / split / str(label) / f"{split}_{k:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(canvas).save(path)


def write_megamnist(out: Path, counts: dict[str, int], size: int, seed: int) -> None:
    from vision.data import MegaMNISTDataset, load_digits_banks

    for split, (images, labels) in load_digits_banks().items():
        ds = MegaMNISTDataset(images, labels, num_samples=counts[split], image_size=size, digit_size=32,
                              num_clutter=24, clutter_size=8, channels=1, seed=seed, split=split)
        for k in range(len(ds)):
            x, label = ds[k]
            path = out / split / str(label) / f"{split}_{k:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8)).save(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", choices=("digits", "megamnist"))
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=600)
    p.add_argument("--val", type=int, default=150)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--min-digit", type=int, default=28, help="digits source: smallest digit side in pixels")
    p.add_argument("--max-digit", type=int, default=48, help="digits source: largest digit side in pixels")
    p.add_argument("--seed", type=int, default=1, help="canvas seed")
    p.add_argument("--bank-seed", type=int, default=1,
                   help="digits source: seed of the 60/20/20 split of sklearn's digits (keep it to reuse held-out digits)")
    a = p.parse_args(argv)
    counts = {"train": a.train, "val": a.val, "test": a.test}
    if a.source == "digits":
        write_digits(a.out, counts, a.size, a.min_digit, a.max_digit, a.seed, a.bank_seed)
    else:
        write_megamnist(a.out, counts, a.size, a.seed)
    print(f"wrote {sum(counts.values())} images to {a.out}")


if __name__ == "__main__":
    main()
