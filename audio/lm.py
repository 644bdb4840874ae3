"""A word n-gram language model of transcripts for lexicon beam search, written as an ARPA file (KenLM reads it).

Interpolated modified Kneser-Ney (Chen & Goodman 1998), estimated as KenLM's ``lmplz`` does. The highest order
counts n-grams; each lower order counts the distinct words seen before an n-gram (its Kneser-Ney continuation
count), except for n-grams that start with ``<s>``, which keep their counts (nothing comes before ``<s>``). Order
n discounts a count of 1, 2 and 3 or more by D1, D2, D3+ from its counts of counts t1..t4 (Y = t1 / (t1 + 2 t2),
Dk = k - (k + 1) Y t(k+1) / tk); where a small corpus gives no valid estimate, 0.5, 1 and 1.5 (``lmplz
--discount_fallback``). What a history's discounts free goes to the next lower order, and what the unigrams'
free to a uniform distribution over the vocabulary: the transcripts' words, ``</s>``, ``<unk>`` and the
``extra_words`` (e.g. a lexicon's words from a general word list). So a word the transcripts never use keeps the
probability of ``<unk>``, a small share of the unigram mass, and lexicon decoding can still spell it.

The ARPA file lists each seen n-gram with its interpolated probability and each history with its interpolation
weight as the backoff weight: read with backoff, it is exactly the interpolated model (log10, as ARPA has it).
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from audio.text import normalize_text
from core_attn.training.atomic import open_atomic
from core_attn.validation import check_int, did_you_mean

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
LM_FILES = (".arpa", ".bin", ".jsonl")  # KenLM models; a manifest whose transcripts train one
LM_CHOICES = "null, 'train' (the training transcripts), or a file: .arpa/.bin (KenLM) or .jsonl (a manifest)"

Ngrams = dict[tuple[str, ...], tuple[float, float | None]]  # n-gram -> (log10 probability, log10 backoff or None)


def check_lm(lm: str | None) -> str | None:
    """``lm``: ``None``, ``"train"`` or a path ending in one of :data:`LM_FILES` (whether it exists is checked
    when a decoder is built: a checkpoint may travel without it)."""
    if lm is None or lm == "train" or Path(str(lm)).suffix in LM_FILES:
        return lm
    raise ValueError(f"lm={lm!r} is not allowed; expected {LM_CHOICES}.{did_you_mean(str(lm), ['train'])}")


def count_ngrams(texts: Sequence[str], order: int) -> list[Counter]:
    """Counts of the 1..``order``-grams of the normalised ``texts``, each sentence between ``<s>`` and ``</s>``."""
    counts = [Counter() for _ in range(order)]
    for text in texts:
        words = normalize_text(text).split()
        if not words:
            continue
        sent = (BOS, *words, EOS)
        for n in range(1, order + 1):
            counts[n - 1].update(sent[i:i + n] for i in range(len(sent) - n + 1))
    return counts


def kneser_ney_counts(counts: list[Counter]) -> list[Counter]:
    """The counts each order is estimated from: the highest order's own; below, continuation counts (distinct
    preceding words), or the count itself for n-grams that start with ``<s>``."""
    adjusted = [Counter() for _ in counts]
    adjusted[-1] = Counter(counts[-1])
    for n in range(len(counts) - 1):  # n-grams of length n + 1
        adjusted[n].update(gram[1:] for gram in counts[n + 1])
        adjusted[n].update({gram: c for gram, c in counts[n].items() if gram[0] == BOS})
    adjusted[0].pop((BOS,), None)  # <s> is never predicted
    return adjusted


def discounts(adjusted: Counter) -> tuple[float, float, float]:
    """(D1, D2, D3+) from the counts of counts of one order, or :data:`FALLBACK_DISCOUNTS` if those give none."""
    t = Counter(c for c in adjusted.values() if c <= 4)
    if not all(t[k] for k in (1, 2, 3, 4)):
        return FALLBACK_DISCOUNTS
    y = t[1] / (t[1] + 2 * t[2])
    d = tuple(k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3))
    return d if all(0 < dk < k for dk, k in zip(d, (1, 2, 3))) else FALLBACK_DISCOUNTS


def build_lm(texts: Sequence[str], *, order: int = 3, extra_words: Sequence[str] = ()) -> list[Ngrams]:
    """The interpolated modified Kneser-Ney model of ``texts`` (see the module docstring): per order, each seen
    n-gram's log10 probability and, for histories, log10 backoff weight. ``extra_words`` join the vocabulary
    with the uniform share of the unigram mass."""
    order = check_int("order", order, min_value=1)
    adjusted = kneser_ney_counts(count_ngrams(texts, order))
    if not adjusted[0]:
        raise ValueError(f"the language model's transcripts have no words ({len(texts)} transcripts, none with "
                         "a word spelt in a-z and apostrophe)")
    vocab = {w for (w,) in adjusted[0]} | {EOS, UNK} | {w for w in extra_words if w and w != BOS}
    probs: list[dict[tuple[str, ...], float]] = []
    gammas: list[dict[tuple[str, ...], float]] = []
    for n, counts in enumerate(adjusted):
        d = discounts(counts)
        by_history: dict[tuple[str, ...], list] = defaultdict(list)
        for gram, c in counts.items():
            by_history[gram[:-1]].append((gram, c))
        prob, gamma = {}, {}
        for history, grams in by_history.items():
            total = sum(c for _, c in grams)
            gamma[history] = sum(d[min(c, 3) - 1] for _, c in grams) / total
            for gram, c in grams:  # the lower order always lists the suffix of a seen n-gram
                lower = probs[n - 1][gram[1:]] if n else 1.0 / len(vocab)
                prob[gram] = (c - d[min(c, 3) - 1]) / total + gamma[history] * lower
        if n == 0:  # the rest of the vocabulary: the uniform share alone
            prob.update({(w,): gamma[()] / len(vocab) for w in vocab if (w,) not in prob})
            prob[(BOS,)] = 0.0
        probs.append(prob)
        gammas.append(gamma)
    return [{gram: (math.log10(p) if p > 0 else -99.0,
                    math.log10(gammas[n + 1][gram]) if n + 1 < order and gram in gammas[n + 1] else None)
             for gram, p in probs[n].items()} for n in range(order)]


def write_arpa(model: list[Ngrams], path: str | Path) -> Path:
    """Write ``model`` (:func:`build_lm`) as an ARPA file, atomically (:func:`core_attn.training.atomic.open_atomic`)."""
    with open_atomic(path) as f:
        f.write("\\data\\\n" + "".join(f"ngram {n}={len(grams)}\n" for n, grams in enumerate(model, 1)))
        for n, grams in enumerate(model, 1):
            f.write(f"\n\\{n}-grams:\n")
            for gram in sorted(grams):
                logp, bow = grams[gram]
                f.write(f"{logp:.6f}\t{' '.join(gram)}" + ("" if bow is None else f"\t{bow:.6f}") + "\n")
        f.write("\n\\end\\\n")
    return Path(path)


@contextmanager
def lm_file(lm: str | None, *, texts: Sequence[str] | None = None, words: Sequence[str] = (),
            order: int = 3) -> Iterator[str | None]:
    """The KenLM file of the ``lm`` setting, for the time of the ``with`` block: ``None``; an ``.arpa``/``.bin``
    file as given; for ``train``, a trigram of ``texts`` (the training transcripts) and for a ``.jsonl`` manifest,
    one of its transcripts, built into a temporary folder with ``words`` (the lexicon) in its vocabulary."""
    if check_lm(lm) is None:
        yield None
        return
    if lm == "train" and texts is None:
        raise ValueError("lm='train' builds the language model from the training transcripts, which this "
                         "checkpoint does not carry (trained before checkpoints kept them): give lm=<the training "
                         "manifest .jsonl> or lm=<a KenLM .arpa or .bin file>")
    path = Path(str(lm))
    if lm != "train" and not path.is_file():
        raise FileNotFoundError(f"lm={lm!r}: no such file (expected {LM_CHOICES})")
    if path.suffix in (".arpa", ".bin"):
        yield str(path)
        return
    if lm != "train":
        from audio.data import read_manifest

        texts = [seg.text for seg in read_manifest(path)]
    with tempfile.TemporaryDirectory(prefix="lm-") as tmp:  # flashlight's KenLM reads the model from a file
        yield str(write_arpa(build_lm(texts, order=order, extra_words=words), Path(tmp) / "lm.arpa"))
