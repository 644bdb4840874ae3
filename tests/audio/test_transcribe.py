"""Output formats (txt, json, srt), the command line, and transcription of a file end to end."""

from __future__ import annotations

import json

import pytest
import torch

from audio.decoding import Transcript, Word
from audio.transcribe import cues, format_transcript, main, parse_args

T = Transcript("hello there general kenobi", [Word("hello", 0.5, 0.9), Word("there", 1.0, 1.4),
                                               Word("general", 3.2, 3.8), Word("kenobi", 3.9, 4.5)])


def test_txt():
    assert format_transcript(T, "txt") == "hello there general kenobi\n"


def test_json():
    out = json.loads(format_transcript(T, "json", {"audio": "a.wav", "duration": 5.0}))
    assert out["audio"] == "a.wav" and out["text"] == T.text
    assert out["words"][2] == {"word": "general", "start": 3.2, "end": 3.8}


def test_srt_splits_at_pauses():
    assert format_transcript(T, "srt") == (
        "1\n00:00:00,500 --> 00:00:01,400\nhello there\n\n"
        "2\n00:00:03,200 --> 00:00:04,500\ngeneral kenobi\n")


def test_srt_hours_and_long_cues():
    words = [Word(f"w{i}", 3600 + i * 0.3, 3600 + i * 0.3 + 0.2) for i in range(30)]
    groups = cues(Transcript("", words), max_words=12, max_seconds=6.0)
    assert [len(g) for g in groups] == [12, 12, 6]
    assert format_transcript(Transcript("", words), "srt").startswith("1\n01:00:00,000 --> 01:00:03,500\nw0 w1")


def test_unknown_format():
    with pytest.raises(ValueError, match=r"format='vtt' is not allowed; expected one of \['txt', 'json', 'srt'\]"):
        format_transcript(T, "vtt")


def test_command_line_options(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    args, opts = parse_args([str(tmp_path / "a.wav"), "ckpt_path=m.ckpt", "--format", "srt", "mode=chunked",
                             "chunk_seconds=10"])
    assert args.files == [str(tmp_path / "a.wav")] and args.format == "srt"
    assert opts["mode"] == "chunked" and opts["chunk_seconds"] == 10.0 and opts["ckpt_path"] == "m.ckpt"


@pytest.mark.parametrize("argv,message", [
    (["a.wav"], "ckpt_path=<a training checkpoint"),
    (["a.wav", "ckpt_pth=m.ckpt"], "unknown option 'ckpt_pth'.*Did you mean 'ckpt_path'"),
    (["a.wav", "ckpt_path=m", "beam_size=wide"], "beam_size='wide' must be an integer"),
    (["ckpt_path=m"], "give at least one audio file"),
    (["a.wav", "ckpt_path=m", "warps=a,b"], r"warps='a,b' must be comma-separated numbers, e.g. warps=0.9,1.0,1.1"),
    (["a.wav", "ckpt_path=m", "warps=1,3"], r"warps='1,3' must be one or more factors in \[0.5, 2.0\]"),
    (["a.wav", "ckpt_path=m", "pause_seconds=-1"], r"pause_seconds=-1.0 is out of range; expected 0.0 <= pause_seconds"),
])
def test_command_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_missing_checkpoint(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path='.*nope\.ckpt': no such checkpoint file"):
        main([str(tmp_path / "x.wav"), f"ckpt_path={tmp_path}/nope.ckpt"])


def test_transcribe_end_to_end(trained, tmp_path, capsys):
    ckpt = trained["last_ckpt"]
    recording = next((trained["data_dir"] / "audio" / "synthetic").glob("*/long-form/000.flac"))
    out = tmp_path / "t.json"
    assert main([str(recording), f"ckpt_path={ckpt}", "--format", "json", "--output", str(out), "threads=2"]) == 0
    result = json.loads(out.read_text())
    assert result["duration"] > 10 and result["mode"] == "full" and result["real_time_factor"] > 0
    assert result["decoder"] == "lexicon"  # auto: the checkpoint carries its training words
    assert result["warp"] in (0.9, 1.0, 1.1)  # the checkpoint's test_warps, chosen on the first minute
    words = set(torch.load(ckpt, map_location="cpu", weights_only=False)["lexicon"])
    assert {w["word"] for w in result["words"]} <= words
    assert isinstance(result["text"], str) and isinstance(result["words"], list)
    assert "real-time factor" in capsys.readouterr().err
    assert main([str(recording), f"ckpt_path={ckpt}", "mode=chunked", "chunk_seconds=4", "overlap_seconds=1"]) == 0


def test_beam_decoding_in_one_pass_gets_every_warps_frames(trained, tmp_path, monkeypatch):
    import audio.transcribe as module

    seen, real = {}, module.decode_at_pauses

    def spy(decoder, log_probs, frame_seconds, pause_seconds, alternatives=()):
        seen.update(frames=tuple(log_probs.shape), alternatives=[tuple(a.shape) for a in alternatives])
        return real(decoder, log_probs, frame_seconds, pause_seconds, alternatives=alternatives)

    monkeypatch.setattr(module, "decode_at_pauses", spy)
    recording = next((trained["data_dir"] / "audio" / "synthetic").glob("*/long-form/000.flac"))
    out = tmp_path / "t.json"
    assert main([str(recording), f"ckpt_path={trained['last_ckpt']}", "--format", "json", "--output", str(out),
                 "warps=0.9,1.0,1.1", "warp_seconds=5"]) == 0
    assert seen["alternatives"] == [seen["frames"]] * 2  # each stretch between pauses can take any of the 3 warps
    assert json.loads(out.read_text())["warp"] in (0.9, 1.0, 1.1)  # the warp whose frames place the pauses


def test_transcribe_decoders_and_lexicon(trained, tmp_path, capsys):
    ckpt = trained["last_ckpt"]
    recording = next((trained["data_dir"] / "audio" / "synthetic").glob("*/long-form/000.flac"))
    out = tmp_path / "t.json"
    assert main([str(recording), f"ckpt_path={ckpt}", "--format", "json", "--output", str(out), "decoder=greedy",
                 "warps=1"]) == 0
    result = json.loads(out.read_text())
    assert result["decoder"] == "greedy" and "warp" not in result
    assert main([str(recording), f"ckpt_path={ckpt}", "--format", "json", "--output", str(out),
                 "warps=[0.8,1.25]", "warp_seconds=5"]) == 0
    assert json.loads(out.read_text())["warp"] in (0.8, 1.25)
    assert main([str(recording), f"ckpt_path={ckpt}", "--format", "json", "--output", str(out), "warps=1.25"]) == 0
    assert json.loads(out.read_text())["warp"] == 1.25  # one warp is applied, as test_warps=[1.25] is in the test
    (tmp_path / "words.txt").write_text("the\ncat\n")
    assert main([str(recording), f"ckpt_path={ckpt}", "--format", "json", "--output", str(out),
                 f"lexicon={tmp_path / 'words.txt'}"]) == 0
    result = json.loads(out.read_text())
    assert result["decoder"] == "lexicon" and set(result["text"].split()) <= {"the", "cat"}
    # a checkpoint without a lexicon (written before checkpoints kept one): auto is greedy, lexicon says what to do
    old = torch.load(ckpt, map_location="cpu", weights_only=False)
    old.pop("lexicon")
    torch.save(old, tmp_path / "old.ckpt")
    assert main([str(recording), f"ckpt_path={tmp_path / 'old.ckpt'}", "--format", "json", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["decoder"] == "greedy"
    with pytest.raises(SystemExit, match="carries no lexicon.*give lexicon=<a file, one word per line> or decoder=greedy"):
        main([str(recording), f"ckpt_path={tmp_path / 'old.ckpt'}", "decoder=lexicon"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([str(recording), f"ckpt_path={ckpt}", "decoder=lexicn"])
    assert "decoder='lexicn' is not allowed; expected one of ['auto', 'greedy', 'beam', 'lexicon']" in capsys.readouterr().err
