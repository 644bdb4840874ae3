"""The Conformer-CTC: shapes, padding never leaks, exact chunked subsampling, the short-input rule,
one-pass long inputs without an N x N tensor."""

from __future__ import annotations

import functools

import pytest
import torch

from audio.features import LogMelFeatures, SpeedPerturbation
from audio.model import ConformerCTC, ConformerEncoder, ConvSubsampling, MaskedBatchNorm, accepted_length
from core_attn.registry import build_attention
from core_attn.training.callbacks import peak_memory_mb, reset_peak_memory


def _model(attention=None, subsampling=4, **kw) -> ConformerCTC:
    attention = attention or functools.partial(build_attention, "local", window=8, global_tokens=[0])
    enc = ConformerEncoder(in_features=80, dim=32, depth=2, num_heads=2, subsampling=subsampling,
                           subsampling_channels=8, dropout=0.0, attention=attention, conv_kernel=5, **kw)
    return ConformerCTC(features=LogMelFeatures(), encoder=enc).eval()


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_shapes_and_lengths(factor):
    m = _model(subsampling=factor)
    lp, n = m(torch.randn(2, 16000) * 0.1, torch.tensor([16000, 9000]))
    frames = torch.tensor([98, 54])  # 1 + (L - 400) // 160
    expect = frames
    for _ in range(factor.bit_length() - 1):
        expect = (expect - 1) // 2 + 1
    assert n.tolist() == expect.tolist() and lp.shape == (2, int(expect[0]), 29)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2, int(expect[0])))
    assert m.frame_seconds == pytest.approx(0.01 * factor)


def test_explicit_warp_replaces_vtlp():
    m = _model()
    audio = torch.randn(2, 16000) * 0.1
    lengths = torch.tensor([16000, 12000])
    with torch.no_grad():
        plain, _ = m(audio, lengths)
        same, _ = m(audio, lengths, warp=1.0)
        up, _ = m(audio, lengths, warp=1.2)
        each, _ = m(audio, lengths, warp=torch.tensor([1.0, 1.2]))
    torch.testing.assert_close(same, plain)
    assert not torch.allclose(up, plain, atol=1e-3)
    torch.testing.assert_close(each[0], plain[0])
    torch.testing.assert_close(each[1, :-1], up[1, :-1], atol=1e-5, rtol=0)


def test_speed_perturbation_frames_follow_the_perturbed_audio():
    """In training, speed 0.5 doubles every utterance, and the frame counts returned (what CTC is given) are
    those of the doubled audio; in eval the audio is untouched."""
    enc = ConformerEncoder(in_features=80, dim=32, depth=1, num_heads=2, subsampling=4, subsampling_channels=8,
                           dropout=0.0, conv_kernel=5)
    m = ConformerCTC(features=LogMelFeatures(), encoder=enc, speed=SpeedPerturbation(factors=[0.5], p=1.0))
    audio, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 8000])
    slow, slow_n = m.train()(audio, lengths)
    _, n = m.eval()(audio, lengths)
    _, doubled_n = m(torch.randn(2, 32000) * 0.1, torch.tensor([32000, 16000]))
    assert slow_n.tolist() == doubled_n.tolist() != n.tolist() and slow.shape[1] == int(doubled_n[0])


def test_padding_does_not_leak():
    m = _model()
    audio = torch.randn(2, 24000) * 0.1
    with torch.no_grad():
        lp, n = m(audio, torch.tensor([24000, 11000]))
        alone, n1 = m(audio[1:, :11000], torch.tensor([11000]))
    assert n[1] == n1[0]
    torch.testing.assert_close(lp[1, :n[1]], alone[0], atol=1e-5, rtol=0)


def test_masked_batch_norm_counts_real_frames_only():
    bn = MaskedBatchNorm(6).train()
    x = torch.randn(3, 10, 6)
    pad = torch.arange(10)[None, :] >= torch.tensor([10, 4, 7])[:, None]
    y = bn(x, pad)
    real = x[~pad]  # (21, 6)
    expect = (real - real.mean(0)) / (real.var(0, unbiased=False) + bn.eps).sqrt()
    torch.testing.assert_close(y[~pad], expect, atol=1e-5, rtol=0)
    assert torch.equal(y[pad], torch.zeros_like(y[pad]))
    torch.testing.assert_close(bn.running_mean, 0.1 * real.mean(0))
    bn.eval()
    torch.testing.assert_close(bn(x, pad), bn(x))  # evaluation: running statistics, per frame


@pytest.mark.parametrize("conv_norm", ["batch", "layer"])
def test_training_output_does_not_depend_on_padding(conv_norm):
    """In training, too, an utterance's frames come out the same however much padding its batch has:
    the convolution module's BatchNorm takes its statistics over real frames only."""
    torch.manual_seed(0)
    m = _model(conv_norm=conv_norm).train()
    feats, lengths = torch.randn(2, 300, 80), torch.tensor([300, 180])
    out, n = m.forward_features(feats, lengths)
    more = torch.cat([feats, torch.randn(2, 100, 80)], 1)  # 100 more frames of padding (garbage: masked)
    out2, n2 = m.forward_features(more, lengths)
    assert n.tolist() == n2.tolist()
    for i in range(2):
        torch.testing.assert_close(out2[i, :n[i]], out[i, :n[i]], atol=1e-5, rtol=0)


def test_chunked_subsampling_is_exact():
    sub = ConvSubsampling(in_features=80, channels=8, dim=16, factor=8)
    x = torch.randn(1001, 80)
    with torch.no_grad():
        torch.testing.assert_close(sub.forward_chunked(x, 64), sub(x[None])[0], atol=1e-5, rtol=0)


def test_long_path_equals_batch_path():
    m = _model()
    feats, n = m.features(torch.randn(1, 40000) * 0.1)
    with torch.no_grad():
        ref, _ = m.forward_features(feats, n)
        long = m.log_probs_long(feats[0], subsample_chunk=40)
    torch.testing.assert_close(long, ref[0], atol=1e-5, rtol=0)


def test_chunked_decoding_covers_every_frame():
    m = _model()
    feats, n = m.features(torch.randn(1, 30000) * 0.1)
    with torch.no_grad():
        full = m.log_probs_long(feats[0])
        chunked = m.log_probs_chunked(feats[0], window=80, overlap=16)
        one_window = m.log_probs_chunked(feats[0], window=10_000, overlap=16)
    assert chunked.shape == full.shape
    torch.testing.assert_close(one_window, full)


def test_chunk_window_longer_than_overlaps():
    with pytest.raises(ValueError, match=r"chunk window \(32 frames\) must be longer than twice the overlap \(16\)"):
        _model().log_probs_chunked(torch.randn(100, 80), window=32, overlap=16)


def test_short_input_is_padded_to_the_window_and_equals_dense():
    # local with a window wider than the input is exactly full attention over the input
    local = _model(functools.partial(build_attention, "local", window=64, global_tokens=[0]))
    dense = _model(functools.partial(build_attention, "dense"))
    dense.load_state_dict(local.state_dict())
    audio = torch.randn(2, 12000) * 0.1
    lengths = torch.tensor([12000, 7000])
    with torch.no_grad():
        a, na = local(audio, lengths)
        b, nb = dense(audio, lengths)
    assert accepted_length(local.encoder.blocks[0].attn.attention, a.shape[1]) == 64
    for i in range(2):
        torch.testing.assert_close(a[i, :na[i]], b[i, :nb[i]], atol=1e-5, rtol=0)


def test_long_input_memory_is_linear():
    # 16,384 frames: one (N, N) fp32 score matrix per head would be 1 GiB; local attention stays far below
    enc = ConformerEncoder(in_features=80, dim=16, depth=1, num_heads=2, subsampling_channels=4, dropout=0.0,
                           attention=functools.partial(build_attention, "local", window=16, global_tokens=[0]))
    x = torch.randn(1, 16384, 16)
    reset_peak_memory()
    base = peak_memory_mb()["peak_rss_mb"]
    if abs(base - _rss_mb()) > 64:
        pytest.skip("cannot reset the peak-RSS mark here (/proc/self/clear_refs is not writable)")
    with torch.inference_mode():
        y = enc.forward_subsampled(x, torch.tensor([16384]))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert peak_memory_mb()["peak_rss_mb"] - base < 300


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def test_rotary_positions_option():
    m = _model(positions="rotary")
    assert m.encoder.blocks[0].attn.rotary is not None
    with pytest.raises(ValueError, match=r"positions='learned' is not allowed; expected one of \['none', 'rotary'\]"):
        _model(positions="learned")


def test_bad_conv_norm():
    with pytest.raises(ValueError, match=r"conv_norm.*'group'.*'batch', 'layer'"):
        ConformerEncoder(conv_norm="group", depth=1)


def test_bad_subsampling_and_kernel():
    with pytest.raises(ValueError, match=r"subsampling=3 is not allowed; expected one of \[2, 4, 8\]"):
        _model(subsampling=3)
    with pytest.raises(ValueError, match=r"conv_kernel=4 must be odd"):
        ConformerEncoder(conv_kernel=4, depth=1)


def test_every_layer_gets_its_own_attention():
    m = _model()
    atts = [b.attn.attention for b in m.encoder.blocks]
    assert atts[0] is not atts[1] and atts[0].window == 8 and atts[0].global_tokens == [0]
