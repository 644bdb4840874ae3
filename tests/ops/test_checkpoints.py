"""Atomic checkpoint writes, and resuming a run killed mid-training with ``ckpt_path=auto`` (the same
command line for the first start and the restart, as a requeued SLURM job has it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core_attn.training.checkpoint_io import AtomicCheckpointIO, save_atomic
from tests.training.tiny import TINY, compose_config

ROOT = Path(__file__).resolve().parents[2]


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("simulated crash in the middle of writing")


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    save_atomic({"global_step": 1, "w": torch.ones(1000)}, path)
    with pytest.raises(RuntimeError, match="simulated crash"):  # the big tensor is written before the failure
        save_atomic({"w": torch.zeros(100_000), "boom": _Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_checkpoint_io_writes_beside_the_target(tmp_path, monkeypatch):
    """The temporary file lives in the checkpoint folder (same filesystem, so the rename is atomic), not /tmp."""
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    AtomicCheckpointIO().save_checkpoint({"global_step": 2}, tmp_path / "sub" / "last.ckpt")
    (src, dst), = seen
    assert dst == tmp_path / "sub" / "last.ckpt" and src.parent == dst.parent and src.name.startswith(".last.ckpt.")
    assert torch.load(dst, weights_only=True) == {"global_step": 2}


def test_trainer_uses_atomic_checkpoint_io(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_config("vision", [*TINY, "trainer=fast"], tmp_path / "run")
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def _launch(run_dir: Path, record: Path, *overrides: str) -> subprocess.Popen:
    args = [*TINY, "trainer=fast", "trainer.limit_train_batches=null", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "logger=csv", "callbacks.model_checkpoint.monitor=null",
            "+callbacks.model_checkpoint.every_n_train_steps=2",
            "+callbacks.record._target_=tests.ops.helpers.RecordSteps", f"+callbacks.record.path={record}",
            f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen([sys.executable, "-m", "vision.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path):
    run_dir, record = tmp_path / "run", tmp_path / "steps.jsonl"
    last = run_dir / "checkpoints" / "last.ckpt"
    # 48 samples / batch 8 = 6 steps an epoch, 10 epochs; sleeps keep it running until it is killed
    proc = _launch(run_dir, record, "ckpt_path=auto", "trainer.max_epochs=10", "+callbacks.record.sleep=0.3")
    deadline = time.time() + 300
    step = 0
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():
            try:
                step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
            except Exception as e:  # a reader must never see a truncated file
                pytest.fail(f"last.ckpt could not be read while training: {e}")
            if step >= 4:
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not record.exists()  # killed: it never reached on_train_end
    saved = torch.load(last, map_location="cpu", weights_only=True)["global_step"]  # loads: not truncated
    assert saved >= 4

    proc = _launch(run_dir, record, "ckpt_path=auto", "trainer.max_epochs=10", f"trainer.max_steps={saved + 3}")
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    (fit,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert fit["start_step"] == saved and fit["end_step"] == saved + 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == saved + 3
