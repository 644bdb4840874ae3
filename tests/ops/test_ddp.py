"""Real DDP: two CPU processes (gloo) on the tiny vision run, launched as ``python -m vision.train trainer=ddp_cpu``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.tiny import TINY

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    probe = tmp_path / "probe"
    args = [*TINY, "trainer=ddp_cpu", "trainer.max_epochs=1",
            "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
            "logger=csv", "+callbacks.probe._target_=tests.ops.helpers.DDPProbe", f"+callbacks.probe.out_dir={probe}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, "-m", "vision.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # 48 training samples, DistributedSampler: 24 per rank (3 batches of 8), no sample on both ranks
    a, b = (set(r["samples"]) for r in ranks)
    assert len(ranks[0]["samples"]) == len(ranks[1]["samples"]) == 24 and len(a) == len(b) == 24
    assert not a & b
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients all-reduced: replicas stay identical
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 3
