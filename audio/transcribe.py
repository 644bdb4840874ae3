"""Transcribe recordings of any length in one pass, with word timestamps.

    python -m audio.transcribe recording.wav ckpt_path=model.ckpt                  # text on stdout
    python -m audio.transcribe talk.flac ckpt_path=model.ckpt --format srt --output talk.srt
    python -m audio.transcribe talk.flac ckpt_path=model.ckpt --format json mode=chunked decoder=greedy
    python -m audio.transcribe day.flac ckpt_path=model.ckpt mode=stream          # any length, constant memory

One pass: the file is read and featurised in blocks (:func:`audio.features.stream_features`), the
subsampling runs in exact chunks, and the encoder sees the whole sequence at once (memory linear in the
length under a linear attention variant such as the default local window). ``mode=chunked`` instead
runs overlapping windows (``chunk_seconds`` long, ``overlap_seconds`` dropped at inner edges) and
concatenates their frame posteriors, for comparison. ``mode=stream`` gives the one-pass greedy transcript
exactly, in memory that does not grow with the length: features, network and greedy decoding run block by
block, each block of frames with the network's receptive field around it (:meth:`ConformerCTC.stream`;
models whose attention reads the whole recording, such as a global token, are refused with the block
named). Word times come from the CTC alignment.
``decoder=auto`` (the default) is lexicon beam search when the checkpoint carries a lexicon (the words of
its training transcripts, as its test used), else greedy; ``lexicon=<file or .jsonl manifest>`` replaces
those words and ``word_list=pocketsphinx`` (or a file, one word per line) adds a general word list; ``lm=train``
(a trigram of the training transcripts the checkpoint carries), ``lm=pocketsphinx`` (a general English trigram),
``lm=<.arpa/.bin>`` or ``lm=<.jsonl manifest>`` scores lexicon decoding's words with a word language model
(``lm_weight``, ``word_score``; ``lm_mix=pocketsphinx`` with ``lm_mix_weight`` mixes a second model into it;
default: the checkpoint's settings). ``warps`` (default: the checkpoint's
``test_warps``) are frequency warps tried on the first ``warp_seconds`` of the recording; the one the
decoder scores best is used for the whole recording (vocal tract length normalisation per recording).
Beam decoders decode the stretches between pauses of at least ``pause_seconds`` (default 0.5; 0: none) one
after another, so the language model reads each sentence as it reads a clip, not across sentence ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from audio.decoding import (DECODERS, GreedyStream, Transcript, best_candidate, decode_at_pauses, greedy_decode,
                            scored_texts)
from audio.features import feature_blocks, stream_features
from audio.lm import check_lm
from audio.model import ConformerCTC
from audio.text import CharTokenizer
from core_attn.errors import run_main
from core_attn.validation import check_choice, check_float, did_you_mean

FORMATS = ("txt", "json", "srt")
MODES = ("full", "chunked", "stream")
STREAM_DECODERS = ("auto", "greedy")  # mode=stream decodes online, greedily
PAUSE_SECONDS = 0.5  # beam decoders start a new word sequence after a pause this long
OPTIONS = {"ckpt_path": str, "mode": str, "chunk_seconds": float, "overlap_seconds": float, "decoder": str,
           "beam_size": int, "lexicon": str, "word_list": str, "warps": str, "warp_seconds": float, "threads": int,
           "block_seconds": float, "step_seconds": float, "lm": str, "lm_weight": float, "word_score": float,
           "lm_mix": str, "lm_mix_weight": float, "pause_seconds": float}
# None: the checkpoint's setting
CHECKPOINT_DEFAULTS = ("word_list", "lm", "lm_weight", "word_score", "lm_mix", "lm_mix_weight")


def load_recognizer(ckpt_path: str | Path, **overrides):
    """The :class:`audio.module.SpeechRecognizer` of a training checkpoint (network in eval mode, CPU);
    ``overrides`` replace saved hyper-parameters (``decoder``, ``beam_size``, ``lexicon``, ``lm``, ...)."""
    from audio.module import SpeechRecognizer
    from core_attn.training.runtime import check_checkpoint_path

    module = SpeechRecognizer.load_from_checkpoint(str(check_checkpoint_path(ckpt_path)), map_location="cpu", **overrides)
    module.net.eval()
    return module


def load_model(ckpt_path: str | Path) -> ConformerCTC:
    """The network of a training checkpoint, in eval mode on the CPU."""
    return load_recognizer(ckpt_path, decoder="greedy").net


@torch.inference_mode()
def log_probs_of(model: ConformerCTC, feats: torch.Tensor, *, mode: str = "full", chunk_seconds: float = 20.0,
                 overlap_seconds: float = 2.0) -> torch.Tensor:
    """(T, F) features -> (N, V) log-probabilities, in one pass (``full``) or overlapping windows (``chunked``)."""
    check_choice("mode", mode, ("full", "chunked"))
    if mode == "full":
        return model.log_probs_long(feats)
    fs = model.features.frame_seconds
    return model.log_probs_chunked(feats, window=int(chunk_seconds / fs), overlap=int(overlap_seconds / fs))


def choose_warp(model: ConformerCTC, feats: torch.Tensor, warps: Sequence[float], decoder=None) -> int:
    """Index of the warp whose features (W, T, F) the decoder (``None``: greedy) scores best, an empty transcript
    only when every warp's is (:func:`audio.decoding.best_candidate`)."""
    candidates = []
    for i in range(len(warps)):
        lp = log_probs_of(model, feats[i])
        candidates.append(scored_texts(decoder, lp[None], torch.tensor([len(lp)]), CharTokenizer())[0])
    return best_candidate(candidates)


def warp_log_probs(model: ConformerCTC, wave: torch.Tensor, warps: Sequence[float]) -> list[torch.Tensor]:
    """(N, V) log-probabilities of the samples ``wave`` (L,) at each frequency warp."""
    out = []
    for w in warps:
        with torch.inference_mode():
            feats, _ = model.features(wave[None], warp=torch.tensor([w]) if w != 1.0 else None)
            out.append(log_probs_of(model, feats[0]))
    return out


def best_warp(decoder, log_probs: Sequence[torch.Tensor], tokenizer: CharTokenizer) -> str:
    """The transcript the decoder (``None``: greedy) scores best over one clip's warps (the first on a tie; an
    empty one only when every warp's is: :func:`audio.decoding.best_candidate`)."""
    candidates = [scored_texts(decoder, lp[None], torch.tensor([len(lp)]), tokenizer)[0] for lp in log_probs]
    return candidates[best_candidate(candidates)][0]


def transcribe(model: ConformerCTC, path: str | Path, *, mode: str = "full", chunk_seconds: float = 20.0,
               overlap_seconds: float = 2.0, decoder=None, block_seconds: float = 30.0,
               warps: Sequence[float] | None = None, warp_seconds: float = 60.0,
               step_seconds: float = 300.0, pause_seconds: float | None = PAUSE_SECONDS) -> tuple[Transcript, dict]:
    """Transcribe the file ``path`` (``mode``: ``full``, ``chunked`` or ``stream``, the last greedy only:
    :func:`transcribe_stream`, ``step_seconds`` of output at a time); a beam decoder decodes the segments between
    pauses of at least ``pause_seconds`` one after another (:func:`audio.decoding.decode_at_pauses`; ``None`` or
    0: the whole recording as one word sequence). Return the transcript and
    ``{"duration", "seconds", "real_time_factor"}`` (plus ``"warp"``, the one chosen, with ``warps``: the warp
    the decoder scores best on the first ``warp_seconds``; greedy decoding uses it for the whole recording, a
    beam decoder finds the pauses in its frames and gives each stretch between them the warp it scores best)."""
    t0 = time.perf_counter()
    warps = [float(w) for w in warps] if warps and list(warps) != [1.0] else None  # [1.0] or none: no warping
    if check_choice("mode", mode, MODES) == "stream":
        if decoder is not None:
            raise ValueError(f"mode=stream decodes greedily as the frames arrive: a {type(decoder).__name__} needs "
                             f"the whole recording; with mode=stream, decoder is one of {list(STREAM_DECODERS)}")
        words, extra, duration = [], {}, 0.0
        step = max(1, round(step_seconds / model.frame_seconds))
        for piece, duration, extra in transcribe_stream(model, path, block_seconds=block_seconds, warps=warps,
                                                        warp_seconds=warp_seconds, step=step):
            words += piece
        out = Transcript(" ".join(w.word for w in words), words)
        seconds = time.perf_counter() - t0
        return out, {"duration": round(duration, 3), "seconds": round(seconds, 3),
                     "real_time_factor": round(seconds / max(duration, 1e-9), 5), **extra}
    with torch.inference_mode():
        feats, duration = stream_features(path, model.features, block_seconds=block_seconds, warps=warps)
    extra, others = {}, []
    if warps:
        head = max(1, int(warp_seconds / model.features.frame_seconds))
        pick = choose_warp(model, feats[:, :head], warps, decoder) if len(warps) > 1 else 0
        if decoder is not None:  # the other warps' frames: each stretch between pauses takes its best warp
            others = [log_probs_of(model, feats[i], mode=mode, chunk_seconds=chunk_seconds,
                                   overlap_seconds=overlap_seconds) for i in range(len(warps)) if i != pick]
        feats, extra = feats[pick], {"warp": warps[pick]}
    log_probs = log_probs_of(model, feats, mode=mode, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds)
    if decoder is None:
        out = greedy_decode(log_probs, CharTokenizer(), model.frame_seconds)
    else:
        out = decode_at_pauses(decoder, log_probs, model.frame_seconds, pause_seconds, alternatives=others)
    seconds = time.perf_counter() - t0
    return out, {"duration": round(duration, 3), "seconds": round(seconds, 3),
                 "real_time_factor": round(seconds / max(duration, 1e-9), 5), **extra}


@torch.inference_mode()
def transcribe_stream(model: ConformerCTC, path: str | Path, *, block_seconds: float = 30.0,
                      warps: Sequence[float] | None = None, warp_seconds: float = 60.0,
                      step: int = 8192) -> Iterator[tuple[list, float, dict]]:
    """Greedy transcription of ``path`` in memory that does not grow with its length: the file is read in
    blocks, featurised (:func:`audio.features.feature_blocks`), run through :meth:`ConformerCTC.stream`
    (``step`` output frames at a time: a word comes out once the ``step`` frames holding it and the
    receptive field after them have been read) and decoded online (:class:`audio.decoding.GreedyStream`).
    Yields ``(words that became final, seconds of audio read, {"warp": ...} or {})``; the words are those of
    one-pass greedy decoding. With several ``warps``, the one greedy decoding scores best on the first
    ``warp_seconds`` is used (those seconds are read twice)."""
    model.stream_reach()  # a model that cannot stream fails before any audio is read
    extra: dict = {}
    if warps and len(warps) > 1:
        head, frames = [], int(warp_seconds / model.features.frame_seconds)
        for feats, _ in feature_blocks(path, model.features, block_seconds=block_seconds, warps=warps):
            head.append(feats)
            if sum(h.shape[-2] for h in head) >= frames:
                break
        warps = [warps[choose_warp(model, torch.cat(head, dim=-2)[:, :max(1, frames)], warps)]]
    if warps:
        extra = {"warp": warps[0]}
    read = {"seconds": 0.0}  # audio read so far, updated as the network pulls features

    def chunks() -> Iterator[torch.Tensor]:  # (1, T_i, F) feature pieces
        for feats, read["seconds"] in feature_blocks(path, model.features, block_seconds=block_seconds,
                                                     warps=warps):
            yield feats if warps else feats[None]

    decoder = GreedyStream(CharTokenizer(), model.frame_seconds)
    for log_probs in model.stream(chunks(), step=step):
        yield decoder.push(log_probs[0]), read["seconds"], extra
    if decoder.frames == 0:
        raise ValueError(f"{path}: shorter than one analysis window "
                         f"({model.features.n_fft / model.features.sample_rate * 1000:.0f} ms)")
    yield decoder.finish(), read["seconds"], extra


# -- output formats ----------------------------------------------------------------------------------
def _srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def cues(transcript: Transcript, *, max_words: int = 12, max_seconds: float = 6.0, pause: float = 0.8) -> list[list]:
    """Words grouped into subtitle cues: a new cue after a pause, or when one is full."""
    out: list[list] = []
    for w in transcript.words:
        cur = out[-1] if out else None
        if cur is None or len(cur) >= max_words or w.end - cur[0].start > max_seconds or w.start - cur[-1].end > pause:
            out.append([w])
        else:
            cur.append(w)
    return out


def format_transcript(transcript: Transcript, fmt: str, meta: dict | None = None) -> str:
    """The transcript as ``txt`` (the text), ``json`` (text, words with start/end seconds, and ``meta``)
    or ``srt`` (numbered subtitle cues)."""
    check_choice("format", fmt, FORMATS)
    if fmt == "txt":
        return transcript.text + "\n"
    if fmt == "json":
        words = [{"word": w.word, "start": w.start, "end": w.end} for w in transcript.words]
        return json.dumps({**(meta or {}), "text": transcript.text, "words": words}, indent=2) + "\n"
    blocks = []
    for i, cue in enumerate(cues(transcript), 1):
        text = " ".join(w.word for w in cue)
        blocks.append(f"{i}\n{_srt_time(cue[0].start)} --> {_srt_time(cue[-1].end)}\n{text}\n")
    return "\n".join(blocks)


# -- command line ------------------------------------------------------------------------------------
def typed_option(key: str, value: str):
    """The text ``value`` of option ``key`` as :data:`OPTIONS` types it (int, float or the text itself);
    ``ValueError`` naming the key when it is not a number."""
    kind = OPTIONS.get(key, str)
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{key}={value!r} must be {'an integer' if kind is int else 'a number'}") from None


def parse_warps(text: str) -> list[float]:
    """``warps=0.9,1.0,1.1`` (brackets allowed) -> factors in [0.5, 2]; ``warps=1`` turns warping off."""
    try:
        warps = [float(w) for w in text.strip("[]").split(",") if w.strip()]
    except ValueError:
        raise ValueError(f"warps={text!r} must be comma-separated numbers, e.g. warps=0.9,1.0,1.1") from None
    if not warps or not all(0.5 <= w <= 2.0 for w in warps):
        raise ValueError(f"warps={text!r} must be one or more factors in [0.5, 2.0], e.g. warps=0.9,1.0,1.1")
    return warps


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict]:
    parser = argparse.ArgumentParser(
        prog="python -m audio.transcribe", description=__doc__.split("\n\n")[0],
        epilog="options as key=value: " + ", ".join(OPTIONS)
        + " (mode=full|chunked|stream, decoder=auto|greedy|beam|lexicon; with mode=stream: auto|greedy)")
    parser.add_argument("inputs", nargs="+", help="audio files, then key=value options (ckpt_path=... is required)")
    parser.add_argument("--format", default="txt", choices=FORMATS)
    parser.add_argument("--output", default=None, help="write here instead of stdout (one input only)")
    args = parser.parse_intermixed_args(argv)
    opts: dict = {"mode": "full", "chunk_seconds": 20.0, "overlap_seconds": 2.0, "decoder": "auto",
                  "beam_size": 128, "lexicon": None, "word_list": None, "warps": None, "warp_seconds": 60.0, "threads": None,
                  "block_seconds": 30.0, "step_seconds": 300.0, "ckpt_path": None, "lm": None, "lm_weight": None,
                  "word_score": None, "lm_mix": None, "lm_mix_weight": None, "pause_seconds": PAUSE_SECONDS}
    files = []
    for item in args.inputs:
        key, eq, value = item.partition("=")
        if not eq or Path(item).exists():
            files.append(item)
            continue
        if key not in OPTIONS:
            parser.error(f"unknown option {key!r}; expected one of {list(OPTIONS)}.{did_you_mean(key, OPTIONS)}")
        try:
            opts[key] = typed_option(key, value)
        except ValueError as e:
            parser.error(str(e))
    try:
        check_choice("decoder", opts["decoder"], ("auto",) + DECODERS)
        check_choice("mode", opts["mode"], MODES)
        if opts["mode"] == "stream" and opts["decoder"] not in STREAM_DECODERS:
            raise ValueError(f"mode=stream decodes greedily as the frames arrive: decoder={opts['decoder']!r} is "
                             f"not allowed with it; expected one of {list(STREAM_DECODERS)}")
        if opts["warps"] is not None:
            opts["warps"] = parse_warps(opts["warps"])
        check_lm(opts["lm"])
        check_lm(opts["lm_mix"], "lm_mix")
        check_float("pause_seconds", opts["pause_seconds"], min_value=0.0)
    except ValueError as e:
        parser.error(str(e))
    if not opts["ckpt_path"]:
        parser.error("ckpt_path=<a training checkpoint (.ckpt)> is required")
    if not files:
        parser.error("give at least one audio file")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        parser.error(f"no such audio file: {', '.join(missing)}")
    if args.output and len(files) > 1:
        parser.error("--output takes one input file")
    args.files = files
    return args, opts


def main(argv: list[str] | None = None) -> int:
    args, opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    given = {k: opts[k] for k in CHECKPOINT_DEFAULTS if opts[k] is not None}  # else the checkpoint's
    recognizer = load_recognizer(opts["ckpt_path"], decoder="greedy", lexicon=opts["lexicon"], **given)
    model = recognizer.net
    words = recognizer.decoding_words()
    if opts["decoder"] == "auto":
        opts["decoder"] = "lexicon" if words and opts["mode"] != "stream" else "greedy"
    if opts["decoder"] == "lexicon" and not words:
        raise SystemExit(f"decoder=lexicon: {opts['ckpt_path']} carries no lexicon (trained before checkpoints kept "
                         "their training words); give lexicon=<a file, one word per line> or decoder=greedy")
    decoder = recognizer.make_test_decoder(kind=opts["decoder"], beam_size=opts["beam_size"])
    warps = recognizer.test_warps if opts["warps"] is None else opts["warps"]
    for path in args.files:
        out, stats = transcribe(model, path, mode=opts["mode"], chunk_seconds=opts["chunk_seconds"],
                                overlap_seconds=opts["overlap_seconds"], decoder=decoder,
                                block_seconds=opts["block_seconds"], warps=warps, warp_seconds=opts["warp_seconds"],
                                step_seconds=opts["step_seconds"], pause_seconds=opts["pause_seconds"])
        meta = {"audio": str(path), "ckpt_path": str(opts["ckpt_path"]), "mode": opts["mode"],
                "decoder": opts["decoder"], **stats}
        text = format_transcript(out, args.format, meta)
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
        print(f"{path}: {stats['duration']:.1f} s of audio in {stats['seconds']:.1f} s "
              f"(real-time factor {stats['real_time_factor']:.4f}, mode={opts['mode']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
