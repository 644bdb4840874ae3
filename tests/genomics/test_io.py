"""Readers: FASTA (plain, gzipped), GenBank with CDS labels, BED over a reference, labels; bad input."""

from __future__ import annotations

import numpy as np
import pytest

from genomics.io import (DataError, Skipped, bed_records, detect_format, read_label_table,
                         read_records)
from genomics.tokenizers import DNATokenizer, ProteinTokenizer
from tests.genomics.conftest import write_genbank

DNA = DNATokenizer()


def test_fasta_plain_and_gzipped_read_the_same(fasta):
    recs = [("r1 first", "ACGT" * 40), ("r2 second", "ggccNNrA")]
    plain = read_records(fasta(recs, "a.fa"), DNA)
    gz = read_records(fasta(recs, "a.fa.gz", gz=True), DNA)
    assert [r.id for r in plain] == [r.id for r in gz] == ["r1", "r2"]
    assert plain[1].description == "r2 second"
    assert DNA.decode(gz[1].tokens) == "GGCCNNNA"
    for a, b in zip(plain, gz):
        assert np.array_equal(a.tokens, b.tokens)


def test_gzip_detected_by_content_not_name(fasta, tmp_path):
    path = fasta([("r1", "ACGT")], "noext.fa", gz=True)  # gzipped despite the name
    assert DNA.decode(read_records(path, DNA)[0].tokens) == "ACGT"


def test_invalid_character_names_file_record_position(fasta):
    path = fasta([("ok", "ACGT"), ("bad_one", "ACGTACXGT")])
    with pytest.raises(DataError, match=r"x\.fa, record #1 'bad_one': invalid character 'X' at position 6"):
        read_records(path, DNA)


def test_empty_record_and_duplicate_ids(tmp_path, fasta):
    empty = tmp_path / "e.fa"
    empty.write_text(">r1\nACGT\n>r2 nothing here\n>r3\nAC\n")
    with pytest.raises(DataError, match=r"e\.fa, record #1 'r2': empty sequence"):
        read_records(empty, DNA)
    dup = fasta([("r1", "ACGT"), ("r2", "AC"), ("r1 again", "GG")], "d.fa")
    with pytest.raises(DataError, match=r"d\.fa, record #2 'r1': duplicate record id \(first seen as record #0\)"):
        read_records(dup, DNA)


def test_skip_and_count(tmp_path):
    path = tmp_path / "m.fa"
    path.write_text(">a\nACGT\n>b\n>c\nAC!T\n>a\nGG\n>d\nTT\n")
    skipped = Skipped()
    recs = read_records(path, DNA, on_error="skip", skipped=skipped)
    assert [r.id for r in recs] == ["a", "d"]
    assert skipped.counts == {"empty": 1, "invalid_character": 1, "duplicate_id": 1}
    assert skipped.total() == 3 and len(skipped.examples) == 3


def test_on_error_validated(fasta):
    with pytest.raises(ValueError, match=r"on_error='ignore' is not allowed; expected one of \['raise', 'skip'\]"):
        read_records(fasta([("a", "AC")]), DNA, on_error="ignore")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"sequence file .*nope\.fa does not exist"):
        read_records(tmp_path / "nope.fa", DNA)


def test_genbank_cds_labels(tmp_path):
    seq = "A" * 30 + "ATGAAATAA" + "C" * 20 + "TTATTTCAT" + "G" * 12
    path = write_genbank(tmp_path / "g.gbk", seq, [(30, 39, 1), (59, 68, -1)])
    (rec,) = read_records(path, DNA, cds_labels=True)
    assert rec.labels is not None and rec.labels.dtype == np.uint8
    expected = np.zeros(len(seq), dtype=np.uint8)
    expected[30:39] = 1
    expected[59:68] = 1
    assert np.array_equal(rec.labels, expected)
    assert detect_format(path) == "genbank"


def test_cds_labels_need_genbank(fasta):
    with pytest.raises(DataError, match=r"CDS labels need a GenBank file with CDS features; this is fasta"):
        read_records(fasta([("a", "ACGT")]), DNA, cds_labels=True)


def test_detect_format_by_content(tmp_path):
    p = tmp_path / "seqs.txt"
    p.write_text(">a\nACGT\n")
    assert detect_format(p) == "fasta"
    q = tmp_path / "other.txt"
    q.write_text("hello\n")
    with pytest.raises(DataError, match=r"cannot tell the format"):
        detect_format(q)


def test_bed_over_fasta_random_access(tmp_path, fasta):
    ref = fasta([("chr1", "AAAACCCCGGGGTTTT"), ("chr2", "ACGTACGTAC")], "ref.fa")
    bed = tmp_path / "x.bed"
    bed.write_text("track name=x\nchr1\t2\t6\tgeneA\t0\t+\nchr1\t4\t10\tgeneB\t0\t-\nchr2\t0\t3\n")
    recs = list(bed_records(bed, ref, DNA))
    assert [DNA.decode(r.tokens) for r in recs] == ["AACC", "CCCCGG"[::-1].translate(str.maketrans("ACGT", "TGCA")), "ACG"]
    assert [r.description for r in recs] == ["geneA", "geneB", ""]
    assert recs[1].id == "chr1:4-10(-)"


def test_bed_errors(tmp_path, fasta):
    ref = fasta([("chr1", "ACGTACGT")], "ref.fa")
    bed = tmp_path / "x.bed"
    bed.write_text("chr1\t0\t4\nchrX\t0\t4\nchr1\t2\t20\n")
    with pytest.raises(DataError, match=r"x\.bed, line 2 \(chrX:0-4\(\+\)\): sequence 'chrX' is not in .*ref\.fa"):
        list(bed_records(bed, ref, DNA))
    skipped = Skipped()
    assert len(list(bed_records(bed, ref, DNA, on_error="skip", skipped=skipped))) == 1
    assert skipped.counts == {"unknown_chrom": 1, "out_of_range": 1}
    bad = tmp_path / "bad.bed"
    bad.write_text("chr1\t5\t2\n")
    with pytest.raises(DataError, match=r"bad\.bed, line 1: need 0 <= start < end, got start=5 end=2"):
        list(bed_records(bad, ref, DNA))


def test_label_table_csv_and_tsv(tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("id,phylum\nr1,Firmicutes\nr2,Proteobacteria\n")
    assert read_label_table(csv_path, label_column="phylum") == {"r1": "Firmicutes", "r2": "Proteobacteria"}
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("name\tlabel\nr1\tA\n")
    assert read_label_table(tsv, id_column="name") == {"r1": "A"}
    with pytest.raises(DataError, match=r"no column 'phylum' \(label_column\); the header has \['name', 'label'\]"):
        read_label_table(tsv, id_column="name", label_column="phylum")
    dup = tmp_path / "dup.csv"
    dup.write_text("id,label\nr1,A\nr1,B\n")
    with pytest.raises(DataError, match=r"dup\.csv, line 3: duplicate id 'r1'"):
        read_label_table(dup)


def test_proteins(fasta):
    recs = read_records(fasta([("p1", "MKVL*"), ("p2", "mkx")], "p.faa"), ProteinTokenizer())
    assert [ProteinTokenizer().decode(r.tokens) for r in recs] == ["MKVL", "MKX"]


def _corrupt(tmp_path, name):
    """A broken sequence file: a gzip stream cut in half, bytes that are no FASTA, a 'LOCUS' line over
    garbage, an empty file."""
    import gzip

    path = tmp_path / name
    if name == "cut.fa.gz":
        data = gzip.compress((">r1\n" + "ACGT" * 5000 + "\n>r2\n" + "ACGT" * 5000 + "\n").encode())
        path.write_bytes(data[:len(data) // 2])
    elif name == "binary.fa":
        path.write_bytes(bytes(range(256)) * 4)
    elif name == "junk.gbk":
        path.write_bytes(b"LOCUS garbage\nthis is not genbank\n\x00\x01\x02")
    else:
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("name,match", [
    ("cut.fa.gz", r"cut\.fa\.gz: unreadable fasta file after 0 records \(corrupt or truncated\?\): EOFError"),
    ("binary.fa", r"binary\.fa: unreadable fasta file after 0 records .*ValueError"),
    ("junk.gbk", r"junk\.gbk: no genbank records \(an empty file, or not genbank"),
    ("empty.fa", r"empty\.fa: no fasta records \(an empty file, or not fasta"),
], ids=["cut_gz", "binary", "junk_genbank", "empty"])
def test_corrupt_or_empty_file_is_named(tmp_path, name, match):
    path = _corrupt(tmp_path, name)
    with pytest.raises(DataError, match=match):
        read_records(path, DNA)
    with pytest.raises(DataError, match=match):  # skipping bad records does not hide a bad file
        read_records(path, DNA, on_error="skip", skipped=Skipped())
