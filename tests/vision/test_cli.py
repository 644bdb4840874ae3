"""The command-line entry points: `python -m vision.train` / `python -m vision.evaluate` (subprocesses)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# 128x128 canvas, patch 8: 256 tokens, enough for every variant's default block sizes
SMALL = ["data.image_size=128", "data.digit_size=16", "data.clutter_size=4", "data.num_clutter=8",
         "data.train_samples=32", "data.val_samples=16", "data.test_samples=16", "data.batch_size=8",
         "model.patch_size=8", "model.dim=32", "model.depth=1", "model.num_heads=2", "trainer=fast",
         "extras.print_config=false", "callbacks.rich_progress_bar=null"]


def _run(module: str, *args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_unknown_key_fails_on_the_command_line(tmp_path):
    proc = _run("vision.train", "model.dimm=3", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert "Could not override 'model.dimm'" in proc.stderr and "Key 'dimm' is not in struct" in proc.stderr


@pytest.mark.slow
def test_multirun_writes_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _run("vision.train", "-m", "attention=dense,local", *SMALL, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["variant"], r["status"]) for r in rows] == [("0", "dense", "ok"), ("1", "local", "ok")]
    for r in rows:
        assert 0.0 <= float(r["metric"]) <= 1.0 and float(r["train_samples_per_s"]) > 0
        assert float(r["peak_memory_mb"]) > 0 and int(r["params"]) > 0
    assert "| 0 | dense |" in (sweep / "summary.md").read_text()
    ckpt = sweep / "1" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (sweep / "1" / ".hydra" / "config.yaml").is_file()

    proc = _run("vision.evaluate", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}",
                "extras.print_config=false", "callbacks=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["variant"] == "local" and 0.0 <= result["metric"] <= 1.0
