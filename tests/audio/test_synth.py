"""The built-in corpus: deterministic sentences, splits unseen in sentence and voice, the cache."""

from __future__ import annotations

import json
import shutil

import pytest

from audio import synth
from audio.data import SyntheticSpeechDataModule, ensure_corpus, read_manifest
from audio.synth import CorpusSpec, SentenceGrammar, plan, voices
from tests.audio.conftest import NEEDS_ESPEAK

HAS_ESPEAK = shutil.which("espeak-ng") is not None


def test_grammar_is_deterministic_and_distinct():
    a = SentenceGrammar(0).unique(300)
    assert a == SentenceGrammar(0).unique(300) and a != SentenceGrammar(1).unique(300)
    assert len(set(a)) == 300 and all(len(s.split()) >= 4 for s in a)
    assert all(set(s) <= set("abcdefghijklmnopqrstuvwxyz '") for s in a)


def test_voice_variants_are_disjoint_across_splits():
    sets = {s: set(v) for s, v in synth.ESPEAK_VARIANTS.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert voices("test", ["espeak-ng"])[0].startswith("espeak-ng:") and len(voices("train", ["espeak-ng", "flite"])) > 400


def test_plan_splits_by_sentence_and_voice():
    p = plan(CorpusSpec(train=200, val=20, test=30, longform_recordings=2, longform_minutes=0.5))
    texts = {s: {u.text for u in us} for s, us in p.items()}
    assert len(texts["train"]) == 200
    for other in ("val", "test", "long-form"):
        assert not texts["train"] & texts[other]
    variants = {s: {u.voice.split("+")[1] for u in us} for s, us in p.items()}
    assert not variants["train"] & (variants["test"] | variants["long-form"] | variants["val"])
    assert len({u.voice for u in p["long-form"][:5]}) == 1  # one speaker per recording


def test_missing_engine_says_how_to_install(monkeypatch):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"needs `espeak-ng`, which is not installed: install it with `apt-get install espeak-ng`"):
        synth.check_engines(["espeak-ng"])
    with pytest.raises(RuntimeError, match="apt-get install flite"):
        synth.check_engines(["flite"])
    with pytest.raises(ValueError, match="data.engines contains 'festival'"):
        synth.check_engines(["festival"])


def test_bad_test_split():
    with pytest.raises(ValueError, match=r"test_split='longform' is not allowed; expected one of \['test', 'long-form'"):
        SyntheticSpeechDataModule(test_split="longform")


@pytest.mark.skipif(not HAS_ESPEAK, reason=NEEDS_ESPEAK)
def test_tiny_corpus_is_built_once(tmp_path):
    spec = CorpusSpec(train=6, val=2, test=2, longform_recordings=1, longform_minutes=0.2)
    folder = ensure_corpus(tmp_path, spec)
    stats = json.loads((folder / "corpus.json").read_text())
    assert stats["splits"]["train"]["utterances"] == 6 and stats["test_sentences_in_train"] == 0
    rec = read_manifest(folder / "long-form.jsonl")[0]
    segs = read_manifest(folder / "long-form-segments.jsonl")
    assert rec.text == " ".join(s.text for s in segs) and len(segs) >= 2
    assert all(a.offset + a.duration < b.offset for a, b in zip(segs, segs[1:]))
    stamp = (folder / "corpus.json").stat().st_mtime_ns
    assert ensure_corpus(tmp_path, spec) == folder and (folder / "corpus.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left behind


def test_sentences_file(tmp_path):
    lines = [f"Sentence number {w} is here." for w in ("one", "two", "three", "four", "five", "six", "seven")]
    (tmp_path / "s.txt").write_text("\n".join(lines + lines[:2]))  # duplicates are dropped
    spec = CorpusSpec(train=3, val=1, test=1, longform_recordings=0, sentences_file=str(tmp_path / "s.txt"))
    texts = [u.text for us in plan(spec).values() for u in us]
    assert len(texts) == 5 and all(t.startswith("sentence number ") for t in texts)
    with pytest.raises(ValueError, match=r"has 7 distinct sentences of >= 3 words; the corpus needs 9"):
        plan(CorpusSpec(train=7, val=1, test=1, longform_recordings=0, sentences_file=str(tmp_path / "s.txt")))
