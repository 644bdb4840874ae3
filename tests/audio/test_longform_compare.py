"""benchmarks/audio_longform.py --compare: two modes' transcripts of one recording, word by word."""

import json

import pytest

from tests.audio.conftest import bench_script

longform = bench_script("audio_longform")

WORDS = [{"word": "press", "start": 0.0, "end": 0.4}, {"word": "one", "start": 0.5, "end": 0.8}]


def _write(path, words, ckpt="m.ckpt"):
    path.write_text(json.dumps({"ckpt_path": ckpt, "words": words}))
    return path


def test_identical_transcripts(tmp_path):
    other = _write(tmp_path / "full.json", WORDS)
    out = longform.compare_words({"ckpt_path": "m.ckpt", "words": list(WORDS)}, other, "full")
    assert out["identical"] and out["equal_words"] == 2 and out["first_difference"] is None


def test_a_changed_time_or_a_missing_word_is_the_first_difference(tmp_path):
    other = _write(tmp_path / "full.json", WORDS)
    moved = [WORDS[0], {**WORDS[1], "end": 0.84}]
    out = longform.compare_words({"ckpt_path": "m.ckpt", "words": moved}, other, "full")
    assert not out["identical"] and out["equal_words"] == 1 and out["first_difference"]["index"] == 1
    out = longform.compare_words({"ckpt_path": "m.ckpt", "words": WORDS[:1]}, other, "full")
    assert not out["identical"] and out["first_difference"] == {"index": 1, "this": None, "other": WORDS[1]}


def test_another_checkpoint_or_no_transcript_is_refused(tmp_path):
    other = _write(tmp_path / "full.json", WORDS, ckpt="other.ckpt")
    with pytest.raises(SystemExit, match="another checkpoint"):
        longform.compare_words({"ckpt_path": "m.ckpt", "words": WORDS}, other, "full")
    with pytest.raises(SystemExit, match="run --mode full on the same recording"):
        longform.compare_words({"ckpt_path": "m.ckpt", "words": WORDS}, tmp_path / "none.json", "full")
