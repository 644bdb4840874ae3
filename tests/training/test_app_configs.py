"""An app composes only its own configs: an option named after another app (``vision.train experiment=audio_flite``)
is refused with the key, the option and the options the app may use (``check_app_choices``)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from core_attn.training.cli import CONF_DIR
from core_attn.training.train import APPS, check_app_choices

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
