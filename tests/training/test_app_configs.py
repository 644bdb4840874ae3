"""An app composes only its own configs: an option of another app (``vision.train experiment=audio_flite``,
``audio.train data=image_folder``) is refused with the key, the option and the options the app may use
(``check_app_choices``)."""

from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_dir

from core_attn.training.cli import CONF_DIR
from core_attn.training.train import APPS, config_owner, check_app_choices

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_experiments_are_found():
    assert {e.split("_", 1)[0] for e in EXPERIMENTS} == set(APPS), EXPERIMENTS


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_an_app_refuses_another_apps_experiment(app, experiment):
    owner = experiment.split("_", 1)[0]
    if owner == app:
        check_app_choices(app, {"experiment": experiment})
        return
    with pytest.raises(ValueError, match=rf"experiment={experiment} is a config of the {owner} app, not of {app}: "
                                         rf"{app}\.train takes experiment= one of \[.*'{app}_.*\]; run python -m "
                                         rf"{owner}\.train experiment={experiment} for that app"):
        check_app_choices(app, {"experiment": experiment})


def test_shared_options_and_hydra_groups_pass():
    check_app_choices("vision", {"optimizer": "adamw", "hydra/launcher": "basic", "logger": None})
    check_app_choices(None, {"experiment": "audio_flite"})  # no app: nothing to check


@pytest.mark.parametrize("app", APPS)
def test_every_app_composes_its_own_options(app):
    """The primary config and each of the app's experiments choose only options of that app or shared ones."""
    own = [e for e in EXPERIMENTS if e.startswith(f"{app}_")]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for overrides in [[], *([f"experiment={e}"] for e in own)]:
            cfg = compose(app, overrides=overrides, return_hydra_config=True)
            check_app_choices(app, cfg.hydra.runtime.choices)


@pytest.mark.parametrize(("app", "group", "option", "owner"), [
    ("audio", "data", "image_folder", "vision"),       # no prefix: the owner is the package of its _target_
    ("genomics", "model", "vit", "vision"),
    ("vision", "data", "genomics_genome", "genomics"),
    ("vision", "model", "audio_conformer", "audio"),
])
def test_an_option_belongs_to_the_app_its_name_or_target_names(app, group, option, owner):
    with pytest.raises(ValueError, match=rf"{group}={option} is a config of the {owner} app, not of {app}"):
        check_app_choices(app, {group: option})
    check_app_choices(owner, {group: option})


def test_one_rule_covers_every_option_of_the_shared_groups():
    """Every option of a shared group is either shared (no app prefix, no app _target_) or belongs to exactly
    the app its prefix names; an unprefixed option that builds an app's class is that app's."""
    for folder in sorted(p for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in (*APPS, "hydra")):
        for f in folder.glob("*.yaml"):
            owner = config_owner(folder.name, f.stem)
            target = re.search(r"^_target_:\s*(\w+)\.", f.read_text(), re.M)
            prefix = f.stem.split("_", 1)[0]
            if prefix in APPS:
                assert owner == prefix, f
                assert not target or target.group(1) not in APPS or target.group(1) == prefix, f
            else:
                assert owner == (target.group(1) if target and target.group(1) in APPS else None), f
