"""Speech data: LibriSpeech folders, JSONL manifests and the built-in synthetic corpus.

Every source becomes a list of :class:`Segment` (file, transcript, offset, duration). Audio is read with
``soundfile`` (any format libsndfile reads: FLAC, WAV, OGG, ...), mixed to mono and resampled to the
model's rate with ``torchaudio.functional.resample``. At setup every segment is read once and checked:
unreadable or wrong-format files, truncated files, empty audio and silence-only audio raise a
:class:`BadAudioError` naming the file, or with ``skip_bad=True`` are left out and counted per reason.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from audio.features import header_shortfall
from audio.text import CharTokenizer, dropped_characters, normalize_text
from core_attn.training.bases import TaskDataModule
from core_attn.validation import check_float, check_int, check_range

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class BadAudioError(ValueError):
    """An audio file that cannot be used; ``reason`` is one of ``missing``, ``unreadable``, ``truncated``,
    ``empty``, ``silent``, ``out_of_range``; ``source`` is the manifest line that names it (``file:line``)."""

    def __init__(self, path: str | Path, reason: str, detail: str, source: str | None = None):
        self.path, self.reason, self.detail, self.source = str(path), reason, detail, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}bad audio {path}: {reason}: {detail}; fix or remove it, or set data.skip_bad=true "
                         "to skip bad audio (skipped files are counted and logged)")


@dataclass(frozen=True)
class Segment:
    """A transcribed stretch of one audio file: ``duration`` None means to the end of the file."""

    audio: str
    text: str
    offset: float = 0.0
    duration: float | None = None
    source: str | None = field(default=None, compare=False)  # where it was listed: "<manifest>:<line>"


# -- sources -----------------------------------------------------------------------------------------
def read_librispeech(root: str | Path, split: str) -> list[Segment]:
    """The utterances of ``<root>/<split>/<speaker>/<chapter>/`` (``*.flac`` plus ``*.trans.txt``), sorted."""
    base = Path(root) / split
    if not base.is_dir():
        raise FileNotFoundError(f"LibriSpeech split folder {base} does not exist (data.root={str(root)!r}, "
                                f"split {split!r})")
    out = []
    for trans in sorted(base.glob("*/*/*.trans.txt")):
        for n, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            audio = trans.parent / f"{uid}.flac"
            if not text:
                raise ValueError(f"{trans}:{n}: expected '<utterance id> <TRANSCRIPT>'; got {line!r}")
            out.append(Segment(str(audio), text))
    if not out:
        raise ValueError(f"no transcripts (*/*/*.trans.txt) under {base}")
    return out


def read_manifest(path: str | Path) -> list[Segment]:
    """One :class:`Segment` per line of a JSONL manifest: ``{"audio": path, "text": ..., "offset": s,
    "duration": s}`` (offset and duration optional; relative paths are relative to the manifest)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio, text = row["audio"], row["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: expected a JSON object with 'audio' and 'text'; {type(e).__name__}: {e}") from e
        duration = row.get("duration")
        outside = dropped_characters(str(text))
        if outside:
            raise ValueError(f"{path}:{n}: the transcript has characters outside the vocabulary {outside!r} (it "
                             "spells only a-z, apostrophe and space once lower-cased; punctuation is ignored): write "
                             "numbers and symbols as spoken words (\"3\" -> \"three\", audio.text.spell_numbers)")
        audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
        out.append(Segment(str(audio_path), str(text), float(row.get("offset") or 0.0),
                           None if duration is None else float(duration), source=f"{path}:{n}"))
    if not out:
        raise ValueError(f"manifest {path} has no entries; expected one JSON object per line with 'audio' and 'text'")
    return out


# -- reading audio -------------------------------------------------------------------------------------
def _check_header(path: str, info: str) -> None:
    shortfall = header_shortfall(info)
    if shortfall:
        raise BadAudioError(path, "truncated", f"the header announces {shortfall[0]} bytes of audio but the file "
                            f"holds {shortfall[1]}")


def load_audio(seg: Segment | str, sample_rate: int, *, silence_db: float = -60.0) -> Tensor:
    """Float32 mono samples (L,) of a segment (or a whole file) at ``sample_rate``; raises :class:`BadAudioError`."""
    seg = Segment(str(seg), "") if not isinstance(seg, Segment) else seg
    if not Path(seg.audio).is_file():
        raise BadAudioError(seg.audio, "missing", "no such file", seg.source)
    opened = False
    try:
        with sf.SoundFile(seg.audio) as f:
            opened = True
            rate, frames = f.samplerate, f.frames
            _check_header(seg.audio, f.extra_info)
            start = int(round(seg.offset * rate))
            want = frames - start if seg.duration is None else int(round(seg.duration * rate))
            if start > frames or (seg.duration is not None and start + want > frames + 1):
                raise BadAudioError(seg.audio, "truncated", f"the file has {frames / rate:.3f} s but the segment "
                                    f"asks for {seg.offset:.3f} + {(seg.duration or 0):.3f} s")
            f.seek(min(start, frames))
            data = f.read(max(0, min(want, frames - start)), dtype="float32", always_2d=True)
            floating = f.subtype in ("FLOAT", "DOUBLE")
    except BadAudioError:
        raise
    except Exception as e:  # libsndfile raises LibsndfileError/RuntimeError/TypeError for unreadable files
        # opened but not decodable to the end (e.g. FLAC "lost sync"): cut short or corrupt
        reason = "truncated" if opened else "unreadable"
        raise BadAudioError(seg.audio, reason, f"{type(e).__name__}: {e}") from e
    if data.shape[0] == 0:
        raise BadAudioError(seg.audio, "empty", "no samples")
    if data.shape[0] < want - 1:
        raise BadAudioError(seg.audio, "truncated", f"read {data.shape[0]} of the {want} samples its header announces")
    if not np.isfinite(data).all():
        raise BadAudioError(seg.audio, "unreadable", "samples are NaN or infinite")
    wave = torch.from_numpy(data.mean(axis=1))
    peak = float(wave.abs().max())
    if floating and peak > 2.0:  # integer-scaled samples saved as floats: features would be off by 10**4
        raise BadAudioError(seg.audio, "out_of_range", f"floating-point samples reach {peak:.1f}, far outside "
                            "[-1, 1]; rescale the recording (e.g. divide 16-bit values by 32768) or save it as PCM")
    if peak <= 10 ** (silence_db / 20):
        raise BadAudioError(seg.audio, "silent", f"peak level {20 * math.log10(max(peak, 1e-12)):.1f} dBFS is at or "
                            f"below silence_db={silence_db}")
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave


class SpeechDataset(Dataset):
    """Segments read on demand: item ``i`` is ``(waveform (L,), token ids (S,), normalised text)``."""

    def __init__(self, segments: list[Segment], durations: list[float], sample_rate: int, silence_db: float):
        self.segments, self.durations = segments, durations
        self.sample_rate, self.silence_db = sample_rate, silence_db
        self.tokenizer = CharTokenizer()

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        seg = self.segments[index]
        wave = load_audio(seg, self.sample_rate, silence_db=self.silence_db)
        return wave, self.tokenizer.encode(seg.text), normalize_text(seg.text)


def collate(items: list[tuple[Tensor, Tensor, str]]) -> dict:
    """Pad a list of dataset items into ``{"audio" (B, L), "audio_lens" (B,), "targets" (B, S),
    "target_lens" (B,), "texts" [B]}``."""
    waves, targets, texts = zip(*items)
    audio = torch.nn.utils.rnn.pad_sequence(list(waves), batch_first=True)
    tgt = torch.nn.utils.rnn.pad_sequence(list(targets), batch_first=True)
    return {"audio": audio, "audio_lens": torch.tensor([len(w) for w in waves]),
            "targets": tgt, "target_lens": torch.tensor([len(t) for t in targets]), "texts": list(texts)}


class ConcatCollate:
    """Training collate that, with probability ``p`` per batch, joins the batch's neighbouring utterances
    in pairs (the batch comes from similar lengths, so the pairs do too and padding stays small): audio, a
    pause of silence uniform in ``pause`` seconds, audio; transcripts joined by a space. Models trained on
    single utterances only never hear one sentence end and the next begin: in a long recording they run
    sentences together and garble each sentence's first words (they learned the edge of the input as the
    start of a sentence). The decisions are a pure function of ``seed`` and the batch's transcripts (the
    same after a resume). Deciding per batch rather than per pair matters for speed: a batch mixing single
    and joined utterances is padded to the joined length (measured: 2.36 s a step against 1.36 s without
    joins).
    """

    def __init__(self, p: float, pause: tuple[float, float] = (0.3, 1.2), sample_rate: int = 16000, seed: int = 0):
        self.p = check_float("concat_p", p, min_value=0.0, max_value=1.0)
        self.pause = check_range("concat_pause", pause, min_value=0, unit="seconds")
        self.sample_rate, self.seed = sample_rate, seed
        self.tokenizer = CharTokenizer()

    def __call__(self, items: list[tuple[Tensor, Tensor, str]]) -> dict:
        if self.p == 0.0 or len(items) < 2:
            return collate(items)
        rng = np.random.default_rng([self.seed, zlib.crc32("|".join(t for _, _, t in items).encode())])
        if rng.random() >= self.p:
            return collate(items)
        out = []
        for i in range(0, len(items) - 1, 2):
            (wa, _, ta), (wb, _, tb) = items[i], items[i + 1]
            gap = wa.new_zeros(int(rng.uniform(*self.pause) * self.sample_rate))
            text = f"{ta} {tb}"
            out.append((torch.cat([wa, gap, wb]), self.tokenizer.encode(text), text))
        if len(items) % 2:
            out.append(items[-1])
        return collate(out)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length (less padding): shuffle, sort within pools of ``50 * batch_size``, cut
    into batches, shuffle the batches. The order is a pure function of ``(seed, epoch)``; without
    ``shuffle`` the batches follow the sorted lengths.
    """

    def __init__(self, durations: list[float], batch_size: int, *, shuffle: bool, seed: int = 0):
        self.durations, self.batch_size, self.shuffle, self.seed = durations, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        n, bs = len(self.durations), self.batch_size
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: self.durations[i])
            return [order[i:i + bs] for i in range(0, n, bs)]
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(n).tolist()
        pool = 50 * bs
        batches = []
        for p in range(0, n, pool):
            chunk = sorted(order[p:p + pool], key=lambda i: self.durations[i])
            batches += [chunk[i:i + bs] for i in range(0, len(chunk), bs)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return math.ceil(len(self.durations) / self.batch_size)


# -- datamodules ---------------------------------------------------------------------------------------
class SpeechDataModule(TaskDataModule):
    """The part shared by every speech source: checking, filtering, batching.

    Args:
        sample_rate: the model's sample rate; other rates are resampled.
        batch_size: utterances per batch (batches group similar lengths).
        num_workers: DataLoader worker processes.
        max_train_seconds: training utterances longer than this are left out (counted, logged).
        silence_db: a segment whose peak is at or below this level (dBFS) is silence-only: bad audio.
        skip_bad: skip and count bad audio instead of raising.
        seed: the batch order.
        concat_p: in training, the probability that a batch's neighbouring utterances are joined in pairs
            with a pause between them (:class:`ConcatCollate`); 0: never.
        concat_pause: the pause's range in seconds.
    """

    def __init__(self, *, sample_rate: int = 16000, batch_size: int = 16, num_workers: int = 0,
                 max_train_seconds: float = 20.0, silence_db: float = -60.0, skip_bad: bool = False, seed: int = 0,
                 concat_p: float = 0.0, concat_pause: tuple[float, float] = (0.3, 1.2)):
        super().__init__()
        self.train_collate = ConcatCollate(concat_p, tuple(concat_pause), sample_rate, seed)  # checks concat_p
        check_int("sample_rate", sample_rate, min_value=1000)
        check_int("batch_size", batch_size, min_value=1)
        check_int("num_workers", num_workers, min_value=0)
        check_float("max_train_seconds", max_train_seconds, min_value=0.1)
        check_float("silence_db", silence_db, max_value=0.0)
        self.sample_rate, self.batch_size, self.num_workers = sample_rate, batch_size, num_workers
        self.max_train_seconds, self.silence_db, self.skip_bad, self.seed = max_train_seconds, silence_db, skip_bad, seed
        self.datasets: dict[str, SpeechDataset] = {}
        self.skipped: Counter = Counter()  # reason -> count
        self.skipped_files: list[str] = []

    def segments(self, split: str) -> list[Segment]:  # pragma: no cover - interface
        """The segments of ``split`` (``train``/``val``/``test``)."""
        raise NotImplementedError

    def _checked(self, split: str) -> SpeechDataset:
        good, durations = [], []
        for seg in self.segments(split):
            try:
                wave = load_audio(seg, self.sample_rate, silence_db=self.silence_db)
            except BadAudioError as e:
                if not self.skip_bad:
                    if seg.source and not e.source:  # name the manifest line
                        raise BadAudioError(e.path, e.reason, e.detail, seg.source) from e
                    raise
                self.skipped[e.reason] += 1
                self.skipped_files.append(e.path)
                continue
            seconds = len(wave) / self.sample_rate
            if split == "train" and seconds > self.max_train_seconds:
                self.skipped["too_long"] += 1
                continue
            good.append(seg)
            durations.append(seconds)
        if not good:
            raise ValueError(f"no usable audio in the {split} split (skipped: {dict(self.skipped)})")
        return SpeechDataset(good, durations, self.sample_rate, self.silence_db)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split in SPLITS:
            self.datasets[split] = self._checked(split)
        if self.skipped:
            shown = ", ".join(self.skipped_files[:5])
            log.warning("skipped %s (data.skip_bad=%s, data.max_train_seconds=%s)%s", dict(self.skipped),
                        self.skip_bad, self.max_train_seconds, f": {shown} ..." if shown else "")

    def _loader(self, split: str) -> DataLoader:
        sampler = BucketBatchSampler(self.dataset(split).durations, self.batch_size, shuffle=split == "train",
                                     seed=self.seed)
        return self.loader(split, batch_sampler=sampler, collate_fn=self.train_collate if split == "train" else collate,
                           num_workers=self.num_workers, drop_last=False, pin_memory=False)


class LibriSpeechDataModule(SpeechDataModule):
    """LibriSpeech folders: ``<root>/<split>/<speaker>/<chapter>/*.flac`` with ``*.trans.txt``.

    Args:
        root: the folder holding the split folders (e.g. ``LibriSpeech/``).
        train_split / val_split / test_split: split folder names (e.g. ``train-clean-100``, ``dev-clean``).
        **common: see :class:`SpeechDataModule`.
    """

    def __init__(self, *, root: str, train_split: str = "train-clean-100", val_split: str = "dev-clean",
                 test_split: str = "test-clean", sample_rate: int = 16000, batch_size: int = 16,
                 num_workers: int = 0, max_train_seconds: float = 20.0, silence_db: float = -60.0,
                 skip_bad: bool = False, seed: int = 0, concat_p: float = 0.0,
                 concat_pause: tuple[float, float] = (0.3, 1.2)):
        super().__init__(sample_rate=sample_rate, batch_size=batch_size, num_workers=num_workers,
                         concat_p=concat_p, concat_pause=tuple(concat_pause),
                         max_train_seconds=max_train_seconds, silence_db=silence_db, skip_bad=skip_bad, seed=seed)
        self.save_hyperparameters()
        self.root = root
        self.splits = {"train": train_split, "val": val_split, "test": test_split}

    def segments(self, split: str) -> list[Segment]:
        return read_librispeech(self.root, self.splits[split])


class ManifestDataModule(SpeechDataModule):
    """JSONL manifests, one per split (see :func:`read_manifest`).

    Args:
        train / val / test: manifest paths.
        **common: see :class:`SpeechDataModule`.
    """

    def __init__(self, *, train: str, val: str, test: str, sample_rate: int = 16000, batch_size: int = 16,
                 num_workers: int = 0, max_train_seconds: float = 20.0, silence_db: float = -60.0,
                 skip_bad: bool = False, seed: int = 0, concat_p: float = 0.0,
                 concat_pause: tuple[float, float] = (0.3, 1.2)):
        super().__init__(sample_rate=sample_rate, batch_size=batch_size, num_workers=num_workers,
                         concat_p=concat_p, concat_pause=tuple(concat_pause),
                         max_train_seconds=max_train_seconds, silence_db=silence_db, skip_bad=skip_bad, seed=seed)
        self.save_hyperparameters()
        self.manifests = {"train": train, "val": val, "test": test}

    def segments(self, split: str) -> list[Segment]:
        return read_manifest(self.manifests[split])


class SyntheticSpeechDataModule(SpeechDataModule):
    """The built-in corpus (:mod:`audio.synth`): generated once into ``<cache_dir>/<hash of the spec>/``.

    Args:
        cache_dir: where corpora are kept (``${paths.data_dir}/audio/synthetic``).
        train / val / test / longform_recordings / longform_minutes / engines / sentences_file / corpus_seed /
            random_voices / flite_share: the corpus (see :class:`audio.synth.CorpusSpec`).
        test_split: ``test`` (single utterances), ``long-form`` (whole recordings) or
            ``long-form-segments`` (the long-form recordings cut per utterance).
        synth_workers: synthesiser processes run in parallel while generating.
        **common: see :class:`SpeechDataModule`.
    """

    def __init__(self, *, cache_dir: str = "data/audio/synthetic", train: int = 4000, val: int = 200, test: int = 300,
                 longform_recordings: int = 4, longform_minutes: float = 3.0, engines: tuple[str, ...] = ("espeak-ng",),
                 sentences_file: str | None = None, corpus_seed: int = 0, test_split: str = "test",
                 synth_workers: int = 2, sample_rate: int = 16000, batch_size: int = 16, num_workers: int = 0,
                 max_train_seconds: float = 20.0, silence_db: float = -60.0, skip_bad: bool = False, seed: int = 0,
                 concat_p: float = 0.0, concat_pause: tuple[float, float] = (0.3, 1.2), random_voices: int = 0,
                 flite_share: float | None = None):
        super().__init__(sample_rate=sample_rate, batch_size=batch_size, num_workers=num_workers,
                         max_train_seconds=max_train_seconds, silence_db=silence_db, skip_bad=skip_bad, seed=seed,
                         concat_p=concat_p, concat_pause=tuple(concat_pause))
        from audio.synth import CorpusSpec

        engines = tuple(engines)  # a Hydra ListConfig would not load from a checkpoint with weights_only
        self.save_hyperparameters()
        for name, n in (("train", train), ("val", val), ("test", test)):
            check_int(name, n, min_value=1)
        check_int("longform_recordings", longform_recordings, min_value=0)
        check_int("random_voices", random_voices, min_value=0)
        if flite_share is not None:
            flite_share = check_float("flite_share", flite_share, min_value=0.0, max_value=1.0)
            if set(engines) != {"espeak-ng", "flite"}:
                raise ValueError(f"data.flite_share={flite_share!r} needs both synthesisers, but data.engines="
                                 f"{list(engines)}; use data.engines=[espeak-ng,flite] (experiment=audio_flite)")
        if test_split not in ("test", "long-form", "long-form-segments"):
            raise ValueError(f"test_split={test_split!r} is not allowed; expected one of "
                             "['test', 'long-form', 'long-form-segments']")
        self.spec = CorpusSpec(train=train, val=val, test=test, longform_recordings=longform_recordings,
                               longform_minutes=float(longform_minutes), engines=tuple(engines),
                               sentences_file=sentences_file, seed=corpus_seed, random_voices=random_voices,
                               flite_share=flite_share)
        self.cache_dir, self.test_split, self.synth_workers = Path(cache_dir), test_split, synth_workers
        self._folder: Path | None = None

    @property
    def folder(self) -> Path:
        """The corpus folder (generated on first use)."""
        if self._folder is None:
            self._folder = ensure_corpus(self.cache_dir, self.spec, workers=self.synth_workers)
        return self._folder

    def prepare_data(self) -> None:
        self.folder  # noqa: B018 - generates the corpus once, before any worker starts

    def manifest(self, name: str) -> Path:
        """The manifest of ``name``: train, val, test, long-form or long-form-segments."""
        return self.folder / f"{name}.jsonl"

    def segments(self, split: str) -> list[Segment]:
        return read_manifest(self.manifest(self.test_split if split == "test" else split))

    def _loader(self, split: str) -> DataLoader:
        if split == "test" and self.test_split == "long-form":  # whole recordings, one at a time
            return self.loader("test", batch_size=1, collate_fn=collate, num_workers=self.num_workers, drop_last=False,
                               pin_memory=False)
        return super()._loader(split)


def ensure_corpus(cache_dir: str | Path, spec, *, workers: int = 2) -> Path:
    """The folder of the corpus ``spec`` under ``cache_dir``, synthesised first if it is not there yet
    (into a temporary folder renamed when complete, so an interrupted run leaves nothing half-made)."""
    import os
    import shutil

    from audio.synth import build_corpus, check_engines
    from core_attn.training.atomic import temporary_dir_beside

    check_engines(spec.engines)
    folder = Path(cache_dir) / spec.key()
    if (folder / "corpus.json").is_file():
        return folder
    log.info("synthesising the built-in speech corpus into %s (once; cached)", folder)
    with temporary_dir_beside(folder) as tmp:
        build_corpus(tmp, spec, workers=workers, log=log.info)
        if not (folder / "corpus.json").is_file():  # else another process finished first
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
    return folder


# -- command line ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``list`` the real speech sources or ``prepare NAME`` one (:mod:`audio.prepare`)."""
    import argparse

    from audio import prepare as prep

    parser = argparse.ArgumentParser(prog="python -m audio.data",
                                     description="Real recorded speech from Debian's archive, as JSONL manifests.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="the speech sources and whether they are prepared")
    p_prep = sub.add_parser("prepare", help="fetch a source into <data-dir>/audio/NAME/ (manifests + 16 kHz WAV)")
    p_prep.add_argument("name", choices=sorted(prep.SOURCES))
    p_prep.add_argument("--force", action="store_true", help="prepare again even if present")
    p_prep.add_argument("--seed", type=int, default=0, help="the train/val/test split (default: 0)")
    for p in (p_list, p_prep):
        p.add_argument("--data-dir", default="data", help="the data directory (paths.data_dir; default: data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "list":
        for name, src in prep.SOURCES.items():
            there = (Path(args.data_dir) / "audio" / name / "summary.json").is_file()
            print(f"{name:10s} {'prepared' if there else 'missing ':8s}  Debian {src.audio_package}: {src.description}")
        return 0
    print(prep.prepare(args.name, args.data_dir, force=args.force, seed=args.seed))
    return 0


if __name__ == "__main__":
    from core_attn.errors import run_main

    run_main(main)
