"""Tiny sequence files written into tmp dirs for the genomics tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest


def write_fasta(path: Path, records: list[tuple[str, str]], *, gz: bool = False, width: int = 60) -> Path:
    """Write ``[(header, sequence)]`` as FASTA (gzipped with ``gz``); the header is everything after '>'."""
    lines = []
    for header, seq in records:
        lines.append(f">{header}")
        lines.extend(seq[i:i + width] for i in range(0, len(seq), width))
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def write_genbank(path: Path, seq: str, cds: list[tuple[int, int, int]], record_id: str = "chr1") -> Path:
    """One GenBank record of ``seq`` with CDS features ``(start, end, strand)`` (0-based, end exclusive)."""
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqFeature import FeatureLocation, SeqFeature
    from Bio.SeqRecord import SeqRecord

    rec = SeqRecord(Seq(seq), id=record_id, name=record_id, description="test genome")
    rec.annotations["molecule_type"] = "DNA"
    rec.features = [SeqFeature(FeatureLocation(s, e, strand=st), type="CDS") for s, e, st in cds]
    rec.features.append(SeqFeature(FeatureLocation(0, len(seq), strand=1), type="source"))
    with open(path, "w") as f:
        SeqIO.write([rec], f, "genbank")
    return path


@pytest.fixture
def fasta(tmp_path):
    """``fasta(records, name="x.fa", gz=False)`` -> path of a FASTA in tmp_path."""

    def make(records, name: str = "x.fa", gz: bool = False) -> Path:
        return write_fasta(tmp_path / name, records, gz=gz)

    return make


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data folder per test module (named data sets are generated into it)."""
    return tmp_path_factory.mktemp("genomics_data")


@pytest.fixture(scope="module")
def genome(data_dir):
    """A 30 kb synthetic GenBank genome (the built-in one is 200 kb)."""
    from genomics.synthetic import write_genome

    return write_genome(data_dir / "small.gbk", length=30_000, seed=1)
