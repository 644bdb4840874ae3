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


def normalize_text(text: str) -> str:
    """Lower-case ``text`` and map it onto the vocabulary (see the module docstring)."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = _SPACE_LIKE.sub(" ", text)
    text = "".join(c for c in text if c in _KEEP)
    return " ".join(text.split())


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
