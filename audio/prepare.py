"""Real recorded speech from Debian's archive: ``python -m audio.data prepare asterisk``.

``asterisk`` is the Asterisk PBX's English prompts (Debian ``asterisk-core-sounds-en-g722``, CC-BY-SA-3.0):
one speaker reading about 560 telephone prompts, 16 kHz G.722, with their transcripts in
``asterisk-core-sounds-en`` (``name: text`` lines). Preparing it downloads both packages (``apt-get
download``, no root), checks their pinned checksums, decodes each prompt to a 16-bit 16 kHz WAV file and
writes JSONL manifests (:func:`audio.data.read_manifest`) split by prompt text into train/val/test
(80/10/10, a fixed seed; prompts with the same text share a split):

    <data_dir>/audio/asterisk/{train,val,test}.jsonl    {"audio": "wav/<name>.wav", "text": ..., "id": <name>}
    <data_dir>/audio/asterisk/wav/<name>.wav
    <data_dir>/audio/asterisk/summary.json             counts, minutes, what was left out and why

Transcripts are normalised to the model's vocabulary: numerals spelled out, ``*`` and ``#`` read as
"star" and "pound", inline notes in brackets dropped (``at [@]`` -> ``at``). Entries that are not speech
(``[ascending tones]``, ``(1 second of silence)``, ``<beep ascending>``) are left out and counted.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from audio.text import normalize_text, spell_numbers
from core_attn.training.atomic import temporary_dir_beside, write_json_atomic
from core_attn.training.debian import fetch_packages, sha256, tree_sha256

log = logging.getLogger(__name__)

SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


@dataclass(frozen=True)
class DebianSpeech:
    """Recorded prompts in one Debian package, their transcripts in another.

    Attributes:
        audio_package / text_package: the packages (``apt-get download``).
        audio_dir: the folder of the recordings inside the audio package (``<name>.g722``).
        transcripts: the gzipped ``name: text`` file inside the text package.
        audio_sha256: :func:`core_attn.training.debian.tree_sha256` of ``audio_dir``'s ``*.g722`` files.
        transcripts_sha256: the SHA-256 of ``transcripts``.
        description: for ``python -m audio.data list``.
    """

    audio_package: str
    text_package: str
    audio_dir: str
    transcripts: str
    audio_sha256: str
    transcripts_sha256: str
    description: str


SOURCES: dict[str, DebianSpeech] = {
    "asterisk": DebianSpeech(
        "asterisk-core-sounds-en-g722", "asterisk-core-sounds-en", "usr/share/asterisk/sounds/en_US_f_Allison",
        "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz",
        "2cbd0f7ee95275ad57d9e5c54374c8ac06544c0da8782c42777d7fb7d40b6ade",
        "436538195b7c7361bd227036686f1a4039f694648c76573bdaca956655d34450",
        "Asterisk's English telephone prompts: one speaker, ~560 prompts, ~25 minutes, 16 kHz G.722 (CC-BY-SA-3.0)"),
}

_NON_SPEECH = re.compile(r"^\s*(\[[^\]]*\]|\([^)]*\)|<[^>]*>)\s*$")  # the whole entry is a note
_NOTE = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")  # an inline note: "at [@]", "IAX (note: ...)"
_CODE_DIGITS = re.compile(r"(?<=[A-Za-z]\.)\d+")  # digits after "<letter>." (a standard's name)
_SPOKEN_SYMBOLS = {"*": " star ", "#": " pound ", "&": " and ", "%": " percent "}


def prompt_text(text: str) -> str | None:
    """The words a prompt's transcript says, normalised to the vocabulary; ``None`` for non-speech."""
    if _NON_SPEECH.match(text):
        return None
    text = _NOTE.sub(" ", text)
    for symbol, words in _SPOKEN_SYMBOLS.items():
        text = text.replace(symbol, words)
    text = _CODE_DIGITS.sub(lambda m: " ".join(m.group()), text)  # "H.323" is read "h three two three"
    return normalize_text(spell_numbers(text)) or None


def read_transcripts(path: str | Path) -> dict[str, str]:
    """``name -> text`` of a (gzipped) ``name: text`` file; ``;`` comments and blank lines skipped."""
    opener = gzip.open if str(path).endswith(".gz") else open
    out = {}
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            name, sep, text = line.partition(":")
            if not sep or not name.strip():
                raise ValueError(f"{path}:{n}: expected 'name: text'; got {line!r}")
            out[name.strip()] = text.strip()
    return out


def decode_g722(path: str | Path) -> np.ndarray:
    """Int16 samples at 16 kHz of a raw G.722 file (64 kbit/s, as Asterisk stores them)."""
    try:
        import G722
    except ImportError as e:
        raise ImportError("decoding G.722 recordings needs the `g722` package: pip install g722") from e
    return np.asarray(G722.G722(16000, 64000).decode(Path(path).read_bytes()), dtype=np.int16)


def split_of(texts: list[str], seed: int = 0) -> dict[str, str]:
    """``text -> split``: the distinct texts shuffled with ``seed`` and cut 80/10/10."""
    distinct = sorted(set(texts))
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_train = round(SPLIT_FRACTIONS["train"] * len(distinct))
    n_val = round(SPLIT_FRACTIONS["val"] * len(distinct))
    out = {}
    for rank, i in enumerate(order):
        out[distinct[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def _verify(name: str, src: DebianSpeech, root: Path) -> None:
    checks = ((root / src.transcripts, sha256, src.transcripts_sha256, src.text_package),
              (root / src.audio_dir, lambda p: tree_sha256(p, "*.g722"), src.audio_sha256, src.audio_package))
    for path, digest, want, package in checks:
        if not path.exists():
            raise RuntimeError(f"{package} has no {path.relative_to(root)}; the package layout changed")
        got = digest(path)
        if got != want:
            raise RuntimeError(f"checksum mismatch for {path.relative_to(root)} of {package} ({name}): sha256 {got}, "
                               f"expected {want}; the packaged data changed, refusing to use it")


def build(src: DebianSpeech, root: Path, out: Path, *, seed: int = 0) -> dict:
    """Decode the recordings unpacked under ``root`` into ``out/wav/``, write ``out/{split}.jsonl``; return the
    summary (also ``out/summary.json``)."""
    audio_dir = root / src.audio_dir
    transcripts = read_transcripts(root / src.transcripts)
    left_out: dict[str, list[str]] = {"non_speech": [], "no_recording": []}
    rows = []
    for name, raw in sorted(transcripts.items()):
        text = prompt_text(raw)
        if text is None:
            left_out["non_speech"].append(name)
            continue
        g722 = audio_dir / f"{name}.g722"
        if not g722.is_file():
            left_out["no_recording"].append(name)
            continue
        wave = decode_g722(g722)
        wav = out / "wav" / f"{name}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, wave, 16000, subtype="PCM_16")
        rows.append({"audio": wav.relative_to(out).as_posix(), "text": text, "id": name,
                     "seconds": round(len(wave) / 16000, 3)})
    recorded = {p.relative_to(audio_dir).with_suffix("").as_posix() for p in audio_dir.rglob("*.g722")}
    left_out["no_transcript"] = sorted(recorded - set(transcripts))
    if not rows:
        raise ValueError(f"no transcribed speech recordings under {audio_dir}")
    split = split_of([r["text"] for r in rows], seed)
    summary: dict = {"source": src.audio_package, "seed": seed, "splits": {}}
    for name in SPLIT_FRACTIONS:
        part = [r for r in rows if split[r["text"]] == name]
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
        summary["splits"][name] = {"clips": len(part), "minutes": round(sum(r["seconds"] for r in part) / 60, 2)}
    summary["left_out"] = {k: {"count": len(v), "names": v} for k, v in left_out.items()}
    write_json_atomic(out / "summary.json", summary)
    return summary


def prepare(name: str, data_dir: str | Path, *, force: bool = False, seed: int = 0) -> Path:
    """Fetch and prepare the speech source ``name`` into ``<data_dir>/audio/<name>/``; return that folder.

    Built in a temporary folder beside it and renamed when complete, so an interrupted run leaves nothing
    half-made; a prepared folder is kept unless ``force``.
    """
    if name not in SOURCES:
        raise ValueError(f"speech source {name!r} is not known; expected one of {sorted(SOURCES)}")
    src = SOURCES[name]
    folder = Path(data_dir) / "audio" / name
    if (folder / "summary.json").is_file() and not force:
        log.info("%s is already prepared at %s", name, folder)
        return folder
    with tempfile.TemporaryDirectory(prefix=f"audio-{name}-") as tmp, temporary_dir_beside(folder) as out:
        root = fetch_packages([src.audio_package, src.text_package], tmp)
        _verify(name, src, root)
        summary = build(src, root, out, seed=seed)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(out, folder)
    left = Counter({k: v["count"] for k, v in summary["left_out"].items()})
    log.info("prepared %s in %s: %s; left out %s", name, folder, summary["splits"], dict(left))
    return folder
