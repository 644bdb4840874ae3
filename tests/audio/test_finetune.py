"""``init_from`` in the audio app: the checkpoint's vocabulary must be this model's."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from audio.text import VOCAB
from core_attn.training.finetune import init_weights
from tests.audio.conftest import TINY_AUDIO
from tests.training.tiny import compose_config


def _module(tmp_path):
    cfg = compose_config("audio", TINY_AUDIO, tmp_path)
    return instantiate(cfg.module, _recursive_=False, _convert_="all")


def test_checkpoint_stores_its_vocabulary_and_loads_into_the_same_model(trained, tmp_path):
    ckpt = torch.load(trained["last_ckpt"], map_location="cpu", weights_only=False)
    assert ckpt["vocab"] == list(VOCAB)
    module = _module(tmp_path)
    assert init_weights(module, trained["last_ckpt"], app="audio")["app"] == "audio"
    assert torch.equal(module.net.head.weight, ckpt["state_dict"]["net.head.weight"])


def test_another_vocabulary_is_refused_naming_both(trained, tmp_path):
    ckpt = torch.load(trained["last_ckpt"], map_location="cpu", weights_only=False)
    ckpt["vocab"] = list(VOCAB[:3]) + list("abcdefghijklmnopqrstuvwxyz")[::-1]
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"init_from='.*other\.ckpt' was trained with another vocabulary: checkpoint "
                                         r"29 tokens \" 'zyx.*\", this model 29 tokens \" 'abc.*\" \(audio\.text\.VOCAB\)"):
        init_weights(_module(tmp_path), tmp_path / "other.ckpt", app="audio")
    del ckpt["vocab"]  # an older checkpoint: the size of its CTC head tells
    ckpt["state_dict"]["net.head.weight"] = torch.zeros(31, ckpt["state_dict"]["net.head.weight"].shape[1])
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match=r"another vocabulary: checkpoint 31 tokens \(not stored\), this model 29"):
        init_weights(_module(tmp_path), tmp_path / "old.ckpt", app="audio")


def test_train_with_init_from_records_it(trained, tmp_path):
    from core_attn.training import train

    cfg = compose_config("audio", [*TINY_AUDIO, f"paths.data_dir={trained['data_dir']}", "test=false",
                                   f"init_from={trained['last_ckpt']}"], tmp_path / "run")
    metrics = train(cfg)
    assert metrics["init_from"] == trained["last_ckpt"] and metrics["steps"] == trained["steps"]
