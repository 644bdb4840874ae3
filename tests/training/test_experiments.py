"""Experiments override the primary config (``_self_`` must come before ``experiment`` in defaults)."""

import pathlib

import pytest
import yaml
from hydra import compose, initialize_config_dir

CONF = pathlib.Path(__file__).resolve().parents[2] / "conf"
EXPERIMENTS = sorted((CONF / "experiment").glob("*.yaml"))


def _leaves(d, prefix=""):
    for k, v in d.items():
        if k == "defaults":
            continue
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_found_experiments():
    assert EXPERIMENTS


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_values_win(path):
    app = path.stem.split("_")[0]
    assert (CONF / f"{app}.yaml").exists(), f"experiment {path.name} should be named <app>_..."
    body = yaml.safe_load(path.read_text()) or {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(app, overrides=[f"experiment={path.stem}"])
    for key, value in _leaves(body):
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value, f"{path.name} sets {key}={value!r} but the composed config has {node!r}"


VARIANT_SETTINGS = sorted((CONF / "experiment_attention").glob("*/*.yaml"))


@pytest.mark.parametrize("path", VARIANT_SETTINGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_experiment_variant_settings_apply_to_their_variant_only(path):
    """``conf/experiment_attention/<experiment>/<variant>.yaml`` names a real experiment and variant, wins over
    the app's and the variant's defaults when that variant is chosen, and leaves every other variant alone
    (``experiment=genomics_dna_lm attention=bigbird`` gets no ``window``)."""
    experiment, variant = path.parent.name, path.stem
    assert (CONF / "experiment" / f"{experiment}.yaml").is_file() and (CONF / "attention" / f"{variant}.yaml").is_file()
    app = experiment.split("_")[0]
    body = yaml.safe_load(path.read_text())
    other = "dense" if variant != "dense" else "linear"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(app, overrides=[f"experiment={experiment}", f"attention={variant}"])
        plain = compose(app, overrides=[f"experiment={experiment}", f"attention={other}"])
    for key, value in body.items():
        assert cfg.attention[key] == value
    assert set(plain.attention) == set(yaml.safe_load((CONF / "attention" / f"{other}.yaml").read_text())) | {"causal"}
