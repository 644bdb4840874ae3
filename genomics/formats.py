"""Genome browser formats that ``genomics.predict`` writes: bedGraph tracks, BED and GFF3 features.

Coordinates: per-base arrays are indexed from 0; bedGraph and BED write 0-based half-open intervals
(``start`` included, ``end`` excluded), GFF3 1-based inclusive ones (``start + 1 .. end``). Writers take
an open text handle (``core_attn.training.atomic.open_atomic``) and one record at a time, so a genome of
millions of bases is written in slices and never held as one string.

- bedGraph (UCSC): ``track type=bedGraph ...`` then ``chrom start end value``; a value per ``bin`` bases
  (their mean), rounded to ``digits`` decimals, neighbours with equal rounded values merged into one line.
- BED6: ``chrom start end name score strand`` with the score scaled to 0..1000 (BED's range).
- GFF3: ``##gff-version 3``, a ``##sequence-region`` line per record, nine tab-separated columns with
  seqid and attribute values percent-encoded as the specification asks.
"""

from __future__ import annotations

import re
from typing import TextIO

import numpy as np

from core_attn.validation import check_float, check_int

GFF3_HEADER = "##gff-version 3\n"
SOURCE = "longattn"
# GFF3: a seqid may hold [a-zA-Z0-9.:^*$@!+_?-|] unescaped; attribute values must escape ; = & , and controls
_SEQID_UNSAFE = re.compile(r"[^a-zA-Z0-9.:^*$@!+_?|\-]")
_ATTR_UNSAFE = re.compile(r"[;=&,%\t\n\r\x00-\x1f\x7f]")


def _percent(match: re.Match) -> str:
    return "".join(f"%{b:02X}" for b in match.group(0).encode("utf-8"))


def gff3_seqid(text: str) -> str:
    """``text`` as a GFF3 seqid: characters outside the allowed set percent-encoded (``%XX``)."""
    return _SEQID_UNSAFE.sub(_percent, text)


def gff3_value(text: str) -> str:
    """``text`` as a GFF3 attribute value: ``; = & ,``, ``%`` and control characters percent-encoded."""
    return _ATTR_UNSAFE.sub(_percent, text)


def runs(values: np.ndarray, *, bin: int = 1, digits: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bedGraph intervals of ``values``: the mean of every ``bin`` positions (the last bin may be shorter),
    rounded to ``digits`` decimals, neighbouring bins with equal rounded values merged.

    Returns:
        (starts, ends, rounded values), intervals relative to ``values[0]`` that cover it exactly once.
    """
    check_int("bin", bin, min_value=1)
    check_int("digits", digits, min_value=0, max_value=12)
    n = len(values)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    bin_starts = np.arange(0, n, bin)
    bin_ends = np.append(bin_starts[1:], n)
    means = np.add.reduceat(np.asarray(values, dtype=np.float64), bin_starts) / (bin_ends - bin_starts)
    rounded = np.round(means, digits) + 0.0  # + 0.0: no "-0.000"
    first = np.concatenate([[0], np.flatnonzero(np.diff(rounded) != 0) + 1])  # first bin of each run
    last = np.append(first[1:], len(rounded)) - 1
    return bin_starts[first], bin_ends[last], rounded[first]


def write_bedgraph_header(f: TextIO, name: str, description: str) -> None:
    """The ``track type=bedGraph`` line (double quotes dropped from the texts)."""
    name, description = name.replace('"', ""), description.replace('"', "")
    f.write(f'track type=bedGraph name="{name}" description="{description}"\n')


class BedGraphWriter:
    """The :func:`runs` of one record's values arriving in pieces: ``write`` each piece in order, then
    ``close``; the lines equal :func:`write_bedgraph`'s over the whole array (a run crossing a piece boundary
    is merged, a bin split across pieces is averaged whole). Holds one run and less than one bin."""

    def __init__(self, f: TextIO, chrom: str, *, offset: int = 0, bin: int = 1, digits: int = 3):
        self.f, self.chrom, self.digits = f, chrom, check_int("digits", digits, min_value=0, max_value=12)
        self.bin = check_int("bin", bin, min_value=1)
        self.pos = offset  # base of the first value not yet turned into runs
        self.carry = np.zeros(0)  # values of an incomplete bin
        self.pending: tuple[int, int, float] | None = None  # the last run: the next piece may extend it
        self.lines = 0

    def write(self, values: np.ndarray) -> None:
        """Add the next values (they follow the previous ones)."""
        values = np.concatenate([self.carry, np.asarray(values, dtype=np.float64)])
        whole = len(values) // self.bin * self.bin
        self._runs(values[:whole])
        self.carry = values[whole:]

    def close(self) -> int:
        """Flush the last (possibly shorter) bin and run; returns the lines written."""
        self._runs(self.carry)
        self.carry = np.zeros(0)
        if self.pending is not None:
            self.lines += _write_lines(self.f, self.chrom, [self.pending[0]], [self.pending[1]], [self.pending[2]],
                                       self.digits)
            self.pending = None
        return self.lines

    def _runs(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        starts, ends, vals = runs(values, bin=self.bin, digits=self.digits)
        starts, ends = starts + self.pos, ends + self.pos
        self.pos += len(values)
        if self.pending is not None and vals[0] == self.pending[2]:
            starts[0] = self.pending[0]
        elif self.pending is not None:
            self.lines += _write_lines(self.f, self.chrom, [self.pending[0]], [self.pending[1]], [self.pending[2]],
                                       self.digits)
        self.pending = (int(starts[-1]), int(ends[-1]), float(vals[-1]))
        self.lines += _write_lines(self.f, self.chrom, starts[:-1].tolist(), ends[:-1].tolist(), vals[:-1].tolist(),
                                   self.digits)


def write_bedgraph(f: TextIO, chrom: str, values: np.ndarray, *, offset: int = 0, bin: int = 1, digits: int = 3,
                   chunk: int = 1 << 16) -> int:
    """Write the :func:`runs` of ``values`` (``values[0]`` is base ``offset`` of ``chrom``); returns the lines.

    ``values`` is read ``chunk`` positions at a time (:class:`BedGraphWriter`), so the temporary arrays stay
    small for a chromosome of any length.
    """
    check_int("chunk", chunk, min_value=1)
    writer = BedGraphWriter(f, chrom, offset=offset, bin=bin, digits=digits)
    for s in range(0, len(values), chunk):
        writer.write(values[s:s + chunk])
    return writer.close()


def _write_lines(f: TextIO, chrom: str, starts: list, ends: list, vals: list, digits: int) -> int:
    f.write("".join(f"{chrom}\t{a}\t{b}\t{v:.{digits}f}\n" for a, b, v in zip(starts, ends, vals)))
    return len(starts)


def threshold_features(prob: np.ndarray, *, threshold: float = 0.5,
                       min_length: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of positions with ``prob >= threshold`` at least ``min_length`` long.

    Returns:
        (starts, ends, mean probability of each run), 0-based half-open.
    """
    check_float("threshold", threshold, min_value=0.0, max_value=1.0)
    check_int("min_length", min_length, min_value=1)
    above = np.concatenate([[False], np.asarray(prob) >= threshold, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))  # alternating run starts and ends
    starts, ends = edges[0::2], edges[1::2]
    keep = ends - starts >= min_length
    starts, ends = starts[keep], ends[keep]
    if len(starts) == 0:
        return starts, ends, np.zeros(0)
    csum = np.concatenate([[0.0], np.cumsum(prob, dtype=np.float64)])
    return starts, ends, (csum[ends] - csum[starts]) / (ends - starts)


def feature_ids(record_id: str, feature_type: str, count: int) -> list[str]:
    """``<record>.<type>.<k>`` for k = 1 .. count: unique in a file whose record ids are unique."""
    return [f"{record_id}.{feature_type}.{k}" for k in range(1, count + 1)]


def _strand_chars(strands: np.ndarray | None, count: int) -> list[str]:
    if strands is None:
        return ["."] * count
    return ["+" if x > 0 else "-" if x < 0 else "." for x in np.asarray(strands).tolist()]


def write_gff3(f: TextIO, seqid: str, length: int, starts: np.ndarray, ends: np.ndarray, scores: np.ndarray,
               ids: list[str], *, feature_type: str = "CDS", strands: np.ndarray | None = None) -> int:
    """One record's ``##sequence-region`` line and features; returns the features. Without ``strands``
    (1 / -1 per feature) strand and phase are ``.``; with them, features are open reading frames and their
    phase is ``0`` (each starts at its first codon)."""
    sid = gff3_seqid(seqid)
    phase = "." if strands is None else "0"
    f.write(f"##sequence-region {sid} 1 {length}\n")
    f.write("".join(f"{sid}\t{SOURCE}\t{feature_type}\t{s + 1}\t{e}\t{p:.3f}\t{st}\t{phase}\tID={gff3_value(i)}\n"
                    for s, e, p, i, st in zip(starts.tolist(), ends.tolist(), scores.tolist(), ids,
                                              _strand_chars(strands, len(ids)))))
    return len(ids)


def write_bed(f: TextIO, chrom: str, starts: np.ndarray, ends: np.ndarray, scores: np.ndarray,
              names: list[str], *, strands: np.ndarray | None = None) -> int:
    """BED6 lines (score: the probability times 1000, rounded; strand ``.`` without ``strands``, else
    ``+``/``-``); returns the lines."""
    f.write("".join(f"{chrom}\t{s}\t{e}\t{n}\t{int(round(p * 1000))}\t{st}\n"
                    for s, e, p, n, st in zip(starts.tolist(), ends.tolist(), scores.tolist(), names,
                                              _strand_chars(strands, len(names)))))
    return len(names)
