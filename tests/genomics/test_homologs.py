"""Homolog retrieval for the protein MLM: k-mer index, alignment map, cache, and the items it makes."""

from __future__ import annotations

import numpy as np
import pytest

from genomics.data import SequenceDataModule
from genomics.datasets import IGNORE, RecordCrops
from genomics.homologs import HomologAligner, KmerIndex, find_homologs, load_homologs, save_homologs
from genomics.tokenizers import PAD, ProteinTokenizer

TOK = ProteinTokenizer()


def _random_protein(rng, n):
    return "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=n))


def test_kmer_index_counts_shared_kmers_and_excludes_self():
    rng = np.random.default_rng(0)
    texts = [_random_protein(rng, 60) for _ in range(5)]
    texts.append(texts[2][10:50])  # a fragment of record 2
    recs = [TOK.encode(t) for t in texts]
    index = KmerIndex(recs, k=5, vocab_size=TOK.vocab_size)
    shared = index.shared(recs[5])
    assert shared[2] == 36 and shared[5] == 36 and shared[[0, 1, 3, 4]].max() <= 1
    assert index.nearest(recs[5], exclude=5) == 2 and index.nearest(recs[2], exclude=2) == 5
    assert index.nearest(TOK.encode("WWWW"), min_shared=1) is None  # shorter than k
    lonely = TOK.encode(_random_protein(np.random.default_rng(9), 40))
    assert index.nearest(lonely, min_shared=3) is None
    with pytest.raises(ValueError, match=r"homologs.k=20 is too long for 29 symbols"):
        KmerIndex(recs, k=20, vocab_size=29)


def test_alignment_map_skips_an_insertion():
    rng = np.random.default_rng(1)
    a, b = _random_protein(rng, 30), _random_protein(rng, 30)
    query, target = TOK.encode(a + b), TOK.encode(a + "GGGGG" + b + "U")  # U aligns as X
    m = HomologAligner(TOK.tokens).map(query, target)
    assert (m[:30] == np.arange(30)).all() and (m[30:] == np.arange(35, 65)).all()
    assert (target[m] == query).all()
    assert (HomologAligner(TOK.tokens).map(query, TOK.encode("")) == -1).all()


def test_find_homologs_and_cache_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    base = [_random_protein(rng, 50) for _ in range(4)]
    train = [TOK.encode(t) for t in base + [b[::-1] for b in base]]
    test = [TOK.encode(base[1][5:45]), TOK.encode(_random_protein(rng, 50))]
    hits = {"train": find_homologs(train, train, tokens=TOK.tokens, k=5, min_shared=3, exclude_self=True),
            "test": find_homologs(test, train, tokens=TOK.tokens, k=5, min_shared=3, exclude_self=False)}
    assert hits["test"][0][0] == 1 and (hits["test"][0][1] == np.arange(5, 45)).all() and hits["test"][1] is None
    assert all(h is None or h[0] != i for i, h in enumerate(hits["train"]))
    save_homologs(tmp_path / "h.npz", hits)
    back = load_homologs(tmp_path / "h.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["h.npz"]
    for split in hits:
        assert [h if h is None else h[0] for h in back[split]] == [h if h is None else h[0] for h in hits[split]]
        assert all(h is None or np.array_equal(h[1], g[1]) for h, g in zip(hits[split], back[split]))


def test_crop_items_carry_the_aligned_relative():
    rng = np.random.default_rng(3)
    rel = TOK.encode(_random_protein(rng, 40))
    rec = TOK.encode(_random_protein(rng, 5)) .tolist() + rel[10:30].tolist()
    rec = np.array(rec, dtype=np.uint8)
    where = np.full(len(rec), -1, dtype=np.int32)
    where[5:] = np.arange(10, 30)
    mlm = {"mask_prob": 0.15, "replace_ids": TOK.standard_ids}
    ds = RecordCrops([rec, rec], None, max_len=16, train=False, mlm=mlm, tile=True,
                     homologs=[(0, where), None], homolog_records=[rel])
    first, second = ds[0], ds[1]  # tiles of record 0 at 0 and 16
    assert first["tokens"].shape == (32,)
    own, rel_part = first["tokens"][0::2].numpy(), first["tokens"][1::2].numpy()
    assert (own[first["targets"][0::2].numpy() == IGNORE] == rec[:16][first["targets"][0::2].numpy() == IGNORE]).all()
    assert (rel_part[:5] == PAD).all() and (rel_part[5:16] == rel[10:21]).all()
    assert (first["pad"][1::2].numpy() == (rel_part == PAD)).all() and not first["pad"][0::2].any()
    assert (first["targets"][1::2] == IGNORE).all() and (first["targets"][0::2] != IGNORE).any()
    assert (second["tokens"][1:18:2].numpy() == rel[21:30]).all() and second["pad"][18:].all()  # 9 left
    alone = ds[2]  # record 1 has no relative
    assert alone["pad"][1::2].all() and not alone["pad"][0::2].any()
    with pytest.raises(ValueError, match="homologs needs one entry per record"):
        RecordCrops([rec], None, max_len=16, train=True, homologs=[None, None], homolog_records=[rel])


def test_data_module_homologs(tmp_path, fasta):
    rng = np.random.default_rng(4)
    fam = [_random_protein(rng, 80) for _ in range(6)]
    recs = [(f"p{i}", fam[i % 6][:70] + _random_protein(rng, 10)) for i in range(36)]
    path = fasta(recs, "p.faa")
    kw = dict(dataset="path", path=str(path), data_dir=str(tmp_path), task="mlm", tokenizer={"alphabet": "protein"},
              max_len=32, vocab_size=29, num_outputs=29, val_fraction=0.2, test_fraction=0.2)
    dm = SequenceDataModule(**kw, homologs={"k": 5})
    dm.setup()
    item = dm.datasets["test"][0]
    assert item["tokens"].shape == (64,) and not item["pad"][1::2].all()
    (cache,) = (tmp_path / "cache").iterdir()
    stamp = cache.stat().st_mtime_ns
    again = SequenceDataModule(**kw, homologs={"k": 5})
    again.setup()
    assert cache.stat().st_mtime_ns == stamp and len(list((tmp_path / "cache").iterdir())) == 1
    assert (again.datasets["test"][0]["tokens"] == item["tokens"]).all()
    with pytest.raises(ValueError, match=r"data.homologs has unknown keys \['kmer'\]; allowed: k, min_shared"):
        SequenceDataModule(**kw, homologs={"kmer": 5})
    with pytest.raises(ValueError, match=r"data.homologs needs task=mlm and tokenizer.alphabet=protein"):
        SequenceDataModule(dataset="path", path=str(path), task="mlm", max_len=32, num_outputs=9, homologs={})
    with pytest.raises(ValueError, match=r"homologs.k=1 is out of range"):
        SequenceDataModule(**kw, homologs={"k": 1})
