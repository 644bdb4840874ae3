"""Sweeps beyond the basic launcher: the SLURM launcher config (composed; no cluster here), real
submitit-local and joblib sweeps, the Optuna searches of the three apps, and what ``main`` returns to a
sweeper (``sweep_objective``).

The real sweeps run the vision app (or the genomics app, for its Optuna search) in a subprocess on tiny
settings (slow: ``pytest -m slow``).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from core_attn.training import sweep_objective
from tests.training.tiny import CONF_DIR, TINY, compose_config

ROOT = CONF_DIR.parent


def _installed(module: str) -> bool:
    try:  # find_spec of a submodule raises when its parent package (hydra_plugins) is absent
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


SUBMITIT = _installed("hydra_plugins.hydra_submitit_launcher")
JOBLIB = _installed("hydra_plugins.hydra_joblib_launcher")
OPTUNA = _installed("hydra_plugins.hydra_optuna_sweeper")
needs_submitit = pytest.mark.skipif(not SUBMITIT, reason="hydra-submitit-launcher is not installed "
                                    "(pip install -e '.[cluster]')")
needs_joblib = pytest.mark.skipif(not JOBLIB, reason="hydra-joblib-launcher is not installed "
                                  "(pip install -e '.[cluster]')")
needs_optuna = pytest.mark.skipif(not OPTUNA, reason="hydra-optuna-sweeper is not installed "
                                  "(pip install -e '.[sweep]')")
SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <args>`` from the repository root, one thread per process."""
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"})


# -- SLURM ------------------------------------------------------------------------------------------
@needs_submitit
# the two points of `python -m vision.train -m hydra/launcher=slurm attention=dense,local`
@pytest.mark.parametrize("attention", ["dense", "local"])
def test_slurm_launcher_config(attention, tmp_path):
    cfg = compose_config("vision", ["hydra/launcher=slurm", f"attention={attention}", f"paths.sweep_dir={tmp_path}"],
                         tmp_path / "run", return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == SLURM_LAUNCHER
    assert {k: launcher[k] for k in ("timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "nodes",
                                     "mem_gb", "partition", "array_parallelism", "max_num_timeout")} == {
        "timeout_min": 240, "cpus_per_task": 8, "gpus_per_node": 1, "tasks_per_node": 1, "nodes": 1, "mem_gb": 32,
        "partition": None, "array_parallelism": 16, "max_num_timeout": 3}
    sweep_dir = Path(launcher["submitit_folder"]).parent.parent
    assert launcher["submitit_folder"].endswith("/.submitit/%j") and sweep_dir.parent.parent == tmp_path / "vision"
    assert str(sweep_dir) == cfg.hydra.sweep.dir
    assert cfg.attention._target_.endswith(f"{attention}.{attention.capitalize()}Attention")
    obj = instantiate(cfg.hydra.launcher)  # what Hydra builds to submit the sweep (submitting needs sbatch)
    assert type(obj).__name__ == "SlurmLauncher" and obj.params["mem_gb"] == 32


@needs_submitit
def test_slurm_launcher_overrides_and_typos(tmp_path):
    cfg = compose_config("vision", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                    "hydra.launcher.timeout_min=600"], tmp_path, return_hydra_config=True)
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.timeout_min == 600
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'hydra\.launcher\.partion'"):
        compose_config("vision", ["hydra/launcher=slurm", "hydra.launcher.partion=gpu"], tmp_path,
                       return_hydra_config=True)


def _lr_sweep(launcher: str, tmp_path):
    """A real 2-job vision sweep (lr 1e-3, 3e-3) with ``hydra/launcher=<launcher>``; checks each job's
    metrics.json and the summary rows, returns (sweep dir, process, summary rows)."""
    sweep = tmp_path / "sweep"
    proc = _run(["vision.train", "-m", f"hydra/launcher={launcher}", "optimizer.lr=1e-3,3e-3", "trainer=fast",
                 *TINY, f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, lr in (("0", 1e-3), ("1", 3e-3)):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "ok" and f"optimizer.lr={lr:g}" in " ".join(metrics["overrides"])
        assert metrics["metric_name"] == "test/acc" and 0.0 <= metrics["metric"] <= 1.0
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["job"] for r in rows] == ["0", "1"] and all(r["status"] == "ok" for r in rows)
    return sweep, proc, rows


@needs_submitit
@pytest.mark.slow  # 28-46 s measured: two training processes
def test_local_submitit_sweep(tmp_path):
    sweep, _, _ = _lr_sweep("local_submitit", tmp_path)
    assert (sweep / "summary.md").is_file()
    assert len([p for p in (sweep / ".submitit").iterdir() if p.name != "%j"]) == 2  # one submitit folder per job


# -- joblib -----------------------------------------------------------------------------------------
@needs_joblib
def test_local_joblib_launcher_config(tmp_path):
    cfg = compose_config("vision", ["hydra/launcher=local_joblib", "optimizer.lr=1e-3"], tmp_path / "run",
                         return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher["n_jobs"] == 2 and launcher["prefer"] == "processes"
    cfg = compose_config("vision", ["hydra/launcher=local_joblib", "hydra.launcher.n_jobs=4"], tmp_path / "run",
                         return_hydra_config=True)
    assert cfg.hydra.launcher.n_jobs == 4
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'hydra\.launcher\.n_job'"):
        compose_config("vision", ["hydra/launcher=local_joblib", "hydra.launcher.n_job=4"], tmp_path,
                       return_hydra_config=True)
    assert type(instantiate(cfg.hydra.launcher)).__name__ == "JoblibLauncher"


@needs_joblib
@pytest.mark.slow  # 42 s measured (2 shared cores): two training processes side by side
def test_local_joblib_sweep(tmp_path):
    sweep, proc, rows = _lr_sweep("local_joblib", tmp_path)
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr  # the joblib launcher ran the jobs
    assert "optimizer.lr=0.001" in rows[0]["overrides"] and "optimizer.lr=0.003" in rows[1]["overrides"]
    md = (sweep / "summary.md").read_text().splitlines()
    assert len(md) == 4 and md[2].startswith("| 0 | local |") and md[3].startswith("| 1 | local |")


# -- Optuna -----------------------------------------------------------------------------------------
@needs_optuna
def test_optuna_search_config(tmp_path):
    cfg = compose_config("vision", ["hparams_search=vision_optuna"], tmp_path, return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert str(sweeper.direction) == "maximize" and sweeper.storage is None and cfg.hydra.mode.name == "MULTIRUN"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == cfg.seed
    assert cfg.optimized_metric == "val/acc_best" and cfg.monitor == "val/acc" and cfg.monitor_mode == "max"
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "attention.window"}
    for key in sweeper.params:  # every searched key exists in the config (a typo would add a dead parameter)
        assert OmegaConf.select(cfg, key) is not None, key


@needs_optuna
@pytest.mark.slow  # 16-19 s measured: two trials in one process (slow to keep the file's default run short)
def test_optuna_sweep_writes_best_params(tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("attention.window")]
    proc = _run(["vision.train", "hparams_search=vision_optuna", "hydra.sweeper.n_trials=2",
                 "attention.window=choice(8,16)", "trainer=fast", *tiny, f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "attention.window"}
    best = results["best_params"]
    assert 3e-4 <= best["optimizer.lr"] <= 1e-2 and 1e-3 <= best["optimizer.weight_decay"] <= 0.3
    assert best["attention.window"] in (8, 16)  # the command line's search space replaced the config's
    trials = [json.loads((sweep / j / "metrics.json").read_text()) for j in ("0", "1")]
    # main returned optimized_metric (the best validation accuracy), not the test metric
    assert results["best_value"] == pytest.approx(max(t["final"]["val/acc_best"] for t in trials))
    assert (sweep / "summary.csv").is_file()


OPTUNA_SEARCHES = {  # app -> (overrides, optimized_metric, direction, searched keys)
    "audio": ([], "val/wer_best", "minimize", {"optimizer.lr", "optimizer.weight_decay", "attention.window"}),
    "genomics": ([], "val/bpb_best", "minimize", {"optimizer.lr", "optimizer.weight_decay", "attention.window"}),
    "genomics-16s": (["experiment=genomics_classify_16s"], "val/acc_best", "maximize",
                     {"optimizer.lr", "optimizer.weight_decay", "attention.window"}),
}


@needs_optuna
@pytest.mark.parametrize("case", sorted(OPTUNA_SEARCHES))
def test_app_optuna_search_configs(case, tmp_path):
    app = case.split("-")[0]
    overrides, metric, direction, keys = OPTUNA_SEARCHES[case]
    cfg = compose_config(app, [f"hparams_search={app}_optuna", *overrides], tmp_path, return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert cfg.optimized_metric == metric == f"{cfg.monitor}_best"  # the app's validation metric, best so far
    assert str(sweeper.direction) == direction and direction.startswith(cfg.monitor_mode)
    assert sweeper.study_name == f"{app}_optuna" and sweeper.storage is None and cfg.hydra.mode.name == "MULTIRUN"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == cfg.seed
    assert set(sweeper.params) == keys
    for key in sweeper.params:  # every searched key exists in the config (a typo would add a dead parameter)
        assert OmegaConf.select(cfg, key) is not None, key
    # the sweeper Hydra builds from it (the direction interpolation resolved)
    assert type(instantiate(sweeper)).__name__ == "OptunaSweeper"


@needs_optuna
@pytest.mark.slow  # 16 s measured: two genomics trials in one process
def test_genomics_optuna_sweep_writes_best_params(tmp_path):
    from genomics.synthetic import write_genome

    genome = write_genome(tmp_path / "g.gbk", length=12_000, seed=1)
    sweep = tmp_path / "sweep"
    proc = _run(["genomics.train", "hparams_search=genomics_optuna", "hydra.sweeper.n_trials=2",
                 "attention.window=choice(8,16)", "model.dim=16", "model.depth=1", "model.num_heads=2",
                 "data.dataset=path", f"data.path={genome}", "data.window=128", "data.batch_size=2",
                 "data.train_samples=6", "data.markov_max_order=2", "trainer=fast", "trainer.max_epochs=1",
                 "extras.print_config=false", "callbacks.rich_progress_bar=null", f"paths.data_dir={tmp_path / 'data'}",
                 f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = results["best_params"]
    assert set(best) == {"optimizer.lr", "optimizer.weight_decay", "attention.window"}
    assert 3e-4 <= best["optimizer.lr"] <= 3e-3 and 1e-3 <= best["optimizer.weight_decay"] <= 0.3
    assert best["attention.window"] in (8, 16)  # the command line's search space replaced the config's
    trials = [json.loads((sweep / j / "metrics.json").read_text()) for j in ("0", "1")]
    # main returned optimized_metric (the best validation bits per base, minimised), not the test metric
    assert results["best_value"] == pytest.approx(min(t["final"]["val/bpb_best"] for t in trials))
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["job"] for r in rows] == ["0", "1"] and all(r["status"] == "ok" for r in rows)


# -- the objective ----------------------------------------------------------------------------------
METRICS = {"metric": 0.5, "metric_name": "test/acc", "best_val/acc": 0.75, "fit_seconds": 3.0, "status": "ok",
           "final": {"val/acc": 0.7, "val/acc_best": 0.75}, "test": {"test/acc": 0.5}}


@pytest.mark.parametrize("name,value", [(None, 0.5), ("val/acc_best", 0.75), ("test/acc", 0.5),
                                        ("best_val/acc", 0.75), ("fit_seconds", 3.0)])
def test_sweep_objective(name, value):
    assert sweep_objective(METRICS, name) == value


def test_sweep_objective_unknown_metric():
    with pytest.raises(ValueError, match=r"optimized_metric='val/acc_bets' is not a metric of this run; available: "
                                         r"\[.*'val/acc_best'.*\]\. Did you mean 'val/acc_best'\?"):
        sweep_objective(METRICS, "val/acc_bets")
    with pytest.raises(ValueError, match=r"optimized_metric='status' is not a metric"):  # not a number
        sweep_objective(METRICS, "status")
