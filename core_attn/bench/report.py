"""Reports of ``python -m core_attn.bench``: comparisons, target checks, table, CSV, Markdown and plots.

Ratios are speed-ups, ``other time / this time`` (above 1: this case is faster), and memory ratios
``this peak / other peak`` (below 1: this case uses less), both at the same N, mode and dtype. Memory is
the worker's peak RSS minus its RSS after imports, layer and input creation. matplotlib is imported
inside :func:`plot`.
"""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path

import torch

from core_attn.bench.budgets import BUDGETS, DIM, HEAD_DIM, HEADS, is_linear
from core_attn.bench.peers import PEERS
from core_attn.registry import get_attention_class, list_attention

COLUMNS = ["variant", "kind", "backend", "n", "n_run", "mode", "dtype", "threads", "device", "cpu", "status", "ms",
           "ms_min", "ms_runs", "first_call_ms", "peak_mb", "peak_abs_mb", "baseline_mb", "pairs", "computed_pairs",
           "useful_gflop", "useful_gflops", "pct_gemm_peak", "x_vs_fastest_peer", "fastest_peer",
           "mem_vs_fastest_peer", "x_vs_dense", "kwargs", "note", "wall_s"]
TARGET_N = 16384
TARGET_THREADS = 2


def _ok(rows: list[dict]) -> dict:
    return {(r["variant"], r["n"], r["mode"], r["dtype"]): r for r in rows if r["status"] == "ok"}


def _fastest_peer(rows: list[dict], n: int, mode: str, dtype: str) -> dict | None:
    peers = [r for r in rows if r["kind"] == "peer" and r["status"] == "ok" and (r["n"], r["mode"], r["dtype"]) == (n, mode, dtype)]
    return min(peers, key=lambda r: r["ms"]) if peers else None


def add_comparisons(rows: list[dict]) -> None:
    """Speed-up of each project case over the fastest peer and over dense, and its memory ratio."""
    ok = _ok(rows)
    for r in rows:
        if r["status"] != "ok" or r["kind"] != "project":
            continue
        fp = _fastest_peer(rows, r["n"], r["mode"], r["dtype"])
        if fp is not None:
            r["fastest_peer"] = fp["variant"]
            r["x_vs_fastest_peer"] = fp["ms"] / r["ms"]
            r["mem_vs_fastest_peer"] = r["peak_mb"] / fp["peak_mb"] if fp["peak_mb"] > 0 else None
        dense = ok.get(("dense", r["n"], r["mode"], r["dtype"]))
        if dense is not None and r["variant"] != "dense":
            r["x_vs_dense"] = dense["ms"] / r["ms"]


def peer_pairs(rows: list[dict]) -> list[dict]:
    """Each peer against our variant with the same pattern budget, per N, mode and dtype."""
    ok = _ok(rows)
    out = []
    for p in rows:
        if p["kind"] != "peer" or p["status"] != "ok":
            continue
        ours = ok.get((PEERS[p["variant"]].ref, p["n"], p["mode"], p["dtype"]))
        if ours is not None:
            out.append({"ours": ours["variant"], "peer": p["variant"], "n": p["n"], "mode": p["mode"],
                        "dtype": p["dtype"], "ours_ms": ours["ms"], "peer_ms": p["ms"], "speedup": p["ms"] / ours["ms"],
                        "mem_ratio": ours["peak_mb"] / p["peak_mb"] if p["peak_mb"] > 0 else None})
    return out


def bf16_speedups(rows: list[dict]) -> list[dict]:
    """fp32 time / bf16 time for every case run in both dtypes."""
    ok = _ok(rows)
    return [{"variant": r["variant"], "n": r["n"], "mode": r["mode"], "fp32_ms": r["ms"],
             "bf16_ms": ok[(r["variant"], r["n"], r["mode"], "bf16")]["ms"],
             "speedup": r["ms"] / ok[(r["variant"], r["n"], r["mode"], "bf16")]["ms"]}
            for r in rows if r["status"] == "ok" and r["dtype"] == "fp32" and (r["variant"], r["n"], r["mode"], "bf16") in ok]


def check_targets(rows: list[dict], cfg, gemm: dict | None) -> list[tuple[str, str]]:
    """The performance targets (fp32, 2 threads, N=16384, window 256 each side) that this run covers, as
    ``(PASS|FAIL|N/A|INFO, text)``."""
    ok, n, out = _ok(rows), TARGET_N, []
    where = f"fp32, N={n}"
    if cfg.threads != TARGET_THREADS or cfg.window != 256:
        where += f" (this run: threads={cfg.threads}, window={cfg.window}; targets are stated for 2 and 256)"

    def check(name: str, need: list, cond, detail) -> None:
        if any(x is None for x in need):
            out.append(("N/A", f"{name}: not covered by this run"))
        else:
            out.append(("PASS" if cond() else "FAIL", f"{name}: {detail()} [{where}]"))

    local_fb, local_f = ok.get(("local", n, "fwdbwd", "fp32")), ok.get(("local", n, "fwd", "fp32"))
    fp = _fastest_peer(rows, n, "fwdbwd", "fp32")
    dense, flex = ok.get(("dense", n, "fwdbwd", "fp32")), ok.get(("flex_local", n, "fwd", "fp32"))
    bb, hfbb = ok.get(("bigbird", n, "fwdbwd", "fp32")), ok.get(("hf_bigbird", n, "fwdbwd", "fp32"))
    check("local fwd+bwd >= 2x faster than the fastest peer", [local_fb, fp],
          lambda: fp["ms"] / local_fb["ms"] >= 2,
          lambda: f"{fp['ms'] / local_fb['ms']:.2f}x vs {fp['variant']} ({local_fb['ms']:.0f} vs {fp['ms']:.0f} ms)")
    check("local fwd+bwd >= 10x faster than dense SDPA", [local_fb, dense], lambda: dense["ms"] / local_fb["ms"] >= 10,
          lambda: f"{dense['ms'] / local_fb['ms']:.2f}x ({local_fb['ms']:.0f} vs {dense['ms']:.0f} ms)")
    check("local fwd+bwd peak memory <= the fastest peer's", [local_fb, fp], lambda: local_fb["peak_mb"] <= fp["peak_mb"],
          lambda: f"{local_fb['peak_mb']:.0f} MB vs {fp['variant']} {fp['peak_mb']:.0f} MB")
    check("local forward no slower than compiled FlexAttention", [local_f, flex], lambda: local_f["ms"] <= flex["ms"],
          lambda: f"{local_f['ms']:.0f} vs {flex['ms']:.0f} ms ({flex['ms'] / local_f['ms']:.2f}x)")
    check("bigbird fwd+bwd >= 4x faster than HF BigBird with <= 1/4 its memory", [bb, hfbb],
          lambda: hfbb["ms"] / bb["ms"] >= 4 and bb["peak_mb"] <= hfbb["peak_mb"] / 4,
          lambda: f"{hfbb['ms'] / bb['ms']:.2f}x faster, memory {bb['peak_mb']:.0f} vs {hfbb['peak_mb']:.0f} MB "
                  f"({bb['peak_mb'] / max(hfbb['peak_mb'], 1e-9):.2f})")
    peak = (gemm or {}).get("fp32", {}).get("peak_gflops")
    useful = local_fb.get("useful_gflops") if local_fb else None
    check("local fwd+bwd useful throughput >= 80% of the GEMM peak", [useful, peak], lambda: useful >= 0.8 * peak,
          lambda: f"{useful:.1f} of {peak:.1f} GFLOP/s ({100 * useful / peak:.1f}%; 85% the moonshot)")
    for v in list_attention():
        if v in cfg.variants and is_linear_variant(v):
            for mode in cfg.modes:
                a, b = ok.get((v, n, mode, "fp32")), ok.get((v, 4 * n, mode, "fp32"))
                check(f"{v} {mode} time(64k)/time(16k) <= 4.5", [a, b], lambda a=a, b=b: b["ms"] / a["ms"] <= 4.5,
                      lambda a=a, b=b: f"{b['ms'] / a['ms']:.2f} ({a['ms']:.0f} -> {b['ms']:.0f} ms)")
    sp = [s for s in bf16_speedups(rows) if s["n"] == n]
    native = cfg.device == "cpu" and bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    for s in sp:  # the target where the CPU multiplies bf16 natively; elsewhere the figure alone
        name = f"{s['variant']} {s['mode']} bf16 >= 1.8x fp32"
        if s["variant"] == "local" and s["mode"] == "fwdbwd" and native:
            check(name, [s], lambda s=s: s["speedup"] >= 1.8,
                  lambda s=s: f"{s['speedup']:.2f}x ({s['fp32_ms']:.0f} vs {s['bf16_ms']:.0f} ms)")
        else:
            out.append(("INFO", f"bf16 vs fp32 {s['variant']} {s['mode']} N={n}: {s['speedup']:.2f}x"
                        + ("" if native else " (this CPU has no AVX512-BF16 or AMX: no target)")))
    if not sp:
        out.append(("N/A", f"bf16 vs fp32 speed-up: not covered by this run (needs --dtype fp32,bf16 at N={n})"))
    return out


def is_linear_variant(name: str) -> bool:
    return is_linear(get_attention_class(name).time_complexity)


# ---------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------
def _f(x, fmt: str = "{:.1f}") -> str:
    return "" if x is None else fmt.format(x)


ABSENT = ("not installed", "not registered")  # listed once in the notes, not per case in the tables


def _table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    rows = [r for r in rows if r["status"] not in ABSENT]
    head = ["variant", "backend", "N", "mode", "dtype", "status", "ms", "peak MB", "GFLOP/s", "% peak",
            "x vs fastest peer", "x vs dense"]
    body = [[r["variant"], r.get("backend") or "", str(r["n"]), r["mode"], r["dtype"], r["status"], _f(r.get("ms")),
             _f(r.get("peak_mb"), "{:.0f}"), _f(r.get("useful_gflops")), _f(r.get("pct_gemm_peak")),
             _f(r.get("x_vs_fastest_peer"), "{:.2f}") + (f" ({r['fastest_peer']})" if r.get("fastest_peer") else ""),
             _f(r.get("x_vs_dense"), "{:.2f}")] for r in rows]
    return head, body


def _text_table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def _md_table(head: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(b) + " |" for b in body])


def _peer_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["mode", "dtype", "N", "ours", "peer", "ours ms", "peer ms", "x faster", "memory ours/peer"]
    body = [[p["mode"], p["dtype"], str(p["n"]), p["ours"], p["peer"], _f(p["ours_ms"]), _f(p["peer_ms"]),
             _f(p["speedup"], "{:.2f}"), _f(p["mem_ratio"], "{:.2f}")] for p in peer_pairs(rows)]
    return head, body


def _absent_notes(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(f"{r['variant']}: {r['status']} ({r['note']})" for r in rows if r["status"] in ABSENT))


def _compile_notes(rows: list[dict]) -> list[str]:
    """The first (untimed) call of compiled peers: compilation and block-mask creation."""
    return [f"{r['variant']} N={r['n']} {r['dtype']}: first call (compile + BlockMask) {r['first_call_ms'] / 1e3:.1f} s, "
            f"then {r['ms']:.0f} ms" for r in rows
            if r["status"] == "ok" and r["variant"] == "flex_local" and r.get("first_call_ms") is not None]


def console_report(rows: list[dict], targets: list[tuple[str, str]]) -> str:
    """The results table, the peer comparison and the target verdicts as text."""
    parts = [_text_table(*_table_rows(rows))]
    extra = _absent_notes(rows) + _compile_notes(rows)
    if extra:
        parts += [""] + extra
    head, body = _peer_table(rows)
    if body:
        parts += ["", "Peers (x faster = peer time / our time; memory = our peak / peer peak):", _text_table(head, body)]
    sp = bf16_speedups(rows)
    if sp:
        parts += ["", "bf16 vs fp32 (fp32 time / bf16 time):"]
        parts += [f"  {s['variant']} N={s['n']} {s['mode']}: {s['speedup']:.2f}x" for s in sp]
    if targets:
        parts += ["", "Targets:"] + [f"  {status}  {text}" for status, text in targets]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------
def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (";".join(f"{x:.3f}" for x in v) if isinstance(v, list) else ("" if v is None else v))
                        for k, v in r.items()})


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")  # the ones that decide the kernels' speed


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where unknown)."""
    return set(next((ln.split(":", 1)[1].split() for ln in _cpuinfo().splitlines() if ln.startswith("flags")), []))


def cpu_model() -> str:
    """The CPU model name and its AVX2 / AVX-512 / BF16 / AMX flags, from /proc/cpuinfo."""
    text = _cpuinfo()
    if not text:
        return platform.processor() or "unknown"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "unknown")
    flags = cpu_flags()
    shown = [f for f in ISA_FLAGS if f in flags]
    return f"{model} ({', '.join(shown) or 'no AVX2'})"


def _device_name(device: str) -> str:
    """``cpu``, or the CUDA device's name as torch reports it."""
    if device == "cpu" or not torch.cuda.is_available():
        return device
    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def write_markdown(rows, cfg, gemm, targets, path: Path, command: str, images: list[Path]) -> None:
    gemm_txt = "not measured" if not gemm else "; ".join(
        f"{d} {g['peak_gflops']:.1f} GFLOP/s (" + ", ".join(f"{s}: {v:.0f}" for s, v in g["by_size"].items()) + ")"
        for d, g in gemm.items())
    lines = [f"# core_attn benchmark `{path.stem}`", "", f"Command: `{command}`", "",
             f"- torch {torch.__version__}, Python {platform.python_version()}, threads {cfg.threads}",
             f"- CPU: {cpu_model()}",
             f"- Device: {_device_name(cfg.device)}",
             f"- GEMM peak (square matmul, median per size, best size): {gemm_txt}",
             f"- Layer: d_model {DIM}, {HEADS} heads x {HEAD_DIM}, batch 1, projections included; window budget "
             f"{cfg.window} each side; {cfg.warmup} warm-up call(s), median of {cfg.repeats}; timeout "
             f"{cfg.timeout} s per case; memory limit {_f(cfg.memory_limit_mb, '{:.0f}')} MB",
             ("- Memory: peak RSS of the case's fresh worker minus its RSS after imports, layer and input creation "
              "(`peak_abs_mb` in the CSV is the absolute peak)." if cfg.device == "cpu" else
              "- Memory: peak `torch.cuda.max_memory_allocated` of the case's fresh worker minus the memory allocated "
              "after layer and input creation (`peak_abs_mb` in the CSV is the absolute peak)."),
             "- Useful GFLOP/s: the FLOPs the pattern requires (4 projections + 4 x head_dim per visible pair "
             "and head; fwd+bwd = 3x fwd), not the padded blocks computed; peers get those of our variant with "
             "the same pattern budget.", "", "## Results", "", _md_table(*_table_rows(rows))]
    head, body = _peer_table(rows)
    if body:
        lines += ["", "## Against the peers", "", "x faster = peer time / our time; memory = our peak / peer peak.",
                  "", _md_table(head, body)]
    sp = bf16_speedups(rows)
    if sp:
        lines += ["", "## bf16 vs fp32", "", _md_table(["variant", "N", "mode", "fp32 ms", "bf16 ms", "speed-up"], [
            [s["variant"], str(s["n"]), s["mode"], _f(s["fp32_ms"]), _f(s["bf16_ms"]), _f(s["speedup"], "{:.2f}")]
            for s in sp])]
    if targets:
        lines += ["", "## Targets", ""] + [f"- **{status}** {text}" for status, text in targets]
    budgets = [f"- `{v}`: {json.dumps(BUDGETS[v](cfg.window)) if v in BUDGETS else 'defaults'}"
               for v in cfg.variants if v not in PEERS]
    peers = [f"- `{v}`: {PEERS[v].config} (same pattern as `{PEERS[v].ref}`)" for v in cfg.variants if v in PEERS]
    lines += ["", "## Configurations", ""] + budgets + peers
    notes = list(dict.fromkeys(f"- `{r['variant']}` N={r['n']} {r['mode']} {r['dtype']}: {r['status']}: {r['note']}"
                               for r in rows if r.get("note") and r["status"] not in ("ok",) + ABSENT))
    notes = [f"- {a}" for a in _absent_notes(rows) + _compile_notes(rows)] + notes
    if notes:
        lines += ["", "## Notes", ""] + notes
    lines += [""] + [f"![{p.stem}]({p.name})" for p in images]
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], base: Path) -> list[Path]:
    """``<base>_time.png`` and ``<base>_memory.png``: log-log against N, forward and forward+backward
    side by side, one line per variant (and dtype when several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    dtypes = sorted({r["dtype"] for r in ok})
    paths = []
    for key, label, scale, suffix in (("ms", "time per call (s)", 1e-3, "time"), ("peak_mb", "peak memory (MB)", 1.0, "memory")):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        for ax, mode, title in zip(axes, ("fwd", "fwdbwd"), ("forward", "forward + backward")):
            for variant in dict.fromkeys(r["variant"] for r in ok):
                for dtype in dtypes:
                    pts = sorted((r["n"], r[key] * scale) for r in ok
                                 if r["variant"] == variant and r["mode"] == mode and r["dtype"] == dtype and r[key] > 0)
                    if pts:
                        name = variant + (f" ({dtype})" if len(dtypes) > 1 else "")
                        style = "--" if variant in PEERS else "-"
                        ax.plot(*zip(*pts), style, marker="o", label=name)
            ax.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel=label, title=title)
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        fig.tight_layout()
        path = base.parent / f"{base.name}_{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_outputs(rows, cfg, gemm, targets, outdir: Path, tag: str, command: str, plots: bool = True) -> list[Path]:
    """Write ``<tag>.csv``, the plots and ``<tag>.md`` under ``outdir``; returns their paths."""
    csv_path, md_path = outdir / f"{tag}.csv", outdir / f"{tag}.md"
    write_csv(rows, csv_path)
    images = plot(rows, outdir / tag) if plots else []
    write_markdown(rows, cfg, gemm, targets, md_path, command, images)
    return [csv_path, md_path] + images
