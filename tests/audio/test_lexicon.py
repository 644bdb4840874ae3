"""Lexicons for real test words: a manifest's transcripts plus a general word list (a file or pocketsphinx's)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from audio.decoding import read_lexicon, read_word_list
from tests.audio.conftest import HAS_FLASHLIGHT, bench_script, tone, write


@pytest.fixture()
def manifest(tmp_path) -> Path:
    """A training manifest of two clips (the words of its transcripts: cat, on, sat, the)."""
    for i, name in enumerate(("a.wav", "b.wav")):
        write(tmp_path / name, tone(0.4 + 0.2 * i, freq=300 + 100 * i))
    m = tmp_path / "train.jsonl"
    m.write_text(json.dumps({"audio": "a.wav", "text": "The cat sat."}) + "\n"
                 + json.dumps({"audio": "b.wav", "text": "Sat on the cat"}) + "\n")
    return m


def test_word_list_keeps_words_the_vocabulary_spells(tmp_path):
    (tmp_path / "dict.txt").write_text("'bout B AW T\nHello HH AH L OW\nhello(2) HH EH L OW\na.m. EY EH M\n"
                                       "ad-hoc AE D\nnaive N AY\n\n")
    assert read_word_list(tmp_path / "dict.txt") == ["'bout", "hello", "naive"]
    with pytest.raises(FileNotFoundError, match=r"word_list='.*nope\.txt': no such file \(one word per line, or "
                                                r"'pocketsphinx' for the dictionary of the pocketsphinx wheel\)"):
        read_word_list(tmp_path / "nope.txt")
    (tmp_path / "odd.txt").write_text("a.m.\n3rd\n")
    with pytest.raises(ValueError, match=r"word_list='.*odd\.txt' has no words spelt in a-z and apostrophe"):
        read_word_list(tmp_path / "odd.txt")


def test_word_list_pocketsphinx_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # as if not installed
    with pytest.raises(ImportError, match=r"word_list='pocketsphinx' reads the dictionary of the pocketsphinx "
                                          r"wheel, which is not installed: `pip install -e '\.\[peer\]'`"):
        read_word_list("pocketsphinx")


@pytest.mark.skipif(importlib.util.find_spec("pocketsphinx") is None,
                    reason="pocketsphinx is not installed (pip install -e '.[peer]')")
def test_word_list_pocketsphinx_is_the_cmu_dictionary():
    words = read_word_list("pocketsphinx")
    assert len(words) > 100_000 and {"hello", "conference", "don't"} <= set(words)
    assert not [w for w in words if "(" in w or "." in w or w != w.lower()]


def test_lexicon_from_a_manifest(manifest):
    assert read_lexicon(manifest) == ["cat", "on", "sat", "the"]


def test_recognizer_adds_the_word_list_to_its_lexicon(untrained_ckpt, manifest, tmp_path):
    from audio.transcribe import load_recognizer

    (tmp_path / "words.txt").write_text("mat\nCat\n")
    rec = load_recognizer(untrained_ckpt, decoder="lexicon", lexicon=str(manifest), word_list=str(tmp_path / "words.txt"))
    assert rec.words == ["cat", "on", "sat", "the"]  # what the checkpoint would keep
    assert rec.decoding_words() == ["cat", "mat", "on", "sat", "the"]
    assert load_recognizer(untrained_ckpt, decoder="lexicon", word_list=str(tmp_path / "words.txt")).decoding_words() \
        == ["cat", "mat"]
    assert load_recognizer(untrained_ckpt, decoder="greedy").decoding_words() is None


@pytest.mark.skipif(not HAS_FLASHLIGHT, reason="flashlight-text is not installed (pip install flashlight-text)")
def test_asr_peer_model_reports_the_share_of_words_outside_the_lexicon(untrained_ckpt, manifest, tmp_path):
    peer = bench_script("asr_peer")
    (tmp_path / "words.txt").write_text("mat\n")
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"audio": "a.wav", "text": "the mat sat by the dog"}) + "\n")
    options = {"decoder": "lexicon", "lexicon": str(manifest), "word_list": str(tmp_path / "words.txt"),
               "warps": "1.0"}
    hyps, seconds, lexicon = peer.run_model(peer._clips(str(test)), str(untrained_ckpt), options)
    assert len(hyps) == 1 and seconds > 0
    assert lexicon == {"lexicon_words": 5, "oov": pytest.approx(2 / 6)}  # "by", "dog"
    row = {"wer": 1.0, "cer": 1.0, "rtf": 0.1, "peak_rss_mb": 100, **lexicon}
    assert "ours: lexicon decoding over 5 words; 33.33% of the test words are outside the lexicon" \
        in peer.table({"ours": row}, 1, 0.01, str(test))
