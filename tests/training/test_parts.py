"""The runtime's pieces: schedule, parameter groups, throughput callback, atomic writes, sweep summary."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf
from torch import nn

from core_attn.training.callbacks import ThroughputMonitor, _batch_size
from core_attn.training.optim import configure_optimizers, param_groups_weight_decay
from core_attn.training.schedulers import WarmupCosineLR
from core_attn.training.summary import SweepSummary, write_summary
from core_attn.training.atomic import write_json_atomic
from core_attn.training.train import variant_name


def _lrs(sched: WarmupCosineLR, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


def test_warmup_cosine_shape():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = _lrs(WarmupCosineLR(opt, total_steps=100, warmup_fraction=0.1, min_lr_ratio=0.1), 100)
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)  # linear warmup over 10 steps
    assert lrs[10] == pytest.approx(1.0)  # peak
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # cosine
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warmup
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(total_steps=0), r"total_steps=0 must be an integer >= 1"),
    (dict(total_steps=10, warmup_fraction=1.0), r"warmup_fraction=1\.0 is out of range; expected 0 <= warmup_fraction < 1"),
    (dict(total_steps=10, min_lr_ratio=2), r"min_lr_ratio=2 is out of range; expected 0 <= min_lr_ratio <= 1"),
])
def test_warmup_cosine_errors(kwargs, match):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=match):
        WarmupCosineLR(opt, **kwargs)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))

    def no_weight_decay(self):
        return {"pos_embed"}


def test_param_groups_skip_biases_norms_and_listed():
    net = _Net()
    decay, no_decay = param_groups_weight_decay(net, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(net.fc.weight)]
    assert {id(p) for p in no_decay["params"]} == {id(net.fc.bias), id(net.norm.weight), id(net.norm.bias), id(net.pos_embed)}


def test_configure_optimizers_from_partial_configs():
    net = _Net()
    opt_cfg = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.01, "weight_decay": 0.1, "betas": [0.8, 0.9]}
    sched_cfg = {"_target_": "core_attn.training.schedulers.WarmupCosineLR", "_partial_": True, "warmup_fraction": 0.0}
    out = configure_optimizers(net, opt_cfg, sched_cfg, total_steps=7)
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and out["lr_scheduler"]["interval"] == "step"
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    assert type(opt.param_groups[0]["betas"]) in (list, tuple)  # plain types: checkpoints load with weights_only
    assert isinstance(sched, WarmupCosineLR) and sched.total_steps == 7
    assert isinstance(configure_optimizers(net, opt_cfg, {}, total_steps=7), torch.optim.AdamW)  # no scheduler


def test_batch_size_of_nested_batches():
    x = torch.zeros(5, 3)
    assert _batch_size(x) == 5 and _batch_size((x, torch.zeros(5))) == 5
    assert _batch_size({"wave": torch.zeros(7, 2), "y": torch.zeros(7)}) == 7
    assert _batch_size(["no tensors"]) == 0


def test_throughput_monitor_skips_warmup():
    mon = ThroughputMonitor(skip_batches=1)
    trainer = type("T", (), {"strategy": type("S", (), {"root_device": torch.device("cpu")})()})()
    for i in range(3):
        mon.on_train_batch_start(trainer, None, None, i)
        mon.on_train_batch_end(trainer, None, None, torch.zeros(4, 2), i)
    assert mon.train.batches == 3 and mon.train.samples == 8 and mon.train.all_samples == 12
    res = mon.results()
    assert res["train_samples_per_s"] > 0 and res["test_samples_per_s"] is None


def test_write_json_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "m.json"
    write_json_atomic(path, {"a": 1, "p": tmp_path})
    assert json.loads(path.read_text()) == {"a": 1, "p": str(tmp_path)}

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1, "p": str(tmp_path)}  # the old file survives whole
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_variant_name():
    assert variant_name({"_target_": "core_attn.attention.local.LocalAttention"}) == "local"
    assert variant_name(OmegaConf.create({"_target_": "core_attn.attention.bigbird.BigBirdAttention"})) == "bigbird"
    assert variant_name(None) is None and variant_name({}) is None


def _fake_job(sweep, num, **metrics):
    write_json_atomic(sweep / str(num) / "metrics.json", {"status": "ok", "overrides": [f"attention={metrics['variant']}"],
                                                          **metrics})


def test_summary_tables(tmp_path):
    _fake_job(tmp_path, 0, variant="dense", metric_name="test/acc", metric=0.91, train_samples_per_s=12.5,
              peak_memory_mb=800.0, params=1000)
    _fake_job(tmp_path, 10, variant="local", metric_name="test/acc", metric=0.93, train_samples_per_s=20.0,
              peak_memory_mb=600.0, params=1000)
    _fake_job(tmp_path, 2, variant="linear", metric_name="test/acc", metric=0.5)
    rows = write_summary(tmp_path)
    assert [r["variant"] for r in rows] == ["dense", "linear", "local"]  # job order 0, 2, 10
    with open(tmp_path / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert table[2]["variant"] == "local" and float(table[2]["metric"]) == 0.93 and table[2]["overrides"] == "attention=local"
    assert {"variant", "metric", "train_samples_per_s", "peak_memory_mb", "params", "status"} <= set(table[0])
    md = (tmp_path / "summary.md").read_text().splitlines()
    assert md[0].startswith("| job | variant") and len(md) == 2 + 3 and "| 0.91 |" in md[2]


def _job_config(sweep, num, mode=RunMode.MULTIRUN):
    return OmegaConf.create({
        "attention": {"_target_": "core_attn.attention.dense.DenseAttention"},
        "hydra": {"mode": mode, "sweep": {"dir": str(sweep)}, "runtime": {"output_dir": str(sweep / str(num))}},
    })


def test_summary_callback_records_failed_jobs(tmp_path):
    _fake_job(tmp_path, 0, variant="local", metric=0.9)
    failed = JobReturn(overrides=["attention=dense"], status=JobStatus.FAILED)
    failed.return_value = RuntimeError("out of memory")
    SweepSummary().on_job_end(_job_config(tmp_path, 1), failed)
    status = json.loads((tmp_path / "1" / "metrics.json").read_text())["status"]
    assert status == "failed: RuntimeError: out of memory"
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [(r["variant"], r["status"]) for r in rows] == [("local", "ok"), ("dense", status)]


def test_summary_callback_ignores_single_runs(tmp_path):
    ok = JobReturn(status=JobStatus.COMPLETED)
    SweepSummary().on_job_end(_job_config(tmp_path, 0, RunMode.RUN), ok)
    assert not (tmp_path / "summary.csv").exists()


def test_core_attn_import_stays_torch_only():
    import subprocess
    import sys

    code = "import sys, core_attn; bad = [m for m in ('lightning', 'hydra', 'omegaconf') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
