"""One-pass transcription of a long recording: real-time factor and peak memory.

    python benchmarks/audio_longform.py --minutes 60 --threads 2            # default model size, untrained
    python benchmarks/audio_longform.py --minutes 60 --ckpt outputs/audio/.../checkpoints/last.ckpt
    python benchmarks/audio_longform.py --minutes 60 --ckpt ... --option decoder=greedy --option warps=1
    python benchmarks/audio_longform.py --minutes 600 --mode stream attention.global_tokens=[]  # constant memory

Builds a 16 kHz recording of ``--minutes`` by concatenating utterances of the built-in corpus (with
0.3-1.2 s pauses), makes a checkpoint of the default model size unless ``--ckpt`` is given (compute does
not depend on the weights), then runs ``python -m audio.transcribe`` on it in a child process and reports
its wall time, real-time factor and peak resident memory (the child's high-water mark).

Each run keeps its transcript as ``<workdir>/transcript_<minutes>min_<mode>.json``; with ``--compare MODE``
the words (text, start and end times) are compared with that mode's transcript of the same recording and
checkpoint, as streaming must give one pass's transcript word for word::

    python benchmarks/audio_longform.py --minutes 60 --ckpt last.ckpt --mode full --option decoder=greedy
    python benchmarks/audio_longform.py --minutes 60 --ckpt last.ckpt --mode stream --option decoder=greedy --compare full
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def make_recording(path: Path, minutes: float, data_dir: Path) -> float:
    """Write ``minutes`` of concatenated corpus speech to ``path`` (16-bit WAV); return its seconds."""
    from audio.data import SyntheticSpeechDataModule, read_manifest

    dm = SyntheticSpeechDataModule(cache_dir=str(data_dir / "audio" / "synthetic"))
    segs = read_manifest(dm.manifest("train"))
    rng = np.random.default_rng(0)
    target = int(minutes * 60 * 16000)
    written = 0
    with sf.SoundFile(str(path), "w", samplerate=16000, channels=1, subtype="PCM_16") as out:
        for seg in segs * 10:
            if written >= target:
                break
            wave, rate = sf.read(seg.audio, dtype="float32")
            assert rate == 16000
            piece = np.concatenate([wave, np.zeros(int(rng.uniform(0.3, 1.2) * 16000), np.float32)])[:target - written]
            out.write(piece)
            written += len(piece)
    return written / 16000


def compare_words(result: dict, other_path: Path, other_mode: str) -> dict:
    """Words of ``result`` against those of the transcript at ``other_path``: counts, how many are equal
    (text, start and end), and the first that differs."""
    if not other_path.is_file():
        raise SystemExit(f"--compare {other_mode}: {other_path} is missing: run --mode {other_mode} on the same "
                         "recording and checkpoint first")
    other = json.loads(other_path.read_text())
    if other.get("ckpt_path") != result.get("ckpt_path"):
        raise SystemExit(f"--compare {other_mode}: {other_path} was made with another checkpoint")
    a, b = result["words"], other["words"]
    equal = sum(x == y for x, y in zip(a, b))
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))
    return {"mode": other_mode, "words": len(a), "other_words": len(b), "equal_words": equal,
            "identical": first is None, "first_difference": None if first is None else
            {"index": first, "this": a[first] if first < len(a) else None, "other": b[first] if first < len(b) else None}}


def make_checkpoint(path: Path, overrides: list[str]) -> None:
    """A checkpoint of an untrained model of the configured size (``load_from_checkpoint`` reads it)."""
    import lightning
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("audio", overrides=[*overrides, "paths.output_dir=."])
    module = instantiate(cfg.module, _recursive_=False, _convert_="all")
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    print(f"untrained checkpoint ({sum(p.numel() for p in module.parameters()) / 1e6:.2f}M parameters): {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", default="full", choices=("full", "chunked", "stream"))
    p.add_argument("--ckpt", default=None)
    p.add_argument("--workdir", default="/tmp/audio_longform")
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--compare", default=None, choices=("full", "chunked", "stream"),
                   help="compare the words with this mode's earlier transcript of the same recording and checkpoint")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an audio.transcribe option (repeatable), e.g. --option decoder=greedy --option warps=1")
    p.add_argument("overrides", nargs="*", help="config overrides for the untrained model, e.g. attention.window=32")
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    wav = work / f"speech_{args.minutes:g}min.wav"
    if not wav.is_file():
        seconds = make_recording(wav, args.minutes, Path(args.data_dir))
        print(f"recording: {seconds / 60:.1f} min, {wav.stat().st_size / 2**20:.0f} MiB: {wav}")
    ckpt = Path(args.ckpt) if args.ckpt else work / "untrained.ckpt"
    if not args.ckpt:
        make_checkpoint(ckpt, args.overrides)
    transcript = work / f"transcript_{args.minutes:g}min_{args.mode}.json"
    cmd = [sys.executable, "-m", "audio.transcribe", str(wav), f"ckpt_path={ckpt}", f"threads={args.threads}",
           f"mode={args.mode}", *args.option, "--format", "json", "--output", str(transcript)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_mb = usage.ru_maxrss / 1024
    result = json.loads(transcript.read_text())
    out = {"minutes": round(result["duration"] / 60, 2), "mode": args.mode, "threads": args.threads,
           "decoder": result.get("decoder"), "warp": result.get("warp"),
           "transcribe_seconds": result["seconds"], "real_time_factor": result["real_time_factor"],
           "process_wall_seconds": round(wall, 1), "process_real_time_factor": round(wall / result["duration"], 5),
           "process_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),  # both threads: ~2x wall when idle
           "peak_rss_mb": round(peak_mb, 1), "words": len(result["words"]), "ckpt": str(ckpt),
           "command": " ".join(cmd)}
    if args.compare:
        out["compare"] = compare_words(result, work / f"transcript_{args.minutes:g}min_{args.compare}.json",
                                       args.compare)
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
