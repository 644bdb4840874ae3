"""Hugging Face text encoders (Longformer, BigBird, RoBERTa, BERT) loaded into HFEncoder: parity with transformers,
the conversion of a dense checkpoint to a sparse variant, the errors."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from core_attn import build_attention
from core_attn.attention.base import AttentionBase
from genomics.hf import load_hf_encoder, read_hf_encoder_config

transformers = pytest.importorskip("transformers")

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "vocab_size": 50, "max_position_embeddings": 130}


def _save(folder, config_cls, model_cls, **kw):
    """A randomly initialised HF model saved to ``folder``, in eval mode."""
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**TINY, **kw})).eval()
    model.save_pretrained(folder)
    return model


def _inputs(n, pad_id, batch=2):
    """Token ids (B, n) and an attention mask: the last sequence ends in 7 padding tokens."""
    ids = torch.randint(3, TINY["vocab_size"], (batch, n), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(batch, n, dtype=torch.long)
    mask[-1, -7:] = 0
    ids[-1, -7:] = pad_id
    return ids, mask


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roberta")
    return folder, _save(folder, transformers.RobertaConfig, transformers.RobertaForMaskedLM)


@torch.no_grad()
def test_roberta_masked_lm_equals_hf(roberta):
    # a task model's save: encoder under `roberta.`, the LM head left out; padding-aware positions
    folder, hf = roberta
    ids, mask = _inputs(40, pad_id=1)
    ref = hf.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(load_hf_encoder(folder).eval()(ids, mask), ref, atol=1e-5, rtol=0)


@torch.no_grad()
def test_bert_from_pytorch_model_bin_equals_hf(tmp_path):
    # a BertModel save (no prefix, a pooler) converted to the torch .bin format
    hf = _save(tmp_path / "st", transformers.BertConfig, transformers.BertModel)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(load_file(tmp_path / "st" / "model.safetensors"), tmp_path / "bin" / "pytorch_model.bin")
    ids, mask = _inputs(40, pad_id=0)
    ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(load_hf_encoder(tmp_path / "bin").eval()(ids, mask), ref, atol=1e-5, rtol=0)


@torch.no_grad()
def test_big_bird_original_full_equals_hf(tmp_path):
    # tanh GELU (gelu_new), dropout before the embedding LayerNorm, encoder under `bert.`
    hf = _save(tmp_path, transformers.BigBirdConfig, transformers.BigBirdForMaskedLM, attention_type="original_full")
    ids, mask = _inputs(40, pad_id=0)
    ref = hf.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(load_hf_encoder(tmp_path).eval()(ids, mask), ref, atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("window,n", [(8, 60), ([8, 16], 61), ([8, 16], 5)])
def test_longformer_band_equals_hf(tmp_path, window, n):
    # HF's band is |i - j| <= attention_window // 2; padding positions' states are not compared (HF zeroes
    # their attention, we let them attend); n=5 is shorter than the window: padded as HF pads it
    hf = _save(tmp_path, transformers.LongformerConfig, transformers.LongformerModel, attention_window=window)
    model = load_hf_encoder(tmp_path).eval()
    widths = [window] * 2 if isinstance(window, int) else window
    assert [b.attn.attention.window for b in model.blocks] == [w // 2 for w in widths]
    ids, mask = _inputs(n, pad_id=1, batch=2 if n > 7 else 1)
    ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(model(ids, mask)[real], ref[real], atol=1e-5, rtol=0)
    if n > 4 * max(widths):  # the band matters: dense attention over the same weights is another network
        dense = load_hf_encoder(tmp_path, attention=build_attention("dense")).eval()
        assert (dense(ids, mask)[real] - ref[real]).abs().max() > 1e-3


def test_longformer_global_attention_is_refused(tmp_path, caplog):
    _save(tmp_path, transformers.LongformerConfig, transformers.LongformerModel, attention_window=8)
    with caplog.at_level("WARNING", logger="genomics.hf"):
        model = load_hf_encoder(tmp_path)
    assert "global-attention projections (12 tensors" in caplog.text
    assert not any("global" in name for name in model.state_dict())
    ids, mask = _inputs(16, pad_id=1)
    mask[:, 0] = 2  # HF's "global attention" value
    with pytest.raises(ValueError, match=r"attention_mask holds \[2.0\]; supported: 1 \(token\) and 0 \(padding\)"
                                         r"\. Longformer's global attention .* is not supported"):
        model(ids, mask)


class _HFEvalBlockSparse(AttentionBase):
    """HF's BigBird block_sparse in eval mode, written out: our bigbird pattern without random blocks, the
    first block counted ``1 + r`` times in the softmax of query blocks 1 .. n-2 (HF's eval random blocks are
    all block 0)."""

    def __init__(self, block_size, r):
        super().__init__()
        self.block_size, self.r = block_size, r

    def forward(self, q, k, v, key_padding_mask=None):
        n, bs = q.shape[2], self.block_size
        allowed = build_attention("bigbird", block_size=bs, num_random_blocks=0).dense_mask(n)  # (N, N)
        block, last = torch.arange(n) // bs, math.ceil(n / bs) - 1
        twice = (block[:, None] >= 1) & (block[:, None] < last) & (block[None, :] == 0)
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + twice * math.log(1 + self.r)
        allowed = allowed & ~key_padding_mask[:, None, None, :]
        return torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ v


@torch.no_grad()
def test_big_bird_block_sparse_runs_and_differs_from_hf_only_by_its_eval_random_blocks(tmp_path):
    hf = _save(tmp_path, transformers.BigBirdConfig, transformers.BigBirdModel, attention_type="block_sparse",
               block_size=4, num_random_blocks=2)
    model = load_hf_encoder(tmp_path).eval()
    attn = [b.attn.attention for b in model.blocks]
    assert [(a.name, a.block_size, a.num_window_blocks, a.num_global_blocks, a.num_random_blocks, a.seed)
            for a in attn] == [("bigbird", 4, 3, 2, 2, 0), ("bigbird", 4, 3, 2, 2, 1)]
    ids, mask = _inputs(61, pad_id=0)  # > (5 + 2 r) block_size: HF runs block_sparse too
    ref, out = hf(input_ids=ids, attention_mask=mask).last_hidden_state, model(ids, mask)
    real = mask.bool()
    assert out.shape == (2, 61, 32) and torch.isfinite(out).all()
    assert (out[real] - ref[real]).abs().max() > 1e-4  # random blocks: ours are drawn, HF's eval ones are block 0
    oracle = load_hf_encoder(tmp_path, attention=_HFEvalBlockSparse(4, 2)).eval()
    torch.testing.assert_close(oracle(ids, mask)[real], ref[real], atol=1e-5, rtol=0)


def test_dense_roberta_fine_tunes_as_local_attention(roberta):
    # the conversion path: RoBERTa's weights under a sliding window (a partial, built per layer)
    folder, _ = roberta
    model = load_hf_encoder(folder, attention=functools.partial(build_attention, "local", window=4)).train()
    assert [b.attn.attention.window for b in model.blocks] == [4, 4]
    ids, mask = _inputs(48, pad_id=1)
    out = model(ids, mask)
    assert out.shape == (2, 48, 32) and torch.isfinite(out).all()
    out[mask.bool()].square().mean().backward()
    for name in ("embeddings.word.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_read_config_completes_defaults(roberta, tmp_path):
    config = read_hf_encoder_config(roberta[0])
    assert (config["model_type"], config["hidden_size"], config["pad_token_id"]) == ("roberta", 32, 1)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "longformer", "num_hidden_layers": 3}))
    assert read_hf_encoder_config(tmp_path)["attention_window"] == [512, 512, 512]


def test_missing_folder_config_and_weights(tmp_path):
    with pytest.raises(ValueError, match=r"hf_path is not set: load_hf_encoder needs a local folder"):
        load_hf_encoder(None)
    with pytest.raises(FileNotFoundError, match=r"hf_path='.*nope': no such folder .*nothing is downloaded"):
        load_hf_encoder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"hf_path='.*' has no config.json"):
        load_hf_encoder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json: unreadable config.json"):
        load_hf_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **TINY}))
    with pytest.raises(FileNotFoundError, match=r"has no model.safetensors or pytorch_model.bin \(found: \['config"):
        load_hf_encoder(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"model.safetensors: unreadable weight file"):
        load_hf_encoder(tmp_path)


@pytest.mark.parametrize("edit,match", [
    ({"model_type": "bigbird"}, (r"model_type='bigbird' is not supported; expected one of \['longformer', "
                                 r"'big_bird', 'roberta', 'bert'\]\. Did you mean 'big_bird'\?")),
    ({"model_type": "gpt2"}, r"model_type='gpt2' is not supported"),
    ({"hidden_act": "relu"}, r"hidden_act='relu' is not supported by genomics.hf.HFEncoder; supported: \['gelu', "),
    ({"is_decoder": True}, r"is_decoder=True is not supported .*supported: \[False\]"),
    ({"position_embedding_type": "relative_key"}, r"position_embedding_type='relative_key' is not supported"),
    ({"hidden_size": 30}, r"hidden_size=30 is not divisible by num_attention_heads=4"),
    ({"intermediate_size": 0}, r"intermediate_size=0 must be a positive int"),
    ({"model_type": "longformer", "attention_window": 7}, (r"attention_window=7 is not supported; expected a "
                                                           r"positive even int or a list of num_hidden_layers=2")),
    ({"model_type": "longformer", "attention_window": [8]}, r"attention_window=\[8\] is not supported"),
    ({"pad_token_id": 50}, r"pad_token_id=50 must be a token id in \[0, vocab_size=50\)"),
    ({"model_type": "big_bird", "block_size": 0}, r"block_size=0 must be an int >= 1"),
    ({"model_type": "big_bird", "num_random_blocks": -1}, r"num_random_blocks=-1 must be an int >= 0"),
    ({"model_type": "big_bird", "attention_type": "sparse"}, (r"attention_type='sparse' is not supported .*"
                                                              r"supported: \['block_sparse', 'original_full'\]")),
])
def test_unsupported_config_values_are_named(tmp_path, edit, match):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **TINY, **edit}))
    with pytest.raises(ValueError, match=match):
        read_hf_encoder_config(tmp_path)


def test_missing_unexpected_and_misshaped_tensors_are_named(roberta, tmp_path):
    folder = roberta[0]
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    state = load_file(folder / "model.safetensors")
    key = "roberta.encoder.layer.1.attention.self.key.weight"
    save_file({k: v for k, v in state.items() if k != key}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"does not fit its config.json \(num_hidden_layers=2\): missing keys "
                                         r"\['encoder.layer.1.attention.self.key.weight'\], unexpected keys \[\]"):
        load_hf_encoder(tmp_path)
    save_file({**state, "roberta.encoder.layer.2.output.dense.bias": torch.zeros(32)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \[\], unexpected keys \['encoder.layer.2.output.dense.bias'\]"):
        load_hf_encoder(tmp_path)
    save_file(state, tmp_path / "model.safetensors")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(ValueError, match=r"shape does not fit the model built from config.json: "
                                         r"\['encoder.layer.0.intermediate.dense.weight \(64, 32\) -> "
                                         r"blocks.0.mlp.fc1.weight \(48, 32\)'"):
        load_hf_encoder(tmp_path)


def test_bad_inputs_are_named(roberta):
    model = load_hf_encoder(roberta[0])
    with pytest.raises(ValueError, match=r"input length N=129 exceeds the 128 positions of the checkpoint"):
        model(torch.full((1, 129), 5))
    with pytest.raises(ValueError, match=r"input_ids must be an integer tensor of shape \(B, N\); got \(4,\)"):
        model(torch.full((4,), 5))
    with pytest.raises(ValueError, match=r"attention_mask must have input_ids' shape \(1, 4\); got \(1, 3\)"):
        model(torch.full((1, 4), 5), torch.ones(1, 3))
