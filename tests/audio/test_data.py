"""Readers (LibriSpeech folders, JSONL manifests), resampling, bad audio, batching, text normalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from audio.data import (
    BadAudioError,
    BucketBatchSampler,
    LibriSpeechDataModule,
    ManifestDataModule,
    Segment,
    collate,
    load_audio,
    read_librispeech,
    read_manifest,
)
from audio.text import VOCAB, CharTokenizer, normalize_text
from tests.audio.conftest import tone, write


def _librispeech(root, split="dev-clean"):
    for spk, chap, n in (("84", "121123", 2), ("174", "50561", 1)):
        folder = root / split / spk / chap
        lines = []
        for i in range(n):
            uid = f"{spk}-{chap}-{i:04d}"
            write(folder / f"{uid}.flac", tone(0.5 + 0.25 * i))
            lines.append(f"{uid} HELLO WORLD NUMBER {('ZERO', 'ONE')[i]}")
        (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_librispeech_layout(tmp_path):
    segs = read_librispeech(_librispeech(tmp_path), "dev-clean")
    assert len(segs) == 3
    assert segs[0].audio.endswith("174-50561-0000.flac") and segs[0].text == "HELLO WORLD NUMBER ZERO"
    assert {s.offset for s in segs} == {0.0} and {s.duration for s in segs} == {None}
    assert len(load_audio(segs[-1], 16000)) == 12000  # 0.75 s


def test_librispeech_missing_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="LibriSpeech split folder .*train-other-500 does not exist"):
        read_librispeech(tmp_path, "train-other-500")


def test_manifest_offsets_relative_paths_and_resampling(tmp_path):
    write(tmp_path / "a" / "x8k.wav", tone(2.0, rate=8000), rate=8000)
    write(tmp_path / "y44.flac", tone(1.0, rate=44100), rate=44100)
    rows = [{"audio": "a/x8k.wav", "text": "Hello, World!", "offset": 0.5, "duration": 1.0},
            {"audio": str(tmp_path / "y44.flac"), "text": "it's fine"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    segs = read_manifest(tmp_path / "m.jsonl")
    assert segs[0] == Segment(str(tmp_path / "a" / "x8k.wav"), "Hello, World!", 0.5, 1.0)
    assert segs[1].offset == 0.0 and segs[1].duration is None
    a = load_audio(segs[0], 16000)
    assert a.shape == (16000,)  # 1 s of 8 kHz resampled to 16 kHz
    b = load_audio(segs[1], 16000)
    assert b.shape == (16000,)
    ref = torch.from_numpy(tone(2.0, rate=8000))[4000:12000]
    # the segment is the resampled slice: its spectrum peaks at 440 Hz like the source
    peak = lambda w, r: np.argmax(np.abs(np.fft.rfft(w.numpy()))) * r / len(w)  # noqa: E731
    assert abs(peak(a, 16000) - 440) < 2 and abs(peak(ref, 8000) - 440) < 2


def test_manifest_bad_line_names_line(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav"}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:1: expected a JSON object with 'audio' and 'text'"):
        read_manifest(tmp_path / "m.jsonl")


def _bad_files(tmp_path):
    write(tmp_path / "good.wav", tone(0.5))
    raw = (tmp_path / "good.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(raw[:len(raw) // 2])
    write(tmp_path / "good.flac", tone(1.0))
    raw = (tmp_path / "good.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(raw[:len(raw) // 2])
    write(tmp_path / "empty.wav", np.zeros(0, np.float32))
    write(tmp_path / "silent.wav", np.zeros(8000, np.float32))
    (tmp_path / "text.wav").write_text("this is not audio")
    return {"cut.wav": "truncated", "cut.flac": "truncated", "empty.wav": "empty", "silent.wav": "silent",
            "text.wav": "unreadable"}


@pytest.mark.parametrize("name,reason", [("cut.wav", "truncated"), ("cut.flac", "truncated"), ("empty.wav", "empty"),
                                         ("silent.wav", "silent"), ("text.wav", "unreadable")])
def test_bad_audio_error_names_the_file(tmp_path, name, reason):
    _bad_files(tmp_path)
    with pytest.raises(BadAudioError, match=rf"bad audio .*{name}: {reason}: .*data\.skip_bad=true") as e:
        load_audio(tmp_path / name, 16000)
    assert e.value.reason == reason and e.value.path.endswith(name)


def test_segment_past_the_end_is_truncated(tmp_path):
    write(tmp_path / "a.wav", tone(1.0))
    with pytest.raises(BadAudioError, match=r"a\.wav: truncated: the file has 1\.000 s but the segment asks for"):
        load_audio(Segment(str(tmp_path / "a.wav"), "x", 0.5, 2.0), 16000)


def test_streamed_wav_header_is_not_truncation(tmp_path):
    # a WAV written to a pipe carries a placeholder data size (here 0x7FFFFFFF): not a truncated file
    write(tmp_path / "a.wav", tone(0.5))
    raw = bytearray((tmp_path / "a.wav").read_bytes())
    i = raw.index(b"data")
    raw[i + 4:i + 8] = (0x7FFFFFFF).to_bytes(4, "little")
    (tmp_path / "s.wav").write_bytes(bytes(raw))
    assert len(load_audio(tmp_path / "s.wav", 16000)) == 8000


def _manifest_module(tmp_path, skip_bad):
    reasons = _bad_files(tmp_path)
    rows = [{"audio": n, "text": "a b"} for n in ["good.wav", "good.flac", *reasons]]
    (tmp_path / "all.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    m = str(tmp_path / "all.jsonl")
    return ManifestDataModule(train=m, val=m, test=m, batch_size=2, skip_bad=skip_bad)


def test_skip_bad_counts_per_reason(tmp_path):
    dm = _manifest_module(tmp_path, skip_bad=True)
    dm.setup()
    assert len(dm.datasets["train"]) == 2
    assert dm.skipped == {"truncated": 6, "empty": 3, "silent": 3, "unreadable": 3}  # 3 splits
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (2, 16000) and batch["audio_lens"].tolist() in ([8000, 16000], [16000, 8000])


def test_bad_audio_raises_by_default(tmp_path):
    dm = _manifest_module(tmp_path, skip_bad=False)
    with pytest.raises(BadAudioError, match=r"cut\.wav: truncated"):
        dm.setup()


def test_librispeech_datamodule_batches(tmp_path):
    root = _librispeech(tmp_path, "dev-clean")
    dm = LibriSpeechDataModule(root=str(root), train_split="dev-clean", val_split="dev-clean", test_split="dev-clean",
                               batch_size=2)
    batch = next(iter(dm.test_dataloader()))  # not shuffled: shortest first
    assert batch["audio"].shape == (2, 8000) and batch["audio_lens"].tolist() == [8000, 8000]
    assert batch["texts"] == ["hello world number zero"] * 2
    assert batch["targets"].shape == (2, len("hello world number zero"))


def test_max_train_seconds_filters_train_only(tmp_path):
    root = _librispeech(tmp_path, "dev-clean")
    dm = LibriSpeechDataModule(root=str(root), train_split="dev-clean", val_split="dev-clean", test_split="dev-clean",
                               max_train_seconds=0.6)
    dm.setup()
    assert len(dm.datasets["train"]) == 2 and len(dm.datasets["test"]) == 3 and dm.skipped == {"too_long": 1}


def test_bucket_sampler_is_deterministic_and_complete():
    durations = [float(d) for d in np.random.default_rng(0).uniform(1, 10, 103)]
    s = BucketBatchSampler(durations, 8, shuffle=True, seed=3)
    first = list(s)
    assert sorted(i for b in first for i in b) == list(range(103)) and len(first) == len(s) == 13
    assert list(s) == first
    s.set_epoch(1)
    assert list(s) != first
    fixed = list(BucketBatchSampler(durations, 8, shuffle=False))
    flat = [durations[i] for b in fixed for i in b]
    assert flat == sorted(flat)


def test_collate_pads():
    tok = CharTokenizer()
    items = [(torch.ones(5), tok.encode("ab"), "ab"), (torch.ones(3), tok.encode("abc d"), "abc d")]
    b = collate(items)
    assert b["audio"].tolist()[1] == [1, 1, 1, 0, 0]
    assert b["target_lens"].tolist() == [2, 5] and b["targets"].shape == (2, 5)


def test_normalize_and_tokenize():
    assert normalize_text("  Héllo, WORLD -- it's 42 o'clock!  ") == "hello world it's o'clock"
    tok = CharTokenizer()
    assert len(tok) == len(VOCAB) == 29 and tok.blank == 0
    assert tok.decode(tok.encode("Don't stop")) == "don't stop"


def test_tokenizer_needs_blank_first():
    with pytest.raises(ValueError, match="vocab must start with the blank token"):
        CharTokenizer(("a", "b"))


def test_sound_files_are_read_with_soundfile(tmp_path):
    write(tmp_path / "stereo.flac", np.stack([tone(0.25), -tone(0.25)], axis=1))
    assert sf.info(tmp_path / "stereo.flac").channels == 2
    with pytest.raises(BadAudioError, match="silent"):  # the two channels cancel in the mono mix
        load_audio(tmp_path / "stereo.flac", 16000)


def test_empty_manifest_is_named(tmp_path):
    (tmp_path / "m.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match=r"manifest .*m\.jsonl has no entries; expected one JSON object per line"):
        read_manifest(tmp_path / "m.jsonl")
    m = str(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match=r"m\.jsonl has no entries"):
        ManifestDataModule(train=m, val=m, test=m, batch_size=2).setup()


def test_concat_collate_joins_pairs_with_a_pause():
    from audio.data import ConcatCollate
    from audio.text import CharTokenizer

    tok = CharTokenizer()
    texts = ["a cat", "the dog", "one owl", "two", "six hens"]
    items = [(torch.full((100 * (i + 1),), float(i + 1)), tok.encode(t), t) for i, t in enumerate(texts)]
    always = ConcatCollate(1.0, (0.01, 0.01), sample_rate=1000)(items)
    assert always["texts"] == ["a cat the dog", "one owl two", "six hens"]  # pairs; the odd one stays alone
    first = always["audio"][0, :always["audio_lens"][0]]
    assert torch.equal(first, torch.cat([torch.full((100,), 1.0), torch.zeros(10), torch.full((200,), 2.0)]))
    for i, text in enumerate(always["texts"]):
        assert tok.decode(always["targets"][i, :always["target_lens"][i]]) == text
    never = ConcatCollate(0.0)(items)
    assert never["texts"] == texts
    half = ConcatCollate(0.5, seed=3)
    assert half(items)["texts"] == half(items)["texts"]  # a function of the seed and the batch
    joined = [len(ConcatCollate(0.5, seed=s)(items)["texts"]) for s in range(200)]
    assert set(joined) == {3, 5}  # a whole batch is joined or none of it
    assert joined.count(3) / 200 == pytest.approx(0.5, abs=0.1)
    with pytest.raises(ValueError, match=r"concat_pause=\[1.0, 0.5\] must be \[low, high\]"):
        ConcatCollate(0.5, (1.0, 0.5))
    with pytest.raises(ValueError, match=r"concat_p=2"):
        ConcatCollate(2.0)
    with pytest.raises(ValueError, match=r"concat_p=-0.1"):  # the data module checks it too
        ManifestDataModule(train="t.jsonl", val="v.jsonl", test="s.jsonl", concat_p=-0.1)
