"""Baselines the neural models must beat: an order-k Markov chain, residue frequencies, a k-mer naive Bayes
classifier (the RDP classifier's method) for labelled records, and open reading frames above a length
threshold for per-base CDS annotation.

The Markov chain uses add-alpha smoothing, ``p(x | c) = (n(c, x) + alpha) / (n(c) + S alpha)`` over the
S symbols of the alphabet; counts are kept sparse (sorted unique context codes), so high orders cost
memory in the number of distinct contexts seen, not S**k. Order and alpha are chosen on validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core_attn.validation import check_float, check_int


def _codes(x: np.ndarray, order: int, num_symbols: int) -> tuple[np.ndarray, np.ndarray]:
    """(context code, context+symbol code) for each position ``i >= order`` of ``x`` (int64 arrays)."""
    n = len(x) - order
    ctx = np.zeros(max(n, 0), dtype=np.int64)
    for t in range(order):  # most significant first: x[i-order] .. x[i-1]
        ctx = ctx * num_symbols + x[t:t + n]
    return ctx, ctx * num_symbols + x[order:]


class _SparseCounts:
    """Counts of int64 codes as sorted unique keys with their counts."""

    def __init__(self, codes: list[np.ndarray]):
        allc = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)
        self.keys, self.counts = np.unique(allc, return_counts=True)

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        if self.keys.size == 0:
            return np.zeros(len(codes), dtype=np.int64)
        idx = np.searchsorted(self.keys, codes).clip(max=self.keys.size - 1)
        return np.where(self.keys[idx] == codes, self.counts[idx], 0)


class MarkovChain:
    """An order-``order`` Markov chain over ``num_symbols`` symbols with add-``alpha`` smoothing.

    Positions with fewer than ``order`` preceding symbols in their segment use the longest context they
    have (orders ``0 .. order - 1`` are counted too). The first symbol of a segment is not scored.

    Args:
        order: context length k.
        alpha: add-alpha pseudo-count (> 0).
        num_symbols: alphabet size S; inputs are symbol indices ``0 .. S-1``.
    """

    def __init__(self, *, order: int, alpha: float, num_symbols: int):
        self.order = check_int("order", order, min_value=0)
        self.alpha = check_float("alpha", alpha, min_value=1e-12)
        self.num_symbols = check_int("num_symbols", num_symbols, min_value=2)
        self._joint: list[_SparseCounts] = []
        self._ctx: list[_SparseCounts] = []

    def _check(self, seg: np.ndarray) -> np.ndarray:
        seg = np.asarray(seg, dtype=np.int64)
        if seg.size and (seg.min() < 0 or seg.max() >= self.num_symbols):
            raise ValueError(f"symbols must lie in [0, {self.num_symbols}); got values in [{seg.min()}, {seg.max()}]")
        return seg

    def fit(self, segments: Sequence[np.ndarray]) -> MarkovChain:
        """Count contexts of every order ``0 .. order`` in ``segments`` (arrays of symbol indices)."""
        segments = [self._check(s) for s in segments]
        self._joint, self._ctx = [], []
        for j in range(self.order + 1):
            pairs = [_codes(s, j, self.num_symbols) for s in segments if len(s) > j]
            self._ctx.append(_SparseCounts([c for c, _ in pairs]))
            self._joint.append(_SparseCounts([jc for _, jc in pairs]))
        return self

    def log2_probs(self, segment: np.ndarray) -> np.ndarray:
        """log2 p(x_i | context) for ``i = 1 .. len(segment) - 1`` (the first symbol is not scored)."""
        if not self._joint:
            raise ValueError("MarkovChain.log2_probs called before fit()")
        x = self._check(segment)
        out = np.empty(max(len(x) - 1, 0), dtype=np.float64)
        s_alpha = self.num_symbols * self.alpha
        for i in range(1, min(self.order, len(x))):  # positions 1..order-1 use order i
            ctx, joint = _codes(x[:i + 1], i, self.num_symbols)
            out[i - 1] = math.log2((self._joint[i](joint[-1:])[0] + self.alpha) / (self._ctx[i](ctx[-1:])[0] + s_alpha))
        if len(x) > self.order:
            ctx, joint = _codes(x, self.order, self.num_symbols)
            num = self._joint[self.order](joint) + self.alpha
            den = self._ctx[self.order](ctx) + s_alpha
            start = max(self.order, 1)
            vals = np.log2(num / den)
            out[start - 1:] = vals[start - self.order:]
        return out

    def bits_per_symbol(self, segments: Sequence[np.ndarray]) -> tuple[float, int]:
        """(mean -log2 p over the scored positions of ``segments``, number of scored positions)."""
        total, count = 0.0, 0
        for s in segments:
            lp = self.log2_probs(s)
            total -= float(lp.sum())
            count += lp.size
        return (total / count if count else float("nan")), count


@dataclass
class MarkovSelection:
    """The chain chosen on validation and the validation bits per symbol of every (order, alpha) tried."""

    chain: MarkovChain
    val_bits: dict[tuple[int, float], float]


def select_markov(train: Sequence[np.ndarray], val: Sequence[np.ndarray], *, num_symbols: int, max_order: int = 10,
                  alphas: Sequence[float] = (0.01, 0.1, 1.0)) -> MarkovSelection:
    """Fit chains of order ``0 .. max_order`` on ``train`` and keep the (order, alpha) with the fewest
    bits per symbol on ``val``."""
    check_int("max_order", max_order, min_value=0)
    if not alphas:
        raise ValueError("alphas is empty; give at least one add-alpha pseudo-count")
    scores: dict[tuple[int, float], float] = {}
    best: tuple[float, int, float] | None = None
    for k in range(max_order + 1):
        chain = MarkovChain(order=k, alpha=alphas[0], num_symbols=num_symbols).fit(train)
        for a in alphas:
            chain.alpha = check_float("alpha", a, min_value=1e-12)
            bits, _ = chain.bits_per_symbol(val)
            scores[(k, float(a))] = bits
            if best is None or bits < best[0]:
                best = (bits, k, float(a))
    _, k, a = best
    return MarkovSelection(MarkovChain(order=k, alpha=a, num_symbols=num_symbols).fit(train), scores)


def unigram_log_probs(counts: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Natural-log probabilities of each symbol from its counts with add-``alpha`` smoothing."""
    counts = np.asarray(counts, dtype=np.float64) + check_float("alpha", alpha, min_value=0.0)
    return np.log(counts / counts.sum())


def kmer_codes(x: np.ndarray, k: int, num_symbols: int) -> np.ndarray:
    """The distinct codes of the overlapping k-mers of ``x`` (symbol indices); k-mers holding a symbol
    outside ``0 .. num_symbols-1`` (an N, a special token) are left out."""
    x = np.asarray(x, dtype=np.int64)
    n = len(x) - k + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    bad = np.concatenate([[0], np.cumsum((x < 0) | (x >= num_symbols))])
    ok = bad[k:] - bad[:-k] == 0  # windows without an invalid symbol
    _, code = _codes(np.clip(x, 0, num_symbols - 1), k - 1, num_symbols)  # a k-mer: k-1 context + 1 symbol
    return np.unique(code[ok])


class KmerNaiveBayes:
    """Naive Bayes over the presence of overlapping k-mers: the RDP classifier (Wang et al. 2007, Appl.
    Environ. Microbiol. 73:5261), the standard baseline for 16S taxonomy.

    A word w seen in ``n(w)`` of the N training records has prior ``P(w) = (n(w) + 0.5) / (N + 1)``; its
    probability in class c (``m(c, w)`` of the class's ``M(c)`` records hold it) is
    ``(m(c, w) + P(w)) / (M(c) + 1)``; a record goes to the class maximising the sum of ``log p(w | c)``
    over its distinct words (no class prior, as RDP).

    Args:
        k: word length (RDP: 8 for DNA).
        num_symbols: alphabet size S; inputs are symbol indices, other values break words. ``S**k`` words
            are held per class, so ``S**k`` must stay within 2**24.
    """

    def __init__(self, *, k: int = 8, num_symbols: int = 4):
        self.k = check_int("k", k, min_value=1)
        self.num_symbols = check_int("num_symbols", num_symbols, min_value=2)
        if self.num_symbols ** self.k > 2 ** 24:
            raise ValueError(f"num_symbols**k = {self.num_symbols}**{self.k} words is more than 2**24; lower k")
        self.log_probs: np.ndarray | None = None  # (C, S**k)

    def fit(self, records: Sequence[np.ndarray], labels: Sequence[int], num_classes: int) -> KmerNaiveBayes:
        """Count word presence per class over ``records`` with integer ``labels`` in ``0 .. num_classes-1``."""
        if len(records) != len(labels) or not records:
            raise ValueError(f"fit needs as many labels as records, at least one; got {len(records)} records, "
                             f"{len(labels)} labels")
        words = self.num_symbols ** self.k
        labels = np.asarray(labels, dtype=np.int64)
        per_class = np.zeros((num_classes, words), dtype=np.float64)
        for rec, y in zip(records, labels):
            per_class[y, kmer_codes(rec, self.k, self.num_symbols)] += 1.0
        sizes = np.bincount(labels, minlength=num_classes).astype(np.float64)
        prior = (per_class.sum(axis=0) + 0.5) / (len(records) + 1.0)
        self.log_probs = np.log((per_class + prior) / (sizes[:, None] + 1.0))
        return self

    def predict(self, records: Sequence[np.ndarray]) -> np.ndarray:
        """The class index of each record (int64 array)."""
        if self.log_probs is None:
            raise ValueError("KmerNaiveBayes.predict called before fit()")
        out = np.empty(len(records), dtype=np.int64)
        for i, rec in enumerate(records):
            out[i] = int(self.log_probs[:, kmer_codes(rec, self.k, self.num_symbols)].sum(axis=1).argmax())
        return out


# -- open reading frames: the no-training baseline of per-base CDS annotation -------------------------
ORF_LENGTHS = (25, 50, 75, 100, 150, 200, 250, 300, 400, 500)  # minimum lengths tried, in codons
_BASE = np.full(256, 4, dtype=np.int64)  # A C G T -> 0..3, anything else (N, IUPAC) -> 4
for _i, _b in enumerate("ACGT"):
    _BASE[ord(_b)] = _i
_START = 0 * 25 + 3 * 5 + 2  # ATG in base-5 codon codes
START_SETS = (("ATG",), ("ATG", "GTG", "TTG"))  # ATG only; the starts of the bacterial code (NCBI table 11)
_STOPS = np.array([3 * 25 + 0 * 5 + 0, 3 * 25 + 0 * 5 + 2, 3 * 25 + 2 * 5 + 0])  # TAA, TAG, TGA


def _codon_codes(codons: Sequence[str]) -> np.ndarray:
    """Base-5 codes of codons such as ``ATG``; ``ValueError`` naming a codon that is not 3 of A, C, G, T."""
    out = []
    for c in codons:
        if len(c) != 3 or any(b not in "ACGT" for b in c.upper()):
            raise ValueError(f"start codon {c!r} is not three of A, C, G, T")
        out.append(int(sum(_BASE[ord(b)] * 5 ** (2 - i) for i, b in enumerate(c.upper()))))
    return np.array(out, dtype=np.int64)


def _strand_orfs(bases: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
    """(n, 3) rows (start, end, codons) of the ORFs of one strand's base codes: from the first start codon
    (``starts``, base-5 codes; default ATG) after an in-frame stop (or the frame's start) to the next stop,
    stop included; ``end`` excluded."""
    starts = np.array([_START]) if starts is None else starts
    if len(bases) < 3:
        return np.zeros((0, 3), dtype=np.int64)
    code = bases[:-2] * 25 + bases[1:-1] * 5 + bases[2:]  # the codon starting at each position
    out = []
    for frame in range(3):
        c = code[frame::3]
        stops = np.flatnonzero(np.isin(c, _STOPS))
        if stops.size == 0:
            continue
        first_start = np.where(np.isin(c, starts), np.arange(len(c)), len(c))
        first_start = np.minimum.accumulate(first_start[::-1])[::-1]  # the first ATG at or after each codon
        begin = first_start[np.concatenate([[0], stops[:-1] + 1])]  # ... after the previous stop
        ok = begin < stops
        s, e = begin[ok], stops[ok]
        out.append(np.stack([frame + 3 * s, frame + 3 * e + 3, e - s + 1], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 3), dtype=np.int64)


def open_reading_frames(seq: str, *, strand: bool = False, starts: Sequence[str] = ("ATG",)) -> np.ndarray:
    """The open reading frames of a DNA sequence on both strands, as (n, 3) int64 rows ``(start, end,
    codons)``: 0-based forward-strand coordinates, ``end`` excluded, the stop codon included in the
    interval and in ``codons`` (the ATG too). An ORF runs from the first ATG after an in-frame stop to
    the next stop; one without a stop before the sequence ends is left out. N and other codes start or
    stop nothing. With ``strand=True`` a fourth column holds the strand, ``1`` or ``-1``. ``starts``: the
    codons an ORF may start with (``("ATG", "GTG", "TTG")``: the bacterial code's)."""
    bases = _BASE[np.frombuffer(seq.upper().encode("latin-1"), dtype=np.uint8)]
    codes = _codon_codes(starts)
    forward = _strand_orfs(bases, codes)
    rc = _strand_orfs(np.where(bases < 4, 3 - bases, 4)[::-1], codes)  # A<->T, C<->G, read backwards
    n = len(bases)
    reverse = np.stack([n - rc[:, 1], n - rc[:, 0], rc[:, 2]], axis=1)
    if strand:
        forward = np.concatenate([forward, np.ones((len(forward), 1), dtype=np.int64)], axis=1)
        reverse = np.concatenate([reverse, -np.ones((len(reverse), 1), dtype=np.int64)], axis=1)
    return np.concatenate([forward, reverse])


def orf_mask(length: int, orfs: np.ndarray, *, min_codons: int) -> np.ndarray:
    """(length,) uint8: 1 on the bases of any ORF of at least ``min_codons`` codons (either strand)."""
    keep = orfs[orfs[:, 2] >= check_int("min_codons", min_codons, min_value=1)]
    diff = np.bincount(keep[:, 0], minlength=length + 1) - np.bincount(keep[:, 1], minlength=length + 1)
    return (np.cumsum(diff[:length]) > 0).astype(np.uint8)


def binary_mcc(pred: np.ndarray, truth: np.ndarray) -> float:
    """Matthews correlation of two 0/1 arrays; 0 when a row or column of the confusion matrix is empty
    (a constant prediction), as ``torchmetrics``' ``BinaryMatthewsCorrCoef``."""
    pred, truth = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    tp, fp = float(np.sum(pred & truth)), float(np.sum(pred & ~truth))
    fn, tn = float(np.sum(~pred & truth)), float(np.sum(~pred & ~truth))
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


@dataclass
class OrfSelection:
    """The ORF length threshold chosen on training sequences and the training MCC of each one tried."""

    min_codons: int
    train_mcc: dict[int, float]

    def predict(self, seq: str) -> np.ndarray:
        """(len(seq),) uint8 per-base prediction: inside an ORF of at least ``min_codons`` codons."""
        return orf_mask(len(seq), open_reading_frames(seq), min_codons=self.min_codons)

    def mcc(self, seqs: Sequence[str], labels: Sequence[np.ndarray]) -> float:
        """The MCC over all bases of ``seqs`` against their per-base ``labels``."""
        if not seqs:
            return float("nan")
        return binary_mcc(np.concatenate([self.predict(s) for s in seqs]), np.concatenate(labels))


def select_orf_length(seqs: Sequence[str], labels: Sequence[np.ndarray], *,
                      candidates: Sequence[int] = ORF_LENGTHS) -> OrfSelection:
    """The no-training annotator: label the bases of every open reading frame (:func:`open_reading_frames`,
    both strands, all six frames) of at least L codons, with L the candidate of best per-base MCC on
    ``seqs`` against ``labels`` (ties: the shortest)."""
    if not seqs or len(seqs) != len(labels):
        raise ValueError(f"select_orf_length needs one label array per sequence, at least one; got {len(seqs)} "
                         f"sequences, {len(labels)} label arrays")
    if not candidates:
        raise ValueError("candidates is empty; give at least one minimum ORF length in codons")
    orfs = [open_reading_frames(s) for s in seqs]
    truth = np.concatenate(labels)
    scores = {}
    for length in candidates:
        pred = np.concatenate([orf_mask(len(s), o, min_codons=length) for s, o in zip(seqs, orfs)])
        scores[int(length)] = binary_mcc(pred, truth)
    best = max(scores, key=lambda k: (scores[k], -k))
    return OrfSelection(best, scores)


# -- ORF decoding: the model's per-base probabilities read through open reading frames ----------------
DECODE_MIN_CODONS = (25, 30, 40, 50, 75, 100)  # shortest ORF a decoder may keep, in codons
DECODE_LONG_CODONS = (75, 100, 150, 200, 300, None)  # ORFs this long are kept whatever the model says
DECODE_MIN_PROBS = tuple(round(0.3 + 0.05 * i, 2) for i in range(13))  # 0.30 .. 0.90


@dataclass(frozen=True)
class OrfDecoder:
    """Per-base annotation constrained to open reading frames (:func:`open_reading_frames` with the start
    codons ``starts``): keep every ORF of at least ``long_codons`` codons, and an ORF of ``min_codons`` ..
    ``long_codons`` codons when the model's mean probability over its bases is at least ``min_prob``; a
    base is coding when a kept ORF covers it. ``long_codons=None``: only the model decides. Coding
    sequences start at a start codon and end at an in-frame stop, which a per-base classifier does not
    know; the decoder gives its calls those edges."""

    min_codons: int
    long_codons: int | None
    min_prob: float
    starts: tuple[str, ...] = ("ATG",)

    def __post_init__(self):
        object.__setattr__(self, "starts", tuple(self.starts))  # a list from a checkpoint
        _codon_codes(self.starts)

    def orfs(self, seq: str, *, strand: bool = False) -> np.ndarray:
        """The open reading frames of ``seq`` this decoder reads (its start codons)."""
        return open_reading_frames(seq, strand=strand, starts=self.starts)

    def keep(self, orfs: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """The rows of ``orfs`` (``open_reading_frames`` rows of one sequence) the decoder keeps, given the
        (L,) per-base probabilities ``prob``; adds a last column, the mean probability over each ORF."""
        orfs = orfs[orfs[:, 2] >= self.min_codons]
        mean = mean_over(prob, orfs[:, 0], orfs[:, 1])
        kept = mean >= self.min_prob
        if self.long_codons is not None:
            kept |= orfs[:, 2] >= self.long_codons
        return np.concatenate([orfs[kept], mean[kept, None]], axis=1)

    def decode(self, seq: str, prob: np.ndarray, orfs: np.ndarray | None = None) -> np.ndarray:
        """(L,) uint8 coding calls of ``seq`` from its (L,) per-base probabilities ``prob``."""
        if len(prob) != len(seq):
            raise ValueError(f"ORF decoding needs one probability per base; got {len(prob)} for {len(seq)} bases")
        orfs = self.orfs(seq) if orfs is None else orfs
        return orf_mask(len(seq), self.keep(orfs, prob)[:, :3].astype(np.int64), min_codons=1)

    def as_dict(self) -> dict[str, Any]:
        """The decoder's settings (what a checkpoint stores)."""
        return {"min_codons": self.min_codons, "long_codons": self.long_codons, "min_prob": self.min_prob,
                "starts": list(self.starts)}


def mean_over(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The mean of ``values[s:e]`` for each interval (float64; NaN values count as 0)."""
    csum = np.concatenate([[0.0], np.cumsum(np.nan_to_num(np.asarray(values, dtype=np.float64)))])
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    return (csum[ends] - csum[starts]) / np.maximum(ends - starts, 1)


@dataclass
class DecoderSelection:
    """The ORF decoder chosen on validation and its validation MCC (and how many settings were tried)."""

    decoder: OrfDecoder
    val_mcc: float
    tried: int


def select_orf_decoder(seqs: Sequence[str], probs: Sequence[np.ndarray], labels: Sequence[np.ndarray], *,
                       min_codons: Sequence[int] = DECODE_MIN_CODONS,
                       long_codons: Sequence[int | None] = DECODE_LONG_CODONS,
                       min_probs: Sequence[float] = DECODE_MIN_PROBS,
                       start_sets: Sequence[Sequence[str]] = START_SETS) -> DecoderSelection:
    """The :class:`OrfDecoder` of best per-base MCC on ``seqs`` (validation sequences, their per-base model
    probabilities and labels) over the grid ``start_sets x min_codons x long_codons x min_probs`` (settings
    with ``long_codons <= min_codons`` are skipped: every ORF would be kept). Ties: the first in grid order."""
    if not seqs or not (len(seqs) == len(probs) == len(labels)):
        raise ValueError(f"select_orf_decoder needs a probability and a label array per sequence, at least one; got "
                         f"{len(seqs)} sequences, {len(probs)} probability arrays, {len(labels)} label arrays")
    truth = np.concatenate(labels)
    best_mcc, best, tried = -np.inf, None, 0
    for starts in start_sets:
        orfs = [open_reading_frames(s, starts=starts) for s in seqs]
        for lo in min_codons:
            for hi in long_codons:
                if hi is not None and hi <= lo:
                    continue
                for t in min_probs:
                    dec = OrfDecoder(int(lo), None if hi is None else int(hi), float(t), tuple(starts))
                    pred = np.concatenate([dec.decode(s, p, o) for s, p, o in zip(seqs, probs, orfs)])
                    mcc, tried = binary_mcc(pred, truth), tried + 1
                    if mcc > best_mcc:
                        best_mcc, best = mcc, dec
    return DecoderSelection(best, best_mcc, tried)
