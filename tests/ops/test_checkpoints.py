"""Atomic checkpoint writes, and resuming a run killed mid-training with ``ckpt_path=auto`` (the same
command line for the first start and the restart, as a requeued SLURM job has it): periodic step checkpoints
before the first validation, exact restore of the training state, no temporary file left behind, file modes
that follow the umask, and one ``metrics.csv`` per run directory."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core_attn.training import train
from core_attn.training.atomic import (
    open_atomic,
    remove_stale_tmp,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from core_attn.training.checkpoint_io import AtomicCheckpointIO, PeriodicCheckpoint, save_atomic
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


# -- file modes and leftovers -----------------------------------------------------------------------
@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for the test; the old one is restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o027, 0o002])
def test_atomic_writers_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    write_text_atomic(tmp_path / "a.txt", "a")
    write_bytes_atomic(tmp_path / "b.png", b"b")
    write_json_atomic(tmp_path / "metrics.json", {"a": 1})
    with open_atomic(tmp_path / "d.tsv") as f:
        f.write("d")
    save_atomic({"w": torch.ones(2)}, tmp_path / "last.ckpt")
    with open(tmp_path / "plain.txt", "w") as f:  # what the writers must match
        f.write("p")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert set(modes.values()) == {0o666 & ~mask}, modes


def test_open_atomic_mode_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"mode='a' is not allowed; expected one of \['w', 'wb'\]"):
        with open_atomic(tmp_path / "x", "a"):
            pass


def test_remove_stale_tmp_only_removes_our_stale_unlocked_files(tmp_path):
    import fcntl

    old = time.time() - 3600
    stale = [tmp_path / ".last.ckpt.ab_12xyz.tmp", tmp_path / ".metrics.json.k2j4l5m6.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".last.ckpt.tmp", tmp_path / "last.ckpt",
            tmp_path / ".last.ckpt.toolong99.tmp.bak", tmp_path / ".epoch_001.ckpt.fresh123.tmp"]
    for path in [*stale, *kept]:
        path.write_text("x")
        if "fresh" not in path.name:
            os.utime(path, (old, old))
    locked = tmp_path / ".summary.csv.lock1234.tmp"  # being written by a live process
    locked.write_text("x")
    os.utime(locked, (old, old))
    (tmp_path / ".sub.ckpt.abcd1234.tmp").mkdir()  # folders are never touched
    with open(locked) as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        removed = remove_stale_tmp(tmp_path, tmp_path / "missing", before=time.time() - 60)
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in [*kept, locked, tmp_path / ".sub.ckpt.abcd1234.tmp"])


def test_stale_tmp_older_than_the_process_only(tmp_path):
    path = tmp_path / ".last.ckpt.abcd1234.tmp"
    path.write_text("x")  # written by this process: kept
    assert remove_stale_tmp(tmp_path) == [] and path.exists()


# -- periodic step checkpoints ----------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"every_n_steps": 0}, r"every_n_steps=0 is out of range; expected 1 <= every_n_steps <= inf"),
    ({"every_n_steps": 2.5}, r"every_n_steps=2.5 must be an integer"),
    ({"every_minutes": -1}, r"every_minutes=-1 is out of range; expected 0 <= every_minutes <= inf"),
    ({"every_minutes": "10m"}, r"every_minutes='10m' must be a number"),
])
def test_periodic_checkpoint_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PeriodicCheckpoint(**kwargs)


class _FakeTrainer:
    """What PeriodicCheckpoint reads of a single-process trainer; records the paths it is asked to save."""

    def __init__(self, root: Path):
        self.global_step, self.fast_dev_run, self.world_size = 0, False, 1
        self.default_root_dir, self.checkpoint_callback, self.checkpoint_callbacks = root, None, []
        self.saved: list[tuple[int, Path]] = []

    def save_checkpoint(self, path) -> None:
        self.saved.append((self.global_step, Path(path)))


def test_periodic_checkpoint_step_and_clock_rules(tmp_path, monkeypatch):
    import core_attn.training.checkpoint_io as checkpoint_io

    now = [1000.0]
    monkeypatch.setattr(checkpoint_io.time, "monotonic", lambda: now[0])
    trainer, cb = _FakeTrainer(tmp_path), PeriodicCheckpoint(every_n_steps=5, every_minutes=1)
    cb.on_train_start(trainer, None)
    for batch in range(16):  # two batches per optimizer step (gradient accumulation), 10 s per batch
        trainer.global_step += batch % 2
        now[0] += 10
        before = len(trainer.saved)
        cb.on_train_batch_end(trainer, None, None, None, batch)
        if len(trainer.saved) > before:
            cb.on_save_checkpoint(trainer, None, {})  # what trainer.save_checkpoint calls
    # one optimizer step every 20 s: the clock saves at step 3 (60 s), the step rule at 5 (once, not at both of
    # its batches) and restarts the clock, which saves again at step 8
    assert [step for step, _ in trainer.saved] == [3, 5, 8]
    assert {path for _, path in trainer.saved} == {tmp_path / "checkpoints" / "last.ckpt"}


def test_last_checkpoint_holds_the_final_weights(tmp_path):
    """Lightning's ``save_last`` writes ``last.ckpt`` only beside a new top-k checkpoint; a monitor that
    never improves after the first epoch (``epoch``, mode min) must still leave the final step in it."""
    run = tmp_path / "run"
    metrics = train(compose_config("vision", [
        *TINY, "trainer=fast", "trainer.max_epochs=3", "test=false", "callbacks.periodic_checkpoint.every_minutes=null",
        "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"], run))
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(run / "checkpoints" / "epoch_000.ckpt", map_location="cpu", weights_only=True)
    assert metrics["steps"] == 9 and saved["global_step"] == 9 and best["global_step"] == 3
    assert metrics["last_ckpt"] == str(run / "checkpoints" / "last.ckpt")


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def _steps_in_csv(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def test_crash_and_resume_from_a_periodic_checkpoint(tmp_path, umask):
    """A run that crashes after its first validation resumes (``ckpt_path=auto``) from the periodic
    ``last.ckpt`` with the step, weights, optimizer, scheduler and best-checkpoint record it held; stale
    temporary files are removed, outputs follow the umask and the metrics of both starts are in one
    ``metrics.csv``."""
    umask(0o027)
    run, restored = tmp_path / "run", tmp_path / "restored.pt"
    # 6 steps an epoch, validation at the end of each; last.ckpt every 4 steps: 4, 6 (validation), 8
    common = [*TINY, "trainer=fast", "trainer.limit_train_batches=null", "trainer.limit_val_batches=1",
              "trainer.limit_test_batches=1", "trainer.max_epochs=3", "logger=many", "ckpt_path=auto",
              "callbacks.periodic_checkpoint.every_n_steps=4",
              "+callbacks.restored._target_=tests.ops.helpers.RecordRestored", f"+callbacks.restored.path={restored}"]
    with pytest.raises(RuntimeError, match="stopped at step 9"):
        train(compose_config("vision", [*common, "+callbacks.stop._target_=tests.ops.helpers.StopAt",
                                         "+callbacks.stop.step=9"], run))
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 8
    best_state = next(v for k, v in saved["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert best_state["best_model_path"].endswith("epoch_000.ckpt") and best_state["best_model_score"] is not None
    old = time.time() - 3600
    leftovers = [last.parent / ".last.ckpt.k3j2h1g0.tmp", run / ".metrics.json.a1b2c3d4.tmp"]
    for path in leftovers:  # what a kill during a write leaves
        path.write_bytes(b"half a file")
        os.utime(path, (old, old))

    metrics = train(compose_config("vision", common, run))
    start = torch.load(restored, map_location="cpu", weights_only=True)
    assert start["global_step"] == 8
    assert _same(start["state_dict"], saved["state_dict"])
    assert _same(start["optimizer"], saved["optimizer_states"][0])
    assert _same(start["scheduler"], saved["lr_schedulers"][0])
    assert start["best_model_path"] == best_state["best_model_path"]
    assert float(start["best_model_score"]) == float(best_state["best_model_score"])
    assert metrics["steps"] == 18 and "best_val/acc" in metrics and Path(metrics["test_ckpt"]).is_file()

    assert not any(p.exists() for p in leftovers) and not list(run.rglob(".*.tmp"))
    assert {p.name: p.stat().st_mode & 0o777 for p in [last, run / "metrics.json", Path(metrics["test_ckpt"])]} == {
        "last.ckpt": 0o640, "metrics.json": 0o640, Path(metrics["test_ckpt"]).name: 0o640}
    assert [p.relative_to(run).as_posix() for p in run.rglob("metrics.csv")] == ["csv/metrics.csv"]
    steps = _steps_in_csv(run / "csv" / "metrics.csv")
    assert min(steps) < 8 < max(steps) and max(steps) >= 17  # rows of both starts
    assert not list(run.rglob("version_*"))
    assert len(list((run / "tensorboard").glob("events.out.tfevents*"))) >= 2  # one folder, both starts


def _launch_preemptible(run_dir: Path, record: Path, progress: Path, sleep: float) -> subprocess.Popen:
    # 6 steps an epoch, 2 epochs, the first validation at the end (step 12); val/acc stays the monitor
    args = [*TINY, "trainer=fast", "trainer.limit_train_batches=null", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=2",
            "logger=csv", "ckpt_path=auto", "callbacks.periodic_checkpoint.every_n_steps=2",
            "+callbacks.record._target_=tests.ops.helpers.RecordSteps", f"+callbacks.record.path={record}",
            f"+callbacks.record.progress={progress}", f"+callbacks.record.sleep={sleep}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen([sys.executable, "-m", "vision.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkill_before_the_first_validation_loses_at_most_n_steps(tmp_path):
    run_dir, record, progress = tmp_path / "run", tmp_path / "steps.jsonl", tmp_path / "progress"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = _launch_preemptible(run_dir, record, progress, sleep=0.5)
    deadline, done = time.time() + 300, 0
    while time.time() < deadline and proc.poll() is None:
        done = int(progress.read_text()) if progress.is_file() else 0
        if done >= 3 and last.is_file():
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = int(progress.read_text())
    saved = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < saved <= done < 12 and done - saved <= 2  # before the first validation, at most N=2 steps lost
    assert not list(last.parent.glob("epoch_*.ckpt")) and not record.exists()
    old = time.time() - 3600
    leftover = last.parent / ".last.ckpt.q1w2e3r4.tmp"  # as a kill during a checkpoint write leaves it
    leftover.write_bytes(b"half a checkpoint")
    os.utime(leftover, (old, old))

    proc = _launch_preemptible(run_dir, record, progress, sleep=0.0)  # the same command, without the sleep
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    assert "ckpt_path=auto: resuming from" in output
    (fit,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert fit["start_step"] == saved and fit["end_step"] == 12
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 12
    assert not list(run_dir.rglob(".*.tmp"))
    assert [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("metrics.csv")] == ["csv/metrics.csv"]
