"""Windows, tiles, crops and masking; the data modules' splits, labels and bad-input handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genomics.data import GenomeDataModule, SequenceDataModule, split_records, split_regions
from genomics.datasets import IGNORE, GenomeTiles, GenomeWindows, RecordCrops, Segment, mlm_mask
from genomics.io import DataError
from genomics.tokenizers import MASK, PAD, DNATokenizer, ProteinTokenizer
from tests.genomics.conftest import write_genbank

DNA = DNATokenizer()


def _segments(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [Segment(f"r{i}", 0, rng.integers(4, 8, size=n).astype(np.uint8), rng.integers(0, 2, size=n).astype(np.uint8))
            for i, n in enumerate(lengths)]


@pytest.mark.parametrize("task", ["lm", "annotate"])
def test_tiles_score_every_position_once(task):
    segs = _segments([1, 5, 16, 17, 40])
    tiles = GenomeTiles(segs, window=8, task=task)
    shift = 1 if task == "lm" else 0
    scored = {}
    for i in range(len(tiles)):
        seg_i, start, skip = tiles.tiles[i]
        item = tiles[i]
        assert item["tokens"].shape == (8,)
        keep = (item["targets"] != IGNORE).nonzero().flatten().tolist()
        for j in keep:
            pos = start + j + shift
            scored[(seg_i, pos)] = scored.get((seg_i, pos), 0) + 1
            truth = segs[seg_i].tokens[pos] if task == "lm" else segs[seg_i].labels[pos]
            assert item["targets"][j] == int(truth)
            assert item["tokens"][j] == int(segs[seg_i].tokens[start + j])
        assert not item["pad"][keep].any()
        assert (item["tokens"][item["pad"]] == PAD).all()
    expected = {(i, p) for i, s in enumerate(segs) for p in range(shift, len(s))}
    assert set(scored) == expected and set(scored.values()) == {1}
    assert tiles.scored_positions() == len(expected)


def test_training_windows_lm_targets_are_next_bases():
    segs = _segments([50, 3])
    ds = GenomeWindows(segs, window=10, task="lm", samples=20, tokenizer=DNA, reverse_complement=0.0)
    assert len(ds.segments) == 1  # the 3-base segment cannot hold a window
    seq = DNA.decode(segs[0].tokens)
    for i in range(len(ds)):
        item = ds[i]
        x, y = DNA.decode(item["tokens"].numpy()), DNA.decode(item["targets"].numpy())
        assert x[1:] == y[:-1] and (x + y[-1]) in seq
        assert not item["pad"].any()


def test_training_windows_reverse_complement_keeps_labels_aligned():
    seq = "AAAACCCCGGGGTTTTACGT"
    labels = np.arange(20) % 2
    seg = Segment("r", 0, DNA.encode(seq), labels.astype(np.uint8))
    ds = GenomeWindows([seg], window=20, task="annotate", samples=30, tokenizer=DNA, reverse_complement=1.0)
    item = ds[0]
    rc = seq.translate(str.maketrans("ACGT", "TGCA"))[::-1]
    assert DNA.decode(item["tokens"].numpy()) == rc
    assert item["targets"].tolist() == labels[::-1].tolist()


def test_mlm_masking_80_10_10():
    rng = np.random.default_rng(0)
    tok = ProteinTokenizer()
    tokens = rng.choice(tok.standard_ids, size=200_000).astype(np.uint8)
    inputs, targets = mlm_mask(tokens, rng, mask_prob=0.15, replace_ids=tok.standard_ids)
    chosen = targets != IGNORE
    assert abs(chosen.mean() - 0.15) < 0.005
    assert np.array_equal(targets[chosen], tokens[chosen])
    assert np.array_equal(inputs[~chosen], tokens[~chosen])
    masked = inputs[chosen] == MASK
    changed = (inputs[chosen] != MASK) & (inputs[chosen] != tokens[chosen])
    kept = inputs[chosen] == tokens[chosen]
    assert abs(masked.mean() - 0.8) < 0.01
    # random replacements may draw the same residue (1 in 20): 10% * 19/20 change, 10% + 0.5% stay
    assert abs(changed.mean() - 0.1 * 19 / 20) < 0.006
    assert abs(kept.mean() - (0.1 + 0.1 / 20)) < 0.006
    assert np.isin(inputs[chosen & (inputs != MASK)], tok.standard_ids).all()


def test_mlm_masks_at_least_one_position():
    inputs, targets = mlm_mask(np.full(3, 5, np.uint8), np.random.default_rng(0), mask_prob=0.0,
                               replace_ids=np.array([5]))
    assert (targets != IGNORE).sum() == 1


def test_record_crops_eval_is_deterministic_and_tiles():
    recs = [np.full(25, 5, np.uint8), np.full(4, 6, np.uint8)]
    mlm = {"mask_prob": 0.3, "replace_ids": np.array([5, 6])}
    ds = RecordCrops(recs, None, max_len=10, train=False, mlm=mlm, tile=True, seed=1)
    assert len(ds) == 3 + 1
    a, b = ds[0], ds[0]
    assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["targets"], b["targets"])
    assert ds[2]["pad"].sum() == 5 and ds[3]["pad"].sum() == 6
    centre = RecordCrops([np.arange(4, 30).astype(np.uint8)], [1], max_len=10, train=False)
    assert centre[0]["tokens"].tolist() == list(range(12, 22)) and centre[0]["label"] == 1


def test_split_regions_last_part_is_test():
    out = split_regions([60, 40], val_fraction=0.1, test_fraction=0.2)
    assert out == {"train": [(0, 0, 60), (1, 0, 10)], "val": [(1, 10, 20)], "test": [(1, 20, 40)]}


def test_split_records_stratified_and_grouped():
    labels = [0] * 50 + [1] * 50
    groups = [i // 5 for i in range(100)]  # 20 groups of 5
    parts = split_records(100, 0.2, 0.2, seed=0, strata=labels, groups=groups)
    allidx = np.concatenate(list(parts.values()))
    assert sorted(allidx.tolist()) == list(range(100))
    for split, idx in parts.items():
        gs = {groups[i] for i in idx}
        for other, oidx in parts.items():
            if other != split:
                assert not gs & {groups[i] for i in oidx}
    assert {labels[i] for i in parts["test"]} == {0, 1}


def _genome(tmp_path, n=3000):
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGT"), size=n))
    return write_genbank(tmp_path / "g.gbk", seq, [(100, 400, 1), (1000, 1600, -1)])


def test_genome_window_longer_than_sequence(tmp_path):
    path = _genome(tmp_path, 500)
    dm = GenomeDataModule(dataset="path", path=str(path), window=480, val_fraction=0.1, test_fraction=0.1)
    with pytest.raises(DataError, match=r"g\.gbk, record 'chr1': training stretch \[0, 400\) has 400 bases, "
                                        r"fewer than a window of 481"):
        dm.setup("fit")
    dm = GenomeDataModule(dataset="path", path=str(path), window=300, val_fraction=0.1, test_fraction=0.1,
                          on_error="skip")
    dm.setup("fit")
    assert dm.skipped.total() == 0
    dm = GenomeDataModule(dataset="path", path=str(path), window=480, val_fraction=0.1, test_fraction=0.1,
                          on_error="skip")
    with pytest.raises(ValueError, match=r"no training segment holds a window of 481 bases"):
        dm.setup("fit")
    assert dm.skipped.counts == {"shorter_than_window": 1}


def test_genome_sizes_checked(tmp_path):
    with pytest.raises(ValueError, match=r"data.vocab_size=12 does not match the tokenizer .*set data.vocab_size=9"):
        GenomeDataModule(dataset="path", path="x", vocab_size=12, num_outputs=12)
    with pytest.raises(ValueError, match=r"data.num_outputs=9 but task=annotate needs 2; set data.num_outputs=2"):
        GenomeDataModule(dataset="path", path="x", task="annotate")


def test_unknown_dataset_name(tmp_path):
    dm = GenomeDataModule(dataset="leptospria", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"dataset='leptospria' is not a known data set.*Did you mean 'leptospira'"):
        dm.prepare_data()
    dm = GenomeDataModule(dataset="lambda", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"run `python -m genomics.data prepare lambda"):
        dm.prepare_data()


def test_annotation_labels_through_the_datamodule(tmp_path):
    dm = GenomeDataModule(dataset="path", path=str(_genome(tmp_path)), task="annotate", window=200,
                          num_outputs=2, val_fraction=0.1, test_fraction=0.1)
    dm.setup("fit")
    train = np.concatenate([s.labels for s in dm.segments["train"]])
    assert train.sum() == 300 + 600 and dm.majority_baseline("test") == 1.0


def test_header_regex_labels_and_min_count(fasta):
    recs = [(f"r{i} org{i % 7} tax=Firm;", "ACGT" * 10) for i in range(30)]
    recs += [(f"p{i} org{i % 5} tax=Prot;", "GGCC" * 10) for i in range(20)]
    recs += [("x1 org9 tax=Rare;", "AAAA"), ("x2 no taxonomy", "CCCC")]
    path = fasta(recs)
    kw = dict(dataset="path", path=str(path), max_len=40, num_outputs=2,
              labels={"regex": r"tax=(\w+);", "min_count": 2, "group_regex": r"(org\d+)"})
    with pytest.raises(DataError, match=r"x\.fa, record 'x2': header 'x2 no taxonomy' does not match label_regex"):
        SequenceDataModule(**kw).setup()
    dm = SequenceDataModule(**kw, on_error="skip")
    dm.setup()
    assert dm.classes == ["Firm", "Prot"]
    assert dm.skipped.counts == {"no_label": 1, "rare_class": 1}
    assert sum(len(dm.records[s]) for s in ("train", "val", "test")) == 50
    item = dm.datasets["train"][0]
    assert item["tokens"].shape == (40,) and item["label"].item() in (0, 1)
    assert dm.kmer_baseline("test") == {"acc": 1.0, "f1": 1.0, "k": 8.0}  # the two classes share no 8-mer
    mlm = SequenceDataModule(dataset="path", path=str(path), max_len=40, task="mlm", num_outputs=9)
    with pytest.raises(ValueError, match=r"kmer_baseline needs labelled records \(data.task=classify\)"):
        mlm.kmer_baseline()
    with pytest.raises(ValueError, match=r"data.num_outputs=3 but .*x\.fa \(labels: 2 classes, \['Firm', 'Prot'\]\) needs 2; "
                                         r"set data.num_outputs=2"):
        SequenceDataModule(**{**kw, "num_outputs": 3}, on_error="skip").setup()


def test_csv_labels(fasta, tmp_path):
    path = fasta([(f"r{i}", "ACGT" * 5) for i in range(20)])
    table = tmp_path / "labels.csv"
    table.write_text("id,label\n" + "".join(f"r{i},{'ab'[i % 2]}\n" for i in range(19)))
    kw = dict(dataset="path", path=str(path), max_len=20, num_outputs=2,
              labels={"source": "table", "file": str(table)})
    with pytest.raises(DataError, match=r"record 'r19': no label in .*labels\.csv"):
        SequenceDataModule(**kw).setup()
    dm = SequenceDataModule(**kw, on_error="skip")
    dm.setup()
    assert dm.classes == ["a", "b"] and dm.skipped.counts == {"no_label": 1}
    with pytest.raises(ValueError, match=r"data.labels has unknown keys \['regexp'\]"):
        SequenceDataModule(dataset="path", path=str(path), labels={"regexp": "x"})


def test_bed_records_as_a_dataset(fasta, tmp_path):
    ref = fasta([("chr1", "ACGT" * 50)], "ref.fa")
    bed = tmp_path / "x.bed"
    bed.write_text("".join(f"chr1\t{i * 10}\t{i * 10 + 8}\t{'ab'[i % 2]}\n" for i in range(12)))
    dm = SequenceDataModule(dataset="path", path=str(ref), bed=str(bed), max_len=8, num_outputs=2,
                            labels={"regex": r"^(\w)$"})
    dm.setup()
    assert dm.classes == ["a", "b"] and sum(len(v) for v in dm.records.values()) == 12


def test_unigram_baseline_of_proteins(fasta):
    path = fasta([(f"p{i}", "MKKA" * 5) for i in range(10)], "p.faa")
    dm = SequenceDataModule(dataset="path", path=str(path), task="mlm", tokenizer={"alphabet": "protein"},
                            max_len=16, vocab_size=29, num_outputs=29)
    lp = dm.unigram_log_probs()
    tok = ProteinTokenizer()
    k, m = tok.encode("K")[0], tok.encode("M")[0]
    assert lp[:4].isinf().all() and torch.exp(lp[4:]).sum().item() == pytest.approx(1.0)
    assert lp[k] > lp[m]


def test_train_mask_prob_masks_training_crops_only(fasta):
    path = fasta([(f"r{i}", "ACGT" * 100) for i in range(40)])
    kw = dict(dataset="path", path=str(path), max_len=400, task="mlm", num_outputs=9, val_fraction=0.25,
              test_fraction=0.25)

    def rate(dm, split):
        items = [dm.datasets[split][i] for i in range(len(dm.datasets[split]))]
        return np.mean([(it["targets"] != IGNORE).float().mean().item() for it in items])

    dm = SequenceDataModule(**kw, train_mask_prob=0.4)
    dm.setup()
    assert rate(dm, "train") == pytest.approx(0.4, abs=0.03) and rate(dm, "val") == pytest.approx(0.15, abs=0.03)
    same = SequenceDataModule(**kw)
    same.setup()
    assert rate(same, "train") == pytest.approx(0.15, abs=0.03)
    with pytest.raises(ValueError, match=r"train_mask_prob=1.5 is out of range"):
        SequenceDataModule(**kw, train_mask_prob=1.5)
