"""``python -m vision.benchmark``: dense vs efficient attention in the vision app, side by side.

Two measurements, each written as ``<outdir>/<tag>_*.csv`` and ``.md`` (default ``benchmarks/results/vision_*``):

**Accuracy at the same budget** (default mode). Each variant (default dense, local, bigbird, linear)
trains the same model on the built-in MegaMNIST task with the same seed, data and steps, through the
shared ``train(cfg)`` (config ``conf/vision.yaml`` plus ``attention=<variant>`` and your overrides),
each in a fresh ``python -m vision.benchmark --worker`` process so that peak memories are separate.
Reported: test accuracy of the best checkpoint, training samples/s (compute only, after warm-up),
peak RSS of the process (or the CUDA allocator's peak), parameters, steps and fit time::

    python -m vision.benchmark                                   # the default vision run, 4 variants
    python -m vision.benchmark --variants dense,local data.image_size=1024 trainer.max_epochs=5

**Step speed at high resolution** (``--step-speed``). At each image size (default 1024 and 2048: 4,096
and 16,384 patches of 16 px) one training step (forward + backward, batch 1, median of ``--repeats``
after ``--warmup``) of the same ViT (d=384, 6 heads, ``--depth`` blocks, MLP 4x, patch embedding, mean
pooling) is timed with dense, local (``--window`` each side) and bigbird (``--block-size`` blocks, 3
window + 2 global + 3 random). Next to the measured speed-up over dense stands the FLOP ratio: the
step's FLOPs (patch embedding, q/k/v/out projections, MLP, and 4 d per visible (query, key) pair,
counted exactly from the pattern; backward = 2x forward) for dense divided by the variant's, and whether
the speed-up reaches 0.75x that ratio::

    python -m vision.benchmark --step-speed --sizes 1024,2048 --depth 2 --threads 2

``--quick`` shrinks both to seconds (a 160 px canvas and one step; 128/256 px step sizes): a smoke test of
the tables, not a measurement.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from core_attn.errors import run_main

ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "VISION_BENCH_RESULT "
VARIANTS = ("dense", "local", "bigbird", "linear")
STEP_VARIANTS = ("dense", "local", "bigbird")
# 160 px canvas at patch 8: 400 tokens, enough for bigbird's default 64-token blocks (3 window + 2 global)
QUICK_OVERRIDES = [
    "data.image_size=160", "data.digit_size=16", "data.clutter_size=4", "data.num_clutter=8",
    "data.train_samples=8", "data.val_samples=8", "data.test_samples=8", "data.batch_size=8",
    "model.patch_size=8", "model.dim=32", "model.depth=1", "model.num_heads=2", "trainer=fast",
    "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
]
WORKER_OVERRIDES = ["extras.print_config=false", "callbacks.rich_progress_bar=null"]
ACCURACY_COLUMNS = ["variant", "status", "test_acc", "train_samples_per_s", "peak_memory_mb", "params", "steps",
                    "fit_seconds", "wall_s", "note"]
STEP_COLUMNS = ["variant", "image_size", "tokens", "status", "step_ms", "step_ms_min", "speedup_vs_dense",
                "flop_ratio", "speedup_over_flop_ratio", "meets_0.75x", "gflop_per_step", "gflop_per_s", "note"]


# ---------------------------------------------------------------------------------------------------
# Accuracy at the same budget: one train(cfg) per variant, each in its own process
# ---------------------------------------------------------------------------------------------------
def train_job(spec: dict) -> dict:
    """The worker's job: compose ``conf/vision.yaml`` with ``attention=<variant>`` and the overrides, run
    ``train(cfg)`` in this process, return the metrics the table needs."""
    from hydra import compose, initialize_config_dir

    from core_attn.training import train
    from core_attn.training.cli import CONF_DIR

    overrides = [f"attention={spec['variant']}", f"seed={spec['seed']}", *WORKER_OVERRIDES, *spec["overrides"],
                 f"paths.output_dir={spec['output_dir']}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("vision", overrides=overrides)
    m = train(cfg)
    return {"status": m.get("status", "ok"), "test_acc": m.get("metric"), "train_samples_per_s": m.get("train_samples_per_s"),
            "peak_memory_mb": m.get("peak_memory_mb"), "params": m.get("params"), "steps": m.get("steps"),
            "fit_seconds": m.get("fit_seconds")}


def spawn(spec: dict, timeout: float | None, threads: int | None) -> dict:
    """Run ``spec`` in a fresh ``python -m vision.benchmark --worker`` process; its result, or the failure."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "vision.benchmark", "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=err, env=env, cwd=ROOT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "note": f"killed after {timeout:g} s", "wall_s": round(time.perf_counter() - t0, 1)}
        out.seek(0), err.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith(RESULT_TAG)]
        tail = err.read().strip().splitlines()
    wall = round(time.perf_counter() - t0, 1)
    if lines:
        return {**json.loads(lines[-1][len(RESULT_TAG):]), "wall_s": wall}
    return {"status": "error", "note": f"worker exit {proc.returncode}: {tail[-1][:300] if tail else ''}", "wall_s": wall}


def run_accuracy(variants: list[str], overrides: list[str], rundir: Path, *, seed: int = 0,
                 timeout: float | None = None, threads: int | None = None, log=print) -> list[dict]:
    """Train every variant with the same config, seed and overrides (run directories
    ``<rundir>/<variant>``: checkpoints, logs, metrics.json); one row per variant."""
    rows = []
    for i, variant in enumerate(variants):
        spec = {"kind": "train", "variant": variant, "seed": seed, "overrides": overrides,
                "output_dir": str(rundir / variant)}
        row = {"variant": variant, "note": "", **spawn(spec, timeout, threads)}
        rows.append(row)
        log(f"[{i + 1}/{len(variants)}] {variant}: {row['status']}"
            + (f", test acc {row['test_acc']}, {row['train_samples_per_s']} samples/s, "
               f"{row['peak_memory_mb']} MB" if row["status"] == "ok" else f" ({row.get('note', '')})"))
    return rows


# ---------------------------------------------------------------------------------------------------
# Step speed: the same ViT with dense, local and bigbird at high resolution
# ---------------------------------------------------------------------------------------------------
def variant_kwargs(variant: str, window: int, block_size: int) -> dict:
    """The benchmark budget of each variant: local ``window`` each side; bigbird ``block_size`` blocks,
    3 window + 2 global + 3 random (the reference configuration)."""
    from core_attn.validation import check_choice

    check_choice("variant", variant, STEP_VARIANTS)
    return {"dense": {}, "local": {"window": window},
            "bigbird": {"block_size": block_size, "num_window_blocks": 3, "num_global_blocks": 2,
                        "num_random_blocks": 3}}[variant]


def step_flops(n: int, pairs: int, *, dim: int, depth: int, mlp_ratio: float, patch_size: int, in_chans: int) -> float:
    """FLOPs of one training step (forward + backward = 3x forward) of the ViT at ``n`` tokens, batch 1.

    Forward: patch embedding 2 n p^2 C d; per block q, k, v and out projections 8 n d^2, MLP 4 n d h
    (h = mlp_ratio d), attention 4 d per visible (query, key) pair summed over heads (QK^T and PV);
    norms, softmax and the head are left out (lower order)."""
    hidden = round(dim * mlp_ratio)
    forward = 2.0 * n * patch_size ** 2 * in_chans * dim + depth * (8.0 * n * dim ** 2 + 4.0 * n * dim * hidden
                                                                    + 4.0 * dim * pairs)
    return 3.0 * forward


def visible_pairs(attn, n: int) -> int:
    """(query, key) pairs per head the variant computes at length ``n`` (exactly, from its pattern)."""
    from core_attn.attention.base import PatternAttention
    from core_attn.patterns import count_pairs

    if isinstance(attn, PatternAttention):
        return count_pairs(attn, n)[0]
    return n * n  # dense


def time_step(variant: str, image_size: int, args: argparse.Namespace) -> dict:
    """Median time of one forward + backward of the ViT at ``image_size`` with ``variant``; with its FLOPs."""
    from core_attn.registry import build_attention
    from vision.model import VisionTransformer

    kwargs = variant_kwargs(variant, args.window, args.block_size)
    torch.manual_seed(0)
    model = VisionTransformer(img_size=image_size, in_chans=3, num_classes=10, patch_size=args.patch_size, stem="patch",
                              dim=args.dim, depth=args.depth, num_heads=args.heads, mlp_ratio=4.0, pool="mean",
                              positions="learned", attention=functools.partial(build_attention, variant, **kwargs))
    model.train()
    n = model.patch_embed.num_patches
    x = torch.randn(1, 3, image_size, image_size)
    y = torch.zeros(1, dtype=torch.long)
    params = list(model.parameters())

    def step() -> float:
        t0 = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        dt = time.perf_counter() - t0
        for p in params:
            p.grad = None
        return dt * 1e3

    for _ in range(args.warmup):
        step()
    runs = [step() for _ in range(args.repeats)]
    attn = model.encoder.blocks[0].attn.attention
    flops = step_flops(n, visible_pairs(attn, n), dim=args.dim, depth=args.depth, mlp_ratio=4.0,
                       patch_size=args.patch_size, in_chans=3)
    ms = statistics.median(runs)
    return {"status": "ok", "tokens": n, "step_ms": round(ms, 2), "step_ms_min": round(min(runs), 2),
            "gflop_per_step": round(flops / 1e9, 3), "gflop_per_s": round(flops / ms / 1e6, 2), "_flops": flops}


def run_step_speed(args: argparse.Namespace, log=print) -> list[dict]:
    """Every (size, variant) case, then speed-ups and FLOP ratios against dense at the same size."""
    rows = []
    for size in args.sizes:
        by_variant = {}
        for variant in args.variants:
            row = {"variant": variant, "image_size": size, "tokens": (size // args.patch_size) ** 2, "note": ""}
            try:
                row.update(time_step(variant, size, args))
            except (ValueError, RuntimeError, MemoryError) as e:  # one failing case must not stop the table
                row.update(status="error", note=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            by_variant[variant] = row
            rows.append(row)
            log(f"{variant} {size}px ({row['tokens']} tokens): "
                + (f"{row['step_ms']:.1f} ms/step" if row["status"] == "ok" else row["note"]))
        dense = by_variant.get("dense")
        for variant, row in by_variant.items():
            if variant == "dense" or row["status"] != "ok" or not dense or dense["status"] != "ok":
                continue
            speedup = dense["step_ms"] / row["step_ms"]
            ratio = dense["_flops"] / row["_flops"]
            row.update(speedup_vs_dense=round(speedup, 3), flop_ratio=round(ratio, 3),
                       **{"speedup_over_flop_ratio": round(speedup / ratio, 3),
                          "meets_0.75x": "yes" if speedup >= 0.75 * ratio else "no"})
    return rows


# ---------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def write_tables(rows: list[dict], columns: list[str], outdir: Path, name: str, title: str, notes: list[str]) -> list[Path]:
    """``<outdir>/<name>.csv`` (``columns``) and ``<name>.md`` (``title``, ``notes`` as bullets, the table)."""
    outdir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = outdir / f"{name}.csv", outdir / f"{name}.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [f"# {title}", "", *[f"- {n}" for n in notes], "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def _machine() -> str:
    return (f"torch {torch.__version__}, Python {platform.python_version()}, {torch.get_num_threads()} threads, "
            f"{platform.processor() or platform.machine()}")


# ---------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------
def _csv_list(text: str, cast=str) -> list:
    return [cast(t.strip()) for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vision.benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every training run (accuracy mode)")
    p.add_argument("--variants", help=f"comma-separated (default {','.join(VARIANTS)}; step speed: "
                                      f"{','.join(STEP_VARIANTS)})")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    p.add_argument("--outdir", default=str(ROOT / "benchmarks" / "results"), help="where the tables go")
    p.add_argument("--tag", default="vision", help="file name prefix (default vision)")
    p.add_argument("--rundir", default=str(ROOT / "outputs" / "vision_benchmark"),
                   help="accuracy mode: the training runs go to <rundir>/<tag>/<variant> (default outputs/vision_benchmark)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per training run (default none)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and one step: a smoke test of the tables")
    p.add_argument("--step-speed", action="store_true", help="time training steps instead of training to accuracy")
    p.add_argument("--sizes", default="1024,2048", help="step speed: image sides in pixels (default 1024,2048)")
    p.add_argument("--depth", type=int, default=2, help="step speed: ViT blocks (default 2)")
    p.add_argument("--dim", type=int, default=384, help="step speed: model width (default 384)")
    p.add_argument("--heads", type=int, default=6, help="step speed: attention heads (default 6)")
    p.add_argument("--patch-size", type=int, default=16, help="step speed: patch side (default 16)")
    p.add_argument("--window", type=int, default=256, help="step speed: local window each side (default 256)")
    p.add_argument("--block-size", type=int, default=64, help="step speed: bigbird block size (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="step speed: timed steps, median reported (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="step speed: untimed steps first (default 1)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_intermixed_args(argv)  # overrides may stand before, between or after options
    default_variants = STEP_VARIANTS if args.step_speed else VARIANTS
    args.variants = _csv_list(args.variants) if args.variants else list(default_variants)
    args.sizes = _csv_list(args.sizes, int)
    if args.quick and args.step_speed:
        args.sizes, args.depth, args.dim, args.heads = [128, 256], 1, 32, 2
        args.window, args.block_size, args.repeats, args.warmup = 8, 8, 1, 1
    if args.step_speed and args.overrides:
        p.error(f"Hydra overrides {args.overrides} apply to the accuracy runs, not to --step-speed")
    if args.step_speed:
        unknown = [v for v in args.variants if v not in STEP_VARIANTS]
        if unknown:
            p.error(f"--step-speed compares {list(STEP_VARIANTS)} (exact patterns with countable pairs); got {unknown}")
    return args


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns 0 when every case ran."""
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            result = train_job(spec)
        except Exception as e:  # reported in the table: one failing variant must not stop the others
            result = {"status": "error", "note": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        print(RESULT_TAG + json.dumps(result, default=str), flush=True)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    outdir = Path(args.outdir)
    command = "python -m vision.benchmark " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.step_speed:
        rows = run_step_speed(args)
        notes = [f"Command: `{command}`", _machine(),
                 f"ViT: d={args.dim}, {args.heads} heads, depth {args.depth}, MLP 4x, patch {args.patch_size}, "
                 f"mean pooling, batch 1, fp32; local window {args.window} each side; bigbird blocks of "
                 f"{args.block_size} (3 window + 2 global + 3 random)",
                 f"Step: forward + backward (no optimizer), median of {args.repeats} after {args.warmup} warm-up",
                 "flop_ratio: dense step FLOPs / the variant's (exact visible pairs); "
                 "meets_0.75x: speed-up >= 0.75 x flop_ratio"]
        paths = write_tables(rows, STEP_COLUMNS, outdir, f"{args.tag}_step_speed", "Vision step speed", notes)
    else:
        overrides = [*(QUICK_OVERRIDES if args.quick else []), *args.overrides]
        rows = run_accuracy(args.variants, overrides, Path(args.rundir) / args.tag, seed=args.seed,
                            timeout=args.timeout, threads=args.threads)
        notes = [f"Command: `{command}`", _machine(),
                 f"Same config, seed {args.seed} and steps for every variant: `conf/vision.yaml` + "
                 f"`attention=<variant>`{' + ' + ' '.join(overrides) if overrides else ''}",
                 "Each variant in a fresh process; peak_memory_mb: its peak RSS (CUDA allocator peak on GPU); "
                 "train_samples_per_s: compute only, after warm-up; test_acc: best checkpoint by val/acc"]
        paths = write_tables(rows, ACCURACY_COLUMNS, outdir, f"{args.tag}_accuracy", "Vision: accuracy at the same budget",
                             notes)
    for path in paths:
        print(f"wrote {path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    run_main(main)
