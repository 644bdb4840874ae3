"""Long-form real speech: the clips of a manifest joined into one recording and transcribed in one pass,
beside the same clips transcribed one by one.

    python benchmarks/asr_longform_real.py data/audio/asterisk/test.jsonl --ckpt outputs/audio/<run>/checkpoints/last.ckpt
    python benchmarks/asr_longform_real.py data/audio/asterisk/test.jsonl --ckpt ... --option word_list=pocketsphinx \
        --out benchmarks/results/asr_longform_asterisk

The clips (in manifest order) are joined with ``--pause`` seconds of silence into one 16 kHz 16-bit WAV,
written with its reference transcript (the clips' normalised texts, joined) to ``--workdir``. The
checkpoint transcribes that recording in one pass (:func:`audio.transcribe.transcribe`, as
``python -m audio.transcribe`` does: the warp that scores best on the first minute serves the whole
recording) and each clip on its own (``asr_peer.run_model``, as ``benchmarks/asr_peer.py`` does: the
best-scoring warp per clip), with the same decoder and lexicon; both are scored with the same
normalisation and corpus WER/CER. Threads follow ``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def join_clips(clips: list[dict], wav: Path, pause: float, rate: int = 16000) -> float:
    """Write the clips one after another, ``pause`` seconds of silence between them, as a 16-bit WAV at
    ``rate``; return its length in seconds."""
    import numpy as np
    import soundfile as sf
    from asr_peer import _wave

    silence = np.zeros(round(pause * rate), np.float32)
    samples = 0
    wav.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(wav), "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        for i, clip in enumerate(clips):
            piece = np.clip(_wave(clip, rate), -1.0, 1.0)
            if i:
                out.write(silence)
                samples += len(silence)
            out.write(piece)
            samples += len(piece)
    return samples / rate


def one_pass(wav: Path, ckpt: str, options: dict, mode: str, pause_seconds: float) -> tuple[str, dict]:
    """The checkpoint's transcript of the whole recording in one pass (a beam decoder restarting its word
    sequence after pauses of ``pause_seconds``), and its timing stats."""
    from asr_peer import load_model

    from audio.transcribe import transcribe

    recognizer, warps = load_model(ckpt, options)
    out, stats = transcribe(recognizer.net, wav, mode=mode, decoder=recognizer.make_test_decoder(), warps=warps,
                            pause_seconds=pause_seconds)
    return out.text, {**stats, "decoder": recognizer.hparams.decoder}


def table(report: dict) -> str:
    lines = [(f"{report['clips']} clips of `{report['manifest']}`, {report['minutes']:.2f} min joined with "
             f"{report['pause']:g} s pauses into `{report['wav']}`"), "",
             "| transcription | WER % | CER % | real-time factor |", "|---|---|---|---|"]
    for name, r in report["rows"].items():
        lines.append(f"| {name} | {100 * r['wer']:.2f} | {100 * r['cer']:.2f} | {r['rtf']:.4f} |")
    lines += ["", f"one pass minus clip by clip: {report['one_pass_minus_clips_wer_points']:+.2f} WER points"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Example: python benchmarks/asr_longform_real.py data/audio/asterisk/test.jsonl "
                                       "--ckpt last.ckpt")
    p.add_argument("manifest", help="a JSONL manifest whose clips are joined (e.g. the test split)")
    p.add_argument("--ckpt", required=True, help="the audio app's training checkpoint")
    p.add_argument("--pause", type=float, default=0.5, help="seconds of silence between clips (default: 0.5)")
    p.add_argument("--mode", default="full", choices=("full", "chunked"), help="audio.transcribe's mode (default: full)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="decoding settings for both, e.g. decoder=greedy, lexicon=train.jsonl, word_list=pocketsphinx, "
                        "lm=train, lm_weight=0.5, word_score=1, warps=1.0 (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="only the first N clips (a quick look)")
    p.add_argument("--workdir", default="/tmp/asr_longform_real", help="where the joined WAV and its transcripts go")
    p.add_argument("--out", default=None, help="also write the table (.md) and a .json beside it")
    args = p.parse_args(argv)
    if args.pause < 0:
        p.error(f"--pause={args.pause} must be >= 0 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for path in (str(ROOT / "benchmarks"), str(ROOT)):  # run as a script from anywhere; asr_peer beside it
        if path not in sys.path:
            sys.path.insert(0, path)
    from asr_peer import _clips, run_model

    from audio.decoding import error_rates
    from audio.text import normalize_text
    from audio.transcribe import PAUSE_SECONDS, typed_option
    from core_attn.validation import check_float

    options = dict(o.split("=", 1) for o in args.option)
    try:  # audio.transcribe's option, not the checkpoint's; checked before the clip-by-clip pass
        pause_seconds = typed_option("pause_seconds", options.pop("pause_seconds", str(PAUSE_SECONDS)))
        check_float("pause_seconds", pause_seconds, min_value=0.0)
    except ValueError as e:
        raise SystemExit(f"--option {e}") from None
    clips = _clips(args.manifest)[:args.limit]
    refs = [normalize_text(c["text"]) for c in clips]
    work = Path(args.workdir)
    wav = work / f"{Path(args.manifest).stem}_joined.wav"
    seconds = join_clips(clips, wav, args.pause)
    reference = " ".join(r for r in refs if r)
    wav.with_suffix(".txt").write_text(reference + "\n", encoding="utf-8")

    hyps, clip_seconds, _ = run_model(clips, args.ckpt, dict(options))
    hyps = [normalize_text(h) for h in hyps]
    text, stats = one_pass(wav, args.ckpt, options, args.mode, pause_seconds)
    text = normalize_text(text)
    wav.with_suffix(".hyp.txt").write_text(text + "\n", encoding="utf-8")

    rows = {"clip by clip": {**error_rates(hyps, refs), "rtf": clip_seconds / (seconds - args.pause * (len(clips) - 1))},
            f"one pass ({args.mode})": {**error_rates([text], [reference]), "rtf": stats["real_time_factor"]}}
    one, each = rows[f"one pass ({args.mode})"], rows["clip by clip"]
    report = {"manifest": args.manifest, "clips": len(clips), "minutes": round(seconds / 60, 3), "pause": args.pause,
              "wav": str(wav), "reference": str(wav.with_suffix(".txt")), "decoder": stats["decoder"],
              "warp": stats.get("warp"), "pause_seconds": pause_seconds, "rows": rows,
              "one_pass_minus_clips_wer_points": round(100 * (one["wer"] - each["wer"]), 2)}
    text_table = table(report)
    print(text_table)
    if args.out:
        from asr_peer import write_outputs

        write_outputs(args.out, text_table, report, "python benchmarks/asr_longform_real.py "
                      + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
