"""``train(cfg)`` and ``evaluate(cfg)``: the plain functions under every app's ``@hydra.main``.

Shaped after lightning-hydra-template's ``src/train.py``: seed, instantiate datamodule, module,
callbacks, loggers and trainer from the config, fit, test the best checkpoint, and return the metrics
(also written to ``<run dir>/metrics.json``).
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from core_attn.training.atomic import (
    remove_stale_tmp,
    write_json_atomic,
)
from core_attn.training.callbacks import (
    ConfigInCheckpoint,
    SpanMonitor,
    ThroughputMonitor,
    peak_memory_mb,
    reset_peak_memory,
)
from core_attn.training.checkpoint_io import checkpoint_dir
from core_attn.training.finetune import check_init_path, init_weights
from core_attn.training.offload import offloading_callbacks
from core_attn.training.runtime import check_checkpoint_path, load_run_config

log = logging.getLogger(__name__)


# -- small helpers ---------------------------------------------------------------------------------
def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers with interpolations resolved, without the ``hydra`` node."""
    keys = [k for k in cfg if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)


def variant_name(attention: Any) -> str | None:
    """The registry key of an attention config, from its ``_target_``
    (``core_attn.attention.<key>.<Name>Attention``: file name == registry key)."""
    target = attention.get("_target_") if hasattr(attention, "get") else None
    return target.rsplit(".", 2)[-2] if target and target.count(".") >= 2 else None


def task_overrides() -> list[str]:
    """The command-line overrides of this Hydra job (empty outside a Hydra run)."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def apply_extras(cfg: DictConfig) -> None:
    """``extras.ignore_warnings`` silences Python warnings; ``extras.print_config`` prints the config."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        from lightning.pytorch.utilities import rank_zero_only

        @rank_zero_only
        def _print() -> None:
            from rich.console import Console
            from rich.syntax import Syntax

            Console().print(Syntax(OmegaConf.to_yaml(cfg, resolve=False), "yaml"))

        _print()


def instantiate_callbacks(callbacks_cfg: DictConfig | None) -> list[pl.Callback]:
    """One callback per entry of ``cfg.callbacks`` (entries set to null are skipped)."""
    out = []
    for name, cb in (callbacks_cfg or {}).items():
        if cb is None:
            continue
        if not isinstance(cb, DictConfig) or "_target_" not in cb:
            raise ValueError(f"callbacks.{name} must be a config with a _target_ (or null to drop it); got {cb!r}")
        out.append(instantiate(cb))
    return out


def instantiate_loggers(logger_cfg: DictConfig | None) -> list[Any]:
    """One Lightning logger per entry of ``cfg.logger`` (entries set to null are skipped)."""
    out = []
    for name, lg in (logger_cfg or {}).items():
        if lg is None:
            continue
        if not isinstance(lg, DictConfig) or "_target_" not in lg:
            raise ValueError(f"logger.{name} must be a config with a _target_ (or null to drop it); got {lg!r}")
        out.append(instantiate(lg))
    return out


def check_trainer_device(trainer_cfg: DictConfig) -> None:
    """One line instead of Lightning's deep error when the trainer config needs what this machine lacks:
    ``trainer=gpu``, ``ddp`` or ``fsdp`` (``accelerator: gpu``) without a CUDA GPU, or SyncBatchNorm on CPU
    processes (DDP refuses it there)."""
    accelerator, cuda = str(trainer_cfg.get("accelerator", "auto")), torch.cuda.is_available()
    if accelerator in ("gpu", "cuda") and not cuda:
        raise ValueError(f"trainer.accelerator={accelerator} needs a CUDA GPU and torch finds none on this machine "
                         "(trainer=gpu, ddp and fsdp train on GPUs); use trainer=cpu, or trainer=ddp_cpu for "
                         "data-parallel CPU processes")
    if trainer_cfg.get("sync_batchnorm") and (accelerator == "cpu" or (accelerator == "auto" and not cuda)):
        raise ValueError(f"trainer.sync_batchnorm=true needs GPUs (DDP refuses SyncBatchNorm on CPU) and "
                         f"trainer.accelerator={accelerator} trains on CPU; use trainer=ddp_cpu, or "
                         "trainer.sync_batchnorm=false")


def check_max_time(trainer_cfg: DictConfig) -> None:
    """``trainer.max_time`` in the form Lightning's ``Timer`` reads (``DD:HH:MM:SS`` or a mapping of
    ``timedelta`` fields such as ``{hours: 1}``): one line naming the key instead of its traceback."""
    value = trainer_cfg.get("max_time")
    if value is None or isinstance(value, Mapping):
        return
    if not (isinstance(value, str) and re.fullmatch(r"\s*\d+:\d+:\d+:\d+\s*", value)):
        raise ValueError(f"trainer.max_time={value!r} is not a duration Lightning reads; expected DD:HH:MM:SS "
                         "(days:hours:minutes:seconds, e.g. trainer.max_time=00:01:20:00 for 1 h 20 min) or "
                         "null for no limit")


def _make_trainer(cfg: DictConfig, callbacks: list[pl.Callback]) -> pl.Trainer:
    check_trainer_device(cfg.trainer)
    check_max_time(cfg.trainer)
    loggers = instantiate_loggers(cfg.get("logger"))
    if not loggers:  # LearningRateMonitor raises without a logger; it has nothing to log to anyway
        from lightning.pytorch.callbacks import LearningRateMonitor

        dropped = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
        if dropped:
            log.info("no logger configured: LearningRateMonitor dropped")
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def _resume_path(cfg: DictConfig, trainer: pl.Trainer, output_dir: Path) -> str | None:
    """``cfg.ckpt_path`` as a file: ``last`` means ``last.ckpt`` in this run's checkpoint folder (it must
    exist); ``auto`` means that file when it exists and a fresh start otherwise: one command line for a
    job's first start and its restarts (a SLURM job requeued after a timeout or preemption)."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        return None
    if ckpt in ("last", "auto"):
        path = checkpoint_dir(trainer, output_dir) / "last.ckpt"
        if path.is_file():
            if ckpt == "auto":
                log.info("ckpt_path=auto: resuming from %s", path)
            return str(path)
        if ckpt == "auto":
            log.info("ckpt_path=auto: no %s yet, starting from scratch", path)
            return None
        raise FileNotFoundError(
            f"ckpt_path=last but {path} does not exist; to resume an earlier run, point this run at its "
            "directory with hydra.run.dir=<that run's dir> (or pass ckpt_path=<path to a .ckpt>, or "
            "ckpt_path=auto to start fresh when there is nothing to resume)"
        )
    return str(check_checkpoint_path(ckpt))


APPS = ("vision", "audio", "genomics")
_TARGET = re.compile(r"^_target_:\s*([A-Za-z_]\w*)\.", re.M)


def config_owner(group: str, option: str, conf_dir: str | Path | None = None) -> str | None:
    """The app an option of a shared config group belongs to, by the one rule of ``conf/``: its name starts
    with ``<app>_`` (``experiment/audio_flite.yaml``), or its top-level ``_target_`` lives in that app's package
    (``data/image_folder.yaml`` builds ``vision.data...``). ``None``: a shared option, every app may use it.
    (``conf/<app>/<group>/<option>.yaml`` are an app's own settings of a shared option, merged by that app's
    primary config; they are never chosen by name.)"""
    prefix, sep, _ = option.partition("_")
    if sep and prefix in APPS:
        return prefix
    from core_attn.training.cli import CONF_DIR

    path = Path(conf_dir or CONF_DIR) / group / f"{option}.yaml"
    found = _TARGET.search(path.read_text()) if path.is_file() else None
    return found.group(1) if found and found.group(1) in APPS else None


def check_app_choices(app: str | None, choices: Mapping[str, Any], conf_dir: str | Path | None = None) -> None:
    """An app composes only its own options of the shared config groups and the shared ones: an option of
    another app (:func:`config_owner`: ``experiment=audio_flite`` or ``data=image_folder`` under ``audio.train``)
    raises ``ValueError`` naming the key, the option, its app and the options of that group this app may use.

    Args:
        app: the running app (``cfg.app``); ``None``: nothing is checked.
        choices: config group -> chosen option (Hydra's ``runtime.choices``).
        conf_dir: the config folder (default: the project's ``conf/``).
    """
    if not app:
        return
    from core_attn.training.cli import CONF_DIR

    root = Path(conf_dir or CONF_DIR)
    for group, option in choices.items():
        owner = (config_owner(group, option, root) if isinstance(option, str) and not group.startswith("hydra")
                 and "/" not in group else None)
        if owner is not None and owner != app:
            allowed = sorted(f.stem for f in (root / group).glob("*.yaml") if config_owner(group, f.stem, root) in (None, app))
            raise ValueError(f"{group}={option} is a config of the {owner} app, not of {app}: {app}.train takes "
                             f"{group}= one of {allowed}; run python -m {owner}.train {group}={option} for that app")


def check_resume_app(cfg: DictConfig) -> None:
    """``ckpt_path=<a file>`` must be a checkpoint of this app (``cfg.app`` against the ``app`` of the run
    config stored in it): ``ValueError`` naming both, before anything is built (resuming another app's
    checkpoint would end in a screen of state_dict mismatches). ``last``/``auto`` and a missing file are
    left to :func:`_resume_path`."""
    ckpt, app = cfg.get("ckpt_path"), cfg.get("app")
    if ckpt in (None, "last", "auto") or not Path(ckpt).is_file():
        return
    other = load_run_config(ckpt).get("app")
    if app and other and other != app:
        raise ValueError(f"ckpt_path={ckpt!r} is a checkpoint of the {other} app, not of {app}: resume it with "
                         f"python -m {other}.train, or give a checkpoint of {app}.train")


def _count_params(module: torch.nn.Module) -> dict[str, int]:
    return {
        "params": sum(p.numel() for p in module.parameters()),
        "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }


def _test_metric_name(cfg: DictConfig) -> str:
    monitor = str(cfg.get("monitor") or "val/acc")
    return "test/" + monitor.split("/", 1)[1] if monitor.startswith("val/") else monitor


def sweep_objective(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value an app's ``main`` returns to a Hydra sweeper (Optuna maximises or minimises it).

    ``name=None`` (``optimized_metric: null``): the test metric, ``metrics["metric"]``. Otherwise the
    metric ``name`` among the run's final training/validation metrics (``val/acc_best``), then its test
    metrics (``test/acc``), then the top-level entries (``best_val/acc``, ``train_samples_per_s``);
    ``ValueError`` naming the ones available when it is none of them.
    """
    if name is None:
        return metrics.get("metric")
    for source in (metrics.get("final") or {}, metrics.get("test") or {}, metrics):
        value = source.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    from core_attn.validation import did_you_mean

    available = sorted({*(metrics.get("final") or {}), *(metrics.get("test") or {}),
                        *(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))})
    raise ValueError(f"optimized_metric={name!r} is not a metric of this run; available: {available}."
                     f"{did_you_mean(name, available)}")


def resolve_auto_data(cfg: DictConfig, datamodule: pl.LightningDataModule) -> None:
    """Data settings given as ``auto`` that the datamodule resolved from the data (an image folder's
    ``channels``) replace ``auto`` in ``cfg.data``, so the model configs that interpolate them
    (``in_chans: ${data.channels}``) and the config stored in checkpoints hold the value."""
    hparams = getattr(datamodule, "hparams", {})
    with open_dict(cfg):
        for key, value in cfg.data.items():
            if value == "auto" and hparams.get(key, "auto") != "auto":
                cfg.data[key] = hparams[key]


def _epoch_batches(trainer_cfg: DictConfig, batches: int) -> int:
    """Training batches per epoch once ``trainer.limit_train_batches`` (a count or a fraction) is applied."""
    limit = trainer_cfg.get("limit_train_batches")
    if limit is None:
        return batches
    return min(batches, int(limit)) if isinstance(limit, int) else int(batches * float(limit))


def budget_epochs(cfg: DictConfig, datamodule: pl.LightningDataModule) -> None:
    """A datamodule's ``min_train_samples`` (e.g. ``data.min_train_samples`` of an image folder) raises
    ``trainer.max_epochs`` so that training sees at least that many samples.

    A budget in epochs fits one data set size: 2 epochs of 7,680 images are 1,920 steps at batch 8, of 600
    images 150. With ``min_train_samples`` set, a small data set gets as many epochs as it takes to see that
    many samples (the learning-rate schedule spans them); a large one keeps ``trainer.max_epochs``.
    Nothing changes when it is null, when ``trainer.max_steps`` is set, or when the command line sets
    ``trainer.max_epochs`` or ``trainer.max_steps`` itself (what the user asks for wins).
    """
    want = getattr(datamodule, "hparams", {}).get("min_train_samples")
    explicit = {o.split("=", 1)[0].lstrip("+~") for o in task_overrides()} & {"trainer.max_epochs", "trainer.max_steps"}
    if (not want or explicit or not cfg.get("train", True) or cfg.trainer.get("fast_dev_run")
            or (cfg.trainer.get("max_steps") or -1) > 0):
        return
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    per_epoch = _epoch_batches(cfg.trainer, len(loader)) * (loader.batch_size or 1)  # samples (whole batches)
    epochs = max(1, -(-want // max(per_epoch, 1)))
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and 0 < max_epochs < epochs:
        log.info("data.min_train_samples=%d: %d samples per epoch, trainer.max_epochs %d -> %d", want, per_epoch,
                 max_epochs, epochs)
        with open_dict(cfg):
            cfg.trainer.max_epochs = epochs


# -- the two entry points --------------------------------------------------------------------------
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test the app described by ``cfg``; return the metrics and write them to
    ``<cfg.paths.output_dir>/metrics.json``.

    ``cfg`` needs: ``data`` (a LightningDataModule config), ``module`` (a LightningModule config whose
    hyper-parameters rebuild the model), ``trainer``, optional ``callbacks``/``logger`` (name -> config),
    ``paths.output_dir``, ``seed``, ``train``, ``test``, ``ckpt_path``, ``monitor``, and optionally
    ``activation_offloading`` (true: the training forward saves its tensors in CPU memory,
    :class:`core_attn.training.offload.ActivationOffloading`).
    """
    apply_extras(cfg)
    if HydraConfig.initialized():
        check_app_choices(cfg.get("app"), HydraConfig.get().runtime.choices)
    check_resume_app(cfg)
    if cfg.get("init_from"):
        check_init_path(cfg.init_from)  # before the data is prepared
    from core_attn.training.average import average_best, check_average_best  # here: `python -m` runs that module

    n_average = check_average_best(cfg.get("average_best"),
                                   OmegaConf.select(cfg, "callbacks.model_checkpoint.save_top_k"))
    output_dir = Path(cfg.paths.output_dir)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    resolved_config(cfg)  # fails early on a dangling interpolation

    datamodule: pl.LightningDataModule = instantiate(cfg.data, _convert_="all")  # plain lists: checkpoints load with weights_only
    resolve_auto_data(cfg, datamodule)
    budget_epochs(cfg, datamodule)
    config = resolved_config(cfg)
    module: pl.LightningModule = instantiate(cfg.module, _recursive_=False, _convert_="all")
    throughput, spans = ThroughputMonitor(), SpanMonitor()
    callbacks = instantiate_callbacks(cfg.get("callbacks")) + [throughput, spans, ConfigInCheckpoint(config)]
    callbacks += offloading_callbacks(cfg.get("activation_offloading", False))
    trainer = _make_trainer(cfg, callbacks)
    if trainer.is_global_zero:  # what a kill during a write left (rank 0 writes all of it)
        for path in remove_stale_tmp(output_dir, checkpoint_dir(trainer, output_dir)):
            log.info("removed %s, left by a run stopped while writing it", path)

    reset_peak_memory()
    metrics: dict[str, Any] = {"status": "ok", "app": cfg.get("app"), "variant": variant_name(cfg.get("attention")),
                               "overrides": task_overrides(), "seed": cfg.get("seed"), **_count_params(module)}
    ckpt_for_test = _resume_path(cfg, trainer, output_dir)
    if cfg.get("init_from") and ckpt_for_test is None:  # a resumed run has its own weights
        init_weights(module, cfg.init_from, app=cfg.get("app"))
        metrics["init_from"] = str(cfg.init_from)
    if cfg.get("train", True):
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_for_test)
        metrics["fit_seconds"] = round(time.perf_counter() - t0, 2)
        metrics["final"] = _floats(trainer.callback_metrics)
        cb = trainer.checkpoint_callback
        best = cb.best_model_path if cb is not None else ""
        if cb is not None and cb.best_model_score is not None:
            metrics["best_" + str(cb.monitor)] = float(cb.best_model_score)
        metrics["last_ckpt"] = cb.last_model_path if cb is not None and cb.last_model_path else None
        ckpt_for_test = best or None
        if n_average > 1 and cb is not None and cb.best_k_models:
            ckpt_for_test = str(checkpoint_dir(trainer, output_dir) / "averaged.ckpt")
            if trainer.is_global_zero:
                metrics["averaged_from"] = average_best(cb.best_k_models, n_average, cb.mode, ckpt_for_test)
                log.info("average_best=%d: %s is the mean of %s", n_average, ckpt_for_test, metrics["averaged_from"])
            trainer.strategy.barrier()
            metrics["averaged_ckpt"] = ckpt_for_test
        if not best:
            log.warning("no best checkpoint was saved (no checkpoint callback, or fast_dev_run): "
                        "testing the weights at the end of training")
    elif cfg.get("test", True) and ckpt_for_test is None:
        raise ValueError("train=false needs ckpt_path=<a .ckpt> to test (there are no trained weights)")
    metrics["epochs"] = trainer.current_epoch
    metrics["steps"] = trainer.global_step

    if cfg.get("test", True):
        t0 = time.perf_counter()
        results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_for_test)
        metrics["test_seconds"] = round(time.perf_counter() - t0, 2)
        metrics["test"] = _floats(results[0]) if results else {}
        metrics["test_ckpt"] = ckpt_for_test or "end-of-training weights"
        name = _test_metric_name(cfg)
        metrics["metric_name"], metrics["metric"] = name, metrics["test"].get(name)

    metrics.update(throughput.results())
    metrics.update(spans.results())  # adaptive_span only: the learned spans
    metrics.update(peak_memory_mb())
    metrics["world_size"] = trainer.world_size
    if trainer.is_global_zero:
        write_json_atomic(output_dir / "metrics.json", metrics)
        log.info("metrics written to %s", output_dir / "metrics.json")
    return metrics


def module_overrides(cfg: DictConfig) -> dict[str, Any]:
    """The keys of ``cfg.module`` other than ``_target_`` that are not null: hyper-parameters that replace a
    checkpoint's saved ones when :func:`evaluate` rebuilds its module."""
    return {k: v for k, v in OmegaConf.to_container(cfg.module, resolve=True).items()
            if k != "_target_" and v is not None}


def eval_data_config(cfg: DictConfig, stored: dict[str, Any]) -> dict[str, Any] | None:
    """The data config :func:`evaluate` uses: ``cfg.data`` when it names a ``_target_`` (a ``data=<option>``
    choice), else the data config stored in the checkpoint (``stored``, the run config) with the keys of
    ``cfg.data`` (e.g. ``++data.root=...``) replacing stored ones; ``None`` when there is neither."""
    given = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else None
    if given is not None and "_target_" in given:
        return given
    if stored.get("data") is None:
        if given:
            raise ValueError(f"data.{sorted(given)[0]}=... overrides the checkpoint's data config, but "
                             f"{cfg.get('ckpt_path')} stores none; choose the data with data=<option>")
        return None
    return OmegaConf.to_container(OmegaConf.merge(stored["data"], given or {}), resolve=True)


def evaluate(cfg: DictConfig, *, datamodule: pl.LightningDataModule | None = None,
             callbacks: list[pl.Callback] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Test the checkpoint ``cfg.ckpt_path``; return the metrics and write them to
    ``<cfg.paths.output_dir>/metrics.json``.

    The module is rebuilt from the checkpoint's saved hyper-parameters (class ``cfg.module._target_``);
    other keys of ``cfg.module`` that are not null replace saved ones (e.g. the audio app's ``module.decoder``).
    The data is ``datamodule`` when given, else the one :func:`eval_data_config` describes.

    Args:
        cfg: the app's evaluation config.
        datamodule: the data to test on (an app that builds its own, e.g. a whole folder as one split).
        callbacks: attached to the test run beside ``cfg.callbacks``; the dict a callback's ``results()``
            method returns after the test is added to the metrics.
        extra: entries added to the metrics (e.g. which split of which folder was tested).
    """
    apply_extras(cfg)
    ckpt = cfg.get("ckpt_path")
    stored = load_run_config(ckpt)  # FileNotFoundError naming ckpt_path
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    module_cls = get_class(cfg.module._target_)
    module = module_cls.load_from_checkpoint(ckpt, map_location="cpu", **module_overrides(cfg))
    if datamodule is None:
        data = eval_data_config(cfg, stored)
        if data is None:
            raise ValueError(f"{ckpt} stores no data config; choose the data with data=<option> (e.g. data=mega_mnist)")
        datamodule = instantiate(data, _convert_="all")

    throughput, spans = ThroughputMonitor(), SpanMonitor()
    callbacks = [*(callbacks or []), spans]
    trainer = _make_trainer(cfg, instantiate_callbacks(cfg.get("callbacks")) + callbacks + [throughput])
    reset_peak_memory()
    t0 = time.perf_counter()
    results = trainer.test(module, datamodule=datamodule)
    test = _floats(results[0]) if results else {}
    name = _test_metric_name(cfg)
    metrics = {"status": "ok", "app": cfg.get("app"), "ckpt_path": str(ckpt), "overrides": task_overrides(),
               "variant": variant_name(stored.get("attention")),
               "test": test, "metric_name": name, "metric": test.get(name),
               "test_seconds": round(time.perf_counter() - t0, 2), **_count_params(module),
               "test_samples_per_s": throughput.results()["test_samples_per_s"], **peak_memory_mb()}
    metrics.update(extra or {})
    for cb in callbacks:
        if callable(getattr(cb, "results", None)):
            metrics.update(cb.results())
    if trainer.is_global_zero:
        write_json_atomic(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    return metrics
