"""Transcript normalisation and the character vocabulary of the CTC head.

The vocabulary is ``<blank>``, space, apostrophe and ``a``-``z`` (29 tokens), the character set of
LibriSpeech transcripts once lower-cased. Normalisation maps any transcript onto it: lower case, accents
stripped (NFKD), hyphens and other punctuation to spaces, runs of spaces collapsed, other characters
(digits, symbols) dropped.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import torch
from torch import Tensor

BLANK = "<blank>"
VOCAB: tuple[str, ...] = (BLANK, " ", "'") + tuple("abcdefghijklmnopqrstuvwxyz")
_SPACE_LIKE = re.compile(r"[\s\-_/.,;:!?\"()\[\]{}]+")
_KEEP = set(VOCAB[1:])


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return _SPACE_LIKE.sub(" ", text)


def normalize_text(text: str) -> str:
    """Lower-case ``text`` and map it onto the vocabulary (see the module docstring)."""
    text = "".join(c for c in _fold(text) if c in _KEEP)
    return " ".join(text.split())


def dropped_characters(text: str) -> str:
    """The characters of ``text`` that :func:`normalize_text` drops (digits, symbols, other scripts), each once:
    a transcript holding any says something the model cannot spell (``"3"`` should read ``"three"``)."""
    return "".join(dict.fromkeys(c for c in _fold(text) if c not in _KEEP and not c.isspace()))


_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def number_words(n: int) -> str:
    """The cardinal ``n`` (0 <= n < 10**12) in English words: ``1234`` -> ``one thousand two hundred thirty four``."""
    if not 0 <= n < 10**12:
        raise ValueError(f"number_words spells 0 <= n < 10**12; got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, name in _SCALES:
        if n >= size:
            head, rest = divmod(n, size)
            return f"{number_words(head)} {name}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)  # unreachable: every n >= 100 has a scale


def spell_numbers(text: str) -> str:
    """Numerals in ``text`` as words: integers as cardinals, decimals digit by digit after ``point``
    (``28.8`` -> ``twenty eight point eight``); everything else unchanged."""
    def words(m: re.Match) -> str:
        whole, _, frac = m.group().partition(".")
        out = number_words(int(whole)) + (" point " + " ".join(_ONES[int(d)] for d in frac) if frac else "")
        return f" {out} "

    return _NUMBER.sub(words, text)


class CharTokenizer:
    """Characters <-> ids over :data:`VOCAB`; id 0 is the CTC blank."""

    def __init__(self, vocab: Sequence[str] = VOCAB):
        if not vocab or vocab[0] != BLANK:
            raise ValueError(f"vocab must start with the blank token {BLANK!r}; got {list(vocab)[:3]}...")
        self.vocab = tuple(vocab)
        self.index = {c: i for i, c in enumerate(self.vocab)}
        self.blank = 0
        self.space = self.index[" "]

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> Tensor:
        """Ids (L,) of the normalised ``text``."""
        return torch.tensor([self.index[c] for c in normalize_text(text)], dtype=torch.long)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The string of ``ids`` (blanks dropped, no CTC collapsing)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return "".join(self.vocab[i] for i in ids if i != self.blank)
