"""train(cfg) and evaluate(cfg) in-process on a tiny 64x64 MegaMNIST run."""

from __future__ import annotations

import json

import pytest
import torch

from core_attn.training import evaluate, train
from core_attn.training.callbacks import CONFIG_KEY
from tests.training.tiny import compose_config


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_fast_dev_run_writes_metrics(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg("trainer.fast_dev_run=true"))
    on_disk = _metrics(tmp_path / "run")
    assert on_disk == json.loads(json.dumps(metrics, default=str))
    assert metrics["status"] == "ok" and metrics["variant"] == "local" and metrics["app"] == "vision"
    assert metrics["metric_name"] == "test/acc" and 0.0 <= metrics["metric"] <= 1.0
    assert metrics["params"] == metrics["trainable_params"] > 0
    assert metrics["train_samples_per_s"] > 0 and metrics["test_samples_per_s"] > 0
    assert metrics["peak_memory_mb"] == metrics["peak_rss_mb"] > 0
    assert metrics["test_ckpt"] == "end-of-training weights"  # fast_dev_run saves no checkpoint
    assert metrics["steps"] == 1
    assert not list(tmp_path.glob("run/.metrics.json*"))  # the temporary file was renamed away


def test_learned_spans_are_logged_and_reported(tiny_cfg, tmp_path):
    from tests.training.tiny import TINY

    overrides = [o for o in TINY if not o.startswith("attention.")]
    metrics = train(compose_config("vision", [*overrides, "attention=adaptive_span", "attention.max_span=16",
                                              "attention.span_init=0.5", "trainer.fast_dev_run=true"], tmp_path / "run"))
    assert metrics["variant"] == "adaptive_span"
    assert 0 < metrics["mean_span"] <= metrics["max_span_learned"] <= 16  # spans start at 8 tokens
    assert "train/mean_span" in _metrics(tmp_path / "run")["final"]
    assert "mean_span" not in train(tiny_cfg("trainer.fast_dev_run=true"))  # no learned span: nothing reported


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short real run (3 train batches, checkpointing on) shared by the checkpoint tests."""
    from tests.training.tiny import TINY

    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_config("vision", [*TINY, "trainer=fast", "logger=many"], out)
    return cfg, train(cfg), out


def test_fit_checkpoints_and_tests_best(trained):
    cfg, metrics, out = trained
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert metrics["test_ckpt"].startswith(str(out / "checkpoints")) and metrics["test_ckpt"].endswith(".ckpt")
    assert metrics["steps"] == 3 and metrics["epochs"] == 1
    assert "best_val/acc" in metrics and "val/acc" in metrics["final"]
    assert list((out / "csv").rglob("metrics.csv")) and list((out / "tensorboard").rglob("events.out.tfevents*"))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)  # plain types only
    assert ckpt["hyper_parameters"]["model"]["attention"]["_target_"] == "core_attn.attention.local.LocalAttention"
    assert ckpt[CONFIG_KEY]["data"]["image_size"] == 64


def test_evaluate_rebuilds_model_and_data_from_checkpoint(trained, tmp_path):
    _, metrics, out = trained
    # no data=... given: the 64x64 data config stored in the checkpoint is used (the default is 512x512)
    cfg = compose_config("vision_eval", [f"ckpt_path={metrics['test_ckpt']}", "trainer.limit_test_batches=2",
                                         "extras.print_config=false"], tmp_path / "eval")
    result = evaluate(cfg)
    assert result["metric"] == pytest.approx(metrics["metric"])
    assert result["variant"] == "local" and result["params"] == metrics["params"]
    assert _metrics(tmp_path / "eval")["metric"] == result["metric"]


def test_evaluate_with_other_data(trained, tmp_path):
    from tests.training.tiny import TINY

    _, metrics, _ = trained
    data = [o for o in TINY if o.startswith("data.")] + ["data.seed=7"]
    cfg = compose_config("vision_eval", [f"ckpt_path={metrics['test_ckpt']}", "data=mega_mnist", *data,
                                         "trainer.limit_test_batches=1", "extras.print_config=false"], tmp_path / "eval")
    result = evaluate(cfg)
    assert 0.0 <= result["metric"] <= 1.0


def test_evaluate_missing_checkpoint(tmp_path):
    cfg = compose_config("vision_eval", [f"ckpt_path={tmp_path}/nope.ckpt"], tmp_path / "eval")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*nope\.ckpt.*no such checkpoint file"):
        evaluate(cfg)


def test_resume_from_last(trained, tiny_cfg):
    _, metrics, out = trained
    resumed = train(tiny_cfg("trainer=fast", "trainer.max_epochs=2", "ckpt_path=last", "test=false", output_dir=out))
    assert resumed["epochs"] == 2 and resumed["steps"] == 2 * metrics["steps"]


def test_ckpt_path_auto_starts_fresh_then_resumes(tiny_cfg, tmp_path, caplog):
    """One command line for a job's first start and its restarts (a requeued SLURM job)."""
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="core_attn.training.train"):
        first = train(tiny_cfg("trainer=fast", "ckpt_path=auto", "test=false", output_dir=out))
    assert "ckpt_path=auto: no " in caplog.text and first["epochs"] == 1
    caplog.clear()
    with caplog.at_level("INFO", logger="core_attn.training.train"):
        again = train(tiny_cfg("trainer=fast", "trainer.max_epochs=2", "ckpt_path=auto", "test=false", output_dir=out))
    assert "ckpt_path=auto: resuming from " in caplog.text
    assert again["epochs"] == 2 and again["steps"] == 2 * first["steps"]


def test_resume_last_without_checkpoint(tiny_cfg):
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last but .*last\.ckpt does not exist; .*hydra\.run\.dir"):
        train(tiny_cfg("trainer=fast", "ckpt_path=last"))


def test_test_only_needs_checkpoint(tiny_cfg):
    with pytest.raises(ValueError, match=r"train=false needs ckpt_path"):
        train(tiny_cfg("train=false"))


def test_bad_model_key_is_a_clear_error(tiny_cfg):
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match=r"unexpected keyword argument \W*patch"):
        train(tiny_cfg("+model.patch=8"))


def test_resume_refuses_a_checkpoint_of_another_app(tmp_path):
    from omegaconf import OmegaConf

    from core_attn.training.train import check_resume_app

    torch.save({"state_dict": {}, CONFIG_KEY: {"app": "vision"}}, tmp_path / "vision.ckpt")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    check_resume_app(OmegaConf.create({"app": "vision", "ckpt_path": str(tmp_path / "vision.ckpt")}))
    check_resume_app(OmegaConf.create({"app": "genomics", "ckpt_path": "last"}))
    with pytest.raises(ValueError, match=r"ckpt_path='.*vision\.ckpt' is a checkpoint of the vision app, not of "
                                         r"genomics: resume it with python -m vision\.train, or give a checkpoint "
                                         r"of genomics\.train"):
        check_resume_app(OmegaConf.create({"app": "genomics", "ckpt_path": str(tmp_path / "vision.ckpt")}))
    with pytest.raises(ValueError, match=r"ckpt_path='.*notes\.ckpt' is not a PyTorch checkpoint: "):
        check_resume_app(OmegaConf.create({"app": "genomics", "ckpt_path": str(tmp_path / "notes.ckpt")}))


def test_adaptive_span_step_benchmark_times_the_span_network_against_local_at_its_maximum(tmp_path):
    from tests.audio.conftest import bench_script
    from tests.training.tiny import TINY

    overrides = [o for o in TINY if not o.startswith("attention.")]
    metrics = train(compose_config("vision", [*overrides, "attention=adaptive_span", "attention.max_span=16",
                                              "attention.span_init=0.25", "trainer=fast", "test=false"],
                                   tmp_path / "run"))
    out = tmp_path / "step.json"
    assert bench_script("adaptive_span_step").main(["vision", "--ckpt", metrics["last_ckpt"], "--batch", "2",
                                                    "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["max_span"] == 16 and result["input"] == [2, 1, 64, 64]
    assert 0 < result["mean_span"] <= result["largest_span"] <= 16 and len(result["spans"]) == 1  # one layer
    assert set(result["step_s"]) == {"adaptive_span", "local (window 16)"} and result["speedup"] > 0
