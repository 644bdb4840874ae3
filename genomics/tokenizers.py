"""Tokenisers for DNA (per base or non-overlapping k-mers) and proteins, on numpy ``uint8`` arrays.

Sequences become one byte per token (``np.uint8``), so a genome costs its length in bytes and windows
are array slices, never Python strings. Encoding is a 256-entry lookup table over the raw bytes;
a character outside the alphabet raises :class:`InvalidCharacterError` naming its position, which the
readers in :mod:`genomics.io` extend with the file and record.

Token ids: ``0 [PAD]``, ``1 [MASK]``, ``2 [CLS]``, ``3 [SEP]``, then the alphabet's symbols.
"""

from __future__ import annotations

import itertools

import numpy as np

from core_attn.validation import check_choice, check_int

SPECIALS = ("[PAD]", "[MASK]", "[CLS]", "[SEP]")
PAD, MASK, CLS, SEP = range(4)
INVALID = 255

IUPAC_AMBIGUOUS = "RYSWKMBDHV"  # ambiguity codes: all read as N
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"  # the 20 standard residues
AMINO_EXTRA = "XBZUO"  # unknown, Asx, Glx, selenocysteine, pyrrolysine
CASES = ("fold", "keep")


class InvalidCharacterError(ValueError):
    """A character outside the tokeniser's alphabet.

    Attributes:
        char: the offending character.
        position: its 0-based position in the encoded text.
    """

    def __init__(self, char: str, position: int, alphabet: str):
        self.char, self.position = char, position
        super().__init__(f"invalid character {char!r} at position {position} (0-based); allowed: {alphabet}")


class Tokenizer:
    """Maps text to ``uint8`` token ids and back; subclasses fill the byte lookup table.

    Attributes:
        symbols: the alphabet's tokens in id order (after the 4 specials).
        vocab_size: specials + symbols.
    """

    alphabet_name = "?"

    def __init__(self, symbols: list[str]):
        self.symbols = list(symbols)
        self.tokens = list(SPECIALS) + self.symbols
        if len(self.tokens) >= INVALID:
            raise ValueError(f"vocabulary of {len(self.tokens)} tokens does not fit in uint8 (max {INVALID - 1})")
        self.vocab_size = len(self.tokens)
        self._table = np.full(256, INVALID, dtype=np.uint8)

    @property
    def symbol_ids(self) -> np.ndarray:
        """Ids of the alphabet's symbols (no specials), as ``int64``."""
        return np.arange(len(SPECIALS), self.vocab_size, dtype=np.int64)

    def _set(self, chars: str, token: str) -> None:
        tid = self.tokens.index(token)
        for ch in chars:
            self._table[ord(ch)] = tid

    def _encode_bytes(self, text: str | bytes) -> np.ndarray:
        raw = np.frombuffer(text.encode("latin-1") if isinstance(text, str) else bytes(text), dtype=np.uint8)
        ids = self._table[raw]
        bad = np.flatnonzero(ids == INVALID)
        if bad.size:
            pos = int(bad[0])
            raise InvalidCharacterError(chr(raw[pos]), pos, self.describe_alphabet())
        return ids

    def encode(self, text: str | bytes) -> np.ndarray:
        """Token ids (``uint8``) of ``text``; raises :class:`InvalidCharacterError` on a foreign character."""
        return self._encode_bytes(text)

    def decode(self, ids) -> str:
        """The text of token ids (specials written as their names)."""
        return "".join(self.tokens[int(i)] for i in np.asarray(ids).reshape(-1))

    def describe_alphabet(self) -> str:
        """The accepted characters, for error messages."""
        return "".join(chr(c) for c in range(256) if self._table[c] != INVALID)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class DNATokenizer(Tokenizer):
    """DNA per base (``k=1``: A, C, G, T, N) or as non-overlapping k-mers over A, C, G, T.

    IUPAC ambiguity codes (R, Y, S, W, K, M, B, D, H, V) read as N; U reads as T. Soft-masked
    (lowercase) bases are folded to upper case (``case="fold"``) or kept as their own tokens
    (``case="keep"``: a, c, g, t, n).

    With ``k > 1`` each k-mer over A, C, G, T is one token and any k-mer holding an N is the single
    token ``N*k``; a trailing partial k-mer is padded with N. Decoding is exact for A/C/G/T sequences
    whose length is a multiple of ``k``.

    Args:
        k: bases per token.
        case: ``fold`` or ``keep`` (``keep`` needs ``k=1``).
    """

    alphabet_name = "dna"

    def __init__(self, *, k: int = 1, case: str = "fold"):
        self.k = check_int("k", k, min_value=1, max_value=3)  # 4**4 + 5 tokens would not fit in uint8
        self.case = check_choice("case", case, CASES)
        if case == "keep" and k > 1:
            raise ValueError("case='keep' (soft-masked tokens) needs k=1; use case='fold' with k-mers")
        self.base = DNABaseTable(case)  # per-base ids, before k-mer packing
        if k == 1:
            symbols = list(self.base.symbols)
        else:
            symbols = ["".join(p) for p in itertools.product("ACGT", repeat=k)] + ["N" * k]
        super().__init__(symbols)
        self._table = self.base.table
        self._rc = self._complement_table()

    # -- encoding --------------------------------------------------------------------------------
    def encode(self, text: str | bytes) -> np.ndarray:
        ids = self._encode_bytes(text)  # per-base ids in the k=1 layout
        return ids if self.k == 1 else self._pack(ids)

    def _pack(self, ids: np.ndarray) -> np.ndarray:
        """Per-base ids (A..T = 4..7, N = 8) -> k-mer ids; any N in a k-mer gives the N k-mer."""
        k = self.k
        tail = (-len(ids)) % k
        if tail:
            ids = np.concatenate([ids, np.full(tail, self.base.n_id, dtype=np.uint8)])
        groups = ids.reshape(-1, k).astype(np.int64) - len(SPECIALS)  # A=0 .. T=3, N=4
        has_n = (groups > 3).any(axis=1)
        code = (groups.clip(max=3) * (4 ** np.arange(k - 1, -1, -1))).sum(axis=1)
        code[has_n] = 4 ** k
        return (code + len(SPECIALS)).astype(np.uint8)

    def describe_alphabet(self) -> str:
        return self.base.describe()

    # -- reverse complement ------------------------------------------------------------------------
    def _complement_table(self) -> np.ndarray:
        """id -> id of the reverse complement token (specials map to themselves)."""
        comp = str.maketrans("ACGTNacgtn", "TGCANtgcan")
        table = np.arange(256, dtype=np.uint8)
        for i, tok in enumerate(self.tokens[len(SPECIALS):], start=len(SPECIALS)):
            table[i] = self.tokens.index(tok.translate(comp)[::-1])
        return table

    def reverse_complement(self, ids: np.ndarray) -> np.ndarray:
        """Token ids of the reverse-complement strand (reversed order, complemented tokens)."""
        return self._rc[np.asarray(ids, dtype=np.uint8)[::-1]]

    def __repr__(self) -> str:
        return f"DNATokenizer(k={self.k}, case={self.case!r}, vocab_size={self.vocab_size})"


class DNABaseTable:
    """The per-base byte table of :class:`DNATokenizer` (ids as in the ``k=1`` vocabulary)."""

    def __init__(self, case: str):
        upper = list("ACGTN")
        self.symbols = upper + ([s.lower() for s in upper] if case == "keep" else [])
        tokens = list(SPECIALS) + self.symbols
        self.table = np.full(256, INVALID, dtype=np.uint8)
        self.n_id = tokens.index("N")
        for ch in "ACGTN":
            self.table[ord(ch)] = tokens.index(ch)
            self.table[ord(ch.lower())] = tokens.index(ch.lower() if case == "keep" else ch)
        low_n = tokens.index("n" if case == "keep" else "N")
        for ch in IUPAC_AMBIGUOUS:
            self.table[ord(ch)] = self.n_id
            self.table[ord(ch.lower())] = low_n
        self.table[ord("U")] = tokens.index("T")
        self.table[ord("u")] = tokens.index("t" if case == "keep" else "T")

    def describe(self) -> str:
        return "A C G T N, IUPAC codes " + IUPAC_AMBIGUOUS + " (read as N), U (read as T), any case"


class ProteinTokenizer(Tokenizer):
    """Proteins: the 20 standard amino acids plus X, B, Z, U, O; lower case folds to upper case.

    Args:
        strip_stop: drop one trailing ``*`` (a stop codon written by translators) instead of raising.
    """

    alphabet_name = "protein"

    def __init__(self, *, strip_stop: bool = True):
        super().__init__(list(AMINO_ACIDS + AMINO_EXTRA))
        self.strip_stop = bool(strip_stop)
        for aa in AMINO_ACIDS + AMINO_EXTRA:
            self._set(aa + aa.lower(), aa)

    @property
    def standard_ids(self) -> np.ndarray:
        """Ids of the 20 standard amino acids (the replacement pool of MLM masking)."""
        return np.arange(len(SPECIALS), len(SPECIALS) + len(AMINO_ACIDS), dtype=np.int64)

    def encode(self, text: str | bytes) -> np.ndarray:
        if self.strip_stop and len(text) and (text[-1] in ("*", ord("*"))):
            text = text[:-1]
        return self._encode_bytes(text)

    def describe_alphabet(self) -> str:
        return AMINO_ACIDS + AMINO_EXTRA + " (any case)" + (", one trailing *" if self.strip_stop else "")

    def __repr__(self) -> str:
        return f"ProteinTokenizer(strip_stop={self.strip_stop}, vocab_size={self.vocab_size})"


ALPHABETS = ("dna", "protein")


def build_tokenizer(*, alphabet: str, k: int = 1, case: str = "fold") -> Tokenizer:
    """The tokeniser of ``alphabet`` (``dna`` with ``k``/``case``, or ``protein``)."""
    check_choice("alphabet", alphabet, ALPHABETS)
    if alphabet == "dna":
        return DNATokenizer(k=k, case=case)
    if k != 1:
        raise ValueError(f"k={k} is for DNA k-mers; proteins are tokenised per residue (k=1)")
    return ProteinTokenizer()
