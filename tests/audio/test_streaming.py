"""Streaming recognition equals one pass: log-probabilities within 1e-5 (fp32) over inputs many chunks long
with odd chunk sizes, online greedy decoding equal to whole-sequence greedy decoding word for word (times
included), ``audio.transcribe mode=stream`` equal to ``mode=full``; models that need the whole recording
are refused with the block named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audio.decoding import GreedyStream, greedy_decode
from audio.features import LogMelFeatures, stream_features
from audio.model import ConformerCTC, ConformerEncoder
from audio.text import CharTokenizer
from audio.transcribe import load_model, main, parse_args, transcribe
from core_attn import build_attention
from core_attn.streaming import Reach
from tests.audio.conftest import write


def _model(*, subsampling=4, positions="none", conv_norm="batch", depth=2, window=6, conv_kernel=5,
           **attn) -> ConformerCTC:
    torch.manual_seed(0)
    enc = ConformerEncoder(in_features=16, dim=16, depth=depth, num_heads=2, conv_kernel=conv_kernel,
                           conv_norm=conv_norm, subsampling=subsampling, subsampling_channels=4, positions=positions,
                           attention=lambda: build_attention("local", window=window, **attn))
    model = ConformerCTC(features=LogMelFeatures(n_mels=16), encoder=enc)
    for bn in model.modules():  # running statistics that are not the identity
        if isinstance(bn, torch.nn.BatchNorm1d):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _chunks(x, sizes):
    out, i, k = [], 0, 0
    while i < x.shape[1]:
        out.append(x[:, i:i + sizes[k % len(sizes)]])
        i, k = i + sizes[k % len(sizes)], k + 1
    return out


@pytest.mark.parametrize("arch", [
    dict(subsampling=4, positions="none", conv_norm="batch"),
    dict(subsampling=8, positions="rotary", conv_norm="layer"),
    dict(subsampling=2, positions="rotary", conv_norm="batch", dilation=2),
    dict(subsampling=4, positions="none", conv_norm="batch", window_left=7, window_right=3),
])
@pytest.mark.parametrize("sizes, step", [([1, 7, 130, 3, 61], 13), ([997], 64), ([5], 41)])
@pytest.mark.parametrize("frames", [1999, 2001])
def test_stream_equals_one_pass(arch, sizes, step, frames):
    model = _model(**arch)
    feats = torch.randn(frames, 16)
    with torch.inference_mode():
        want = model.log_probs_long(feats)
        pieces = list(model.stream(_chunks(feats[None], sizes), step=step, subsample_step=step // 2 + 1))
    got = torch.cat(pieces, dim=1)[0]
    assert got.shape == want.shape and len(pieces) > 3
    assert (got - want).abs().max() <= 1e-5


def test_subsampling_stream_equals_forward():
    sub = _model(subsampling=8).encoder.subsampling
    x = torch.randn(1, 1003, 16)
    with torch.inference_mode():
        got = torch.cat(list(sub.stream(_chunks(x, [3, 17, 1, 200]), step=7)), dim=1)
        torch.testing.assert_close(got, sub(x), atol=1e-5, rtol=1e-5)


def test_stream_reach_adds_windows_and_convolutions():
    assert _model(depth=3, window=6, conv_kernel=5).stream_reach() == Reach(3 * (6 + 2), 3 * (6 + 2))
    assert _model(depth=2, window=4, conv_kernel=7, dilation=3).stream_reach() == Reach(2 * (12 + 3), 2 * (12 + 3))


def test_whole_sequence_parts_are_refused_with_the_block_named():
    with pytest.raises(ValueError, match=r"block 0: attention=local with global_tokens=\[0\]: a global token reads"):
        _model(global_tokens=[0]).stream_reach()
    model = _model()
    model.encoder.blocks[1].attn.attention = build_attention("linear")
    with pytest.raises(ValueError, match=r"block 1: attention=linear cannot be streamed exactly"):
        next(model.stream([torch.randn(1, 400, 16)]))
    with pytest.raises(ValueError, match=r"streaming runs the network in evaluation mode: call \.eval\(\) first"):
        next(_model().train().stream([torch.randn(1, 400, 16)]))


def test_greedy_stream_equals_greedy_decode():
    tok = CharTokenizer()
    torch.manual_seed(1)
    ids = torch.randint(0, 5, (3000,))  # blank, space and three letters: many words, repeats, runs across pieces
    log_probs = torch.nn.functional.one_hot(ids, len(tok.vocab)).float().add(torch.rand(3000, len(tok.vocab)) * 0.1)
    want = greedy_decode(log_probs, tok, 0.04)
    dec, words, i = GreedyStream(tok, 0.04), [], 0
    for n in [1, 7, 130, 3, 61] * 100:
        words += dec.push(log_probs[i:i + n])
        i += n
    words += dec.finish()
    assert len(want.words) > 100 and words == want.words


@pytest.fixture
def recording(tmp_path):
    """30 s at 22.05 kHz of noise whose loudness and colour change every ~0.2 s (resampled to 16 kHz)."""
    rng = np.random.default_rng(0)
    rate, seconds = 22050, 30
    wave = rng.standard_normal(rate * seconds).astype(np.float32)
    env = np.repeat(rng.uniform(0.0, 0.5, seconds * 5), rate // 5).astype(np.float32)
    wave = np.convolve(wave, np.ones(3, np.float32) / 3, "same") * env
    return write(tmp_path / "noise.wav", wave, rate)


@torch.no_grad()
def _centre_head(model: ConformerCTC, recording) -> ConformerCTC:
    """``model`` with its head centred on ``recording`` (each class's mean logit 0) and sharpened, the classes
    past ``b`` switched off: the best class changes often between blank, space, apostrophe, a and b (many
    short words, where an untrained or barely trained head gives one class throughout)."""
    feats, _ = stream_features(recording, model.features)
    logits = model.head(model.encoder.forward_subsampled(model.encoder.subsampling(feats[None]), None))
    model.head.bias.sub_(logits[0].mean(0)).mul_(5.0)
    model.head.weight.mul_(5.0)
    model.head.bias[5:] -= 100.0
    return model


def test_transcribe_stream_equals_one_pass(recording):
    model = _centre_head(_model(window=8, positions="rotary"), recording)
    full, _ = transcribe(model, recording, mode="full", block_seconds=0.73)
    stream, stats = transcribe(model, recording, mode="stream", block_seconds=0.73, step_seconds=1.7)
    assert len(full.words) > 20
    assert stream.words == full.words and stream.text == full.text
    assert stats["duration"] == pytest.approx(30.0) and stats["real_time_factor"] > 0


def test_stream_command_line_checks_decoder(tmp_path, capsys):
    wav = str(write(tmp_path / "a.wav", np.zeros(1600, np.float32)))
    _, opts = parse_args([wav, "ckpt_path=m", "mode=stream", "decoder=greedy"])
    assert opts["mode"] == "stream"
    for argv, message in [(["mode=stream", "decoder=lexicon"], "mode=stream decodes greedily as the frames arrive: "
                           r"decoder='lexicon' is not allowed with it; expected one of \['auto', 'greedy'\]"),
                          (["mode=strem"], r"mode='strem' is not allowed; expected one of \['full', 'chunked', "
                           r"'stream'\]. Did you mean 'stream'")]:
        with pytest.raises(SystemExit):
            parse_args([wav, "ckpt_path=m", *argv])
        assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_transcribe_stream_command_line(trained, tmp_path):
    ckpt = trained["last_ckpt"]
    recording = next((trained["data_dir"] / "audio" / "synthetic").glob("*/long-form/000.flac"))
    # the built-in recipe's global token reads every frame: refused, with the block named
    with pytest.raises(ValueError, match=r"block 0: attention=local with global_tokens=\[0\]"):
        main([str(recording), f"ckpt_path={ckpt}", "mode=stream"])
    # the same weights without the global token stream exactly
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["hyper_parameters"]["model"]["encoder"]["attention"]["global_tokens"] = []
    torch.save(state, tmp_path / "local.ckpt")
    net = _centre_head(load_model(tmp_path / "local.ckpt"), recording)  # many words from a barely trained model
    state["state_dict"].update({f"net.head.{k}": v for k, v in net.head.state_dict().items()})
    torch.save(state, tmp_path / "local.ckpt")
    out = {}
    for mode in ("full", "stream"):
        assert main([str(recording), f"ckpt_path={tmp_path / 'local.ckpt'}", f"mode={mode}", "decoder=greedy",
                     "block_seconds=1.3", "step_seconds=3.3", "--format", "json",
                     "--output", str(tmp_path / f"{mode}.json")]) == 0
        out[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
    assert len(out["full"]["words"]) > 10
    assert out["stream"]["mode"] == "stream" and out["stream"]["decoder"] == "greedy"
    assert out["stream"]["words"] == out["full"]["words"] and out["stream"]["text"] == out["full"]["text"]
    assert out["stream"]["warp"] == out["full"]["warp"] and out["stream"]["duration"] == out["full"]["duration"]


def test_transcribe_stream_refuses_other_decoders_and_too_short_audio(recording, tmp_path):
    class BeamSearchDecoder:
        pass

    with pytest.raises(ValueError, match=r"mode=stream decodes greedily as the frames arrive: a BeamSearchDecoder "
                                         r"needs the whole recording; with mode=stream, decoder is one of \['auto', "
                                         r"'greedy'\]"):
        transcribe(_model(), recording, mode="stream", decoder=BeamSearchDecoder())
    short = write(tmp_path / "short.wav", np.zeros(300, np.float32))
    with pytest.raises(ValueError, match=r"short\.wav: shorter than one analysis window \(25 ms\)"):
        transcribe(_model(), short, mode="stream")
