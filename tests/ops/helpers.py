"""Callbacks the ops tests inject through the config (``+callbacks.<name>._target_=tests.ops.helpers...``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning.pytorch as pl
import torch


def state_hash(module: torch.nn.Module) -> str:
    """sha256 over a module's state_dict (names and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class PoisonAt(pl.Callback):
    """Makes training batch ``step``'s (global step) loss non-finite: ``value="nan"`` sets every weight to
    NaN just before the batch; ``value="inf"`` multiplies that batch's (positive) loss by +inf."""

    def __init__(self, step: int, value: str = "nan"):
        value = str(value)  # a command line's value=inf arrives as a float
        assert value in ("nan", "inf"), value
        self.step, self.value = step, value

    def setup(self, trainer, pl_module, stage) -> None:
        if self.value != "inf":
            return
        step = pl_module.training_step

        def poisoned(*args, **kwargs):
            loss = step(*args, **kwargs)
            return loss * float("inf") if trainer.global_step == self.step else loss

        pl_module.training_step = poisoned

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.value == "nan":
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


class RecordSteps(pl.Callback):
    """Appends ``{"start_step", "end_step", "pid"}`` of each fit to ``path`` (one JSON line per fit); with
    ``sleep`` > 0, sleeps that long after every training batch (so a test can kill the run mid-way); with
    ``progress``, writes the global step to that file after every training batch (after the checkpoint
    callbacks configured before this one have run for that batch)."""

    def __init__(self, path: str, sleep: float = 0.0, progress: str | None = None):
        self.path = Path(path)
        self.sleep = sleep
        self.progress = None if progress is None else Path(progress)
        self.start = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.progress is not None:
            from core_attn.training.atomic import write_text_atomic

            write_text_atomic(self.progress, str(trainer.global_step))
        if self.sleep:
            import time

            time.sleep(self.sleep)

    def on_train_end(self, trainer, pl_module) -> None:
        import os

        with open(self.path, "a") as f:
            f.write(json.dumps({"start_step": self.start, "end_step": trainer.global_step, "pid": os.getpid()}) + "\n")


class StopAt(pl.Callback):
    """Raises ``RuntimeError("stopped at step <step>")`` before training batch ``step`` (global step): a crash
    in the middle of a run, in-process."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"stopped at step {self.step}")


class RecordRestored(pl.Callback):
    """Saves to ``path`` (``torch.save``) what a fit starts from: global step, weights, optimizer and scheduler
    state, and the best-checkpoint record of the first ``ModelCheckpoint``."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_start(self, trainer, pl_module) -> None:
        cb = trainer.checkpoint_callback
        torch.save({"global_step": trainer.global_step, "state_dict": pl_module.state_dict(),
                    "optimizer": trainer.optimizers[0].state_dict(),
                    "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
                    "best_model_path": cb.best_model_path, "best_model_score": cb.best_model_score}, self.path)


class DDPProbe(pl.Callback):
    """Each rank writes ``<out_dir>/rank<r>.json``: sha256 of every training sample it saw and of its final
    weights."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.samples: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        x = batch[0]
        self.samples += [hashlib.sha256(s.cpu().contiguous().numpy().tobytes()).hexdigest() for s in x]

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "samples": self.samples,
                  "weights": state_hash(pl_module), "steps": trainer.global_step}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


# With trainer=fast (3 batches per epoch), epoch 0 ends at global step 3 and saves last.ckpt; step 4's loss is NaN (or inf)
POISON_AT_4 = ["trainer.max_epochs=3", "+callbacks.poison._target_=tests.ops.helpers.PoisonAt",
               "+callbacks.poison.step=4"]


def assert_nonfinite_stops_and_keeps_last_good(cfg, value: str = "nan") -> None:
    """Run ``train(cfg)`` (composed with :data:`POISON_AT_4`): it must stop with the guard's message at step 4 and
    leave ``last.ckpt`` from step 3 with finite weights, loadable and with no temporary file beside it."""
    import pytest

    from core_attn.training import train

    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(FloatingPointError, match=rf"non-finite training loss \({value}\) at global step 4 \(epoch 1\); "
                                                 r"training stopped before the optimizer step and the last "
                                                 r"checkpoint, .*last\.ckpt, is from before it"):
        train(cfg)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())
    assert not list(last.parent.glob(".*.tmp"))
