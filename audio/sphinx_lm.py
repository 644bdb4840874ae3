"""Read CMU Sphinx's binary trie language model (``*.lm.bin``, e.g. the general English trigram ``en-us.lm.bin`` of
the ``pocketsphinx`` wheel) into the n-gram tables of :mod:`audio.lm`, with numpy and no pocketsphinx.

PocketSphinx's own ARPA writer aborts on the shipped ``en-us.lm.bin``: its header counts 2051547 bigrams where the
trie holds 2051541 (cmusphinx/pocketsphinx#502). This reader sizes the stored arrays from the header counts as the
C reader does (``ngram_model_trie_read_bin``, ``lm_trie_read_bin``) and keeps the n-grams the trie walk reaches.

The file, little-endian: ``"Trie Language Model"``, the order (uint8) and the n-gram counts (uint32 each); if the
order is above 1, an int32 (once the quantizer type) and the float32 quantization tables: per middle order 2^16
probabilities then 2^16 backoffs, then 2^16 probabilities of the highest order; the ``count[0] + 1`` unigrams
(float32 probability, float32 backoff, uint32 ``next``: the first child, the last one a sentinel); the bit-packed
middle orders, then the highest order; the words (uint32 byte count, then NUL-terminated strings, in word-id order).
A bit-packed order stores ``count + 1`` entries of ``total_bits`` bits, rounded up to bytes, plus 8 bytes
(``base_size``), with its count and bit widths from the header. A middle entry packs the word id
(``bits(count[0])`` bits), the backoff's and the probability's 16-bit bin, and ``next``, its first child in the
next order (``bits(count[n + 1])`` bits; the entry after the last one holds the end); a highest-order entry, the
word id and the probability's bin. The trie is reversed, as KenLM's is: a unigram's children are the bigrams that
end with it, keyed by the word before; a bigram entry's children, keyed by the word before that, the trigrams that
end with it. So entry j's children are ``[next_j, next_(j+1))`` of the next order, and the n-gram an entry stands
for is read from it back up to its unigram (``lm_trie_fill_raw_ngram``). The trie also holds the n-grams
pocketsphinx's builder adds to reach a higher order (a trigram's unlisted suffix bigram, with the backed-off
probability and backoff 0): they are kept, as pocketsphinx scores them. Probabilities and backoffs are logarithms to
the base 1.0001 (``logmath_init(1.0001, 0, 0)``, pocketsphinx's ``-logbase``; the file does not store it),
converted to log10 as ``logmath_log_float_to_log10`` does.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from audio.lm import Ngrams

log = logging.getLogger(__name__)

HEADER = b"Trie Language Model"
MAX_ORDER = 5  # NGRAM_MAX_ORDER
LOG10_OF_BASE = math.log10(1.0001)  # logmath_init(1.0001, 0, 0): the base pocketsphinx reads (and writes) with
QUANT_BITS = 16  # per probability and per backoff bin index
UNIGRAM = np.dtype([("prob", "<f4"), ("bo", "<f4"), ("next", "<u4")])


def pocketsphinx_lm_path() -> Path:
    """The general English trigram inside the ``pocketsphinx`` wheel (``en-us/en-us.lm.bin``)."""
    try:
        import pocketsphinx
    except ImportError as e:
        raise ImportError("the pocketsphinx language model ships in the pocketsphinx wheel, which is not installed: "
                          "pip install pocketsphinx (or `pip install -e '.[peer]'`)") from e
    return Path(pocketsphinx.get_model_path()) / "en-us" / "en-us.lm.bin"


def required_bits(max_value: int) -> int:
    """Bits to store 0..``max_value`` (``bitarr_required_bits``: 0 for 0)."""
    return int(max_value).bit_length()


def read_bits(mem: np.ndarray, offsets: np.ndarray, bits: int) -> np.ndarray:
    """The ``bits``-bit fields at the bit ``offsets`` of ``mem`` (``bitarr_read_int25``: a little-endian word from
    the byte ``offset >> 3``, shifted right by ``offset & 7``), as int64."""
    words = np.ndarray((len(mem) - 7,), dtype="<u8", buffer=mem, strides=(1,))  # an 8-byte word at every byte
    offsets = offsets.astype(np.uint64)
    values = (words[offsets >> np.uint64(3)] >> (offsets & np.uint64(7))) & np.uint64((1 << bits) - 1)
    return values.astype(np.int64)


def stored_size(entries: int, total_bits: int) -> int:
    """Bytes of a bit-packed order (``base_size``: one extra entry for the last ``next``, 8 bytes of slack)."""
    return ((1 + entries) * total_bits + 7) // 8 + 8


def read_sphinx_lm(path: str | Path) -> list[Ngrams]:
    """The n-grams of a CMU Sphinx trie language model (see the module docstring): per order, each n-gram in the
    trie with its log10 probability and log10 backoff (``None`` at the highest order). The counts come from the
    trie, not the header (logged at INFO, with the header's where they differ)."""
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(HEADER):
        raise ValueError(f"{path}: not a CMU Sphinx trie language model (expected a file that starts with "
                         f"{HEADER.decode()!r}, found {data[:len(HEADER)]!r})")
    pos = len(HEADER)

    def take(n_bytes: int, what: str) -> memoryview:
        nonlocal pos
        if pos + n_bytes > len(data):
            raise ValueError(f"{path}: truncated trie language model: {what} needs {n_bytes} bytes at byte {pos}, "
                             f"the file has {len(data)}")
        pos += n_bytes
        return memoryview(data)[pos - n_bytes:pos]

    order = take(1, "the order")[0]
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"{path}: n-gram order {order} out of range (expected 1..{MAX_ORDER})")
    counts = [int(c) for c in np.frombuffer(take(4 * order, "the n-gram counts"), "<u4")]
    vocab = counts[0]
    if order > 1:
        take(4, "the quantizer type")
        n_values = (order - 2) * 2 * (1 << QUANT_BITS) + (1 << QUANT_BITS)
        tables = np.frombuffer(take(4 * n_values, "the quantization tables"), "<f4").astype(np.float64) * LOG10_OF_BASE
        tables = np.array(tables.tolist(), dtype=object)  # shared float objects for the entries in each bin

        def table(k: int) -> np.ndarray:  # order n's probabilities: k = 2 (n - 2); its backoffs: k = 2 (n - 2) + 1
            return tables[k << QUANT_BITS:(k + 1) << QUANT_BITS]
    unigrams = np.frombuffer(take(UNIGRAM.itemsize * (vocab + 1), "the unigrams"), UNIGRAM)

    word_bits = required_bits(vocab)  # lm_trie_alloc_ngram: sized by the header counts
    layers = []  # per order above 1: (memory, total bits, next bits or None)
    for n in range(1, order):
        next_bits = required_bits(counts[n + 1]) if n < order - 1 else None
        total_bits = word_bits + (2 * QUANT_BITS + next_bits if next_bits is not None else QUANT_BITS)
        size = stored_size(counts[n], total_bits)
        if (counts[n] + 1) * total_bits >= 1 << 32:
            raise ValueError(f"{path}: {counts[n]} {n + 1}-grams of {total_bits} bits are more than pocketsphinx's "
                             "32-bit bit offsets address")
        layers.append((np.frombuffer(take(size, f"the {n + 1}-grams"), np.uint8), total_bits, next_bits))
    n_chars = int(np.frombuffer(take(4, "the word list's size"), "<u4")[0])
    chars = bytes(take(n_chars, "the word list"))
    if not chars.endswith(b"\0") or chars.count(b"\0") != vocab:
        raise ValueError(f"{path}: the word list holds {chars.count(bytes(1))} NUL-terminated words, expected {vocab}")
    words = chars[:-1].decode("utf-8", errors="surrogateescape").split("\0")
    if pos != len(data):
        log.warning("%s: %d bytes after the word list are ignored", path, len(data) - pos)

    # The trie walk (lm_trie_fill_raw_ngram): entries [next_0, next_count) of each order, each under its parent.
    word_obj = np.array(words, dtype=object)
    ids = [np.arange(vocab)]  # per order: the word id of each entry (the n-gram's first word)
    parents = [None]  # per order: the entry of the order below that each entry hangs from
    nexts = unigrams["next"].astype(np.int64)
    model: list[Ngrams] = [{}]
    found = [vocab]
    for n, (mem, total_bits, next_bits) in enumerate(layers, start=1):  # order n + 1
        begin, end = int(nexts[0]), int(nexts[-1])
        if begin != 0 or end > counts[n] or np.any(np.diff(nexts) < 0):
            raise ValueError(f"{path}: corrupt trie: the {n}-grams' child ranges run from {begin} to {end} "
                             f"(expected from 0, ascending, to at most the header's {counts[n]} {n + 1}-grams)")
        found.append(end)
        offsets = np.arange(end + (next_bits is not None), dtype=np.int64) * total_bits
        word = read_bits(mem, offsets[:end], word_bits)
        if end and word.max() >= vocab:
            raise ValueError(f"{path}: corrupt trie: a {n + 1}-gram has word id {word.max()} (vocabulary {vocab})")
        parents.append(np.repeat(np.arange(len(nexts) - 1), np.diff(nexts)))
        ids.append(word)
        if next_bits is not None:  # backoff bin, then probability bin, then next
            bo = table(2 * n - 1)[read_bits(mem, offsets[:end] + word_bits, QUANT_BITS)]
            prob = table(2 * n - 2)[read_bits(mem, offsets[:end] + word_bits + QUANT_BITS, QUANT_BITS)]
            nexts = read_bits(mem, offsets + word_bits + 2 * QUANT_BITS, next_bits)
            values = list(zip(prob.tolist(), bo.tolist()))
        else:
            shared = np.empty(1 << QUANT_BITS, dtype=object)  # one (prob, None) per bin
            shared[:] = [(p, None) for p in table(2 * n - 2).tolist()]
            values = shared[read_bits(mem, offsets + word_bits, QUANT_BITS)].tolist()
        columns = [word_obj[word].tolist()]  # the n-gram in reading order: this entry's word, then its parents'
        entry = parents[n]
        for k in range(n - 1, -1, -1):
            columns.append(word_obj[ids[k][entry]].tolist())
            if k:
                entry = parents[k][entry]
        model.append(dict(zip(zip(*columns), values)))
        del columns, values
    uni_bo = (unigrams["bo"][:vocab].astype(np.float64) * LOG10_OF_BASE).tolist() if order > 1 else [None] * vocab
    model[0] = dict(zip(((w,) for w in words), zip(
        (unigrams["prob"][:vocab].astype(np.float64) * LOG10_OF_BASE).tolist(), uni_bo)))
    for n, (grams, stored) in enumerate(zip(model, found)):
        if len(grams) != stored:
            log.warning("%s: %d of its %d %d-grams repeat an n-gram", path, stored - len(grams), stored, n + 1)
    log.info("%s: %s n-grams (the header counts %s)", path, "/".join(map(str, found)),
             "the same" if found == counts else "/".join(map(str, counts)))
    return model
