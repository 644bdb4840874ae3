"""The sequence network: no future leakage for the LM, patching, pooling over padding; module checks."""

from __future__ import annotations

import functools

import pytest
import torch

from core_attn import build_attention
from core_attn.attention.local import LocalAttention
from genomics.model import SequenceTransformer

OPT = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}


def _net(**kw) -> SequenceTransformer:
    base = dict(vocab_size=9, num_outputs=9, dim=16, depth=2, num_heads=2)
    return SequenceTransformer(**{**base, **kw}).eval()


@pytest.mark.parametrize("variant", ["local", "dense"])
def test_causal_lm_does_not_see_the_future(variant):
    kw = {"window": 8} if variant == "local" else {}
    net = _net(attention=functools.partial(build_attention, variant, causal=True, **kw))
    assert net.is_causal
    x = torch.randint(4, 9, (2, 64))
    y = x.clone()
    y[:, 40:] = torch.randint(4, 9, (2, 24))
    with torch.no_grad():
        a, b = net(x), net(y)
    assert torch.allclose(a[:, :40], b[:, :40], atol=1e-6)
    assert not torch.allclose(a[:, 40:], b[:, 40:])


def test_patched_per_base_outputs_and_padding():
    net = _net(num_outputs=2, patch_size=4, attention=LocalAttention(window=4))
    x = torch.randint(4, 9, (2, 32))
    pad = torch.zeros(2, 32, dtype=torch.bool)
    pad[1, 20:] = True
    with torch.no_grad():
        out = net(x, pad)
    assert out.shape == (2, 32, 2) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"sequence length 30 is not a multiple of patch_size=4"):
        net(x[:, :30])


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooling_ignores_padding(pool):
    net = _net(num_outputs=3, pool=pool, patch_size=2)
    x = torch.randint(4, 9, (1, 16))
    padded = torch.cat([x, torch.zeros(1, 8, dtype=torch.long)], dim=1)
    pad = torch.zeros(1, 24, dtype=torch.bool)
    pad[:, 16:] = True
    with torch.no_grad():
        assert torch.allclose(net(x), net(padded, pad), atol=1e-5)


def test_max_pool_is_a_feature_max_over_tokens():
    net = _net(num_outputs=3, pool="max", patch_size=2)
    seen = {}
    net.encoder.register_forward_hook(lambda m, i, o: seen.setdefault("tokens", o))
    net.head.register_forward_hook(lambda m, i, o: seen.setdefault("pooled", i[0]))
    with torch.no_grad():
        net(torch.randint(4, 9, (2, 16)))
    assert torch.equal(seen["pooled"], seen["tokens"].amax(dim=1))


def test_embedding_init_depends_on_the_stem():
    torch.manual_seed(0)
    patched, per_base = _net(patch_size=8, dim=64), _net(patch_size=1, dim=64)
    assert 0.9 < patched.embed.weight[1:].std().item() < 1.1  # a convolution reads them: unit scale
    assert 0.015 < per_base.embed.weight[1:].std().item() < 0.025  # they enter the residual stream: GPT-2's 0.02
    assert abs(_net(patch_size=8, dim=64, embed_std=0.02).embed.weight[1:].std().item() - 0.02) < 0.005
    assert patched.embed.weight[0].abs().sum() == 0  # padding stays zero
    with pytest.raises(ValueError, match=r"embed_std"):
        _net(embed_std=-1.0)


def test_model_argument_errors():
    with pytest.raises(ValueError, match=r"local_kernel=4 must be odd"):
        _net(patch_size=2, local_kernel=4)
    with pytest.raises(ValueError, match=r"pool='sum' is not allowed; expected one of \['none', 'mean', 'max'\]"):
        _net(pool="sum")
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, L\)"):
        _net()(torch.zeros(3, dtype=torch.long))


def _model_cfg(**kw):
    attention = {"_target_": "core_attn.attention.local.LocalAttention", "_partial_": True, "window": 4,
                 "causal": kw.pop("causal", False)}
    return {"_target_": "genomics.model.SequenceTransformer", "vocab_size": 9, "num_outputs": 9, "dim": 16,
            "depth": 1, "num_heads": 2, "attention": attention, **kw}


def test_modules_check_their_network():
    from genomics.module import CausalLM, SequenceClassifier, TokenClassifier

    with pytest.raises(ValueError, match=r"needs a causal attention variant \(attention.causal=true"):
        CausalLM(model=_model_cfg(), optimizer=OPT)
    with pytest.raises(ValueError, match=r"needs model.patch_size=1 and model.pool=none"):
        CausalLM(model=_model_cfg(causal=True, patch_size=2), optimizer=OPT)
    with pytest.raises(ValueError, match=r"needs one output per record: model.pool=mean or model.pool=max"):
        SequenceClassifier(model=_model_cfg(), optimizer=OPT)
    with pytest.raises(ValueError, match=r"needs model.num_outputs=2 and model.pool=none"):
        TokenClassifier(model=_model_cfg(), optimizer=OPT)
    assert CausalLM(model=_model_cfg(causal=True), optimizer=OPT).net.is_causal
    assert SequenceClassifier(model=_model_cfg(pool="max"), optimizer=OPT).net.pool == "max"


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_forward_long_matches_forward(positions):
    net = _net(positions=positions, max_len=100, attention=functools.partial(build_attention, "local", window=8,
                                                                              causal=True))
    x = torch.randint(4, 9, (2, 100))
    with torch.no_grad():
        ref = net(x)
    assert torch.allclose(net.forward_long(x, chunk=7), ref, atol=1e-5)
    with pytest.raises(ValueError, match=r"forward_long needs a per-base model"):
        _net(pool="mean").forward_long(x)


def test_sequence_longer_than_learned_positions():
    net = _net(positions="learned", max_len=32, patch_size=4)
    assert net(torch.zeros(1, 32, dtype=torch.long)).shape == (1, 32, 9)
    with pytest.raises(ValueError, match=r"sequence of 36 bases is longer than the model allows: model\.max_len=32 "
                                         r"\(learned positions\); crop it .* or use model\.positions=rotary"):
        net(torch.zeros(1, 36, dtype=torch.long))
    assert _net(positions="rotary", max_len=32)(torch.zeros(1, 36, dtype=torch.long)).shape == (1, 36, 9)


@pytest.mark.parametrize("causal, step", [(True, 64), (True, 101), (False, 77)])
def test_stream_equals_one_pass_per_base(causal, step):
    torch.manual_seed(0)
    net = SequenceTransformer(vocab_size=9, num_outputs=9, dim=16, depth=2, num_heads=2, stem_kernel=9,
                              attention=lambda: build_attention("local", window=8, causal=causal)).eval()
    assert net.stream_reach() == ((8 + 8 + 8, 0) if causal else (8 + 8 + 4, 8 + 8 + 4))
    tokens = torch.randint(4, 9, (1, 1001))
    with torch.no_grad():
        want = net(tokens)
    pieces = [tokens[:, i:i + 150] for i in range(0, 1001, 150)]
    got = torch.cat(list(net.stream(pieces, step=step)), dim=1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_stream_refuses_what_reads_the_whole_input():
    local = lambda: build_attention("local", window=8, causal=True)  # noqa: E731
    with pytest.raises(ValueError, match=r"model.orf_features=true cannot be streamed exactly"):
        SequenceTransformer(vocab_size=9, num_outputs=2, dim=16, depth=1, num_heads=2, attention=local,
                            orf_features=True).stream_reach()
    with pytest.raises(ValueError, match=r"streaming needs a per-base model \(model.patch_size=1, model.pool=none\)"):
        SequenceTransformer(vocab_size=9, num_outputs=2, dim=16, depth=1, num_heads=2, attention=local,
                            patch_size=4).stream_reach()
