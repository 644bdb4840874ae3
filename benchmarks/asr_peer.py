"""Our speech model beside an offline peer recogniser (CMU PocketSphinx) on the same clips, one table.

    pip install -e '.[peer]'                                   # pocketsphinx 5.x (en-us model in the wheel)
    python benchmarks/asr_peer.py data/audio/asterisk/test.jsonl
    python benchmarks/asr_peer.py data/audio/asterisk/test.jsonl --ckpt outputs/audio/.../checkpoints/best.ckpt \
        --out benchmarks/results/asr_peer_asterisk.md

Every clip of the manifest (a JSONL manifest, :func:`audio.data.read_manifest`) is transcribed by each
recogniser; references and hypotheses go through the same normalisation (:func:`audio.text.normalize_text`)
and the same scoring (:func:`audio.decoding.error_rates`: corpus WER and CER). Each recogniser runs in its
own child process, so its peak resident memory is its own (VmHWM); the real-time factor is decoding time over
audio time, loading excluded. Our model decodes as its checkpoint says (decoder, lexicon, test warps),
as ``python -m audio.evaluate`` does; ``--option decoder=greedy`` and the like replace those settings
(``--option word_list=pocketsphinx`` adds the CMU dictionary's words to the lexicon, ``--option lm=train`` a
trigram of the training transcripts). With lexicon decoding, the table also gives the lexicon's size and the
share of the test words outside it. ``--recognisers model`` runs our model alone.

``--tune-lm`` picks the language model's ``lm_weight`` and ``word_score`` on the manifest (give it the
validation split, never the test split): each clip's log-probabilities are computed once per warp, then
decoded with every pair of ``--lm-weights`` x ``--word-scores``; the table gives WER/CER per pair and the best.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECOGNISERS = ("pocketsphinx", "model")


def _clips(manifest: str) -> list[dict]:
    from audio.data import read_manifest

    return [{"audio": s.audio, "text": s.text, "offset": s.offset, "duration": s.duration}
            for s in read_manifest(manifest)]


def _wave(clip: dict, rate: int):
    """Float32 mono samples of a clip at ``rate`` (numpy; torch only when it must resample)."""
    import numpy as np
    import soundfile as sf

    with sf.SoundFile(clip["audio"]) as f:
        f.seek(round(clip["offset"] * f.samplerate))
        n = -1 if clip["duration"] is None else round(clip["duration"] * f.samplerate)
        wave, got = f.read(n, dtype="float32", always_2d=True).mean(axis=1), f.samplerate
    if got != rate:
        import torch
        import torchaudio.functional as AF

        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), got, rate).numpy()
    return wave


def run_pocketsphinx(clips: list[dict]) -> tuple[list[str], float]:
    """PocketSphinx's en-us acoustic model, language model and dictionary, one utterance per clip."""
    import numpy as np
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16000)
    hyps, seconds = [], 0.0
    for clip in clips:
        pcm = (np.clip(_wave(clip, 16000), -1, 1) * 32767).astype(np.int16).tobytes()
        t0 = time.perf_counter()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        seconds += time.perf_counter() - t0
        hyps.append(hyp.hypstr if hyp is not None else "")
    return hyps, seconds


def typed_options(options: dict[str, str]) -> dict:
    """``--option`` values (text) as the module takes them: numbers for ``python -m audio.transcribe``'s numeric
    options (``beam_size``, ``lm_weight``, ``word_score``, ...), the rest as given."""
    from audio.transcribe import typed_option

    try:
        return {key: typed_option(key, value) for key, value in options.items()}
    except ValueError as e:
        raise SystemExit(f"--option {e}") from None


def load_model(ckpt: str, options: dict[str, str], **defaults):
    """Our recognizer with the ``--option`` settings over ``defaults`` (text typed as ``python -m
    audio.transcribe`` types it; threads from ``OMP_NUM_THREADS``), and the warps to try per clip (``warps=``,
    else the checkpoint's test warps)."""
    import torch

    from audio.transcribe import load_recognizer, parse_warps

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    typed = typed_options(options)
    warps = typed.pop("warps", None)
    recognizer = load_recognizer(ckpt, **{**defaults, **typed})
    return recognizer, parse_warps(str(warps)) if warps else (recognizer.test_warps or [1.0])


def run_model(clips: list[dict], ckpt: str, options: dict) -> tuple[list[str], float, dict]:
    """Our checkpoint, decoded per clip with its own decoder and test warps (as its test split is); the third
    value, for lexicon decoding, is the lexicon's size and the share of the clips' words outside it."""
    import torch

    from audio.module import oov_rate
    from audio.transcribe import best_warp, warp_log_probs

    recognizer, warps = load_model(ckpt, options)
    model, tok = recognizer.net, recognizer.tokenizer
    decoder = recognizer.make_test_decoder()
    lexicon = {}
    if recognizer.hparams.decoder == "lexicon":
        words = recognizer.decoding_words()
        lexicon = {"lexicon_words": len(words), "oov": oov_rate(words, [c["text"] for c in clips])}
    hyps, seconds = [], 0.0
    for clip in clips:
        wave = torch.from_numpy(_wave(clip, model.features.sample_rate))
        t0 = time.perf_counter()
        hyps.append(best_warp(decoder, warp_log_probs(model, wave, warps), tok))
        seconds += time.perf_counter() - t0
    return hyps, seconds, lexicon


def tune_lm(clips: list[dict], ckpt: str, options: dict, weights: list[float], scores: list[float]) -> list[dict]:
    """WER/CER of lexicon decoding over the clips for each ``lm_weight`` x ``word_score`` (the network runs once
    per clip and warp; the language model is built once)."""
    import torch

    from audio.decoding import error_rates, make_decoder
    from audio.text import normalize_text
    from audio.transcribe import best_warp, warp_log_probs

    recognizer, warps = load_model(ckpt, options, decoder="lexicon")
    if recognizer.hparams.decoder != "lexicon":
        raise SystemExit(f"--tune-lm tunes lexicon decoding; got --option decoder={recognizer.hparams.decoder}")
    model, tok, lm = recognizer.net, recognizer.tokenizer, recognizer.hparams.lm
    log_probs = [warp_log_probs(model, torch.from_numpy(_wave(c, model.features.sample_rate)), warps) for c in clips]
    refs = [normalize_text(c["text"]) for c in clips]
    words, rows = recognizer.decoding_words(), []
    with recognizer.lm_file(lm, words) as path:
        for weight in weights if lm else [0.0]:  # without a language model only the word score matters
            for score in scores:
                decoder = make_decoder("lexicon", tok, beam_size=recognizer.hparams.beam_size, words=words, lm=path,
                                       lm_weight=weight, word_score=score)
                hyps = [normalize_text(best_warp(decoder, lps, tok)) for lps in log_probs]
                rows.append({"lm_weight": weight, "word_score": score, **error_rates(hyps, refs)})
                print(f"lm_weight={weight:g} word_score={score:g}: WER {100 * rows[-1]['wer']:.2f}%", file=sys.stderr)
    return rows


def tune_table(rows: list[dict], manifest: str, options: list[str]) -> str:
    """WER % per lm_weight (rows) and word_score (columns), and the best pair (the lowest WER, then CER)."""
    scores = sorted({r["word_score"] for r in rows})
    lines = [f"lexicon decoding of `{manifest}` ({', '.join(options) or 'the checkpoint settings'}): WER %", "",
             "| lm_weight \\ word_score | " + " | ".join(f"{s:g}" for s in scores) + " |",
             "|---|" + "---|" * len(scores)]
    for weight in sorted({r["lm_weight"] for r in rows}):
        cells = {r["word_score"]: f"{100 * r['wer']:.2f}" for r in rows if r["lm_weight"] == weight}
        lines.append(f"| {weight:g} | " + " | ".join(cells.get(s, "") for s in scores) + " |")
    best = min(rows, key=lambda r: (r["wer"], r["cer"]))
    lines += ["", (f"best: lm_weight={best['lm_weight']:g} word_score={best['word_score']:g} (WER "
                   f"{100 * best['wer']:.2f}%, CER {100 * best['cer']:.2f}%): --option lm_weight={best['lm_weight']:g} "
                   f"--option word_score={best['word_score']:g}, or module.lm_weight / module.word_score")]
    return "\n".join(lines) + "\n"


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: Linux's VmHWM, which (unlike ``ru_maxrss``) does not count
    the parent's pages a child held between fork and exec."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """``--child NAME``: transcribe the clips in ``--clips`` with one recogniser, write JSON to ``--result``."""
    clips = json.loads(Path(args.clips).read_text())
    options = dict(o.split("=", 1) for o in args.option)
    hyps, seconds, *lexicon = (run_pocketsphinx(clips) if args.child == "pocketsphinx"
                               else run_model(clips, args.ckpt, options))
    Path(args.result).write_text(json.dumps({"hyps": hyps, "seconds": seconds, "peak_rss_mb": round(peak_rss_mb(), 1),
                                             **(lexicon[0] if lexicon else {})}))


def measure(name: str, clips_file: Path, args: argparse.Namespace, workdir: Path) -> dict:
    """Run one recogniser in a child process: its hypotheses, decoding seconds and peak RSS (MB)."""
    result = workdir / f"{name}.json"
    cmd = [sys.executable, __file__, args.manifest, "--child", name, "--clips", str(clips_file),
           "--result", str(result), *(["--ckpt", args.ckpt] if args.ckpt else []),
           *(x for o in args.option for x in ("--option", o))]
    proc = subprocess.run(cmd, cwd=ROOT, check=False, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads(result.read_text())


def table(rows: dict[str, dict], clips: int, minutes: float, manifest: str) -> str:
    lines = [f"{clips} clips, {minutes:.2f} min of audio from `{manifest}`", "",
             "| recogniser | WER % | CER % | real-time factor | peak RSS (MB) |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {100 * r['wer']:.2f} | {100 * r['cer']:.2f} | {r['rtf']:.3f} | {r['peak_rss_mb']:.0f} |")
    lines += [f"\n{name}: lexicon decoding over {r['lexicon_words']} words; {100 * r['oov']:.2f}% of the test words "
              "are outside the lexicon" for name, r in rows.items() if "oov" in r]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Example: python benchmarks/asr_peer.py data/audio/asterisk/test.jsonl --ckpt last.ckpt")
    p.add_argument("manifest", help="a JSONL manifest: every clip in it is transcribed (e.g. the test split)")
    p.add_argument("--ckpt", default=None, help="our model's training checkpoint; without it only the peer is run")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="our model's decoding settings, e.g. decoder=greedy, lexicon=words.txt (or train.jsonl), "
                        "word_list=pocketsphinx, lm=train, lm_weight=0.5, word_score=1, warps=1.0 (repeatable)")
    p.add_argument("--recognisers", nargs="+", choices=RECOGNISERS, default=list(RECOGNISERS),
                   help="which to run (default: both; model needs --ckpt)")
    p.add_argument("--tune-lm", action="store_true",
                   help="instead of the table: WER of our model's lexicon decoding on the manifest (the validation "
                        "split) for each --lm-weights x --word-scores, and the best pair")
    p.add_argument("--lm-weights", default="0,1,2,4,6", help="lm_weight values of --tune-lm (comma-separated)")
    p.add_argument("--word-scores", default="-1,0,1,2",
                   help="word_score values of --tune-lm (comma-separated; --word-scores=-1,0 when the first is negative)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each recogniser (default: 2)")
    p.add_argument("--limit", type=int, default=None, help="only the first N clips (a quick look)")
    p.add_argument("--out", default=None, help="also write the table (.md) and a .json beside it")
    p.add_argument("--child", choices=RECOGNISERS, help=argparse.SUPPRESS)
    p.add_argument("--clips", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if (args.tune_lm or set(args.recognisers) == {"model"}) and not args.ckpt:
        p.error("--ckpt is required with --tune-lm and with --recognisers model")
    try:
        args.lm_weights, args.word_scores = ([float(v) for v in x.split(",")] for x in (args.lm_weights, args.word_scores))
    except ValueError:
        p.error(f"--lm-weights={args.lm_weights!r} and --word-scores={args.word_scores!r} must be comma-separated numbers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere
    if args.child:
        child(args)
        return 0
    from audio.decoding import error_rates
    from audio.text import normalize_text

    clips = _clips(args.manifest)[:args.limit]
    if args.tune_lm:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        rows = tune_lm(clips, args.ckpt, dict(o.split("=", 1) for o in args.option), args.lm_weights, args.word_scores)
        return write_report(tune_table(rows, args.manifest, args.option), {"manifest": args.manifest, "rows": rows},
                            args)
    refs = [normalize_text(c["text"]) for c in clips]
    with tempfile.TemporaryDirectory(prefix="asr_peer-") as tmp:
        clips_file = Path(tmp) / "clips.json"
        clips_file.write_text(json.dumps(clips))
        seconds = sum(len(_wave(c, 16000)) for c in clips) / 16000
        rows = {}
        for name in (n for n in RECOGNISERS if n in args.recognisers and (n != "model" or args.ckpt)):
            r = measure(name, clips_file, args, Path(tmp))
            hyps = [normalize_text(h) for h in r["hyps"]]
            rows[name if name != "model" else f"ours ({Path(args.ckpt).name})"] = {
                **error_rates(hyps, refs), "rtf": r["seconds"] / seconds, "peak_rss_mb": r["peak_rss_mb"],
                **{k: r[k] for k in ("lexicon_words", "oov") if k in r},
                "examples": [{"ref": a, "hyp": b} for a, b in list(zip(refs, hyps))[:5]]}
    return write_report(table(rows, len(clips), seconds / 60, args.manifest),
                        {"clips": len(clips), "minutes": seconds / 60, "manifest": args.manifest,
                         "threads": args.threads, "rows": rows}, args)


def write_outputs(out: str, text: str, data: dict, command: str) -> None:
    """``<out>.md`` (the table ``text`` and the ``command`` behind it) and ``<out>.json`` (``data``); a trailing
    .md/.json of ``out`` is dropped, any other dot kept (``run_v1.2`` -> ``run_v1.2.md``)."""
    path = Path(out)
    path = path.with_suffix("") if path.suffix in (".md", ".json") else path
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{path}.md").write_text(text + f"\n`{command}`\n")
    Path(f"{path}.json").write_text(json.dumps(data, indent=2) + "\n")


def write_report(text: str, data: dict, args: argparse.Namespace) -> int:
    """Print the table; with ``--out``, also write it (.md, with the command) and ``data`` (.json)."""
    print(text)
    if args.out:
        write_outputs(args.out, text, data, f"python benchmarks/asr_peer.py {' '.join(sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
