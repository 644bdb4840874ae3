"""Every Hydra config composes; unknown keys raise.

Enrols itself: every primary config ``conf/*.yaml`` is composed with every option of every group in its
defaults list (globbed from ``conf/<group>/**/*.yaml``; options named ``<app>_*`` or targeting another
app's package are left to that app's primary configs), resolved, and each ``_target_`` imported.

``conf/hydra/`` is special: its top-level files are options of our ``hydra`` group, its subfolders are
Hydra's own groups (``conf/hydra/launcher/slurm.yaml`` is ``hydra/launcher=slurm``), composed with the
Hydra node returned and their ``_target_`` imported. An option building on a plugin's config (a launcher
extending ``submitit_slurm``, a search overriding ``/hydra/sweeper: optuna``) composes only with that plugin
installed: without it the case is skipped, naming the plugin and the extra that installs it.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from tests.training.tiny import CONF_DIR, compose_config

APPS = ("vision", "audio", "genomics")
PRIMARY = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
HYDRA_DIR = CONF_DIR / "hydra"
# Plugin configs our options build on -> (the package registering them, the extra of pyproject.toml installing it).
PLUGIN_CONFIGS = {
    "hydra/launcher/submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "cluster"),
    "hydra/launcher/submitit_local": ("hydra_plugins.hydra_submitit_launcher", "cluster"),
    "hydra/launcher/joblib": ("hydra_plugins.hydra_joblib_launcher", "cluster"),
    "hydra/sweeper/optuna": ("hydra_plugins.hydra_optuna_sweeper", "sweep"),
    "hydra/sweeper/sampler/tpe": ("hydra_plugins.hydra_optuna_sweeper", "sweep"),
}


def _plugin_configs(option: Path) -> list[str]:
    """The ``hydra/<group>/<name>`` configs that ``option``'s defaults list takes from outside ``conf/``:
    ``- submitit_slurm`` in ``conf/hydra/launcher/`` (a sibling not on disk) or ``override /hydra/sweeper: optuna``."""
    cfg = OmegaConf.load(option)
    out = []
    for entry in (cfg.get("defaults") or []) if OmegaConf.is_dict(cfg) else []:
        if isinstance(entry, str):
            if HYDRA_DIR in option.parents and entry != "_self_" and not (option.parent / f"{entry}.yaml").is_file():
                out.append(f"{option.parent.relative_to(CONF_DIR).as_posix()}/{entry}")
            continue
        for key, value in entry.items():
            group = key.removeprefix("override").strip().lstrip("/")
            if group.startswith("hydra/") and not (CONF_DIR / group / f"{value}.yaml").is_file():
                out.append(f"{group}/{value}")
    return out


def _missing_plugin(option: Path) -> str | None:
    """Why ``option`` cannot compose here (a plugin it builds on is not installed), or None."""
    if not option.is_file():
        return None
    for name in _plugin_configs(option):
        assert name in PLUGIN_CONFIGS, f"{option} builds on {name}: add its plugin to PLUGIN_CONFIGS"
        package, extra = PLUGIN_CONFIGS[name]
        try:  # find_spec of a submodule raises when its parent package (hydra_plugins) is absent
            found = importlib.util.find_spec(package) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return (f"{option.relative_to(CONF_DIR)} builds on {name}, registered by {package}, which is not "
                    f"installed (pip install -e '.[{extra}]')")
    return None


def _app_of(option: Path) -> str | None:
    """The app an option belongs to (``<app>_*.yaml`` or a ``_target_`` in an app package), None if shared."""
    prefix = option.stem.split("_", 1)[0]
    if prefix in APPS:
        return prefix
    cfg = OmegaConf.load(option)
    target = cfg.get("_target_") if OmegaConf.is_dict(cfg) else None
    top = str(target).split(".", 1)[0] if target else None
    return top if top in APPS else None


def _primary_app(name: str) -> str:
    return name.split("_", 1)[0]


@functools.lru_cache(maxsize=None)
def _choices(primary: str) -> dict[str, str | None]:
    """Group -> default option of ``primary``'s defaults list (Hydra's own groups left out)."""
    cfg = compose_config(primary, [], return_hydra_config=True)
    return {g: c for g, c in cfg.hydra.runtime.choices.items() if not g.startswith("hydra/")}


def _groups(primary: str) -> list[str]:
    return sorted(_choices(primary))


# Options of these groups mean the same under every primary config: each is composed once, with the
# first main config (``<app>.yaml``) that uses the group. Every other group's options (data, model,
# experiment, ...) are composed with every primary config of their app that uses the group, and every
# primary config is composed with its own defaults.
SHARED_GROUPS = {"attention", "optimizer", "scheduler", "trainer", "logger", "callbacks", "paths", "hydra",
                 "extras"}


def _cases() -> list[tuple[str, str, str]]:
    cases, shared_done = [], set()
    mains = [p for p in PRIMARY if p == _primary_app(p)]
    for primary in mains + [p for p in PRIMARY if p not in mains]:
        choices = _choices(primary)
        cases += [(primary, g, c) for g, c in sorted(choices.items()) if c and (g not in SHARED_GROUPS or g in shared_done)]
        for group in sorted(choices):
            if group in SHARED_GROUPS and (group in shared_done or primary not in mains):
                continue
            shared_done.add(group) if group in SHARED_GROUPS else None
            # conf/hydra/<sub>/ holds Hydra's own groups (hydra/launcher, ...): HYDRA_CASES, not options of `hydra`
            found = (CONF_DIR / group).glob("*.yaml") if group == "hydra" else (CONF_DIR / group).rglob("*.yaml")
            for option in sorted(found):
                if _app_of(option) in (None, _primary_app(primary)):  # another app's options: its own primary
                    name = option.relative_to(CONF_DIR / group).with_suffix("").as_posix()
                    if (primary, group, name) not in cases:
                        cases.append((primary, group, name))
    return cases


CASES = _cases()
# (group, option) of Hydra's own groups configured under conf/hydra/<group>/, e.g. ("hydra/launcher", "slurm")
HYDRA_CASES = sorted((p.parent.relative_to(CONF_DIR).as_posix(), p.stem) for p in HYDRA_DIR.glob("*/**/*.yaml"))


def _targets(node, path=""):
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node["_target_"]
        for k, v in node.items():
            yield from _targets(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


def _fill_missing(node) -> None:
    """Give mandatory (``???``) values a placeholder: supplying them is the user's job, not the config's."""
    for key in list(node.keys()) if OmegaConf.is_dict(node) else range(len(node)):
        if OmegaConf.is_missing(node, key):
            node[key] = "<required>"
        elif OmegaConf.is_config(node._get_node(key)) and not node._get_node(key)._is_interpolation():
            _fill_missing(node[key])


def test_found_configs():
    assert "vision" in PRIMARY and "vision_eval" in PRIMARY
    assert len(CASES) > 20
    groups = {g for _, g, _ in CASES}
    assert {"data", "model", "attention", "trainer", "logger", "callbacks", "optimizer", "scheduler"} <= groups


@pytest.mark.parametrize("primary,group,option", CASES, ids=["/".join(c) for c in CASES])
def test_config_composes(primary, group, option, tmp_path):
    missing = _missing_plugin(CONF_DIR / group / f"{option}.yaml")
    if missing:
        pytest.skip(missing)
    cfg = compose_config(primary, [f"{group}={option}"], tmp_path)
    _fill_missing(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for path, target in _targets(resolved):
        module = target.rsplit(".", 1)[0]
        if module.startswith("core_attn.attention.") and importlib.util.find_spec(module) is None:
            pytest.skip(f"attention variant {module} is not written yet")
        assert get_object(target) is not None, f"{path}._target_={target} does not import"


def test_found_hydra_group_options():
    assert ("hydra/launcher", "slurm") in HYDRA_CASES
    assert not [c for c in CASES if c[1] == "hydra" and "/" in c[2]]  # never composed as hydra=launcher/slurm


@pytest.mark.parametrize("group,option", HYDRA_CASES, ids=["/".join(c) for c in HYDRA_CASES])
def test_hydra_group_option_composes(group, option, tmp_path):
    missing = _missing_plugin(CONF_DIR / group / f"{option}.yaml")
    if missing:
        pytest.skip(missing)
    cfg = compose_config("vision", [f"{group}={option}"], tmp_path, return_hydra_config=True)
    node = OmegaConf.select(cfg, group.replace("/", "."))
    assert cfg.hydra.runtime.choices[group] == option
    resolved = OmegaConf.to_container(node, resolve=True)
    targets = list(_targets(resolved))
    assert targets, f"{group}={option} has no _target_"
    for path, target in targets:
        assert get_object(target) is not None, f"{group}.{path}._target_={target} does not import"


def test_plugin_configs_are_found():
    assert _plugin_configs(HYDRA_DIR / "launcher" / "slurm.yaml") == ["hydra/launcher/submitit_slurm"]
    assert _plugin_configs(HYDRA_DIR / "launcher" / "local_joblib.yaml") == ["hydra/launcher/joblib"]
    for app in APPS:
        assert "hydra/sweeper/optuna" in _plugin_configs(CONF_DIR / "hparams_search" / f"{app}_optuna.yaml")
    assert _plugin_configs(CONF_DIR / "hparams_search" / "vision_lr.yaml") == []


def test_missing_plugin_skips_with_reason(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "hydra_plugins.hydra_submitit_launcher" else real(name, *a))
    reason = _missing_plugin(HYDRA_DIR / "launcher" / "slurm.yaml")
    assert reason == ("hydra/launcher/slurm.yaml builds on hydra/launcher/submitit_slurm, registered by "
                      "hydra_plugins.hydra_submitit_launcher, which is not installed (pip install -e '.[cluster]')")


def test_defaults_compose_and_resolve(tmp_path):
    cfg = compose_config("vision", [], tmp_path)
    assert cfg.data._target_ == "vision.data.MegaMNISTDataModule"
    assert cfg.attention._target_ == "core_attn.attention.local.LocalAttention"
    assert cfg.module.model.img_size == cfg.data.image_size == 512
    assert cfg.trainer.precision == cfg.precision


MODEL_KEY = {"vision": "model.dim", "audio": "model.encoder.dim", "genomics": "model.dim"}  # a real key per app


@pytest.mark.parametrize("app", APPS)
def test_unknown_key_raises_at_compose(app, tmp_path):
    compose_config(app, [f"{MODEL_KEY[app]}=32"], tmp_path)  # the real key composes
    key = MODEL_KEY[app] + "m"
    with pytest.raises(ConfigCompositionException, match=f"Could not override '{re.escape(key)}'"):
        compose_config(app, [f"{key}=3"], tmp_path)
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'learning_rate'"):
        compose_config(app, ["learning_rate=0.1"], tmp_path)


@pytest.mark.parametrize("app", APPS)
def test_unknown_option_raises_at_compose(app, tmp_path):
    # Hydra names the group and lists the options it has (no "did you mean" of its own)
    with pytest.raises(ConfigCompositionException, match=r"(?s)Could not find 'attention/lokal'.*Available options in "
                                                         r"'attention':.*\blocal\b"):
        compose_config(app, ["attention=lokal"], tmp_path)


def test_forced_unknown_key_raises_at_instantiate(tmp_path):
    # `+` adds a key past struct mode; the constructor (keyword-only, no **kwargs) still refuses it
    cfg = compose_config("vision", ["+model.dimm=3"], tmp_path)
    with pytest.raises(InstantiationException, match=r"unexpected keyword argument \W*dimm"):
        instantiate(cfg.module.model)


def test_struct_mode_after_compose(tmp_path):
    cfg = compose_config("vision", [], tmp_path)
    with pytest.raises(Exception, match="dimm"):
        cfg.model.dimm = 3
