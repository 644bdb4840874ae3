"""``python -m core_attn.bench``: pair counting, useful FLOPs, the case runner's skip logic, the worker
processes and the files a run writes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from core_attn import build_attention
from core_attn.bench import (BUDGETS, Config, attention_kwargs, is_linear, main, parse_args, resolve_variants,
                             run_cases, useful_flops)
from core_attn.bench import runner as bench
from core_attn.bench.report import COLUMNS, add_comparisons, check_targets
from core_attn.bench.runner import spawn_worker, worker_main
from core_attn.patterns import count_pairs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

PATTERNS = [
    ("local", {"window": 16}, 100),
    ("local", {"window": 16, "causal": True}, 100),
    ("local", {"window": 5, "dilation": 3, "global_tokens": [0, -1]}, 77),
    ("local", {"window": 40, "block_size": 16}, 100),  # the band spans several key blocks
    ("bigbird", {"block_size": 8}, 128),
    ("bigbird", {"block_size": 8, "causal": True}, 100),  # N not a multiple of the block
    ("sparse_fixed", {}, 100),
    ("sparse_fixed", {"causal": True, "num_summary": 2}, 90),
    ("sparse_strided", {}, 100),
    ("sparse_strided", {"causal": True}, 90),
]


@pytest.mark.parametrize("name,kwargs,n", PATTERNS)
def test_count_pairs_equals_the_dense_mask(name, kwargs, n):
    attn = build_attention(name, **kwargs)
    visible, computed = count_pairs(attn, n, chunk_elements=2048)  # small chunks: the chunk loop runs
    assert visible == int(attn.dense_mask(n).sum())
    assert computed >= visible


def test_count_pairs_rejects_per_head_positions():
    attn = build_attention("local", window=4)
    part = attn.parts(32, "cpu")[0]
    bad = type(part)(part.q_pos[None, None], part.k_pos, part.kv_index, part.block_q, part.block_k, part.mask)
    attn._parts_cache[(32, "cpu")] = [bad]
    with pytest.raises(ValueError, match="count_pairs needs positions shared by batch and heads"):
        count_pairs(attn, 32)


def test_useful_flops_of_local_and_dense():
    n = 4096
    local = build_attention("local", window=256)
    pairs, _ = count_pairs(local, n)
    # each of the n queries sees 513 keys, minus the 2 * (1 + ... + 256) cut off at both ends
    assert pairs == n * 513 - 256 * 257
    proj = 8.0 * n * 512 * 512
    assert useful_flops("local", {"window": 256}, n, pairs) == pytest.approx(proj + 4 * 64 * 8 * pairs)
    assert useful_flops("dense", {}, n, n * n) == pytest.approx(proj + 4 * 64 * 8 * n * n)
    # linear (elu, non-causal): 4 N m D + 4 N m per head with m = D
    assert useful_flops("linear", {"feature_map": "elu"}, n, None) == pytest.approx(proj + 8 * (4 * n * 64 * 64 + 4 * n * 64))
    # perceiver: encode M N + process M^2 + decode N M pairs
    assert useful_flops("perceiver", {"num_latents": 64, "latent_layers": 2}, n, None) == pytest.approx(
        proj + 8 * 4 * 64 * (2 * n * 64 + 2 * 64 * 64))
    assert useful_flops("not_a_variant", {}, n, None) is None  # no formula: "n/a"


def test_is_linear_reads_the_complexity_strings():
    for s in ("O(N w)", "O(N b (w + g + r))", "O(N m d)", "O(N M + M²)", "O(N k d)"):
        assert is_linear(s), s
    for s in ("O(N^2)", "O(N sqrt N)", "O(r N log N + r^2 N b)", "O(N s + (N/s)²)"):
        assert not is_linear(s), s


def test_attention_kwargs_follow_the_budget():
    assert attention_kwargs("local", 1024, 128) == {"window": 128}
    assert attention_kwargs("bigbird", 1024, 256) == BUDGETS["bigbird"](256)


def _cfg(**kw) -> Config:
    base = dict(variants=["local", "dense"], lengths=[512, 1024, 2048], dtypes=["fp32"], modes=["fwd", "fwdbwd"],
                repeats=1, warmup=0, timeout=5.0)
    base.update(kw)
    return Config(**base)


def test_run_cases_skips_larger_n_after_a_timeout_or_oom():
    calls = []

    def runner(spec, timeout, memory_limit_mb):
        calls.append((spec["variant"], spec["n"], spec["mode"]))
        if spec["variant"] == "local" and spec["n"] == 1024 and spec["mode"] == "fwd":
            return {"status": "timeout", "note": "killed"}
        if spec["variant"] == "dense" and spec["n"] == 1024 and spec["mode"] == "fwdbwd":
            return {"status": "oom", "note": "killed"}
        if spec["variant"] == "dense" and spec["n"] == 512:
            return {"status": "error", "note": "boom"}  # errors do not stop the larger N
        return {"status": "ok", "ms": 1.0, "peak_mb": 1.0}

    rows = run_cases(_cfg(), runner=runner, log=lambda s: None)
    status = {(r["variant"], r["n"], r["mode"]): r["status"] for r in rows}
    assert status[("local", 512, "fwd")] == "ok" and status[("local", 1024, "fwd")] == "timeout"
    # a forward timeout skips that N's fwd+bwd and every larger N
    assert status[("local", 1024, "fwdbwd")] == status[("local", 2048, "fwd")] == status[("local", 2048, "fwdbwd")] == "skipped"
    # a fwd+bwd out-of-memory skips larger fwd+bwd only
    assert status[("dense", 1024, "fwdbwd")] == "oom" and status[("dense", 2048, "fwdbwd")] == "skipped"
    assert status[("dense", 2048, "fwd")] == "ok" and status[("dense", 1024, "fwd")] == "ok"
    assert ("local", 2048, "fwd") not in calls and ("dense", 2048, "fwd") in calls
    skipped = next(r for r in rows if r["variant"] == "local" and r["n"] == 2048 and r["mode"] == "fwd")
    assert skipped["note"] == "after timeout at N=1024"


def test_run_cases_marks_absent_variants_and_unsupported_modes(monkeypatch):
    monkeypatch.setitem(BUDGETS, "not_a_variant_yet", lambda w: {})
    monkeypatch.setattr(bench, "peer_installed", lambda name: name == "flex_local")
    cfg = _cfg(variants=resolve_variants("not_a_variant_yet,hf_bigbird,flex_local"), lengths=[512])
    rows = run_cases(cfg, runner=lambda *a: {"status": "ok", "ms": 1.0, "peak_mb": 1.0}, log=lambda s: None)
    status = {(r["variant"], r["mode"]): r["status"] for r in rows}
    assert status[("not_a_variant_yet", "fwd")] == "not registered"
    assert status[("hf_bigbird", "fwdbwd")] == "not installed"
    assert status[("flex_local", "fwd")] == "ok" and status[("flex_local", "fwdbwd")] == "unsupported"


def test_spawn_worker_kills_on_timeout_and_memory_limit():
    spec = bench.case_spec(_cfg(), "local", 512, "fwd", "fp32")
    res = spawn_worker(spec, timeout=0.01, memory_limit_mb=None)
    assert res["status"] == "timeout" and "killed after" in res["note"]
    res = spawn_worker(spec, timeout=None, memory_limit_mb=1.0)  # any Python process exceeds 1 MB
    assert res["status"] == "oom" and "limit 1 MB" in res["note"]


def test_run_cases_with_real_workers_skip_after_a_timeout():
    rows = run_cases(_cfg(variants=["local"], lengths=[512, 1024], modes=["fwd"], timeout=0.01), log=lambda s: None)
    assert [r["status"] for r in rows] == ["timeout", "skipped"]


def test_worker_reports_errors_as_json(capsys):
    spec = bench.case_spec(_cfg(window=256), "local", 100, "fwd", "fp32")  # window longer than N
    assert worker_main(json.dumps(spec)) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(bench.RESULT_TAG)
    res = json.loads(line[len(bench.RESULT_TAG):])
    assert res["status"] == "error" and "window=256" in res["note"]


@pytest.mark.parametrize("argv,match", [
    (["--lengths", "1k,abc"], r"--lengths: 'abc' is not a length"),
    (["--lengths", ","], "--lengths is empty"),
    (["--variants", "locl"], r"--variants: 'locl' is not allowed.*Did you mean 'local'"),
    (["--dtype", "fp16"], r"--dtype: 'fp16' is not allowed"),
    (["--threads", "0"], r"--threads=0 is out of range"),
    (["--variants", "flex_local", "--warmup", "0"], "would time flex_local's compilation"),
    (["--device", "gpu"], r"--device: 'gpu' is not allowed; expected cpu, cuda or cuda:N"),
    (["--device", "cuda:99"], r"--device=cuda:99: torch sees \d+ CUDA device\(s\) here"),
])
def test_bad_options_raise(argv, match):
    with pytest.raises(ValueError, match=match):
        parse_args(argv)


def test_parse_args_quick_and_groups():
    cfg, _ = parse_args(["--quick", "--variants", "local,peers", "--dtype", "fp32,bf16", "--mode", "fwd"])
    assert cfg.lengths == [512, 1024] and cfg.repeats == 1 and cfg.modes == ["fwd"]
    assert cfg.variants[0] == "local" and "hf_longformer" in cfg.variants and cfg.dtypes == ["fp32", "bf16"]
    cfg, _ = parse_args(["--lengths", "16k,1024,1k"])
    assert cfg.lengths == [1024, 16384]


def test_targets_pass_and_fail_on_synthetic_rows():
    cfg = _cfg(variants=["local", "dense", "hf_longformer", "flex_local"], threads=2)
    n = 16384

    def row(variant, mode, ms, mb, kind="project"):
        return {"variant": variant, "kind": kind, "n": n, "mode": mode, "dtype": "fp32", "status": "ok", "ms": ms,
                "peak_mb": mb, "useful_gflops": 155 / (ms / 1e3) if variant == "local" else None}

    rows = [row("local", "fwdbwd", 1000.0, 500.0), row("local", "fwd", 300.0, 100.0), row("dense", "fwdbwd", 31000.0, 900.0),
            row("hf_longformer", "fwdbwd", 1500.0, 2500.0, "peer"), row("flex_local", "fwd", 1000.0, 4700.0, "peer")]
    add_comparisons(rows)
    assert rows[0]["fastest_peer"] == "hf_longformer" and rows[0]["x_vs_fastest_peer"] == pytest.approx(1.5)
    verdicts = {text.split(":")[0]: status for status, text in check_targets(rows, cfg, {"fp32": {"peak_gflops": 180.0}})}
    assert verdicts["local fwd+bwd >= 2x faster than the fastest peer"] == "FAIL"  # 1.5x
    assert verdicts["local fwd+bwd >= 10x faster than dense SDPA"] == "PASS"
    assert verdicts["local fwd+bwd peak memory <= the fastest peer's"] == "PASS"
    assert verdicts["local forward no slower than compiled FlexAttention"] == "PASS"
    assert verdicts["local fwd+bwd useful throughput >= 80% of the GEMM peak"] == "PASS"  # 155 of 180
    assert verdicts["bigbird fwd+bwd >= 4x faster than HF BigBird with <= 1/4 its memory"] == "N/A"
    rows[0]["useful_gflops"] = 140.0
    verdicts = {text.split(":")[0]: status for status, text in check_targets(rows, cfg, {"fp32": {"peak_gflops": 180.0}})}
    assert verdicts["local fwd+bwd useful throughput >= 80% of the GEMM peak"] == "FAIL"  # 78%


@pytest.mark.parametrize("flags,expected", [({"avx2", "avx512f", "avx512_bf16"}, "FAIL"), ({"avx2"}, "INFO")])
def test_bf16_target_applies_where_the_cpu_has_native_bf16(flags, expected, monkeypatch):
    from core_attn.bench import report

    monkeypatch.setattr(report, "cpu_flags", lambda: flags)
    cfg = _cfg(variants=["local"], threads=2)
    rows = [{"variant": "local", "kind": "project", "n": 16384, "mode": "fwdbwd", "dtype": dt, "status": "ok", "ms": ms,
             "peak_mb": 1.0} for dt, ms in (("fp32", 1000.0), ("bf16", 670.0))]  # 1.49x
    out = [(status, text) for status, text in check_targets(rows, cfg, None) if "bf16" in text]
    assert len(out) == 1 and out[0][0] == expected and "1.49x" in out[0][1]


def test_main_quick_writes_csv_markdown_and_plots(tmp_path, capsys):
    out = tmp_path / "results"
    rc = main(["--quick", "--variants", "local,dense", "--mode", "fwdbwd", "--lengths", "1024", "--outdir", str(out),
               "--tag", "t", "--check-targets"])
    assert rc == 0
    with open(out / "t.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert [(r["variant"], r["n"], r["mode"], r["status"]) for r in rows] == [
        ("local", "1024", "fwdbwd", "ok"), ("dense", "1024", "fwdbwd", "ok")]
    local, dense = rows
    from core_attn import native

    local_backend = "native" if native.library() is not None else "blocked"
    assert local["backend"] == local_backend and dense["backend"] == "sdpa"
    assert int(local["pairs"]) == int(build_attention("local", window=256).dense_mask(1024).sum())
    assert int(dense["pairs"]) == 1024 * 1024
    for r in rows:
        assert float(r["ms"]) > 0 and float(r["peak_abs_mb"]) > float(r["peak_mb"]) >= 0
        assert float(r["pct_gemm_peak"]) > 0 and float(r["useful_gflops"]) > 0
    assert float(local["x_vs_dense"]) == pytest.approx(float(dense["ms"]) / float(local["ms"]))
    md = (out / "t.md").read_text()
    assert "python -m core_attn.bench --quick --variants local,dense" in md and "GEMM peak" in md
    assert "torch " + torch.__version__ in md and "## Targets" in md
    for name in ("t_time.png", "t_memory.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert "GEMM peak: fp32" in printed and "N/A  local fwd+bwd >= 2x faster" in printed


@pytest.mark.slow
def test_main_quick_as_documented(tmp_path):
    assert main(["--quick", "--variants", "local,dense", "--outdir", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*.png"))) == 2 and len(list(tmp_path.glob("*.csv"))) == 1


@pytest.mark.slow
def test_peers_compute_our_local_pattern():
    """The local-window peers, given our weights, reproduce our local layer; HF BigBird runs fwd+bwd."""
    pytest.importorskip("transformers")
    pytest.importorskip("local_attention")
    from core_attn.bench.peers import build_peer
    from core_attn.layers import MultiheadAttention

    for n in (1024, 700):  # 700: Longformer pads to 1024, local-attention autopads
        ours = MultiheadAttention(512, 8, attention=build_attention("local", window=256))
        x = torch.randn(1, n, 512)
        ref = ours(x)
        sd = ours.state_dict()
        for name in ("local_attention_pkg", "hf_longformer", "flex_local"):
            peer = build_peer(name, n, 512, 8, 256)
            if name == "hf_longformer":
                w, b = sd["qkv.weight"].chunk(3), sd["qkv.bias"].chunk(3)
                for i, key in enumerate(("query", "key", "value")):
                    getattr(peer.attn, key).load_state_dict({"weight": w[i], "bias": b[i]})
                peer.proj.load_state_dict({"weight": sd["proj.weight"], "bias": sd["proj.bias"]})
            else:
                peer.load_state_dict(sd)
            with torch.no_grad():
                torch.testing.assert_close(peer(x), ref, atol=1e-5, rtol=1e-4, msg=f"{name} N={n}")
    peer = build_peer("hf_bigbird", 1024, 512, 8, 256)
    x = torch.randn(1, 1024, 512, requires_grad=True)
    peer(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_worker_path_is_the_checkout_not_the_package_folder():
    """The workers' PYTHONPATH puts the folder that holds ``core_attn/`` first: with ``core_attn/`` itself
    there, its modules (``kernels``, ``patterns``, ...) would shadow top-level packages of the same name
    (transformers imports the ``kernels`` package of the Hugging Face hub)."""
    from core_attn.bench.runner import _worker_env

    first = Path(_worker_env(1)["PYTHONPATH"].split(os.pathsep)[0])
    assert (first / "core_attn" / "__init__.py").is_file() and not (first / "kernels.py").exists()
