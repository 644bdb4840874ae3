"""A user's own manifest: each bad line is named (file:line) or, with ``skip_bad``, skipped and counted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from audio.data import BadAudioError, ManifestDataModule, load_audio, read_manifest
from tests.audio.conftest import tone, write


def _manifest(folder, rows, name="m.jsonl"):
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _datamodule(tmp_path, bad_row, **kw):
    for i in range(3):
        write(tmp_path / f"ok{i}.wav", tone(0.6, freq=300 + 100 * i))
    rows = [{"audio": f"ok{i}.wav", "text": "hello there"} for i in range(3)]
    m = _manifest(tmp_path, [rows[0], bad_row, rows[1]], "train.jsonl")
    ok = _manifest(tmp_path, rows, "ok.jsonl")
    return ManifestDataModule(train=str(m), val=str(ok), test=str(ok), num_workers=0, **kw)


def test_missing_recording_names_the_manifest_line(tmp_path):
    dm = _datamodule(tmp_path, {"audio": "gone.wav", "text": "hello"})
    with pytest.raises(BadAudioError, match=r"train\.jsonl:2: bad audio .*gone\.wav: missing: no such file"):
        dm.setup()


def test_corrupt_recording_names_the_manifest_line(tmp_path):
    (tmp_path / "noise.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(200)))
    dm = _datamodule(tmp_path, {"audio": "noise.wav", "text": "hello"})
    with pytest.raises(BadAudioError, match=r"train\.jsonl:2: bad audio .*noise\.wav: unreadable"):
        dm.setup()


def test_integer_scaled_float_recording_is_refused(tmp_path):
    sf.write(tmp_path / "loud.wav", tone(0.6) * 32767, 16000, subtype="FLOAT")
    dm = _datamodule(tmp_path, {"audio": "loud.wav", "text": "hello"})
    with pytest.raises(BadAudioError, match=r"train\.jsonl:2: bad audio .*loud\.wav: out_of_range: floating-point "
                                            r"samples reach 9830\.\d, far outside \[-1, 1\]"):
        dm.setup()


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_24", "PCM_32", "FLOAT", "ULAW"])
def test_recordings_that_are_not_16_bit_are_read_alike(tmp_path, subtype):
    wave = tone(0.5, amp=0.5)
    sf.write(tmp_path / "ref.wav", wave, 16000, subtype="PCM_16")
    sf.write(tmp_path / "x.wav", wave, 16000, subtype=subtype)
    ref, got = load_audio(str(tmp_path / "ref.wav"), 16000), load_audio(str(tmp_path / "x.wav"), 16000)
    assert got.shape == ref.shape and float((got - ref).abs().max()) < (0.02 if subtype in ("PCM_U8", "ULAW") else 1e-4)


def test_skip_bad_skips_and_counts_each_reason(tmp_path):
    dm = _datamodule(tmp_path, {"audio": "gone.wav", "text": "hello"}, skip_bad=True)
    dm.setup()
    assert len(dm.datasets["train"]) == 2 and dm.skipped == {"missing": 1}
    assert dm.skipped_files == [str(tmp_path / "gone.wav")]


def test_transcript_outside_the_vocabulary_names_the_line(tmp_path):
    write(tmp_path / "a.wav", tone(0.5))
    m = _manifest(tmp_path, [{"audio": "a.wav", "text": "Press 1, then #."}, {"audio": "a.wav", "text": "Café, naïve!"}])
    with pytest.raises(ValueError, match=r"m\.jsonl:1: the transcript has characters outside the vocabulary '1#' .*"
                                         r"write numbers and symbols as spoken words"):
        read_manifest(m)
    m = _manifest(tmp_path, [{"audio": "a.wav", "text": "Café, naïve! It's fine."}])
    assert read_manifest(m)[0].source == f"{m}:1"  # accents and punctuation are fine


def test_bad_audio_without_a_manifest_names_only_the_file(tmp_path):
    with pytest.raises(BadAudioError, match=r"^bad audio .*nope\.wav: missing: no such file"):
        load_audio(str(tmp_path / "nope.wav"), 16000)
    assert not np.isnan(load_audio(str(write(tmp_path / "a.wav", tone(0.5))), 16000).numpy()).any()
