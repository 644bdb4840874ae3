"""``python -m core_attn.bench``: time and memory of every attention *layer* against its peers.

Each case (variant, N, mode, dtype) runs in a fresh worker process (``python -m core_attn.bench --worker
'<json>'``) that builds a layer of d_model 512, 8 heads x 64, batch 1 (projections included), runs
``--warmup`` untimed calls, then times ``--repeats`` calls (forward under ``no_grad``, or forward plus
``out.sum().backward()``) and reports the median, and its peak RSS (``ru_maxrss``) minus the RSS after
imports, layer and input creation (with ``--device cuda``: the peak of ``torch.cuda.max_memory_allocated``
minus the memory allocated after layer and input creation; every timed call ends with a synchronize). Workers past ``--timeout`` seconds or ``--memory-limit-gb`` are killed
and recorded as ``timeout`` / ``oom``; the variant's larger N are then skipped.

The same run measures the machine's dense GEMM throughput (a worker too) and reports each case's
*useful* GFLOP/s, the FLOPs its pattern requires (not the padded blocks it computes), as a percentage
of it. Peers (HF Longformer and BigBird, the ``local-attention`` package, compiled FlexAttention; see
:mod:`core_attn.bench.peers`) run when their packages are installed (the ``bench`` extra).

Outputs: a console table; ``<outdir>/<tag>.csv`` and ``.md``; ``<tag>_time.png`` and ``<tag>_memory.png``
(log-log, one line per variant); with ``--check-targets``, PASS/FAIL lines for the performance targets.

Example:
    python -m core_attn.bench --variants local,bigbird,dense,peers --lengths 1k,4k,16k --threads 2
    python -m core_attn.bench --device cuda --variants local,bigbird,dense,flex_local --lengths 16k,64k,128k
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import os
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from core_attn import attention as _attention  # noqa: F401  (registers the variants)
from core_attn.attention.base import PatternAttention
from core_attn.bench import report
from core_attn.bench.budgets import BUDGETS, DIM, HEAD_DIM, HEADS
from core_attn.bench.peers import PEERS, build_peer, peer_installed, run_length
from core_attn.patterns import count_pairs
from core_attn.registry import build_attention, get_attention_class, list_attention
from core_attn.validation import check_float, check_int, did_you_mean

DEFAULT_LENGTHS = (1024, 4096, 16384, 65536, 131072)
QUICK_LENGTHS = (512, 1024)
MODES = ("fwd", "fwdbwd")
DTYPES = ("fp32", "bf16")
GEMM_SIZES = (2048, 3072, 4096)
GEMM_SIZES_CUDA = (4096, 8192)
GEMM_TIMEOUT_S = 600.0
RESULT_TAG = "BENCH_RESULT "
ROOT = Path(__file__).resolve().parents[2]  # the checkout (holds core_attn/): the workers import this copy

# Filled from the layer when a variant requires them (as TransformerEncoder does).
CONTEXT_KEYS = ("num_heads", "head_dim", "max_seq_len")


# ---------------------------------------------------------------------------------------------------
# Variants, pairs and useful FLOPs
# ---------------------------------------------------------------------------------------------------
def attention_kwargs(name: str, n: int, window: int) -> dict:
    """The hyper-parameters ``name`` is built with at length ``n``: its budget plus the layer context
    (num_heads, head_dim, max_seq_len) it requires."""
    kwargs = dict(BUDGETS.get(name, lambda w: {})(window))
    params = inspect.signature(get_attention_class(name)).parameters
    context = {"num_heads": HEADS, "head_dim": HEAD_DIM, "max_seq_len": n}
    for key in CONTEXT_KEYS:
        if key in params and key not in kwargs and params[key].default is inspect.Parameter.empty:
            kwargs[key] = context[key]
    return kwargs


def make_attention(name: str, n: int, window: int):
    """Our variant ``name`` at the benchmark budget for length ``n``."""
    return build_attention(name, **attention_kwargs(name, n, window))


def attention_pairs(attn, n: int) -> tuple[int | None, int | None]:
    """``count_pairs`` for pattern variants, ``N^2`` (or the causal triangle) for dense, else ``None``."""
    if isinstance(attn, PatternAttention):
        return count_pairs(attn, n)
    if attn.name == "dense":
        pairs = n * (n + 1) // 2 if attn.causal else n * n
        return pairs, n * n
    return None, None


def useful_flops(name: str, kwargs: dict, n: int, pairs: int | None) -> float | None:
    """Forward FLOPs the layer needs at length ``n`` (backward counts 2x, so fwd+bwd is 3x).

    Projections: 4 maps (q, k, v, out) of 2 N d^2 each. Attention, summed over heads: 4 D per visible
    pair for pattern and dense variants (``pairs``), else the variant's own FLOP model
    (:meth:`~core_attn.attention.base.AttentionBase.flops_per_head` at ``kwargs``); ``None`` (reported
    "n/a") for a variant without one or a name not registered.
    """
    proj = 4 * 2.0 * n * DIM * DIM
    if pairs is not None:
        return proj + 4.0 * HEAD_DIM * pairs * HEADS
    if name not in list_attention():
        return None
    per_head = get_attention_class(name).flops_per_head(n, HEAD_DIM, kwargs)
    return None if per_head is None else proj + per_head * HEADS


# ---------------------------------------------------------------------------------------------------
# The worker: one case in a fresh process
# ---------------------------------------------------------------------------------------------------
def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs no wait)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _backend_of(layer: torch.nn.Module, train: bool, n: int, device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> str:
    attn = getattr(layer, "attention", None)
    if isinstance(attn, PatternAttention):
        # auto's choice depends on the length, the device and the dtype (autocast's, for bf16 runs)
        probe = torch.zeros(1, 1, n, HEAD_DIM, device=device, dtype=dtype, requires_grad=train)  # (flex: head dim >= 16)
        with torch.set_grad_enabled(train):
            return attn.select_backend(probe, probe, probe)
    return "sdpa" if getattr(attn, "name", None) == "dense" else "eager"


def build_layer(variant: str, n: int, window: int, train: bool, device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, str]:
    """The layer of a case (on ``device``) and the name of the backend that runs its attention."""
    if variant in PEERS:
        return build_peer(variant, n, DIM, HEADS, window).to(device), PEERS[variant].backend
    from core_attn.layers import MultiheadAttention

    layer = MultiheadAttention(DIM, HEADS, attention=make_attention(variant, n, window)).to(device)
    return layer, _backend_of(layer, train, n, device, dtype)


def run_case(spec: dict) -> dict:
    """Time one case in this process (the worker's job); returns the JSON-able result."""
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec.get("device", "cpu"))
    cuda = device.type == "cuda"
    n, train, bf16 = spec["n"], spec["mode"] == "fwdbwd", spec["dtype"] == "bf16"
    layer, backend = build_layer(spec["variant"], n, spec["window"], train, str(device),
                                 torch.bfloat16 if bf16 else torch.float32)
    x = torch.randn(1, n, DIM, device=device, requires_grad=train)
    params = list(layer.parameters())

    def step() -> float:
        synchronize(device)
        t0 = time.perf_counter()
        with torch.set_grad_enabled(train):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = layer(x)
            if train:
                out.sum().backward()
        synchronize(device)
        dt = time.perf_counter() - t0
        for p in params + [x]:
            p.grad = None
        return dt * 1e3

    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device) / 2**20
    else:
        baseline = _maxrss_mb()
    first = [step() for _ in range(spec["warmup"])]
    runs = [step() for _ in range(spec["repeats"])]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _maxrss_mb()
    return {"status": "ok", "backend": backend, "ms": statistics.median(runs), "ms_min": min(runs),
            "ms_runs": runs, "first_call_ms": first[0] if first else None, "peak_mb": peak - baseline,
            "peak_abs_mb": peak, "baseline_mb": baseline}


def run_gemm(spec: dict) -> dict:
    """Dense square matmul throughput: per size the median of ``repeats`` after one warm-up call;
    the peak is the best size's median."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    out = {}
    for dtype in spec["dtypes"]:
        by_size = {}
        for s in spec["sizes"]:
            a = torch.randn(s, s, device=device).to(torch.bfloat16 if dtype == "bf16" else torch.float32)
            b = torch.randn(s, s, device=device).to(a.dtype)
            torch.matmul(a, b)
            ts = []
            for _ in range(spec["repeats"]):
                synchronize(device)
                t0 = time.perf_counter()
                torch.matmul(a, b)
                synchronize(device)
                ts.append(time.perf_counter() - t0)
            by_size[s] = 2.0 * s ** 3 / statistics.median(ts) / 1e9
        out[dtype] = {"peak_gflops": max(by_size.values()), "by_size": by_size}
    return {"status": "ok", "gemm": out}


def _classify_error(e: BaseException) -> str:
    msg = str(e).lower()
    oom = isinstance(e, MemoryError) or "can't allocate memory" in msg or "out of memory" in msg
    return "oom" if oom else "error"


def worker_main(spec_json: str) -> int:
    """Entry of ``--worker``: run one case (or the GEMM probe) and print one ``BENCH_RESULT`` JSON line."""
    spec = json.loads(spec_json)
    try:
        result = run_gemm(spec) if spec.get("kind") == "gemm" else run_case(spec)
    except Exception as e:  # reported in the table, not raised: one failing case must not stop the run
        result = {"status": _classify_error(e), "note": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------
# The parent: spawn, watch, skip
# ---------------------------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _worker_env(threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"  # no pool of compile workers beside the timed process
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return env


def spawn_worker(spec: dict, timeout: float | None, memory_limit_mb: float | None) -> dict:
    """Run ``spec`` in a fresh ``python -m core_attn.bench --worker`` process; kill it (and its process
    group) past ``timeout`` seconds of wall time (start-up included) or ``memory_limit_mb`` of RSS."""
    cmd = [sys.executable, "-m", "core_attn.bench", "--worker", json.dumps(spec)]
    with tempfile.TemporaryDirectory() as tmp:
        out_p, err_p = Path(tmp) / "out", Path(tmp) / "err"
        with open(out_p, "w") as fo, open(err_p, "w") as fe:
            proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=_worker_env(spec["threads"]), cwd=ROOT,
                                    start_new_session=True)
            start, killed, top = time.perf_counter(), None, 0.0
            while proc.poll() is None:
                top = max(top, _rss_mb(proc.pid))
                if timeout is not None and time.perf_counter() - start > timeout:
                    killed = ("timeout", f"killed after {timeout:g} s")
                elif memory_limit_mb is not None and top > memory_limit_mb:
                    killed = ("oom", f"killed at RSS {top:.0f} MB > limit {memory_limit_mb:.0f} MB")
                if killed:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    break
                time.sleep(0.05)
        wall = time.perf_counter() - start
        if killed:
            return {"status": killed[0], "note": killed[1], "wall_s": wall}
        lines = [ln for ln in out_p.read_text().splitlines() if ln.startswith(RESULT_TAG)]
        if lines:
            result = json.loads(lines[-1][len(RESULT_TAG):])
            result["wall_s"] = wall
            return result
        err = err_p.read_text().strip().splitlines()
        status = "oom" if proc.returncode == -signal.SIGKILL else "error"
        return {"status": status, "note": f"worker exit {proc.returncode}: {err[-1][:300] if err else ''}",
                "wall_s": wall}


@dataclass
class Config:
    """What one benchmark run covers (see :func:`parse_args` for the meaning of each field)."""

    variants: list[str]
    lengths: list[int]
    dtypes: list[str]
    modes: list[str]
    threads: int = 2
    repeats: int = 3
    warmup: int = 1
    window: int = 256
    timeout: float | None = 300.0
    memory_limit_mb: float | None = None
    device: str = "cpu"


def case_spec(cfg: Config, variant: str, n: int, mode: str, dtype: str) -> dict:
    """The JSON-able description of one case that a worker runs."""
    return {"kind": "case", "variant": variant, "n": n, "mode": mode, "dtype": dtype, "threads": cfg.threads,
            "warmup": cfg.warmup, "repeats": cfg.repeats, "window": cfg.window, "device": cfg.device}


def _static_status(variant: str, mode: str, device: str = "cpu") -> tuple[str, str] | None:
    """Why a case cannot run at all (peer not installed, variant not registered, mode unsupported)."""
    if variant in PEERS:
        if not peer_installed(variant):
            return "not installed", f"needs `{PEERS[variant].package}` (pip install 'longattn[bench]')"
        if device == "cpu" and mode not in PEERS[variant].modes:
            return "unsupported", f"{variant} has no {mode} on CPU (torch 2.9 FlexAttention: forward only)"
        return None
    if variant not in list_attention():
        return "not registered", f"no attention variant {variant!r} registered yet"
    return None


def run_cases(cfg: Config, runner=spawn_worker, log=print) -> list[dict]:
    """Every case of ``cfg``, in order dtype > variant > N > mode. A variant that times out or runs out
    of memory at N skips its larger N (and, after a forward failure, the fwd+bwd of N as well)."""
    rows: list[dict] = []
    failed: dict[tuple, tuple[int, str]] = {}  # (variant, dtype, mode) -> (first failing N, status)
    total = len(cfg.dtypes) * len(cfg.variants) * len(cfg.lengths) * len(cfg.modes)
    for dtype in cfg.dtypes:
        for variant in cfg.variants:
            for n in sorted(cfg.lengths):
                for mode in cfg.modes:
                    row = {"variant": variant, "kind": "peer" if variant in PEERS else "project", "n": n,
                           "mode": mode, "dtype": dtype, "threads": cfg.threads, "device": cfg.device,
                           "note": ""}
                    static = _static_status(variant, mode, cfg.device)
                    prior = [failed.get((variant, dtype, m)) for m in {mode, "fwd"}]
                    prior = [f for f in prior if f is not None and f[0] <= n]
                    if static:
                        row["status"], row["note"] = static
                    elif prior:
                        row["status"], row["note"] = "skipped", f"after {prior[0][1]} at N={prior[0][0]}"
                    else:
                        row.update(runner(case_spec(cfg, variant, n, mode, dtype), cfg.timeout, cfg.memory_limit_mb))
                        if row["status"] in ("timeout", "oom"):
                            failed[(variant, dtype, mode)] = (n, row["status"])
                    rows.append(row)
                    if not static or (n == min(cfg.lengths) and mode == cfg.modes[0]):
                        log(_progress(len(rows), total, row))
    return rows


def _progress(i: int, total: int, row: dict) -> str:
    what = f"[{i}/{total}] {row['variant']} N={row['n']} {row['mode']} {row['dtype']}: "
    if row["status"] == "ok":
        return what + f"{row['ms']:.1f} ms, {row['peak_mb']:.0f} MB"
    return what + row["status"] + (f" ({row['note']})" if row.get("note") else "")


def annotate(rows: list[dict], cfg: Config, gemm: dict | None) -> None:
    """Add run length, pattern pairs, useful FLOPs, GFLOP/s and % of the GEMM peak to each row."""
    cache: dict = {}
    cpu = report.cpu_model()
    for row in rows:
        row["cpu"] = cpu  # every result names the CPU and its ISA flags (the kernels' speed depends on them)
        variant, n = row["variant"], row["n"]
        ref = PEERS[variant].ref if variant in PEERS else variant
        row["n_run"] = run_length(variant, n, cfg.window) if variant in PEERS else n
        if variant in PEERS:
            row["kwargs"] = json.dumps({"window": cfg.window} if ref == "local" else BUDGETS["bigbird"](cfg.window))
        if ref not in list_attention():
            continue
        if (ref, n) not in cache:
            try:
                kwargs = attention_kwargs(ref, n, cfg.window)
                pairs, computed = attention_pairs(build_attention(ref, **kwargs), n)
                cache[(ref, n)] = (kwargs, pairs, computed, useful_flops(ref, kwargs, n, pairs))
            except ValueError as e:  # e.g. a window longer than N: the case itself reports the error
                cache[(ref, n)] = ({}, None, None, None)
                row["note"] = row["note"] or str(e)
        kwargs, pairs, computed, flops = cache[(ref, n)]
        row.setdefault("kwargs", json.dumps(kwargs))
        row["pairs"], row["computed_pairs"] = pairs, (computed if variant not in PEERS else None)
        if flops is None:
            continue
        flops *= 3 if row["mode"] == "fwdbwd" else 1
        row["useful_gflop"] = flops / 1e9
        if row["status"] == "ok":
            row["useful_gflops"] = flops / 1e9 / (row["ms"] / 1e3)
            peak = (gemm or {}).get(row["dtype"], {}).get("peak_gflops")
            if peak:
                row["pct_gemm_peak"] = 100.0 * row["useful_gflops"] / peak


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------
def _parse_lengths(text: str) -> list[int]:
    out = []
    for tok in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"(\d+)([kK]?)", tok)
        if not m:
            raise ValueError(f"--lengths: {tok!r} is not a length; expected integers like 1024 or 16k")
        out.append(check_int("--lengths", int(m.group(1)) * (1024 if m.group(2) else 1), min_value=1))
    if not out:
        raise ValueError("--lengths is empty; expected e.g. 1024,4096,16384")
    return sorted(set(out))


def _parse_device(text: str) -> str:
    """``--device``: cpu, cuda or cuda:N, and CUDA only where torch sees that GPU."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise ValueError(f"--device: {text!r} is not allowed; expected cpu, cuda or cuda:N")
    if text.startswith("cuda"):
        index = int(text.split(":")[1]) if ":" in text else 0
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise ValueError(f"--device={text}: torch sees {count} CUDA device(s) here; use --device cpu")
    return text


def _parse_list(name: str, text: str, allowed) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    for item in items:
        if item not in allowed:
            raise ValueError(f"{name}: {item!r} is not allowed; expected one of {list(allowed)}.{did_you_mean(item, allowed)}")
    if not items:
        raise ValueError(f"{name} is empty; expected some of {list(allowed)}")
    return items


def resolve_variants(text: str) -> list[str]:
    """Expand ``--variants``: names, ``project`` (every registered variant), ``peers``, ``all``."""
    pending = [v for v in BUDGETS if v not in list_attention()]  # reported "not registered" until they land
    groups = {"project": list_attention() + pending, "peers": list(PEERS),
              "all": list_attention() + pending + list(PEERS)}
    known = sorted(set(list_attention()) | set(BUDGETS) | set(PEERS) | set(groups))
    out: list[str] = []
    for item in _parse_list("--variants", text, known):
        for v in groups.get(item, [item]):
            if v not in out:
                out.append(v)
    return out


def _default_memory_limit_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            info = {ln.split(":")[0]: int(ln.split()[1]) for ln in f}
        return 0.8 * info["MemAvailable"] / 1024.0
    except (OSError, KeyError, ValueError):
        return None


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m core_attn.bench`` options."""
    p = argparse.ArgumentParser(prog="python -m core_attn.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="all",
                   help="comma list of variants and peers, or the groups project, peers, all (default: all)")
    p.add_argument("--lengths", default=None, help="comma list of N, e.g. 1k,4k,16k,64k (default: 1k..128k)")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 (autocast on CPU) or fp32,bf16 for both")
    p.add_argument("--mode", default="both", choices=["fwd", "fwdbwd", "both"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N): where the layers and inputs live")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case, median reported (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (compile for FlexAttention)")
    p.add_argument("--window", type=int, default=256, help="keys on each side: the shared pattern budget")
    p.add_argument("--outdir", default="benchmarks/results")
    p.add_argument("--tag", default=None, help="output file stem (default bench-<date>-<time>)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per case, worker start-up included")
    p.add_argument("--memory-limit-gb", type=float, default=None,
                   help="kill a worker past this RSS (default: 80%% of the memory available at start)")
    p.add_argument("--no-gemm", action="store_true", help="skip the GEMM peak (no %% of peak column)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--check-targets", action="store_true", help="print PASS/FAIL for the performance targets")
    p.add_argument("--quick", action="store_true", help="tiny run for tests: N=512,1024, 1 repeat, small GEMM")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str]) -> tuple[Config, argparse.Namespace]:
    """Validate the command line into a :class:`Config` (``ValueError`` naming the bad option)."""
    a = build_parser().parse_args(argv)
    lengths = _parse_lengths(a.lengths) if a.lengths else list(QUICK_LENGTHS if a.quick else DEFAULT_LENGTHS)
    repeats = a.repeats if a.repeats is not None else (1 if a.quick else 3)
    limit = a.memory_limit_gb * 1024.0 if a.memory_limit_gb is not None else _default_memory_limit_mb()
    cfg = Config(
        variants=resolve_variants(a.variants), lengths=lengths, dtypes=_parse_list("--dtype", a.dtype, DTYPES),
        modes=list(MODES) if a.mode == "both" else [a.mode], threads=check_int("--threads", a.threads, min_value=1),
        repeats=check_int("--repeats", repeats, min_value=1), warmup=check_int("--warmup", a.warmup, min_value=0),
        window=check_int("--window", a.window, min_value=1),
        timeout=check_float("--timeout", a.timeout, min_value=0.0) or None,
        memory_limit_mb=None if limit is None else check_float("--memory-limit-gb", limit, min_value=0.0),
        device=_parse_device(a.device),
    )
    if "flex_local" in cfg.variants and cfg.warmup < 1:
        raise ValueError("--warmup=0 would time flex_local's compilation; use --warmup >= 1")
    return cfg, a


def measure_gemm(cfg: Config, quick: bool) -> dict | None:
    """The GEMM peak per dtype of the run (fp32 always), measured in a worker with the run's threads."""
    sizes = [512, 1024] if quick else list(GEMM_SIZES_CUDA if cfg.device.startswith("cuda") else GEMM_SIZES)
    spec = {"kind": "gemm", "threads": cfg.threads, "dtypes": sorted(set(cfg.dtypes) | {"fp32"}),
            "sizes": sizes, "repeats": 1 if quick else (10 if cfg.device.startswith("cuda") else 3),
            "device": cfg.device}
    res = spawn_worker(spec, GEMM_TIMEOUT_S, cfg.memory_limit_mb)
    if res.get("status") != "ok":
        print(f"GEMM peak: {res.get('status')} ({res.get('note', '')})", flush=True)
        return None
    return res["gemm"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark described by ``argv``; returns the exit code (1 when a checked target fails)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1])

    cfg, a = parse_args(argv)
    tag = a.tag or time.strftime("bench-%Y%m%d-%H%M%S")
    outdir = Path(a.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    gemm = None if a.no_gemm else measure_gemm(cfg, a.quick)
    if gemm:
        print("GEMM peak: " + ", ".join(f"{d} {g['peak_gflops']:.1f} GFLOP/s" for d, g in gemm.items()), flush=True)
    rows = run_cases(cfg, log=lambda s: print(s, flush=True))
    annotate(rows, cfg, gemm)
    report.add_comparisons(rows)
    targets = report.check_targets(rows, cfg, gemm) if a.check_targets else []
    command = "python -m core_attn.bench " + shlex.join(argv)
    print(report.console_report(rows, targets))
    paths = report.write_outputs(rows, cfg, gemm, targets, outdir, tag, command, plots=not a.no_plots)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 1 if any(status == "FAIL" for status, _ in targets) else 0
