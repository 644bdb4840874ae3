"""Torch datasets over token arrays: genome windows (random for training, tiled for evaluation),
whole records (cropped) with labels, and ESM-style masking.

Every item is a dict of equal-length tensors: ``tokens`` (L,) int64, ``targets`` (L,) int64 with
``IGNORE`` where nothing is scored, ``pad`` (L,) bool (True = padding), and for record classification
``label`` () int64. Items are padded to the fixed length, so the default collate stacks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from core_attn.validation import check_choice, check_float, check_int
from genomics.tokenizers import MASK, PAD, DNATokenizer

IGNORE = -100  # cross-entropy's ignore_index
GENOME_TASKS = ("lm", "annotate")


@dataclass
class Segment:
    """A stretch of one record: its tokens, optional per-base labels and where it came from."""

    record: str
    start: int
    tokens: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tokens)


def _item(tokens: np.ndarray, targets: np.ndarray, length: int) -> dict[str, torch.Tensor]:
    """Pad ``tokens``/``targets`` to ``length`` and build the padding mask."""
    n = len(tokens)
    tok = np.full(length, PAD, dtype=np.int64)
    tgt = np.full(length, IGNORE, dtype=np.int64)
    tok[:n], tgt[:n] = tokens, targets
    pad = np.ones(length, dtype=bool)
    pad[:n] = False
    return {"tokens": torch.from_numpy(tok), "targets": torch.from_numpy(tgt), "pad": torch.from_numpy(pad)}


def _random_generator() -> np.random.Generator:
    """A numpy generator drawn from torch's global RNG: seeded by ``seed_everything``, new every call."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


class GenomeWindows(Dataset):
    """Random training windows of ``window`` bases from segments at least that long.

    ``lm``: inputs are bases ``s .. s+W-1``, targets the next bases ``s+1 .. s+W``. ``annotate``: inputs
    ``s .. s+W-1``, targets their per-base labels. With probability ``reverse_complement`` a window is
    read from the other strand (tokens reverse-complemented, labels reversed).

    Args:
        segments: training segments (each at least ``window`` (+1 for ``lm``) long).
        window: bases per window.
        task: ``lm`` or ``annotate``.
        samples: windows per epoch.
        tokenizer: the DNA tokeniser (for the reverse complement).
        reverse_complement: probability of the other strand.
    """

    def __init__(self, segments: list[Segment], *, window: int, task: str, samples: int, tokenizer: DNATokenizer,
                 reverse_complement: float = 0.0):
        self.task = check_choice("task", task, GENOME_TASKS)
        self.window = check_int("window", window, min_value=1)
        self.span = window + (task == "lm")
        self.segments = [s for s in segments if len(s) >= self.span]
        if not self.segments:
            raise ValueError(f"no training segment holds a window of {self.span} bases; lower data.window")
        self.samples = check_int("samples", samples, min_value=1)
        self.tokenizer = tokenizer
        self.rc = check_float("reverse_complement", reverse_complement, min_value=0.0, max_value=1.0)
        weights = np.array([len(s) - self.span + 1 for s in self.segments], dtype=np.float64)
        self.weights = weights / weights.sum()

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = _random_generator()
        seg = self.segments[int(rng.choice(len(self.segments), p=self.weights))]
        s = int(rng.integers(0, len(seg) - self.span + 1))
        tokens = seg.tokens[s:s + self.span]
        labels = None if seg.labels is None else seg.labels[s:s + self.span]
        if self.rc and rng.random() < self.rc:
            tokens = self.tokenizer.reverse_complement(tokens)
            labels = None if labels is None else labels[::-1]
        if self.task == "lm":
            return _item(tokens[:-1], tokens[1:], self.window)
        return _item(tokens, labels, self.window)


class GenomeTiles(Dataset):
    """Deterministic evaluation windows that score every position of every segment exactly once.

    ``lm`` scores positions ``1 .. L-1`` of each segment (the first base has no context), ``annotate``
    positions ``0 .. L-1``. Windows tile the segment; the last one is aligned to the segment's end and
    masks the positions an earlier window already scored; a segment shorter than the window is padded.
    """

    def __init__(self, segments: list[Segment], *, window: int, task: str):
        self.task = check_choice("task", task, GENOME_TASKS)
        self.window = check_int("window", window, min_value=1)
        self.segments = segments
        self.tiles: list[tuple[int, int, int]] = []  # (segment, first input position, first scored offset)
        shift = 1 if task == "lm" else 0
        for i, seg in enumerate(segments):
            n = len(seg) - shift  # positions with a target
            if n <= 0:
                continue
            for s in range(0, n, window):
                start = min(s, max(0, n - window))
                self.tiles.append((i, start, s - start))

    def __len__(self) -> int:
        return len(self.tiles)

    def scored_positions(self) -> int:
        """How many positions the tiles score (the denominator of per-base metrics)."""
        shift = 1 if self.task == "lm" else 0
        return sum(max(0, len(s) - shift) for s in self.segments)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i, start, skip = self.tiles[index]
        seg = self.segments[i]
        if self.task == "lm":
            chunk = seg.tokens[start:start + self.window + 1]
            tokens, targets = chunk[:-1], chunk[1:].astype(np.int64)
        else:
            tokens = seg.tokens[start:start + self.window]
            targets = seg.labels[start:start + self.window].astype(np.int64)
        targets = targets.copy()
        targets[:skip] = IGNORE  # scored by the previous window
        return _item(tokens, targets, self.window)


def mlm_mask(tokens: np.ndarray, rng: np.random.Generator, *, mask_prob: float, replace_ids: np.ndarray,
             maskable: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ESM/BERT masking: choose ``mask_prob`` of the maskable positions (at least one); of those 80% become
    ``[MASK]``, 10% a random token from ``replace_ids``, 10% stay. Returns (inputs, targets) with
    ``IGNORE`` targets at unchosen positions."""
    tokens = np.asarray(tokens)
    maskable = np.ones(len(tokens), dtype=bool) if maskable is None else maskable
    candidates = np.flatnonzero(maskable)
    inputs = tokens.astype(np.int64)
    targets = np.full(len(tokens), IGNORE, dtype=np.int64)
    if candidates.size == 0:
        return inputs, targets
    chosen = candidates[rng.random(candidates.size) < mask_prob]
    if chosen.size == 0:
        chosen = candidates[rng.integers(candidates.size, size=1)]
    targets[chosen] = inputs[chosen]
    action = rng.random(chosen.size)
    inputs[chosen[action < 0.8]] = MASK
    rand = chosen[(action >= 0.8) & (action < 0.9)]
    inputs[rand] = rng.choice(replace_ids, size=rand.size)
    return inputs, targets


class RecordCrops(Dataset):
    """Whole records cropped to ``max_len`` tokens: one item per record, or, with ``tile``, one per crop
    of ``max_len`` covering the record (evaluation of long proteins).

    Args:
        records: token arrays.
        labels: one class index per record (classification) or ``None``.
        max_len: tokens per item (longer records are cropped, shorter ones padded).
        train: random crops and random masks; otherwise centre crops (or tiles) and masks fixed by
            ``(seed, index)``.
        mlm: ``None`` or ``{"mask_prob": p, "replace_ids": ids}`` for masked language modelling.
        tile: evaluation covers each record by consecutive crops instead of one centre crop.
        reverse_complement: training probability of reading a DNA record's other strand.
        tokenizer: needed for the reverse complement.
        seed: fixes evaluation crops and masks.
        homologs: per record, ``(index into homolog_records, position map)`` of a relative or ``None``
            (:func:`genomics.homologs.find_homologs`). Items then hold ``2 * max_len`` tokens, the crop
            (masked, padded to ``max_len``) interleaved with the relative's aligned residues: token ``2i`` is
            crop position ``i`` and token ``2i + 1`` the relative's residue aligned to it (padding where
            none). Only the crop is masked and scored.
        homolog_records: the records ``homologs`` index (the training records).
    """

    def __init__(self, records: list[np.ndarray], labels: list[int] | None, *, max_len: int, train: bool,
                 mlm: dict | None = None, tile: bool = False, reverse_complement: float = 0.0,
                 tokenizer: DNATokenizer | None = None, seed: int = 0,
                 homologs: list[tuple[int, np.ndarray] | None] | None = None,
                 homolog_records: list[np.ndarray] | None = None):
        if homologs is not None and (homolog_records is None or len(homologs) != len(records)):
            raise ValueError("homologs needs one entry per record and homolog_records")
        self.homologs, self.homolog_records = homologs, homolog_records
        self.records, self.labels = records, labels
        self.max_len = check_int("max_len", max_len, min_value=1)
        self.train, self.mlm, self.seed = train, mlm, seed
        self.rc = check_float("reverse_complement", reverse_complement, min_value=0.0, max_value=1.0)
        self.tokenizer = tokenizer
        if self.rc and not isinstance(tokenizer, DNATokenizer):
            raise ValueError("reverse_complement > 0 needs DNA records (alphabet=dna)")
        self.tile = bool(tile) and not train
        self.items = [(r, 0) for r in range(len(records))]
        if self.tile:
            self.items = [(r, s) for r, rec in enumerate(records) for s in range(0, max(1, len(rec)), max_len)]

    def __len__(self) -> int:
        return len(self.items)

    def _crop(self, rec: np.ndarray, start: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        extra = len(rec) - self.max_len
        if extra <= 0:
            return rec, 0
        if self.train:
            start = int(rng.integers(0, extra + 1))
        elif not self.tile:  # one centre crop per record
            start = extra // 2
        return rec[start:start + self.max_len], start

    def _relative(self, r: int, start: int, n: int) -> np.ndarray:
        """(max_len,) the relative's residues aligned to crop positions ``start .. start + n - 1`` (PAD where none)."""
        tokens = np.full(self.max_len, PAD, dtype=np.int64)
        hit = self.homologs[r]
        if hit is not None:
            j, where = hit
            where = where[start:start + n]
            ok = where >= 0
            tokens[:n][ok] = self.homolog_records[j][where[ok]]
        return tokens

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        r, start = self.items[index]
        rng = _random_generator() if self.train else np.random.default_rng([self.seed, index])
        tokens, start = self._crop(self.records[r], start, rng)
        if self.train and self.rc and rng.random() < self.rc:
            tokens = self.tokenizer.reverse_complement(tokens)
        if self.mlm is not None:
            inputs, targets = mlm_mask(tokens, rng, mask_prob=self.mlm["mask_prob"],
                                       replace_ids=self.mlm["replace_ids"])
        else:
            inputs, targets = tokens, np.full(len(tokens), IGNORE, dtype=np.int64)
        item = _item(inputs, targets, self.max_len)
        if self.homologs is not None:
            rel = torch.from_numpy(self._relative(r, start, len(tokens)))
            extra = {"tokens": rel, "targets": torch.full_like(rel, IGNORE), "pad": rel == PAD}
            item = {key: torch.stack([item[key], extra[key]], dim=1).reshape(-1) for key in item}
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[r], dtype=torch.int64)
        return item
