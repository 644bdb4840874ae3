"""``python -m vision.benchmark``: the FLOP model, the step-speed table and the accuracy table (--quick)."""

from __future__ import annotations

import csv

import pytest
import torch

from core_attn import build_attention
from vision import benchmark as vb


def _rows(path):
    with open(path) as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_step_flops_by_hand():
    # n=4 tokens, d=2, 1 block, MLP 2x (h=4), patch 1, 1 channel, 10 pairs:
    # patch 2*4*1*1*2 = 16; projections 8*4*4 = 128; MLP 4*4*2*4 = 128; attention 4*2*10 = 80; x3 (fwd+bwd)
    assert vb.step_flops(4, 10, dim=2, depth=1, mlp_ratio=2.0, patch_size=1, in_chans=1) == 3 * (16 + 128 + 128 + 80)


@pytest.mark.parametrize("variant", ["dense", "local", "bigbird"])
def test_visible_pairs_match_the_dense_mask(variant):
    attn = build_attention(variant, **vb.variant_kwargs(variant, window=5, block_size=8))
    mask_sum = 64 * 64 if variant == "dense" else int(attn.dense_mask(64).sum())
    assert vb.visible_pairs(attn, 64) == mask_sum


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_step_speed_quick_writes_the_table(tmp_path, capsys, keep_threads):
    # one thread: tiny steps on a shared 2-core machine are otherwise dominated by thread hand-offs
    assert vb.main(["--step-speed", "--quick", "--outdir", str(tmp_path), "--tag", "t", "--threads", "1"]) == 0
    columns, rows = _rows(tmp_path / "t_step_speed.csv")
    assert columns == vb.STEP_COLUMNS
    assert [(r["variant"], r["image_size"], r["tokens"]) for r in rows] == [
        (v, str(s), str((s // 16) ** 2)) for s in (128, 256) for v in ("dense", "local", "bigbird")]
    assert all(r["status"] == "ok" and float(r["step_ms"]) > 0 for r in rows)
    for r in rows:
        if r["variant"] == "dense":
            assert r["speedup_vs_dense"] == r["flop_ratio"] == r["meets_0.75x"] == ""
        else:  # the sparse patterns need fewer FLOPs than dense at the same size
            assert float(r["flop_ratio"]) > 1.0 and r["meets_0.75x"] in ("yes", "no")
            assert float(r["speedup_over_flop_ratio"]) == pytest.approx(
                float(r["speedup_vs_dense"]) / float(r["flop_ratio"]), rel=0.01)
    md = (tmp_path / "t_step_speed.md").read_text()
    assert "| variant | image_size | tokens |" in md and "Command: `python -m vision.benchmark --step-speed --quick" in md
    assert "wrote " in capsys.readouterr().out


def _check_accuracy_tables(tmp_path, code):
    columns, rows = _rows(tmp_path / "vision_accuracy.csv")
    assert code == 0 and columns == vb.ACCURACY_COLUMNS
    (row,) = rows
    assert row["variant"] == "local" and row["status"] == "ok", row
    assert 0.0 <= float(row["test_acc"]) <= 1.0 and float(row["train_samples_per_s"]) > 0
    assert float(row["peak_memory_mb"]) > 0 and int(row["params"]) > 0 and row["steps"] == "1"
    assert (tmp_path / "runs" / "vision" / "local" / "metrics.json").is_file()
    assert "| local | ok |" in (tmp_path / "vision_accuracy.md").read_text()


def test_accuracy_quick_writes_the_table(tmp_path, monkeypatch, keep_threads):
    # the worker's job run in this process (a fresh process pays ~20 s of Lightning import on a busy
    # machine; the slow test below runs the real worker)
    specs = []

    def in_process(spec, timeout, threads):
        specs.append(spec)
        return vb.train_job(spec)

    monkeypatch.setattr(vb, "spawn", in_process)
    code = vb.main(["--quick", "--variants", "local", "--outdir", str(tmp_path), "--rundir", str(tmp_path / "runs"),
                    "--threads", "1", "--seed", "3"])
    _check_accuracy_tables(tmp_path, code)
    assert specs[0]["seed"] == 3 and specs[0]["overrides"] == vb.QUICK_OVERRIDES


@pytest.mark.slow
def test_accuracy_quick_trains_in_a_fresh_process(tmp_path):
    code = vb.main(["--quick", "--variants", "local", "--outdir", str(tmp_path), "--rundir", str(tmp_path / "runs"),
                    "--threads", "1"])
    _check_accuracy_tables(tmp_path, code)


def test_failed_variant_is_a_row_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(vb, "spawn", lambda spec, timeout, threads: {"status": "timeout", "note": "killed after 1 s"})
    code = vb.main(["--variants", "dense", "--outdir", str(tmp_path)])
    _, rows = _rows(tmp_path / "vision_accuracy.csv")
    assert code == 1 and rows[0]["status"] == "timeout" and rows[0]["note"] == "killed after 1 s"


def test_cli_errors():
    with pytest.raises(SystemExit):
        vb.parse_args(["--step-speed", "--variants", "linear"])
    with pytest.raises(SystemExit):
        vb.parse_args(["--step-speed", "model.dim=8"])
    with pytest.raises(ValueError, match=r"variant='lokal' is not allowed.*Did you mean 'local'"):
        vb.variant_kwargs("lokal", 4, 4)
