"""Per-base labels from a GFF3 or GTF annotation over a FASTA genome.

GFF3 and GTF share nine tab-separated columns: ``seqid source type start end score strand phase
attributes``, with 1-based coordinates and both ends included. They differ in the attributes column:
GFF3 writes ``ID=gene1;Name=abc``, GTF writes ``gene_id "gene1"; transcript_id "t1";``. Only the
seqid, type, start and end are needed for the labels, so the reader is a small line parser that names
the file and line of anything it cannot read: a wrong column count, a non-numeric or inverted
coordinate, an unknown strand, or GTF attributes in a file named ``.gff3`` (and GFF3 ones in a
``.gtf``). ``#`` lines are comments or directives; a ``##FASTA`` line ends the annotation.

A base is labelled 1 when a feature of the chosen type (``CDS``, ``exon`` or ``gene``) on either strand
covers it. Features are matched to FASTA records by sequence id: the first word of the header line.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core_attn.validation import check_choice
from genomics.io import DataError, Record, Skipped, handle, open_text

log = logging.getLogger(__name__)

FEATURES = ("CDS", "exon", "gene")
ANNOTATION_FORMATS = ("gff3", "gtf")
_SUFFIXES = {".gff": "gff3", ".gff3": "gff3", ".gtf": "gtf"}
_COLUMNS = "seqid, source, type, start, end, score, strand, phase, attributes"
_GTF_ATTRIBUTE = re.compile(r'^\s*[A-Za-z_][\w.]*\s+"[^"]*"\s*(;|$)')  # gene_id "g1";
_GFF3_ATTRIBUTE = re.compile(r"^\s*[^=;\s\"]+=[^;]*(;|$)")  # ID=g1;
_NAMES = {"gff3": "GFF3", "gtf": "GTF"}
_SYNTAX = {"gff3": "'key=value'", "gtf": "'key \"value\";'"}
_SHOWN = 5  # ids shown in an error message


@dataclass
class Annotation:
    """The intervals of one feature type per sequence id, read from a GFF3 / GTF file.

    Attributes:
        path: the file.
        fmt: ``gff3`` or ``gtf``.
        feature: the feature type kept.
        intervals: ``{seqid: [(start, end, line), ...]}``, 0-based with ``end`` excluded.
        seqids: every seqid of the file (any feature type) with the first line that names it.
    """

    path: Path
    fmt: str
    feature: str
    intervals: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    seqids: dict[str, int] = field(default_factory=dict)

    def count(self) -> int:
        """How many features of the kept type the file holds."""
        return sum(len(v) for v in self.intervals.values())


def annotation_format(path: str | Path) -> str | None:
    """``gff3`` or ``gtf`` from the name (``.gff``, ``.gff3``, ``.gtf``, each optionally ``.gz``), else None."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return _SUFFIXES.get(suffixes[-1]) if suffixes else None


def _attribute_syntax(text: str) -> str | None:
    """``gtf`` for ``key "value";``, ``gff3`` for ``key=value``, None for an empty column or '.'."""
    text = text.strip()
    if not text or text == ".":
        return None
    if _GTF_ATTRIBUTE.match(text):
        return "gtf"
    if _GFF3_ATTRIBUTE.match(text):
        return "gff3"
    return None


def _coordinate(value: str, name: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: {name}={value!r} is not a number (column "
                        f"{4 if name == 'start' else 5}, 1-based coordinates)") from None


def _fields(line: str, where: str) -> tuple[str, str, int, int, str]:
    """(seqid, type, start, end, attributes) of a feature line; raises a :class:`DataError` at ``where``."""
    cols = line.rstrip("\r\n").split("\t")
    if len(cols) != 9:
        hint = " (separated by spaces instead of tabs?)" if len(cols) == 1 and len(line.split()) >= 9 else ""
        raise DataError(f"{where}: expected 9 tab-separated columns ({_COLUMNS}), got {len(cols)}{hint}: "
                        f"{line.strip()[:120]!r}")
    seqid, _, ftype, start_s, end_s, _, strand, _, attributes = cols
    start, end = _coordinate(start_s, "start", where), _coordinate(end_s, "end", where)
    if start < 1:
        raise DataError(f"{where}: start={start} but coordinates are 1-based (start >= 1)")
    if end < start:
        raise DataError(f"{where}: end={end} is before start={start} (1-based, both ends included: end >= start)")
    if strand not in ("+", "-", ".", "?"):
        raise DataError(f"{where}: strand={strand!r} (column 7) is not one of '+', '-', '.', '?'")
    return seqid, ftype, start, end, attributes


def read_annotation(path: str | Path, *, feature: str = "CDS") -> Annotation:
    """Read the ``feature`` intervals of a GFF3 or GTF file (plain or gzipped).

    Args:
        path: the annotation; the format comes from the name (``.gff``, ``.gff3``, ``.gtf``, with optional
            ``.gz``), else from the first attributes column that shows GFF3 or GTF syntax.
        feature: the feature type (column 3) that becomes label 1: ``CDS``, ``exon`` or ``gene``.

    Raises:
        FileNotFoundError: no such file.
        DataError: naming the file and line: not nine tab-separated columns, a non-numeric coordinate,
            start < 1, end < start, a strand other than ``+ - . ?``, or attributes in the other format's
            syntax than the name says.
    """
    check_choice("feature", feature, FEATURES)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    named = annotation_format(path)
    ann = Annotation(path, named or "gff3", feature)
    expected, why = named, f"a file named {path.name!r}"
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if line.startswith("##FASTA"):
                break
            if line.startswith("#") or not line.strip():
                continue
            where = f"{path}, line {line_no}"
            seqid, ftype, start, end, attributes = _fields(line, where)
            syntax = _attribute_syntax(attributes)
            if syntax is not None and expected is None:  # no telling name: the first attributes decide
                expected, why = syntax, f"a file whose line {line_no} has {_NAMES[syntax]} attributes"
                ann.fmt = syntax
            if syntax is not None and syntax != expected:
                advice = (f", which says {_NAMES[expected]} (attributes {_SYNTAX[expected]}); if the file is "
                          f"{_NAMES[syntax]}, name it {'.gtf' if syntax == 'gtf' else '.gff3'}" if named else
                          "; one file holds one format")
                raise DataError(f"{where}: a {_NAMES[syntax]} line (attributes {_SYNTAX[syntax]}: "
                                f"{attributes.strip()[:80]!r}) in {why}{advice}")
            ann.seqids.setdefault(seqid, line_no)
            if ftype == feature:
                ann.intervals.setdefault(seqid, []).append((start - 1, end, line_no))
    return ann


def _listing(ids: list[str], limit: int = _SHOWN) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def label_records(records: list[Record], annotation: str | Path, *, feature: str = "CDS", source: str | Path = "",
                  on_error: str = "raise", skipped: Skipped | None = None) -> Annotation:
    """Set each record's per-base ``labels`` (uint8 0/1): 1 inside a ``feature`` of ``annotation``.

    Args:
        records: the FASTA records (their ``id``: the first word of the header).
        annotation: the GFF3 / GTF file (:func:`read_annotation`).
        feature: ``CDS``, ``exon`` or ``gene``.
        source: the FASTA file, for messages.
        on_error: ``raise`` when a seqid of the annotation matches no record, or ``skip`` its features (counted).
        skipped: the tally for ``on_error="skip"``.

    Returns:
        The annotation read.

    Raises:
        DataError: seqids with no FASTA record (a few shown, their count, the FASTA ids), a feature past the
            end of its record (file and line), or no feature of the type on any record.
    """
    ann = read_annotation(annotation, feature=feature)
    by_id = {r.id: r for r in records}
    unknown = [s for s in ann.seqids if s not in by_id]
    if unknown:
        lines = [f"{s!r} (line {ann.seqids[s]})" for s in unknown[:_SHOWN]]
        more = f", ... ({len(unknown)} in all)" if len(unknown) > _SHOWN else ""
        error = DataError(f"{ann.path}: {len(unknown)} sequence id(s) match no record of {source}: "
                          f"{', '.join(lines)}{more}; the FASTA ids (first word of each header) are "
                          f"{_listing(list(by_id))}")
        handle(error, "unknown_seqid", on_error, skipped)  # skip: their features are left out
    if not any(s in by_id for s in ann.intervals):
        types = "any record" if not ann.count() else f"the records of {source}"
        raise DataError(f"{ann.path}: no {feature!r} features (column 3) on {types}; data.feature is one of "
                        f"{list(FEATURES)}")
    for rec in records:
        labels = np.zeros(len(rec), dtype=np.uint8)
        for start, end, line_no in ann.intervals.get(rec.id, ()):
            if end > len(rec):
                raise DataError(f"{ann.path}, line {line_no}: end={end} is past the end of {rec.id!r} "
                                f"(length {len(rec)}) in {source}")
            labels[start:end] = 1
        rec.labels = labels
    empty = [r.id for r in records if r.id not in ann.intervals]
    used = sum(len(ann.intervals.get(r.id, ())) for r in records)
    log.info("%s (%s): %d %s features on %d of %d records; %d records without any (all bases 0)%s", ann.path.name,
             ann.fmt, used, feature, len(records) - len(empty), len(records), len(empty),
             f": {_listing(empty)}" if empty else "")
    return ann
