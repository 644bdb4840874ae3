"""Reading sequence files with Biopython: FASTA (plain or gzipped), GenBank, BED over a reference.

Records are streamed one at a time (``Bio.SeqIO.parse``) and kept as ``uint8`` token arrays; bad input
(a foreign character, an empty record, a repeated id, a missing label) raises a :class:`DataError`
naming the file and the record, or, with ``on_error="skip"``, is left out and counted in a
:class:`Skipped` tally that the data modules log.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from Bio import SeqIO

from core_attn.validation import check_choice
from genomics.tokenizers import DNATokenizer, InvalidCharacterError, Tokenizer

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
FORMATS = ("fasta", "genbank")
_SUFFIXES = {".fa": "fasta", ".fasta": "fasta", ".fna": "fasta", ".faa": "fasta", ".fas": "fasta", ".ffn": "fasta",
             ".gb": "genbank", ".gbk": "genbank", ".gbff": "genbank", ".genbank": "genbank"}


class DataError(ValueError):
    """Bad input data; the message names the file and the record (and position, where there is one)."""


@dataclass
class Skipped:
    """Counts of records left out with ``on_error="skip"``, by reason, with the first few examples."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(message)

    def total(self) -> int:
        return sum(self.counts.values())

    def report(self, what: str) -> None:
        """Log a warning with the counts and a few examples (nothing when nothing was left out)."""
        if self.counts:
            log.warning("%s: left out %d records or stretches: %s%s", what, self.total(), dict(self.counts),
                        ("; e.g. " + " | ".join(self.examples[:3])) if self.examples else "")


def handle(error: DataError, reason: str, on_error: str, skipped: Skipped | None) -> None:
    """Raise ``error`` (``on_error="raise"``) or count it in ``skipped``."""
    if on_error == "raise":
        raise error
    if skipped is not None:
        skipped.add(reason, str(error))


@dataclass
class Record:
    """One sequence: ``tokens`` (uint8 ids) and, from GenBank, per-base CDS ``labels`` (uint8 0/1)."""

    id: str
    description: str
    tokens: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tokens)


def is_gzip(path: Path) -> bool:
    """True when ``path`` starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def open_text(path: str | Path):
    """A text handle on ``path``, decompressing gzip transparently."""
    path = Path(path)
    return gzip.open(path, "rt", encoding="latin-1") if is_gzip(path) else open(path, encoding="latin-1")


def detect_format(path: str | Path) -> str:
    """``fasta`` or ``genbank``: from the suffix (``.fa``, ``.gbk``, ... with optional ``.gz``), else sniffed."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _SUFFIXES:
        return _SUFFIXES[suffixes[-1]]
    with open_text(path) as f:
        head = f.read(512).lstrip()
    if head.startswith(">"):
        return "fasta"
    if head.startswith("LOCUS"):
        return "genbank"
    raise DataError(f"{path}: cannot tell the format (not a FASTA '>' or GenBank 'LOCUS' file, and the suffix "
                    f"{path.suffix!r} is none of {sorted(_SUFFIXES)}); pass fmt='fasta' or fmt='genbank'")


def cds_mask(record, length: int, feature: str = "CDS") -> np.ndarray:
    """Per-base 1 where any ``feature`` (default CDS) of a Biopython ``SeqRecord`` covers the base (either strand)."""
    labels = np.zeros(length, dtype=np.uint8)
    for feat in record.features:
        if feat.type != feature:
            continue
        for part in feat.location.parts:
            labels[max(0, int(part.start)):min(length, int(part.end))] = 1
    return labels


def iter_records(path: str | Path, tokenizer: Tokenizer, *, fmt: str | None = None, cds_labels: bool = False,
                 feature: str = "CDS", on_error: str = "raise", skipped: Skipped | None = None) -> Iterator[Record]:
    """Stream the records of a FASTA / gzipped FASTA / GenBank file as token arrays.

    Args:
        path: the file.
        tokenizer: turns each sequence into ``uint8`` ids.
        fmt: ``fasta`` or ``genbank``; ``None`` detects it (:func:`detect_format`).
        cds_labels: attach per-base labels from the GenBank features of type ``feature`` (GenBank only; a
            FASTA's labels come from a GFF3 / GTF file, :func:`genomics.annotation.label_records`).
        feature: the feature type of ``cds_labels`` (``CDS``, ``exon``, ``gene``).
        on_error: ``raise`` a :class:`DataError` or ``skip`` and count bad records in ``skipped``.
        skipped: the tally of skipped records.

    Raises:
        DataError: a foreign character (file, record, position and character), an empty record, a repeated
            id, a FASTA file asked for CDS labels, or a file that is corrupt, truncated or holds no records.
    """
    check_choice("on_error", on_error, ON_ERROR)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sequence file {path} does not exist")
    fmt = detect_format(path) if fmt is None else check_choice("fmt", fmt, FORMATS)
    if cds_labels and fmt != "genbank":
        raise DataError(f"{path}: CDS labels need a GenBank file with CDS features; this is {fmt} (for a FASTA, "
                        "give the genes as a GFF3 or GTF file: data.annotation=<genes.gff3>)")
    seen: dict[str, int] = {}
    with open_text(path) as handle_:
        for index, rec in enumerate(_parse(path, handle_, fmt)):
            where = f"{path}, record #{index} {rec.id!r}"
            if rec.id in seen:
                handle(DataError(f"{where}: duplicate record id (first seen as record #{seen[rec.id]})"),
                       "duplicate_id", on_error, skipped)
                continue
            seen[rec.id] = index
            try:
                text = bytes(rec.seq)
            except Exception as e:  # GenBank entries without sequence (CONTIG lines only)
                handle(DataError(f"{where}: no sequence ({e})"), "empty", on_error, skipped)
                continue
            if not text:
                handle(DataError(f"{where}: empty sequence"), "empty", on_error, skipped)
                continue
            try:
                tokens = tokenizer.encode(text)
            except InvalidCharacterError as e:
                handle(DataError(f"{where}: {e}"), "invalid_character", on_error, skipped)
                continue
            labels = cds_mask(rec, len(text), feature) if cds_labels else None
            if labels is not None and isinstance(tokenizer, DNATokenizer) and tokenizer.k > 1:
                raise DataError(f"{path}: per-base CDS labels need per-base tokens (k=1); got k={tokenizer.k}")
            yield Record(rec.id, rec.description, tokens, labels)


def _parse(path: Path, handle_, fmt: str) -> Iterator:
    """``SeqIO.parse`` whose failures (a truncated gzip stream, bytes that are no ``fmt``) and empty result
    raise a :class:`DataError` naming ``path``, instead of a bare parser error or no records at all."""
    records, count = None, 0
    while True:
        try:  # Biopython reads a FASTA's first line when the iterator is made: that can fail too
            records = SeqIO.parse(handle_, fmt) if records is None else records
            rec = next(records)
        except StopIteration:
            break
        except (OSError, EOFError, ValueError, zlib.error) as e:  # gzip: EOFError/BadGzipFile; Biopython: ValueError
            raise DataError(f"{path}: unreadable {fmt} file after {count} records (corrupt or truncated?): "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        count += 1
        yield rec
    if count == 0:
        raise DataError(f"{path}: no {fmt} records (an empty file, or not {fmt}: a FASTA record starts with '>', "
                        "a GenBank one with 'LOCUS' and ends with '//')")


def read_records(path: str | Path, tokenizer: Tokenizer, **kw) -> list[Record]:
    """All records of ``path`` (see :func:`iter_records` for the arguments)."""
    return list(iter_records(path, tokenizer, **kw))


# -- labels ----------------------------------------------------------------------------------------
def header_label(record: Record, pattern: re.Pattern, source: str) -> str:
    """The first group (or whole match) of ``pattern`` in the record's header line."""
    m = pattern.search(record.description)
    if m is None:
        raise DataError(f"{source}, record {record.id!r}: header {record.description[:120]!r} does not match "
                        f"label_regex {pattern.pattern!r}")
    return (m.group(1) if m.groups() else m.group(0)).strip()


def read_label_table(path: str | Path, *, id_column: str = "id", label_column: str = "label") -> dict[str, str]:
    """``{record id: label}`` from a CSV (``,``) or TSV (``.tsv``/``.tab``: tab) file with a header row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab", ".txt") else ","
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        cols = reader.fieldnames or []
        for col, name in ((id_column, "id_column"), (label_column, "label_column")):
            if col not in cols:
                raise DataError(f"{path}: no column {col!r} ({name}); the header has {cols}")
        table: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            rid = row[id_column]
            if rid in table:
                raise DataError(f"{path}, line {line}: duplicate id {rid!r}")
            table[rid] = row[label_column]
    return table


# -- BED intervals over a reference ------------------------------------------------------------------
@dataclass
class Interval:
    """A BED interval (0-based, end exclusive) with its optional name and strand."""

    chrom: str
    start: int
    end: int
    name: str | None
    strand: str
    line: int

    @property
    def id(self) -> str:
        return f"{self.chrom}:{self.start}-{self.end}({self.strand})"


def read_bed(path: str | Path) -> list[Interval]:
    """The intervals of a BED file (``track``/``browser``/``#`` lines skipped); malformed lines raise."""
    path = Path(path)
    out = []
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            cols = line.rstrip("\n").split("\t")
            try:
                chrom, start, end = cols[0], int(cols[1]), int(cols[2])
            except (IndexError, ValueError):
                raise DataError(f"{path}, line {line_no}: expected 'chrom<TAB>start<TAB>end', got {line.strip()!r}")
            if not 0 <= start < end:
                raise DataError(f"{path}, line {line_no}: need 0 <= start < end, got start={start} end={end}")
            strand = cols[5] if len(cols) > 5 and cols[5] in "+-" and cols[5] else "+"
            out.append(Interval(chrom, start, end, cols[3] if len(cols) > 3 else None, strand, line_no))
    return out


def bed_records(bed: str | Path, reference: str | Path, tokenizer: Tokenizer, *, on_error: str = "raise",
                skipped: Skipped | None = None) -> Iterator[Record]:
    """The sequences of BED intervals, read by random access into ``reference`` (``Bio.SeqIO.index``).

    The reference must be an uncompressed FASTA (or BGZF, which ``SeqIO.index`` reads); intervals on
    the ``-`` strand are reverse-complemented (DNA). The BED name column becomes the record description.
    """
    check_choice("on_error", on_error, ON_ERROR)
    reference = Path(reference)
    try:
        index = SeqIO.index(str(reference), "fasta")
    except ValueError as e:
        raise DataError(f"{reference}: cannot index for random access ({e}); decompress it (gunzip) or "
                        "compress it with bgzip") from e
    try:
        for iv in read_bed(bed):
            where = f"{bed}, line {iv.line} ({iv.id})"
            if iv.chrom not in index:
                handle(DataError(f"{where}: sequence {iv.chrom!r} is not in {reference}"), "unknown_chrom",
                       on_error, skipped)
                continue
            seq = index[iv.chrom].seq
            if iv.end > len(seq):
                handle(DataError(f"{where}: end={iv.end} is past the end of {iv.chrom!r} (length {len(seq)}) in "
                                 f"{reference}"), "out_of_range", on_error, skipped)
                continue
            try:
                tokens = tokenizer.encode(bytes(seq[iv.start:iv.end]))
            except InvalidCharacterError as e:
                handle(DataError(f"{where} in {reference}: {e}"), "invalid_character", on_error, skipped)
                continue
            if iv.strand == "-":
                if not isinstance(tokenizer, DNATokenizer):
                    raise DataError(f"{where}: '-' strand intervals need a DNA tokenizer")
                tokens = tokenizer.reverse_complement(tokens)
            yield Record(iv.id, iv.name or "", tokens)
    finally:
        index.close()
