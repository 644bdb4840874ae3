"""``python -m audio.data prepare asterisk`` on a small fake package pair (no network: the download is replaced)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from audio import prepare as prep
from audio.data import ManifestDataModule, main, read_manifest
from audio.text import number_words, spell_numbers
from core_attn.training.debian import sha256, tree_sha256
from tests.audio.conftest import tone

G722 = pytest.importorskip("G722", reason="the g722 package decodes the recordings")

TRANSCRIPTS = """; Core Asterisk Sounds in English

beep: [this is a simple beep tone]
silence/1: (1 second of silence)
{prompts}
letters/at: at [@]
spy-h323: H.323
no-such-recording: This one was never recorded.
"""


def _fake_root(root: Path, n: int = 20) -> prep.DebianSpeech:
    """An unpacked package pair: ``n`` numbered prompts plus a few special entries, recordings in G.722."""
    sounds = root / "usr/share/asterisk/sounds/en_US_f_Allison"
    prompts = [f"prompt-{i}: Press {i} for option {i}." for i in range(n)]
    names = [f"prompt-{i}" for i in range(n)] + ["beep", "silence/1", "letters/at", "spy-h323", "unlisted"]
    for k, name in enumerate(names):
        pcm = (tone(0.3 + 0.01 * k, freq=200 + 20 * k) * 20000).astype("int16")
        (sounds / name).parent.mkdir(parents=True, exist_ok=True)
        (sounds / f"{name}.g722").write_bytes(G722.G722(16000, 64000).encode(pcm))
    doc = root / "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
    doc.parent.mkdir(parents=True)
    with gzip.open(doc, "wt") as f:
        f.write(TRANSCRIPTS.format(prompts="\n".join(prompts)))
    real = prep.SOURCES["asterisk"]
    return prep.DebianSpeech(real.audio_package, real.text_package, real.audio_dir, real.transcripts,
                             tree_sha256(sounds, "*.g722"), sha256(doc), "a test source")


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """``asterisk`` served from a fake unpacked tree; returns the list of fetches made."""
    built = tmp_path / "built"
    src = _fake_root(built)
    monkeypatch.setitem(prep.SOURCES, "asterisk", src)
    fetched = []

    def fetch(packages, folder):
        fetched.append(list(packages))
        shutil.copytree(built, Path(folder) / "root")
        return Path(folder) / "root"

    monkeypatch.setattr(prep, "fetch_packages", fetch)
    return fetched


def test_prepare_writes_split_manifests_of_16k_wav(tmp_path, fake_apt):
    folder = prep.prepare("asterisk", tmp_path / "data")
    assert folder == tmp_path / "data/audio/asterisk"
    assert fake_apt == [["asterisk-core-sounds-en-g722", "asterisk-core-sounds-en"]]
    summary = json.loads((folder / "summary.json").read_text())
    assert {k: v["count"] for k, v in summary["left_out"].items()} == {"non_speech": 2, "no_recording": 1,
                                                                       "no_transcript": 1}
    assert summary["left_out"]["non_speech"]["names"] == ["beep", "silence/1"]
    splits = {s: read_manifest(folder / f"{s}.jsonl") for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 18, "val": 2, "test": 2}
    texts = {seg.text for segs in splits.values() for seg in segs}
    assert "press seven for option seven" in texts and "at" in texts and "h three two three" in texts
    assert all(not {a.text for a in splits[x]} & {b.text for b in splits[y]}  # split by prompt text
               for x in splits for y in splits if x != y)
    import soundfile as sf

    info = sf.info(splits["train"][0].audio)
    assert (info.samplerate, info.subtype, info.channels) == (16000, "PCM_16", 1)
    dm = ManifestDataModule(**{s: str(folder / f"{s}.jsonl") for s in splits}, num_workers=0)
    dm.setup()  # every clip reads back through the training path
    assert len(dm.datasets["train"]) == 18 and not dm.skipped


def test_prepare_is_idempotent_and_the_split_is_fixed(tmp_path, fake_apt):
    first = (prep.prepare("asterisk", tmp_path / "a") / "test.jsonl").read_text()
    prep.prepare("asterisk", tmp_path / "a")
    assert len(fake_apt) == 1  # already prepared: nothing fetched
    assert (prep.prepare("asterisk", tmp_path / "b") / "test.jsonl").read_text() == first
    assert (prep.prepare("asterisk", tmp_path / "c", seed=1) / "test.jsonl").read_text() != first
    assert not [p for p in (tmp_path / "a" / "audio").iterdir() if p.name.startswith(".")]  # no temporary left


def test_prepare_refuses_changed_data(tmp_path, fake_apt, monkeypatch):
    src = prep.SOURCES["asterisk"]
    monkeypatch.setitem(prep.SOURCES, "asterisk", prep.DebianSpeech(
        src.audio_package, src.text_package, src.audio_dir, src.transcripts, "0" * 64, src.transcripts_sha256, ""))
    with pytest.raises(RuntimeError, match=r"checksum mismatch for usr/share/asterisk/sounds/en_US_f_Allison of "
                                           r"asterisk-core-sounds-en-g722 \(asterisk\).*refusing to use it"):
        prep.prepare("asterisk", tmp_path / "data")
    assert not (tmp_path / "data/audio/asterisk").exists()


def test_cli(tmp_path, fake_apt, capsys):
    assert main(["list", "--data-dir", str(tmp_path)]) == 0
    assert "asterisk   missing" in capsys.readouterr().out
    assert main(["prepare", "asterisk", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "audio/asterisk")
    main(["list", "--data-dir", str(tmp_path)])
    assert "asterisk   prepared" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "words"), [
    ("[ascending tones]", None), ("(10 seconds of silence)", None), ("<beep ascending>", None),
    ("letters at [@]", "letters at"), ("press * to pause, # to exit", "press star to pause pound to exit"),
    ("IAX (note: does not say \"2\")", "iax"), ("a 28.8 kilobit modem", "a twenty eight point eight kilobit modem"),
    ("3D audio", "three d audio"), ("A.M.", "a m"), ("Call-Forward on Busy.", "call forward on busy"),
])
def test_prompt_text(text, words):
    assert prep.prompt_text(text) == words


def test_number_words():
    assert [number_words(n) for n in (0, 13, 40, 99, 100, 1234, 8500, 10**6 + 1)] == [
        "zero", "thirteen", "forty", "ninety nine", "one hundred", "one thousand two hundred thirty four",
        "eight thousand five hundred", "one million one"]
    assert spell_numbers("dial 500.").split() == ["dial", "five", "hundred", "."]
    with pytest.raises(ValueError, match=r"number_words spells 0 <= n < 10\*\*12; got -1"):
        number_words(-1)
