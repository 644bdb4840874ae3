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

A small in-domain model mixes with a general one (``lm_mix``: ``pocketsphinx``, the general English trigram of the
pocketsphinx wheel, or an ARPA file) as SRILM's ``ngram -mix-lm -lambda`` does (:func:`mix_lms`): every n-gram
either model lists gets ``(1 - w) p_a + w p_b`` (each read with its backoff), and each history the backoff weight
that keeps the mixture's distribution after it summing to one.
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
from core_attn.validation import check_float, check_int, did_you_mean

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
LM_FILES = (".arpa", ".bin", ".jsonl")  # KenLM models; a manifest whose transcripts train one
LM_CHOICES = ("null, 'train' (the training transcripts), 'pocketsphinx' (the general English trigram of the "
              "pocketsphinx wheel), or a file: .arpa/.bin (KenLM) or .jsonl (a manifest)")
MIX_CHOICES = "null, 'pocketsphinx', 'train', or a file: .arpa or .jsonl (a manifest)"
NAMED = ("train", "pocketsphinx")

Ngrams = dict[tuple[str, ...], tuple[float, float | None]]  # n-gram -> (log10 probability, log10 backoff or None)


def check_lm(lm: str | None, key: str = "lm") -> str | None:
    """``lm`` (or ``lm_mix`` as ``key``): ``None``, one of :data:`NAMED` or a path ending in one of :data:`LM_FILES`
    (``lm_mix``: not ``.bin``, which cannot be read back as n-grams; whether a file exists is checked when a
    decoder is built: a checkpoint may travel without it)."""
    suffixes = LM_FILES if key == "lm" else (".arpa", ".jsonl")
    if lm is None or lm in NAMED or Path(str(lm)).suffix in suffixes:
        return lm
    choices = LM_CHOICES if key == "lm" else MIX_CHOICES
    raise ValueError(f"{key}={lm!r} is not allowed; expected {choices}.{did_you_mean(str(lm), list(NAMED))}")


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


def read_arpa(path: str | Path) -> list[Ngrams]:
    """The n-grams of an ARPA file (:data:`Ngrams` per order); a line that is not one raises naming the line."""
    model: list[Ngrams] = []
    n = 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if line.startswith("\\") and line.endswith("-grams:"):
                n = int(line[1:].split("-")[0])
                model.append({})
            elif line == "\\end\\":
                break
            elif n and line:
                fields = line.split()
                try:
                    if len(fields) not in (n + 1, n + 2):
                        raise ValueError
                    model[n - 1][tuple(fields[1:n + 1])] = (float(fields[0]),
                                                            float(fields[n + 1]) if len(fields) > n + 1 else None)
                except (ValueError, IndexError):
                    raise ValueError(f"{path}, line {number}: not an ARPA {n}-gram line (log10 p, {n} words, "
                                     f"optional backoff): {line[:80]!r}") from None
    if not model or not model[0]:
        raise ValueError(f"{path}: no \\1-grams: section; expected an ARPA language model file")
    return model


def logprob(model: list[Ngrams], gram: tuple[str, ...]) -> float:
    """log10 P(gram[-1] | gram[:-1]) read with backoff, as KenLM reads the ARPA file (``<unk>``'s probability, or
    -99, for a word the model does not list)."""
    gram, backoff = gram[-len(model):], 0.0
    while True:
        hit = model[len(gram) - 1].get(gram)
        if hit is not None:
            return backoff + hit[0]
        if len(gram) == 1:
            return backoff + model[0].get((UNK,), (-99.0, None))[0]
        history = model[len(gram) - 2].get(gram[:-1])
        if history is not None and history[1]:
            backoff += history[1]
        gram = gram[1:]


def mix_lms(a: list[Ngrams], b: list[Ngrams], weight: float) -> list[Ngrams]:
    """The linear interpolation ``(1 - weight) P_a + weight P_b`` of two backoff models as one backoff model (SRILM's
    static ``-mix-lm``; a word outside a model's vocabulary has probability 0 in it, ``<unk>`` mixes as a word):
    the union of their n-grams, each with the mixed probability, and per history the backoff
    weight ``(1 - sum of its listed words' mixed P) / (1 - sum of the same words' mixed P one order down)``. Exact
    for every listed n-gram; an unlisted one backs off as in any ARPA model."""
    weight = check_float("lm_mix_weight", weight, min_value=0.0, max_value=1.0)
    order = max(len(a), len(b))
    mixed: list[Ngrams] = []
    floor = 10.0 ** -99
    for n in range(order):
        grams: dict[tuple[str, ...], float] = {}
        for gram in (a[n].keys() if n < len(a) else ()) | (b[n].keys() if n < len(b) else ()):
            p = ((1 - weight) * 10.0 ** logprob(a, gram) if (gram[-1],) in a[0] else 0.0) + (
                weight * 10.0 ** logprob(b, gram) if (gram[-1],) in b[0] else 0.0)
            grams[gram] = math.log10(p) if p > floor else -99.0
        mixed.append({gram: (p, None) for gram, p in grams.items()})
        if n == 0:
            continue
        listed: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for gram, p in grams.items():  # the mass a history's listed words take, here and one order down
            sums = listed[gram[:-1]]
            sums[0] += 10.0 ** p
            sums[1] += 10.0 ** logprob(mixed[:n], gram[1:])
        lower = mixed[n - 1]
        for history, (here, below) in listed.items():
            bow = math.log10(max(1.0 - here, 1e-12) / max(1.0 - below, 1e-12))
            lower[history] = (lower[history][0] if history in lower else logprob(mixed[:n], history), bow)
    for n in range(order - 1):  # histories without listed continuations back off with weight 1
        mixed[n] = {gram: (p, 0.0 if bow is None else bow) for gram, (p, bow) in mixed[n].items()}
    return mixed


def _existing(lm: str, key: str) -> Path:
    """The file of an ``lm``/``lm_mix`` setting; ``FileNotFoundError`` naming the key when it is missing."""
    path = Path(str(lm))
    if not path.is_file():
        raise FileNotFoundError(f"{key}={lm!r}: no such file (expected {LM_CHOICES if key == 'lm' else MIX_CHOICES})")
    return path


def load_lm(lm: str, *, texts: Sequence[str] | None = None, words: Sequence[str] = (), order: int = 3,
            key: str = "lm") -> list[Ngrams]:
    """The n-grams of a setting of :func:`check_lm`: built (``train``, a ``.jsonl`` manifest) or read (``pocketsphinx``,
    an ``.arpa`` file); ``words`` (the lexicon) join a built model's vocabulary."""
    if lm == "pocketsphinx":
        from audio.sphinx_lm import pocketsphinx_lm_path, read_sphinx_lm

        return read_sphinx_lm(pocketsphinx_lm_path())
    if lm == "train" and texts is None:
        raise ValueError(f"{key}='train' builds the language model from the training transcripts, which this "
                         "checkpoint does not carry (trained before checkpoints kept them): give "
                         f"{key}=<the training manifest .jsonl> or {key}=<a KenLM .arpa file>")
    path = Path(str(lm)) if lm == "train" else _existing(lm, key)
    if path.suffix == ".arpa":
        return read_arpa(path)
    if path.suffix == ".bin":
        raise ValueError(f"{key}={lm!r}: a KenLM binary cannot be mixed with another model; give its ARPA file")
    if lm != "train":
        from audio.data import read_manifest

        texts = [seg.text for seg in read_manifest(path)]
    return build_lm(texts, order=order, extra_words=words)


@contextmanager
def lm_file(lm: str | None, *, texts: Sequence[str] | None = None, words: Sequence[str] = (),
            order: int = 3, mix: str | None = None, mix_weight: float = 0.5) -> Iterator[str | None]:
    """The KenLM file of the ``lm`` setting, for the time of the ``with`` block: ``None``; an ``.arpa``/``.bin``
    file as given; for ``train``, a trigram of ``texts`` (the training transcripts) and for a ``.jsonl`` manifest,
    one of its transcripts, built into a temporary folder with ``words`` (the lexicon) in its vocabulary;
    ``pocketsphinx``, the wheel's English trigram as ARPA. ``mix`` (the same settings but ``.bin``) is mixed in
    with weight ``mix_weight`` (:func:`mix_lms`)."""
    check_lm(mix, "lm_mix")
    if check_lm(lm) is None:
        if mix is not None:
            raise ValueError(f"lm_mix={mix!r} mixes a second model into lm, which is null: set lm (e.g. lm=train), "
                             f"or give the model as lm={mix!r}")
        yield None
        return
    if mix is None and Path(str(lm)).suffix in (".arpa", ".bin"):  # KenLM reads it as it is
        yield str(_existing(lm, "lm"))
        return
    model = load_lm(lm, texts=texts, words=words, order=order)
    if mix is not None:
        model = mix_lms(model, load_lm(mix, texts=texts, words=words, order=order, key="lm_mix"), mix_weight)
    with tempfile.TemporaryDirectory(prefix="lm-") as tmp:  # flashlight's KenLM reads the model from a file
        yield str(write_arpa(model, Path(tmp) / "lm.arpa"))
