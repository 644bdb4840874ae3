"""The built-in corpus: deterministic sentences, splits unseen in sentence and voice, the cache."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
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


def test_random_variants_are_deterministic_and_parse():
    a, b = synth.random_variants(6, 0), synth.random_variants(6, 0)
    assert a == b and a != synth.random_variants(6, 1) and list(a) == [f"rand{i:03d}" for i in range(6)]
    for name, text in a.items():
        lines = [line.split() for line in text.splitlines()]
        assert lines[0] == ["name", name] and lines[1] == ["language", "variant"]
        formants = [line for line in lines if line[0] == "formant"]
        assert [int(f[1]) for f in formants] == list(range(9)) and all(len(f) == 5 for f in formants)
        tract = [int(f[2]) for f in formants[1:6]]
        assert 0.85 * 0.92 * 100 - 1 <= min(tract) and max(tract) <= 1.5 * 1.08 * 100 + 1
        low, high = (int(v) for v in next(line for line in lines if line[0] == "pitch")[1:])
        assert 55 <= low < high


def test_random_voices_join_training_only(monkeypatch):
    spec = CorpusSpec(train=300, val=20, test=30, longform_recordings=1, longform_minutes=0.5, random_voices=4)
    p = plan(spec)
    variants = {s: {u.voice.split("+")[1] for u in us} for s, us in p.items()}
    assert {f"rand{i:03d}" for i in range(4)} <= variants["train"]
    assert not any(v.startswith("rand") for s in ("val", "test", "long-form") for v in variants[s])
    assert len(voices("train", ["espeak-ng"], 4)) == len(voices("train", ["espeak-ng"])) + 4 * len(synth.ESPEAK_ACCENTS)
    # without random voices the spec hashes as before they existed (corpora already made keep their folder)
    monkeypatch.setattr(synth, "engine_version", lambda engine: "eSpeak NG 1.51")
    old = dict(CorpusSpec().__dict__)
    del old["random_voices"], old["flite_share"]
    blob = json.dumps([synth.CORPUS_VERSION, old, ["eSpeak NG 1.51"]], sort_keys=True, default=list)
    assert CorpusSpec().key() == hashlib.sha1(blob.encode()).hexdigest()[:12] != spec.key()
    with pytest.raises(ValueError, match=r"random_voices=-1 is out of range; expected 0 <= random_voices"):
        SyntheticSpeechDataModule(random_voices=-1)


@pytest.mark.skipif(not HAS_ESPEAK, reason=NEEDS_ESPEAK)
def test_corpus_with_random_voices(tmp_path):
    spec = CorpusSpec(train=8, val=1, test=1, longform_recordings=0, random_voices=24)
    folder = ensure_corpus(tmp_path, spec)
    stats = json.loads((folder / "corpus.json").read_text())
    assert stats["random_voices"] == [f"rand{i:03d}" for i in range(24)]
    assert (folder / "voices" / "rand001").read_text() == synth.random_variants(24, 0)["rand001"]
    used = [json.loads(line)["voice"] for line in (folder / "train.jsonl").read_text().splitlines()]
    assert used == [u.voice for u in plan(spec)["train"]] and sum("+rand" in v for v in used) >= 2
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


@pytest.mark.skipif(not HAS_ESPEAK, reason=NEEDS_ESPEAK)
def test_a_voice_espeak_ignores_is_an_error(tmp_path):
    d = synth.write_espeak_data(tmp_path / "ok", {"rand000": synth.random_variants(1, 0)["rand000"]})
    plain = synth.synthesize(synth.Utterance("one two", "espeak-ng:en", 160, 50), espeak_path=str(d))
    assert not np.array_equal(plain, synth.synthesize(synth.Utterance("one two", "espeak-ng:en+rand000", 160, 50),
                                                         espeak_path=str(d)))
    with pytest.raises(RuntimeError, match=r"espeak-ng ignored the generated voice variant 'rand000' \(it spoke "
                                           r"with the plain voice\); its file: .*rand000"):
        synth.write_espeak_data(tmp_path / "bad", {"rand000": "language variant\n"})


def test_espeak_data_dir_not_reported(monkeypatch):
    monkeypatch.setattr(synth, "engine_version", lambda engine: "eSpeak NG text-to-speech: 1.51")
    with pytest.raises(RuntimeError, match=r"`espeak-ng --version` printed 'eSpeak NG text-to-speech: 1.51', which "
                                           r"does not say where its data is .*data.random_voices=0"):
        synth.espeak_data_dir()
    monkeypatch.setattr(synth, "engine_version", lambda engine: "eSpeak NG 1.51  Data at: /opt/espeak-ng-data")
    assert synth.espeak_data_dir() == "/opt/espeak-ng-data"


def test_random_voices_leave_the_other_splits_alone():
    spec = dict(train=200, val=20, test=30, longform_recordings=1, longform_minutes=0.5)
    plain, more = plan(CorpusSpec(**spec)), plan(CorpusSpec(**spec, random_voices=8))
    for split in ("val", "test", "long-form"):
        assert plain[split] == more[split]
    assert [u.text for u in plain["train"]] == [u.text for u in more["train"]]
    changed = sum(a != b for a, b in zip(plain["train"], more["train"]))
    assert all("+rand" in b.voice for a, b in zip(plain["train"], more["train"]) if a != b)
    assert 0.05 < changed / 200 < 0.3  # 64 of 488 training voices are random: ~13%
    with_flite = plan(CorpusSpec(**spec, engines=("espeak-ng", "flite"), random_voices=8))["train"]
    assert {u.voice for u in with_flite} - {u.voice for u in plan(CorpusSpec(**spec, engines=("espeak-ng", "flite")))["train"]} \
        <= {v for v in voices("train", ["espeak-ng"], 8) if "+rand" in v}


def test_flite_share_sets_the_training_voices_only(monkeypatch):
    spec = dict(train=1000, val=20, test=30, longform_recordings=1, longform_minutes=0.5, engines=("espeak-ng", "flite"))
    plain, shared = plan(CorpusSpec(**spec)), plan(CorpusSpec(**spec, flite_share=0.6))
    for split in ("val", "test", "long-form"):
        assert plain[split] == shared[split]
    assert [(u.text, u.rate, u.pitch) for u in plain["train"]] == [(u.text, u.rate, u.pitch) for u in shared["train"]]
    flite = [u.voice for u in shared["train"] if u.voice.startswith("flite:")]
    assert sum(u.voice.startswith("flite:") for u in plain["train"]) < 20  # 3 of 427 voices
    assert 0.55 < len(flite) / 1000 < 0.65 and set(flite) == {f"flite:{v}" for v in synth.FLITE_VOICES["train"]}
    assert {u.voice for u in shared["train"]} <= set(voices("train", spec["engines"]))
    none = plan(CorpusSpec(**spec, flite_share=0.0))["train"]
    assert not any(u.voice.startswith("flite:") for u in none)
    with_random = plan(CorpusSpec(**spec, flite_share=0.6, random_voices=8))["train"]
    assert 0.55 < sum(u.voice.startswith("flite:") for u in with_random) / 1000 < 0.65
    assert any("+rand" in u.voice for u in with_random)
    # without a share the spec hashes as before (corpora already made keep their folder)
    monkeypatch.setattr(synth, "engine_version", lambda engine: "1")
    assert CorpusSpec(**spec).key() != CorpusSpec(**spec, flite_share=0.6).key() != CorpusSpec(**spec, flite_share=0.5).key()
    old = {k: v for k, v in CorpusSpec(**spec).__dict__.items() if k not in ("random_voices", "flite_share")}
    blob = json.dumps([synth.CORPUS_VERSION, old, ["1", "1"]], sort_keys=True, default=list)
    assert CorpusSpec(**spec).key() == hashlib.sha1(blob.encode()).hexdigest()[:12]


def test_bad_flite_share():
    with pytest.raises(ValueError, match=r"flite_share=1.5 is out of range; expected 0.0 <= flite_share <= 1.0"):
        SyntheticSpeechDataModule(engines=["espeak-ng", "flite"], flite_share=1.5)
    with pytest.raises(ValueError, match=r"data.flite_share=0.5 needs both synthesisers, but data.engines=\['espeak-ng'\]"):
        SyntheticSpeechDataModule(flite_share=0.5)
    with pytest.raises(ValueError, match=r"flite_share='half' must be a number"):
        SyntheticSpeechDataModule(engines=["espeak-ng", "flite"], flite_share="half")
    assert SyntheticSpeechDataModule(engines=["espeak-ng", "flite"], flite_share=1).spec.flite_share == 1.0
