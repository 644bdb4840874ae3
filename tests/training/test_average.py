"""``python -m core_attn.training.average``: the mean of several checkpoints' weights, usable by every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core_attn.training import train
from core_attn.training.average import average_checkpoints
from tests.training.tiny import TINY, compose_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A tiny vision run's last.ckpt and a copy whose floating-point weights are shifted by +2."""
    out = tmp_path_factory.mktemp("avg") / "run"
    first = Path(train(compose_config("vision", [*TINY, "trainer=fast", "test=false"], out))["last_ckpt"])
    ckpt = torch.load(first, map_location="cpu", weights_only=False)
    for k, v in ckpt["state_dict"].items():
        if v.is_floating_point():
            v += 2.0
        elif k.endswith("num_batches_tracked"):
            v += 7
    second = first.with_name("shifted.ckpt")
    torch.save(ckpt, second)
    return first, second


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_average_is_the_mean_and_drops_the_resume_state(two_checkpoints):
    first, second = two_checkpoints
    a = torch.load(first, map_location="cpu", weights_only=False)
    avg = average_checkpoints([first, second])
    floats = [k for k, v in a["state_dict"].items() if v.is_floating_point()]
    assert floats
    for k in floats:
        torch.testing.assert_close(avg["state_dict"][k], a["state_dict"][k] + 1.0)
    for k, v in a["state_dict"].items():  # integer buffers come from the last file
        if not v.is_floating_point():
            assert torch.equal(avg["state_dict"][k], v + 7 if k.endswith("num_batches_tracked") else v)
    assert "optimizer_states" in a and "optimizer_states" not in avg and "lr_schedulers" not in avg
    assert avg["averaged_from"] == [str(first), str(second)]


def test_averaged_checkpoint_evaluates_from_the_command_line(two_checkpoints, tmp_path):
    first, second = two_checkpoints
    out = tmp_path / "averaged.ckpt"
    proc = _cli("core_attn.training.average", str(first), str(second), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the mean of 2 checkpoints" in proc.stdout and out.is_file()
    proc = _cli("vision.evaluate", f"ckpt_path={out}", f"hydra.run.dir={tmp_path / 'eval'}",
                "extras.print_config=false", "callbacks=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0.0 <= json.loads((tmp_path / "eval" / "metrics.json").read_text())["metric"] <= 1.0


def test_average_refuses_checkpoints_of_other_networks(two_checkpoints, tmp_path):
    first, _ = two_checkpoints
    other = torch.load(first, map_location="cpu", weights_only=False)
    key = next(k for k, v in other["state_dict"].items() if v.is_floating_point() and v.dim() == 2)
    other["state_dict"][key] = torch.zeros(3, 3)
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=rf"other\.ckpt.*{key}.*has shape \(3, 3\).*one run only"):
        average_checkpoints([first, tmp_path / "other.ckpt"])
    del other["state_dict"][key]
    torch.save(other, tmp_path / "fewer.ckpt")
    with pytest.raises(ValueError, match=rf"fewer\.ckpt.*other weights.*{key}"):
        average_checkpoints([first, tmp_path / "fewer.ckpt"])


def test_average_command_line_errors(two_checkpoints, tmp_path):
    first, _ = two_checkpoints
    missing = tmp_path / "nope.ckpt"
    proc = _cli("core_attn.training.average", str(first), str(missing), "--out", str(tmp_path / "a.ckpt"))
    assert proc.returncode == 2 and "nope.ckpt" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli("core_attn.training.average", str(first), "--out", str(first))
    assert proc.returncode == 2 and "is one of the checkpoints to average" in proc.stderr
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    proc = _cli("core_attn.training.average", str(first), str(tmp_path / "junk.ckpt"), "--out", str(tmp_path / "b.ckpt"))
    assert proc.returncode == 2 and "junk.ckpt" in proc.stderr and "not a PyTorch checkpoint" in proc.stderr
    assert not (tmp_path / "a.ckpt").exists() and not (tmp_path / "b.ckpt").exists()


def test_average_best_tests_the_mean_of_the_best_checkpoints(tmp_path):
    run = tmp_path / "run"
    metrics = train(compose_config("vision", [*TINY, "trainer=fast", "trainer.max_epochs=3", "average_best=2",
                                              "callbacks.model_checkpoint.save_top_k=3",
                                              "callbacks.model_checkpoint.monitor=epoch",
                                              "callbacks.model_checkpoint.mode=max"], run))
    folder = run / "checkpoints"
    assert metrics["averaged_ckpt"] == metrics["test_ckpt"] == str(folder / "averaged.ckpt")
    assert metrics["averaged_from"] == [str(folder / "epoch_002.ckpt"), str(folder / "epoch_001.ckpt")]  # best first
    avg = torch.load(folder / "averaged.ckpt", map_location="cpu", weights_only=False)
    a, b = (torch.load(p, map_location="cpu", weights_only=False)["state_dict"] for p in metrics["averaged_from"])
    key = next(k for k, v in a.items() if v.is_floating_point() and not torch.equal(v, b[k]))
    torch.testing.assert_close(avg["state_dict"][key], (a[key] + b[key]) / 2)
    assert avg["global_step"] == 9 and 0.0 <= metrics["metric"] <= 1.0


def test_average_best_needs_the_checkpoints_kept(tmp_path):
    with pytest.raises(ValueError, match=r"average_best=3 needs the 3 best checkpoints, but "
                                         r"callbacks.model_checkpoint.save_top_k=1 keeps fewer"):
        train(compose_config("vision", [*TINY, "trainer=fast", "average_best=3"], tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


def test_average_refuses_nothing_or_no_weights(tmp_path):
    from core_attn.training.average import average_best

    with pytest.raises(ValueError, match=r"no checkpoints to average: pass at least one \.ckpt file"):
        average_checkpoints([])
    torch.save({"epoch": 3}, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match=r"bare\.ckpt.* has no 'state_dict' of weights"):
        average_checkpoints([tmp_path / "bare.ckpt"])
    with pytest.raises(ValueError, match=r"average_best: no checkpoint was kept"):
        average_best({}, 2, "max", tmp_path / "averaged.ckpt")
    assert not (tmp_path / "averaged.ckpt").exists()
