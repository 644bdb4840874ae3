import inspect
import pathlib

import pytest
import yaml

import core_attn
from core_attn.attention.base import AttentionBase
from tests.core_attn.variants import SETTINGS

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_list_attention_sorted_and_complete():
    names = core_attn.list_attention()
    assert names == sorted(names)
    for expected in ("dense", "local", "bigbird", "sparse_strided", "sparse_fixed"):
        assert expected in names


@pytest.mark.parametrize("name", core_attn.list_attention())
def test_one_name_everywhere(name):
    """Registry key == module file == conf/attention/<key>.yaml == <Name>Attention class."""
    cls = core_attn.get_attention_class(name)
    assert issubclass(cls, AttentionBase)
    assert cls.name == name
    assert cls.__module__ == f"core_attn.attention.{name}"
    assert cls.__name__.endswith("Attention")
    assert cls.__name__.lower().replace("_", "") == name.replace("_", "") + "attention"
    cfg = yaml.safe_load((ROOT / "conf" / "attention" / f"{name}.yaml").read_text())
    assert cfg["_target_"] == f"{cls.__module__}.{cls.__name__}"
    params = inspect.signature(cls.__init__).parameters
    for key in cfg:
        if not key.startswith("_"):
            assert key in params, f"conf/attention/{name}.yaml sets {key!r}, unknown to {cls.__name__}"
    assert all(p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) for k, p in params.items() if k != "self"), \
        "no **kwargs: a misspelled key must raise"
    assert cls.__doc__ and cls.time_complexity and cls.memory_complexity


def test_every_config_has_a_variant():
    files = sorted((ROOT / "conf" / "attention").glob("*.yaml"))
    assert files
    assert {f.stem for f in files} == set(core_attn.list_attention())


@pytest.mark.parametrize("name", core_attn.list_attention())
def test_every_variant_has_test_settings(name):
    assert name in SETTINGS, f"add small test settings for {name!r} to tests/core_attn/variants.py"


def test_unknown_variant_suggests():
    with pytest.raises(ValueError, match=r"unknown attention variant 'locall'.*Did you mean 'local'\?"):
        core_attn.build_attention("locall")


def test_unknown_hyperparameter_names_it():
    with pytest.raises(ValueError, match=r"attention 'local' got unknown hyper-parameter 'windo'.*Did you mean 'window'\?"):
        core_attn.build_attention("local", windo=3)


def test_bad_hyperparameter_value():
    with pytest.raises(ValueError, match=r"window=0 is out of range; expected 1 <= window"):
        core_attn.build_attention("local", window=0)
    with pytest.raises(ValueError, match=r"backend='fast' is not allowed; expected one of \['auto', 'blocked', 'native', 'flex', 'dense', 'banded'\]"):
        core_attn.build_attention("local", backend="fast")
    with pytest.raises(ValueError, match=r"num_window_blocks=4 must be odd"):
        core_attn.build_attention("bigbird", num_window_blocks=4)
    with pytest.raises(ValueError, match=r"num_summary=5 must be <= stride=4"):
        core_attn.build_attention("sparse_fixed", stride=4, num_summary=5)
    with pytest.raises(ValueError, match=r"dropout=1.5 is out of range"):
        core_attn.build_attention("dense", dropout=1.5)
