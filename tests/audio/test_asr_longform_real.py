"""``benchmarks/asr_longform_real.py``: a manifest's clips joined into one recording, one pass beside clip by clip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from tests.audio.conftest import HAS_FLASHLIGHT, bench_script, tone, write


@pytest.fixture()
def clips(tmp_path) -> Path:
    """A manifest of three short clips, one at 8 kHz (resampled when joined)."""
    write(tmp_path / "clips" / "a.wav", tone(0.6, freq=300))
    write(tmp_path / "clips" / "b.wav", tone(0.9, rate=8000, freq=500), rate=8000)
    write(tmp_path / "clips" / "c.wav", tone(0.5, freq=700))
    m = tmp_path / "test.jsonl"
    m.write_text("".join(json.dumps({"audio": f"clips/{n}.wav", "text": t}) + "\n"
                         for n, t in (("a", "Press one."), ("b", "the cat sat"), ("c", "Goodbye"))))
    return m


@pytest.mark.parametrize("decoder", ["greedy", "lexicon"])
def test_joined_clips_one_pass_beside_clip_by_clip(untrained_ckpt, clips, tmp_path, capsys, decoder):
    if decoder == "lexicon" and not HAS_FLASHLIGHT:
        pytest.skip("flashlight-text is not installed (pip install flashlight-text)")
    options = ["decoder=greedy"] if decoder == "greedy" else ["decoder=lexicon", f"lexicon={clips}", "warps=0.9,1.0"]
    work, out = tmp_path / "work", tmp_path / "res" / "longform_v1.2"  # a dot in the name is kept
    assert bench_script("asr_longform_real").main([str(clips), "--ckpt", str(untrained_ckpt), "--pause", "0.5",
                                             "--workdir", str(work), "--out", str(out),
                                             *(x for o in options for x in ("--option", o))]) == 0
    report = json.loads(Path(f"{out}.json").read_text())
    wav = work / "test_joined.wav"
    info = sf.info(str(wav))
    assert info.samplerate == 16000 and info.subtype == "PCM_16"
    assert info.duration == pytest.approx(0.6 + 0.9 + 0.5 + 2 * 0.5, abs=1e-3)  # two pauses between three clips
    assert wav.with_suffix(".txt").read_text() == "press one the cat sat goodbye\n"
    assert wav.with_suffix(".hyp.txt").is_file()
    assert report["clips"] == 3 and report["decoder"] == decoder and report["minutes"] == pytest.approx(3.0 / 60, abs=1e-3)
    assert list(report["rows"]) == ["clip by clip", "one pass (full)"]
    for row in report["rows"].values():
        assert row["wer"] >= 0 and row["cer"] >= 0 and row["rtf"] > 0
    each, one = report["rows"]["clip by clip"]["wer"], report["rows"]["one pass (full)"]["wer"]
    assert report["one_pass_minus_clips_wer_points"] == pytest.approx(100 * (one - each), abs=0.01)
    printed = capsys.readouterr().out
    assert "| one pass (full) |" in printed and "WER points" in printed
    assert Path(f"{out}.md").read_text().startswith("3 clips of ")


def test_help_and_bad_pause(capsys):
    script = bench_script("asr_longform_real")
    with pytest.raises(SystemExit) as e:
        script.parse_args(["--help"])
    assert e.value.code == 0 and "--pause" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.parse_args(["test.jsonl", "--ckpt", "x.ckpt", "--pause", "-1"])
    assert "--pause=-1.0 must be >= 0 seconds" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "message"), [("x", "pause_seconds='x' must be a number"),
                                                ("-1", "pause_seconds=-1.0 is out of range; expected 0.0 <= pause_seconds <= inf")])
def test_bad_pause_seconds_option_before_any_decoding(untrained_ckpt, clips, tmp_path, value, message):
    with pytest.raises(SystemExit) as e:
        bench_script("asr_longform_real").main([str(clips), "--ckpt", str(untrained_ckpt), "--workdir",
                                                str(tmp_path / "work"), "--option", f"pause_seconds={value}"])
    assert str(e.value) == f"--option {message}"
    assert not (tmp_path / "work").exists()  # nothing joined, nothing decoded
