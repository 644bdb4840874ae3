"""Per-base labels from FASTA + GFF3 / GTF: both strands, 1-based inclusive ends, bad input named by file
and line; the open-reading-frame baseline; one training run through the command-line path."""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pytest

from genomics.annotation import label_records, read_annotation
from genomics.baselines import (OrfDecoder, binary_mcc, open_reading_frames, orf_mask, select_orf_decoder,
                                select_orf_length)
from genomics.data import GenomeDataModule
from genomics.io import DataError, Skipped, read_records
from genomics.tokenizers import DNATokenizer
from tests.genomics.conftest import write_fasta

DNA = DNATokenizer()
GFF3 = """##gff-version 3
##sequence-region chr1 1 40
# a comment
chr1\tsrc\tgene\t3\t12\t.\t+\t.\tID=g1;Name=abc
chr1\tsrc\tCDS\t3\t12\t.\t+\t0\tID=cds1;Parent=g1
chr1\tsrc\tCDS\t20\t25\t.\t-\t0\tID=cds2
chr2\tsrc\texon\t1\t1\t.\t+\t.\tID=e1
chr2\tsrc\tCDS\t8\t12\t.\t-\t0\tID=cds3
##FASTA
>chr1
ACGT
"""
GTF = """chr1\tsrc\tCDS\t3\t12\t.\t+\t0\tgene_id "g1"; transcript_id "t1";
chr1\tsrc\tCDS\t20\t25\t.\t-\t0\tgene_id "g2"; transcript_id "t2";
chr2\tsrc\tCDS\t8\t12\t.\t-\t0\tgene_id "g3"; transcript_id "t3";
"""


def _expected(length, *intervals):
    """0/1 labels with 1 on the 1-based inclusive ``(start, end)`` intervals."""
    out = np.zeros(length, dtype=np.uint8)
    for start, end in intervals:
        out[start - 1:end] = 1
    return out


@pytest.fixture
def genome(tmp_path):
    return write_fasta(tmp_path / "genome.fa", [("chr1 first chromosome", "A" * 40), ("chr2", "C" * 12),
                                                ("chr3 no genes", "G" * 5)])


@pytest.mark.parametrize("name, text", [("genes.gff3", GFF3), ("genes.gtf", GTF), ("genes.gff3.gz", GFF3),
                                        ("genes.gtf.gz", GTF)])
def test_labels_both_strands_one_based_inclusive(tmp_path, genome, name, text, caplog):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    records = read_records(genome, DNA)
    with caplog.at_level(logging.INFO, logger="genomics.annotation"):
        ann = label_records(records, path, source=genome)
    assert ann.fmt == ("gtf" if ".gtf" in name else "gff3") and ann.count() == 3
    assert np.array_equal(records[0].labels, _expected(40, (3, 12), (20, 25)))  # + and - strand
    assert np.array_equal(records[1].labels, _expected(12, (8, 12)))  # up to the record's last base
    assert not records[2].labels.any()
    assert "3 CDS features on 2 of 3 records; 1 records without any (all bases 0): 'chr3'" in caplog.text


def test_feature_type_and_fasta_section_ignored(tmp_path, genome):
    (tmp_path / "g.gff3").write_text(GFF3)
    records = read_records(genome, DNA)
    with pytest.raises(DataError, match=r"g\.gff3: no 'exon' features \(column 3\) on the records of .*genome\.fa"):
        label_records(records[:1], tmp_path / "g.gff3", feature="exon", source=genome, on_error="skip")
    label_records(records, tmp_path / "g.gff3", feature="exon", source=genome)
    assert np.array_equal(records[1].labels, _expected(12, (1, 1)))
    label_records(records, tmp_path / "g.gff3", feature="gene", source=genome)
    assert np.array_equal(records[0].labels, _expected(40, (3, 12)))
    with pytest.raises(ValueError, match=r"feature='mRNA' is not allowed; expected one of \['CDS', 'exon', 'gene'\]"):
        read_annotation(tmp_path / "g.gff3", feature="mRNA")


@pytest.mark.parametrize("name, line, message", [
    ("a.gff3", "chr1\tsrc\tCDS\t12\t3\t.\t+\t0\tID=x", r"a\.gff3, line 2: end=3 is before start=12"),
    ("a.gff3", "chr1\tsrc\tCDS\tten\t30\t.\t+\t0\tID=x", r"a\.gff3, line 2: start='ten' is not a number \(column 4"),
    ("a.gff3", "chr1\tsrc\tCDS\t1\t3e\t.\t+\t0\tID=x", r"a\.gff3, line 2: end='3e' is not a number \(column 5"),
    ("a.gff3", "chr1\tsrc\tCDS\t0\t3\t.\t+\t0\tID=x", r"a\.gff3, line 2: start=0 but coordinates are 1-based"),
    ("a.gff3", "chr1\tsrc\tCDS\t1\t30\t.\t+\t0", r"a\.gff3, line 2: expected 9 tab-separated columns .*got 8"),
    ("a.gff3", "chr1 src CDS 1 30 . + 0 ID=x", r"a\.gff3, line 2: expected 9 .*got 1 \(separated by spaces"),
    ("a.gff3", "chr1\tsrc\tCDS\t1\t3\t.\t*\t0\tID=x", r"a\.gff3, line 2: strand='\*' \(column 7\)"),
    ("a.gff3", 'chr1\tsrc\tCDS\t1\t3\t.\t+\t0\tgene_id "g1"; transcript_id "t1";',
     r"a\.gff3, line 2: a GTF line \(attributes 'key \"value\";'.* in a file named 'a\.gff3', which says GFF3 "
     r".*name it \.gtf"),
    ("a.gff", 'chr1\tsrc\tCDS\t1\t3\t.\t+\t0\tgene_id "g1";', r"a\.gff, line 2: a GTF line .*name it \.gtf"),
    ("a.gtf", "chr1\tsrc\tCDS\t1\t3\t.\t+\t0\tID=x;Parent=g", r"a\.gtf, line 2: a GFF3 line \(attributes 'key=value'"
     r".*which says GTF .*name it \.gff3"),
])
def test_bad_lines_name_file_and_line(tmp_path, name, line, message):
    path = tmp_path / name
    path.write_text(f"# header\n{line}\n")
    with pytest.raises(DataError, match=message):
        read_annotation(path)


def test_unnamed_file_takes_the_format_of_its_first_attributes(tmp_path):
    path = tmp_path / "genes.txt"
    path.write_text('chr1\ts\tCDS\t1\t3\t.\t+\t0\tgene_id "g";\nchr1\ts\tCDS\t4\t6\t.\t+\t0\tID=x\n')
    with pytest.raises(DataError, match=r"genes\.txt, line 2: a GFF3 line .* in a file whose line 1 has GTF "
                                         r"attributes.*one file holds one format"):
        read_annotation(path)
    path.write_text('chr1\ts\tCDS\t1\t3\t.\t+\t0\tgene_id "g";\n')
    assert read_annotation(path).fmt == "gtf"


def test_seqids_missing_from_the_fasta(tmp_path, genome):
    lines = [f"ctg{i}\ts\tCDS\t1\t3\t.\t+\t0\tID=c{i}" for i in range(7)]
    path = tmp_path / "other.gff3"
    path.write_text("\n".join(["chr1\ts\tCDS\t1\t3\t.\t+\t0\tID=a", *lines]) + "\n")
    records = read_records(genome, DNA)
    with pytest.raises(DataError, match=r"other\.gff3: 7 sequence id\(s\) match no record of .*genome\.fa: 'ctg0' "
                                        r"\(line 2\), 'ctg1' \(line 3\), .*'ctg4' \(line 6\), \.\.\. \(7 in all\); "
                                        r"the FASTA ids \(first word of each header\) are 'chr1', 'chr2', 'chr3'"):
        label_records(records, path, source=genome)
    skipped = Skipped()
    label_records(records, path, source=genome, on_error="skip", skipped=skipped)
    assert skipped.counts == {"unknown_seqid": 1} and records[0].labels[:3].all()


def test_feature_past_the_end_of_its_record(tmp_path, genome):
    path = tmp_path / "long.gff3"
    path.write_text("chr2\ts\tCDS\t5\t13\t.\t+\t0\tID=a\n")
    with pytest.raises(DataError, match=r"long\.gff3, line 1: end=13 is past the end of 'chr2' \(length 12\)"):
        label_records(read_records(genome, DNA), path, source=genome)


def test_data_module_checks_annotation_arguments(tmp_path, genome):
    with pytest.raises(ValueError, match=r"data\.annotation='g\.gff3' is only read with data\.task=annotate"):
        GenomeDataModule(dataset="path", path=str(genome), annotation="g.gff3")
    with pytest.raises(ValueError, match=r"feature='exons' is not allowed.*Did you mean 'exon'"):
        GenomeDataModule(dataset="path", path=str(genome), task="annotate", feature="exons", num_outputs=2)
    with pytest.raises(DataError, match=r"this is fasta \(for a FASTA, give the genes as a GFF3 or GTF file: "
                                        r"data\.annotation=<genes\.gff3>\)"):
        GenomeDataModule(dataset="path", path=str(genome), task="annotate", num_outputs=2).load_segments()


# -- the open-reading-frame baseline -------------------------------------------------------------------
def test_open_reading_frames_both_strands():
    fwd = "ATG" + "GCC" * 4 + "TAA"  # 6 codons, ATG..TAA
    rev = "TTA" + "GGC" * 3 + "CAT"  # reverse complement of ATG GCC GCC GCC TAA: 5 codons on the - strand
    seq = "CC" + fwd + "GG" + rev + "A"
    orfs = {tuple(r) for r in open_reading_frames(seq).tolist()}
    assert (2, 2 + 18, 6) in orfs
    start = 2 + 18 + 2
    assert (start, start + 15, 5) in orfs
    mask = orf_mask(len(seq), open_reading_frames(seq), min_codons=6)
    assert np.array_equal(mask, _expected(len(seq), (3, 20)))
    assert orf_mask(len(seq), open_reading_frames(seq), min_codons=5).sum() == 18 + 15


def test_orf_starts_at_the_first_atg_and_needs_a_stop():
    seq = "TAG" + "CCC" + "ATG" + "ATG" + "GGG" + "TGA" + "ATGCCCNNN"  # the last ORF never stops
    orfs = open_reading_frames(seq)
    forward = orfs[orfs[:, 0] < 12].tolist()
    assert [6, 18, 4] in forward and [9, 18, 3] not in forward  # the longest: from the first ATG
    assert not any(s == 18 for s, _, _ in orfs.tolist())


def test_orf_length_chosen_by_mcc_and_mcc_matches_torchmetrics():
    import torch
    from torchmetrics.functional.classification import binary_matthews_corrcoef

    rng = np.random.default_rng(0)
    pred, truth = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
    assert binary_mcc(pred, truth) == pytest.approx(
        float(binary_matthews_corrcoef(torch.from_numpy(pred), torch.from_numpy(truth))), abs=1e-6)
    assert binary_mcc(np.ones(5), np.array([0, 1, 1, 0, 1])) == 0.0
    gene = "ATG" + "".join(rng.choice(["GCC", "AAA", "CTG"], 99)) + "TAA"  # 101 codons
    short = "ATG" + "GCC" * 28 + "TGA"  # 30 codons, not a gene
    seq = "C" * 50 + gene + "C" * 50 + short + "C" * 50
    labels = _expected(len(seq), (51, 50 + len(gene)))
    sel = select_orf_length([seq], [labels], candidates=(20, 50, 100, 200))
    assert sel.min_codons == 50 and sel.train_mcc[50] == pytest.approx(1.0) and sel.train_mcc[200] == 0.0
    assert sel.mcc([seq], [labels]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one label array per sequence"):
        select_orf_length([seq], [])


def test_orf_strand_column_and_decoder_keeps_by_length_or_model():
    comp = str.maketrans("ACGT", "TGCA")
    long_gene = "ATG" + "GCC" * 40 + "TAA"  # 42 codons, forward
    short_gene = "ATG" + "GCC" * 10 + "TAG"  # 12 codons, reverse strand
    seq = "CC" + long_gene + "CCCC" + short_gene.translate(comp)[::-1] + "CC"
    orfs = open_reading_frames(seq, strand=True)
    rows = {tuple(r) for r in orfs.tolist()}
    assert (2, 2 + 126, 42, 1) in rows
    s2 = 2 + 126 + 4
    assert (s2, s2 + 36, 12, -1) in rows
    assert np.array_equal(orfs[:, :3], open_reading_frames(seq))
    prob = np.zeros(len(seq))
    prob[s2:s2 + 36] = 0.9  # the model believes the short one
    by_length = OrfDecoder(10, 40, 0.95).decode(seq, prob)  # the long one kept for its length only
    assert by_length[2:128].all() and not by_length[s2:s2 + 36].any()
    both = OrfDecoder(10, 40, 0.8).decode(seq, prob)
    assert both[2:128].all() and both[s2:s2 + 36].all() and both.sum() == 126 + 36
    model_only = OrfDecoder(10, None, 0.8).decode(seq, prob)
    assert model_only.sum() == 36
    kept = OrfDecoder(10, None, 0.8).keep(orfs, prob)
    assert kept.shape == (1, 5) and kept[0, 3] == -1 and kept[0, 4] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="one probability per base; got 3 for 170 bases"):
        OrfDecoder(10, None, 0.8).decode(seq, prob[:3])
    # alternative start codons (the bacterial code): an ORF may begin at GTG or TTG
    gtg = "CC" + "GTG" + "GCC" * 40 + "TAA" + "CC"
    assert not open_reading_frames(gtg).size
    assert (2, 2 + 126, 42) in {tuple(r) for r in open_reading_frames(gtg, starts=("ATG", "GTG", "TTG")).tolist()}
    assert OrfDecoder(10, 40, 0.9, ["ATG", "GTG"]).decode(gtg, np.zeros(len(gtg))).sum() == 126
    with pytest.raises(ValueError, match=r"start codon 'ATGA' is not three of A, C, G, T"):
        OrfDecoder(10, 40, 0.9, ("ATGA",))


def test_decoder_chosen_on_validation_beats_thresholds_on_noisy_probabilities():
    rng = np.random.default_rng(0)
    comp = str.maketrans("ACGT", "TGCA")
    seq, labels = [], []
    for i in range(30):  # genes of 30-80 codons on both strands between random spacers
        gene = "ATG" + "".join(rng.choice(["GCC", "CTG", "AAA", "GAT"], int(rng.integers(30, 80)))) + "TGA"
        gene = gene if i % 2 else gene.translate(comp)[::-1]
        spacer = "".join(rng.choice(list("ACGT"), int(rng.integers(50, 300))))
        seq += [spacer, gene]
        labels += [np.zeros(len(spacer), np.uint8), np.ones(len(gene), np.uint8)]
    seq, truth = "".join(seq), np.concatenate(labels)
    prob = np.clip(truth * 0.6 + 0.2 + rng.normal(0, 0.25, len(seq)), 0, 1)  # a noisy per-base model
    sel = select_orf_decoder([seq], [prob], [truth])
    assert sel.tried > 100 and sel.val_mcc == pytest.approx(binary_mcc(sel.decoder.decode(seq, prob), truth))
    assert sel.val_mcc > binary_mcc(prob >= 0.5, truth) + 0.05  # edges and gaps fixed by the reading frames
    with pytest.raises(ValueError, match="a probability and a label array per sequence"):
        select_orf_decoder([seq], [prob], [])


# -- end to end ----------------------------------------------------------------------------------------
def _coding_genome(tmp_path, length=12_000, seed=3):
    """A random genome with ORF genes on both strands, as FASTA + GFF3 (the user's two files)."""
    rng = np.random.default_rng(seed)
    seq = list(rng.choice(list("ACGT"), length))
    lines, pos = ["##gff-version 3"], 200
    comp = str.maketrans("ACGT", "TGCA")
    while pos + 900 < length:
        codons = ["ATG", *("".join(rng.choice(list("ACG"), 3)) for _ in range(150)), "TAA"]
        gene = "".join(codons)
        strand = "+" if len(lines) % 2 else "-"
        seq[pos:pos + len(gene)] = gene if strand == "+" else gene.translate(comp)[::-1]
        lines.append(f"chrA\ttest\tCDS\t{pos + 1}\t{pos + len(gene)}\t.\t{strand}\t0\tID=cds{len(lines)}")
        pos += len(gene) + int(rng.integers(100, 400))
    fa = write_fasta(tmp_path / "genome.fa", [("chrA test genome", "".join(seq))])
    gff = tmp_path / "genes.gff3"
    gff.write_text("\n".join(lines) + "\n")
    return fa, gff


def test_annotation_from_gff3_trains(tmp_path):
    from core_attn.training import train
    from tests.training.tiny import compose_config

    fa, gff = _coding_genome(tmp_path)
    overrides = ["extras.print_config=false", "callbacks.rich_progress_bar=null", "logger=csv", "model.dim=16",
                 "model.depth=1", "model.num_heads=2", f"paths.data_dir={tmp_path / 'data'}",
                 "experiment=genomics_annotate", "data.dataset=path", f"data.path={fa}", f"data.annotation={gff}",
                 "data.window=1024", "data.train_samples=2", "attention.window=8", "trainer.fast_dev_run=true"]
    metrics = train(compose_config("genomics", overrides, tmp_path / "run"))
    test = metrics["test"]
    assert {"test/acc", "test/f1", "test/mcc", "test/majority_acc", "test/orf_mcc", "test/orf_min_codons"} <= set(test)
    assert test["test/orf_mcc"] > 0.5  # the genes are long ORFs
    # module.decode=orf (the experiment's): calls read through reading frames chosen on validation
    assert {"test/mcc_argmax", "test/decode_min_codons", "test/decode_long_codons", "test/decode_min_prob"} <= set(test)
    assert test["test/decode_min_codons"] in (25, 30, 40, 50, 75, 100)


def test_orf_decoding_errors_name_the_setting():
    from types import SimpleNamespace

    from genomics.module import TokenClassifier

    model = {"_target_": "genomics.model.SequenceTransformer", "vocab_size": 9, "num_outputs": 2, "dim": 16,
             "depth": 1, "num_heads": 2, "pool": "none",
             "attention": {"_target_": "core_attn.attention.dense.DenseAttention", "_partial_": True}}
    optimizer = {"_target_": "torch.optim.AdamW", "_partial_": True}
    with pytest.raises(ValueError, match=r"module.decode='viterbi' is not allowed; expected one of \['argmax', 'orf'\]"):
        TokenClassifier(model=model, optimizer=optimizer, decode="viterbi")
    module = TokenClassifier(model=model, optimizer=optimizer, decode="orf")
    with pytest.raises(ValueError, match=r"module.decode=orf reads whole genome regions: it needs the genome data "
                                         r"module .*set module.decode=argmax otherwise"):
        module._genome_datamodule()  # no trainer, no data module
    no_val = SimpleNamespace(load_segments=lambda: {"val": []}, hparams=SimpleNamespace(window=64, batch_size=1),
                             tokenizer=DNA)
    with pytest.raises(ValueError, match=r"module.decode=orf chooses its settings on the validation region, which "
                                         r"is empty; set data.val_fraction > 0 or module.decode=argmax"):
        module._choose_decoder(no_val)
