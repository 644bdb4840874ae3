"""``python -m genomics.predict``: per-base bits (bedGraph), predicted features (GFF3, BED) and record labels
(TSV) from tiny trained checkpoints, run through the command line on FASTA files in tmp and parsed back."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import sys

import lightning
import numpy as np
import pytest
import torch
from hydra.utils import get_class

from core_attn.training import train
from core_attn.training.callbacks import CONFIG_KEY
from genomics import formats
from genomics import predict as gp
from genomics.baselines import OrfDecoder
from genomics.infer import score
from genomics.io import DataError
from genomics.synthetic import genome_sequence
from genomics.tokenizers import DNATokenizer
from tests.genomics.conftest import write_fasta
from tests.training.tiny import compose_config

QUIET = ["extras.print_config=false", "callbacks.rich_progress_bar=null", "logger=csv", "trainer=fast", "test=false"]
TINY_MODEL = ["model.dim=16", "model.depth=1", "model.num_heads=2"]
SEQ = genome_sequence(3000, seed=5)[0]
RECORDS = [("chr1 first contig", SEQ[:700]), ("one", "G"), ("chr=2;x", SEQ[700:1000].lower() + "NNRY" + SEQ[1000:1301])]


# -- checkpoints ---------------------------------------------------------------------------------------
def _train(name: str, overrides: list[str], data_dir, out) -> str:
    cfg = compose_config(name, [*QUIET, *TINY_MODEL, f"paths.data_dir={data_dir}", *overrides], out)
    return train(cfg)["last_ckpt"]


@pytest.fixture(scope="module")
def lm_ckpt(data_dir, genome, tmp_path_factory):
    return _train("genomics", ["data.dataset=path", f"data.path={genome}", "data.window=128", "data.batch_size=2",
                               "data.train_samples=4", "attention.window=16"], data_dir, tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def annotate_ckpt(data_dir, genome, tmp_path_factory):
    return _train("genomics", ["experiment=genomics_annotate", "data.dataset=path", f"data.path={genome}",
                               "data.window=256", "data.train_samples=4", "data.batch_size=2", "attention.window=4"],
                  data_dir, tmp_path_factory.mktemp("annotate"))


@pytest.fixture(scope="module")
def classify_ckpt(data_dir, tmp_path_factory):
    return _train("genomics", ["experiment=genomics_classify_16s", "data.dataset=builtin_labelled",
                               "data.labels.regex='class=(\\S+)'", "data.labels.group_regex=null",
                               "data.labels.min_count=1", "data.num_outputs=4", "data.max_len=640",
                               "data.batch_size=4", "attention.window=8"],
                  data_dir, tmp_path_factory.mktemp("classify"))


def _random_checkpoint(path, task: str, data: dict, **model_kw) -> str:
    """A freshly initialised task module saved as a Lightning checkpoint, with the run config train() stores."""
    model = {"_target_": "genomics.model.SequenceTransformer", "vocab_size": 9, "num_outputs": 9, "dim": 16,
             "depth": 1, "num_heads": 2, "attention": {"_target_": "core_attn.attention.dense.DenseAttention",
                                                       "_partial_": True}, **model_kw}
    target = f"genomics.module.{task}"
    module = get_class(target)(model=model, optimizer={"_target_": "torch.optim.AdamW", "_partial_": True})
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__,
                CONFIG_KEY: {"module": {"_target_": target}, "data": data}}, path)
    return str(path)


def _run(monkeypatch, capsys, tmp_path, *args: str) -> str:
    """``python -m genomics.predict <args>`` in-process; returns what it printed."""
    monkeypatch.setattr(sys, "argv", ["genomics.predict", *args, f"hydra.run.dir={tmp_path / 'run'}"])
    gp.main()
    return capsys.readouterr().out


# -- readers: strict, no third-party parser ------------------------------------------------------------
def read_bedgraph(path) -> tuple[str, list[tuple[str, int, int, float]]]:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("track type=bedGraph ")
    rows = []
    for line in lines[1:]:
        chrom, start, end, value = line.split("\t")
        rows.append((chrom, int(start), int(end), float(value)))
        assert 0 <= rows[-1][1] < rows[-1][2]
    return lines[0], rows


def coverage(rows, chrom: str) -> tuple[int, int, int]:
    """(first start, last end, bases covered) of ``chrom``'s lines, checking they are sorted and do not overlap."""
    mine = [(s, e) for c, s, e, _ in rows if c == chrom]
    for (_, e0), (s1, _) in zip(mine, mine[1:]):
        assert e0 <= s1
    return mine[0][0], mine[-1][1], sum(e - s for s, e in mine)


def read_gff3(path) -> tuple[dict[str, int], list[list[str]]]:
    """(``##sequence-region`` lengths, feature rows); checks the header, 9 columns and 1-based coordinates."""
    lines = path.read_text().splitlines()
    assert lines[0] == "##gff-version 3"
    regions, features, ids = {}, [], set()
    for line in lines[1:]:
        if line.startswith("##sequence-region"):
            _, seqid, one, length = line.split(" ")
            assert one == "1" and seqid not in regions
            regions[seqid] = int(length)
            continue
        assert not line.startswith("#")
        cols = line.split("\t")
        assert len(cols) == 9
        seqid, source, ftype, start, end, sc, strand, phase, attrs = cols
        assert seqid in regions and source == "longattn" and (strand, phase) in ((".", "."), ("+", "0"), ("-", "0"))
        assert 1 <= int(start) <= int(end) <= regions[seqid] and 0 <= float(sc) <= 1
        attr = dict(kv.split("=", 1) for kv in attrs.split(";"))
        assert attr["ID"] not in ids
        ids.add(attr["ID"])
        features.append(cols)
    return regions, features


def read_bed(path) -> list[tuple[str, int, int, str, int, str]]:
    rows = []
    for line in path.read_text().splitlines():
        chrom, start, end, name, sc, strand = line.split("\t")
        rows.append((chrom, int(start), int(end), name, int(sc), strand))
        assert 0 <= rows[-1][1] < rows[-1][2] and 0 <= rows[-1][4] <= 1000 and strand in ".+-"
    return rows


# -- formats -------------------------------------------------------------------------------------------
def test_runs_merge_equal_rounded_values_and_bin_means():
    starts, ends, vals = formats.runs(np.array([0.1, 0.1001, 0.2, 0.2, 0.2, 1.0]), digits=2)
    assert starts.tolist() == [0, 2, 5] and ends.tolist() == [2, 5, 6] and vals.tolist() == [0.1, 0.2, 1.0]
    starts, ends, vals = formats.runs(np.arange(7.0), bin=3, digits=1)
    assert starts.tolist() == [0, 3, 6] and ends.tolist() == [3, 6, 7] and vals.tolist() == [1.0, 4.0, 6.0]
    assert formats.runs(np.zeros(0))[0].size == 0
    with pytest.raises(ValueError, match=r"bin=0 is out of range; expected 1 <= bin <= inf"):
        formats.runs(np.ones(3), bin=0)


@pytest.mark.parametrize("bin", [1, 3])
def test_bedgraph_in_slices_equals_one_pass(bin):
    values = np.repeat(np.random.default_rng(0).integers(0, 3, 40) / 2.0, 3)  # runs across slice boundaries
    one, sliced = io.StringIO(), io.StringIO()
    n = formats.write_bedgraph(one, "c", values, offset=5, bin=bin, digits=1)
    assert formats.write_bedgraph(sliced, "c", values, offset=5, bin=bin, digits=1, chunk=7) == n
    assert sliced.getvalue() == one.getvalue()
    rows = [line.split("\t") for line in one.getvalue().splitlines()]
    assert rows[0][1] == "5" and rows[-1][2] == str(5 + len(values)) and len(rows) == n
    assert all(a[2] == b[1] and a[3] != b[3] for a, b in zip(rows, rows[1:]))  # contiguous, merged


def test_threshold_features_keep_long_runs_with_their_mean():
    prob = np.array([0.9, 0.2, 0.6, 0.8, 0.5, 0.1, 0.7, 0.7])
    starts, ends, mean = formats.threshold_features(prob, threshold=0.5, min_length=2)
    assert starts.tolist() == [2, 6] and ends.tolist() == [5, 8]
    np.testing.assert_allclose(mean, [(0.6 + 0.8 + 0.5) / 3, 0.7])
    assert formats.threshold_features(prob, threshold=0.95)[0].size == 0
    with pytest.raises(ValueError, match=r"threshold=1.5 is out of range; expected 0.0 <= threshold <= 1.0"):
        formats.threshold_features(prob, threshold=1.5)


def test_gff3_escapes_seqids_and_attribute_values():
    assert formats.gff3_seqid("chr=2;x y") == "chr%3D2%3Bx%20y" and formats.gff3_seqid("NC_1.2|a") == "NC_1.2|a"
    assert formats.gff3_value("a;b=c,d&e%") == "a%3Bb%3Dc%2Cd%26e%25"


def test_output_prefix_and_positional_fasta(tmp_path):
    assert gp.output_prefix("x/ecoli.fa.gz") == "ecoli" and gp.output_prefix("a.b.fasta") == "a.b"
    assert gp.output_prefix("genome") == "genome" and gp.output_prefix("reads.txt") == "reads.txt"
    assert gp.fasta_overrides(["g.fna", "ckpt_path=x", "my genome.fa"]) == [
        "fasta=g.fna", "ckpt_path=x", "fasta='my genome.fa'"]


# -- the three tasks through the command line ----------------------------------------------------------
def test_lm_writes_bits_per_base_bedgraph(lm_ckpt, tmp_path, monkeypatch, capsys):
    fa = write_fasta(tmp_path / "genome.fa.gz", RECORDS, gz=True)
    out = _run(monkeypatch, capsys, tmp_path, str(fa), f"ckpt_path={lm_ckpt}", f"out_dir={tmp_path / 'pred'}")
    path = tmp_path / "pred" / "genome.bits.bedgraph"
    assert f"lm: 3 records, {700 + 1 + 605} bases" in out and f"wrote {path}" in out
    header, rows = read_bedgraph(path)
    assert 'name="genome.fa.gz bits"' in header
    assert [c for c, *_ in rows if c == "one"] == []  # one base: nothing to predict
    for chrom, length in (("chr1", 700), ("chr=2;x", 605)):
        assert coverage(rows, chrom) == (1, length, length - 1)  # every base but the first, exactly once
    assert all(0 <= v < 20 for *_, v in rows)
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_lm_bits_match_the_one_pass_score(lm_ckpt):
    module, task, _, _ = gp.load(lm_ckpt)
    tokens = DNATokenizer().encode(SEQ[:500])
    whole = gp.per_base(module, tokens, task=task, window=1024, batch_size=2)  # one window
    bits, count = score(module, tokens, "32")
    assert np.isnan(whole[0]) and count == 499 and np.nansum(whole) == pytest.approx(bits, rel=1e-5)
    tiled = gp.per_base(module, tokens, task=task, window=128, batch_size=3)  # 4 windows, the last one aligned
    np.testing.assert_allclose(tiled[1:129], whole[1:129], rtol=1e-5)  # the first window has the same context
    assert np.isfinite(tiled[1:]).all()
    # the bedGraph holds the same numbers, rounded to 3 decimals, with bin=1
    starts, ends, vals = formats.runs(tiled[1:], digits=3)
    assert np.sum((ends - starts) * vals) == pytest.approx(np.sum(tiled[1:]), abs=0.0005 * 499)


def test_annotate_writes_gff3_bed_and_probability_bedgraph(annotate_ckpt, tmp_path, monkeypatch, capsys):
    fa = write_fasta(tmp_path / "contigs.fasta", RECORDS)
    args = [str(fa), f"ckpt_path={annotate_ckpt}", f"out_dir={tmp_path}", "window=64", "probabilities=true",
            "digits=4", "decode=threshold"]
    _run(monkeypatch, capsys, tmp_path, *args, "threshold=0.0")  # every base: one feature per record
    regions, features = read_gff3(tmp_path / "contigs.gff3")
    assert regions == {"chr1": 700, "one": 1, "chr%3D2%3Bx": 605}
    assert [(f[0], f[2], f[3], f[4], f[8]) for f in features] == [
        ("chr1", "CDS", "1", "700", "ID=chr1.CDS.1"), ("one", "CDS", "1", "1", "ID=one.CDS.1"),
        ("chr%3D2%3Bx", "CDS", "1", "605", "ID=chr%3D2%3Bx.CDS.1")]
    assert [r[:4] for r in read_bed(tmp_path / "contigs.bed")] == [
        ("chr1", 0, 700, "chr1.CDS.1"), ("one", 0, 1, "one.CDS.1"), ("chr=2;x", 0, 605, "chr=2;x.CDS.1")]
    _, prob = read_bedgraph(tmp_path / "contigs.prob.bedgraph")
    for chrom, length in (("chr1", 700), ("one", 1), ("chr=2;x", 605)):
        assert coverage(prob, chrom) == (0, length, length)
    # a threshold inside the range of the probabilities cuts the records into several features
    threshold = float(np.median([v for *_, v in prob]))
    _run(monkeypatch, capsys, tmp_path, *args, f"threshold={threshold}", "min_length=2", "feature_type=gene")
    _, features = read_gff3(tmp_path / "contigs.gff3")
    bed = read_bed(tmp_path / "contigs.bed")
    assert len(bed) == len(features) > 3 and all(f[2] == "gene" for f in features)
    for f, (chrom, start, end, name, sc, _) in zip(features, bed):
        assert (int(f[3]) - 1, int(f[4]), f[8]) == (start, end, "ID=" + formats.gff3_value(name))
        assert end - start >= 2 and abs(sc - float(f[5]) * 1000) <= 1
        inside = [v for c, s, e, v in prob if c == chrom and s < end and e > start]
        assert min(inside) >= threshold - 1e-4  # every base of a feature passes the threshold
    if importlib.util.find_spec("BCBio"):  # bcbio-gff, when installed, reads the same features
        from BCBio import GFF

        with open(tmp_path / "contigs.gff3") as f:
            parsed = [(int(ft.location.start), int(ft.location.end)) for rec in GFF.parse(f) for ft in rec.features]
        assert sorted(parsed) == sorted((start, end) for _, start, end, *_ in bed)


def test_annotate_orf_decode_writes_the_kept_reading_frames_with_strand(annotate_ckpt, tmp_path, monkeypatch,
                                                                       capsys):
    stored = torch.load(annotate_ckpt, map_location="cpu", weights_only=False)["orf_decoder"]
    assert set(stored) == {"min_codons", "long_codons", "min_prob", "starts"}  # chosen on validation, saved
    fa = write_fasta(tmp_path / "contigs.fasta", RECORDS)
    args = [str(fa), f"ckpt_path={annotate_ckpt}", f"out_dir={tmp_path}", "window=64", "probabilities=true", "digits=12"]
    _run(monkeypatch, capsys, tmp_path, *args)  # the checkpoint's decoder: the default
    _, features = read_gff3(tmp_path / "contigs.gff3")
    _, prob = read_bedgraph(tmp_path / "contigs.prob.bedgraph")
    seqs = {"chr1": RECORDS[0][1], "chr%3D2%3Bx": RECORDS[2][1].upper()}
    comp = str.maketrans("ACGT", "TGCA")
    decoder = OrfDecoder(**stored)
    for seqid, seq in seqs.items():
        mine = [f for f in features if f[0] == seqid]
        orfs = decoder.orfs(seq, strand=True)
        kept = decoder.keep(orfs, np.concatenate([np.full(e - s, v) for c, s, e, v in prob
                                                   if formats.gff3_seqid(c) == seqid]))
        assert len(mine) == len(kept)
        for f in mine:
            start, end = int(f[3]) - 1, int(f[4])
            cds = seq[start:end] if f[6] == "+" else seq[start:end].translate(comp)[::-1]
            assert cds[:3] in decoder.starts and cds[-3:] in ("TAA", "TAG", "TGA") and len(cds) % 3 == 0
            assert len(cds) // 3 >= decoder.min_codons
            assert f[7] == "0"
    strands = {f[6] for f in features}
    assert strands <= {"+", "-"}
    bed = read_bed(tmp_path / "contigs.bed")
    assert [(r[1], r[2], r[5]) for r in bed] == [(int(f[3]) - 1, int(f[4]), f[6]) for f in features]


def test_classifier_writes_labels_tsv(classify_ckpt, tmp_path, monkeypatch, capsys):
    records = [(f"r{i} some description", SEQ[i * 500:i * 500 + 300 + 200 * i]) for i in range(5)]
    fa = write_fasta(tmp_path / "genes.fa", records)
    _run(monkeypatch, capsys, tmp_path, str(fa), f"ckpt_path={classify_ckpt}", f"out_dir={tmp_path}", "batch_size=2")
    with open(tmp_path / "genes.labels.tsv", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = list(reader)
    classes = ["c0", "c1", "c2", "c3"]  # the names the training labels had, saved in the checkpoint
    assert reader.fieldnames == ["id", "label", "probability", *(f"p_{c}" for c in classes)]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(5)]
    for r in rows:
        probs = {c: float(r[f"p_{c}"]) for c in classes}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert r["label"] == max(probs, key=probs.get) and float(r["probability"]) == probs[r["label"]]


def test_classifier_without_saved_class_names_uses_indices(tmp_path, caplog):
    ckpt = _random_checkpoint(tmp_path / "c.ckpt", "SequenceClassifier",
                              {"_target_": "genomics.data.SequenceDataModule", "dataset": "path",
                               "path": str(tmp_path / "gone.fa"), "num_outputs": 3, "max_len": 64},
                              num_outputs=3, patch_size=4, pool="mean")
    fa = write_fasta(tmp_path / "x.fa", RECORDS[:1])
    gp.predict(fasta=str(fa), ckpt_path=ckpt, out_dir=str(tmp_path))
    header = (tmp_path / "x.labels.tsv").read_text().splitlines()[0]
    assert header == "id\tlabel\tprobability\tp_0\tp_1\tp_2" and "stores no class names" in caplog.text


# -- bad input: one message naming the file ------------------------------------------------------------
LM_DATA = {"_target_": "genomics.data.GenomeDataModule", "window": 32, "batch_size": 2}


def test_bad_fasta_errors_name_the_file_and_leave_no_output(tmp_path):
    ckpt = _random_checkpoint(tmp_path / "lm.ckpt", "CausalLM", LM_DATA,
                              attention={"_target_": "core_attn.attention.dense.DenseAttention", "_partial_": True,
                                         "causal": True})
    with pytest.raises(FileNotFoundError, match=r"fasta='.*missing\.fa': no such file"):
        gp.predict(fasta=str(tmp_path / "missing.fa"), ckpt_path=ckpt)
    (tmp_path / "empty.fa").write_text("")
    with pytest.raises(DataError, match=r"empty\.fa: no fasta records"):
        gp.predict(fasta=str(tmp_path / "empty.fa"), ckpt_path=ckpt, out_dir=str(tmp_path / "a"))
    bad = write_fasta(tmp_path / "bad.fa", [("ok", "ACGT" * 20), ("bad_one", "ACGTXACGT")])
    with pytest.raises(DataError, match=r"bad\.fa, record #1 'bad_one': invalid character 'X' at position 4"):
        gp.predict(fasta=str(bad), ckpt_path=ckpt, out_dir=str(tmp_path / "b"))
    assert list((tmp_path / "b").iterdir()) == []  # the first record's lines were never moved into place
    result = gp.predict(fasta=str(bad), ckpt_path=ckpt, out_dir=str(tmp_path / "b"), on_error="skip")
    assert result["records"] == 1 and result["skipped"] == 1
    assert coverage(read_bedgraph(tmp_path / "b" / "bad.bits.bedgraph")[1], "ok") == (1, 80, 79)


def test_bad_checkpoint_errors_name_the_file(tmp_path):
    fa = write_fasta(tmp_path / "x.fa", RECORDS[:1])
    with pytest.raises(FileNotFoundError, match=r"ckpt_path='.*nope\.ckpt': no such checkpoint file"):
        gp.predict(fasta=str(fa), ckpt_path=str(tmp_path / "nope.ckpt"))
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"ckpt_path='.*text\.ckpt' is not a PyTorch checkpoint"):
        gp.predict(fasta=str(fa), ckpt_path=str(tmp_path / "text.ckpt"))
    torch.save({"state_dict": {}, CONFIG_KEY: {"module": {"_target_": "vision.module.ImageClassifier"}}},
               tmp_path / "vision.ckpt")
    with pytest.raises(ValueError, match=r"ckpt_path='.*vision\.ckpt' is not a checkpoint of the genomics app \(its "
                                         r"stored module is 'vision\.module\.ImageClassifier'\)"):
        gp.predict(fasta=str(fa), ckpt_path=str(tmp_path / "vision.ckpt"))
    mlm = _random_checkpoint(tmp_path / "mlm.ckpt", "MaskedLM", LM_DATA)
    with pytest.raises(ValueError, match=r"mlm\.ckpt' is a MaskedLM checkpoint, which has no per-base"):
        gp.predict(fasta=str(fa), ckpt_path=mlm)


def test_option_errors(tmp_path):
    ckpt = _random_checkpoint(tmp_path / "ann.ckpt", "TokenClassifier",
                              {**LM_DATA, "window": 40, "task": "annotate", "num_outputs": 2}, num_outputs=2,
                              patch_size=16)
    fa = write_fasta(tmp_path / "x.fa", RECORDS[:1])
    with pytest.raises(ValueError, match=r"window=40 is not a multiple of the model's patch_size=16"):
        gp.predict(fasta=str(fa), ckpt_path=ckpt)
    with pytest.raises(ValueError, match=r"min_length=0 is out of range; expected 1 <= min_length <= inf"):
        gp.predict(fasta=str(fa), ckpt_path=ckpt, min_length=0)
    with pytest.raises(ValueError, match=r"feature_type='coding region' must be one word"):
        gp.predict(fasta=str(fa), ckpt_path=ckpt, feature_type="coding region")
    with pytest.raises(ValueError, match=r"on_error='ignore' is not allowed; expected one of \['raise', 'skip'\]"):
        gp.predict(fasta=str(fa), ckpt_path=ckpt, on_error="ignore")
    with pytest.raises(ValueError, match=r"decode='viterbi' is not allowed; expected one of \['threshold', 'orf'\]"):
        gp.predict(fasta=str(fa), ckpt_path=ckpt, window=48, decode="viterbi")
    with pytest.raises(ValueError, match=r"decode=orf but ckpt_path='.*ann\.ckpt' stores no ORF decoder"):
        gp.predict(fasta=str(fa), ckpt_path=ckpt, window=48, decode="orf")
    result = gp.predict(fasta=str(fa), ckpt_path=ckpt, out_dir=str(tmp_path), window=48, threshold=1.0)
    assert result["lines"] == {"gff3": 0, "bed": 0} and math.isfinite(result["seconds"])
