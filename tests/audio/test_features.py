"""Log-mel shapes, streaming resampling and features equal to the whole-signal ones, augmentation."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torchaudio.functional as AF

from audio.features import (
    Echo,
    RandomEqualizer,
    LogMelFeatures,
    SpecAugment,
    SpeedPerturbation,
    StreamingLogMel,
    StreamingResampler,
    VocalTractPerturbation,
    WaveAugment,
    open_audio,
    stream_features,
    warp_frequencies,
)
from tests.audio.conftest import tone, write


def test_log_mel_shapes_and_lengths():
    f = LogMelFeatures()
    audio = torch.randn(3, 16000) * 0.1
    feats, n = f(audio, torch.tensor([16000, 8000, 300]))
    assert feats.shape == (3, 98, 80)  # 1 + (16000 - 400) // 160
    assert n.tolist() == [98, 48, 0] and f.frame_seconds == 0.01


def test_log_mel_too_short():
    with pytest.raises(ValueError, match=r"shorter than one analysis window \(n_fft=400 samples, 25 ms\)"):
        LogMelFeatures()(torch.zeros(1, 399))


def test_log_mel_bad_shape():
    with pytest.raises(ValueError, match=r"audio must have shape \(B, L\); got \(16000,\)"):
        LogMelFeatures()(torch.zeros(16000))


def test_log_mel_hop_range():
    with pytest.raises(ValueError, match=r"hop_length=500 is out of range; expected 1 <= hop_length <= 400"):
        LogMelFeatures(hop_length=500)


@pytest.mark.parametrize("orig,new", [(22050, 16000), (44100, 16000), (8000, 16000), (48000, 16000), (16000, 16000)])
def test_streaming_resampler_matches_whole(orig, new):
    x = torch.randn(orig + 123)
    r = StreamingResampler(orig, new)
    y = torch.cat([r.push(b) for b in torch.split(x, 5003)] + [r.flush()])
    ref = AF.resample(x, orig, new)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, atol=2e-6, rtol=0)


def test_streaming_log_mel_matches_whole():
    f = LogMelFeatures()
    x = torch.randn(16000 * 3 + 77) * 0.1
    m = StreamingLogMel(f)
    y = torch.cat([m.push(b) for b in torch.split(x, 4321)])
    ref, _ = f(x[None])
    torch.testing.assert_close(y, ref[0], atol=1e-5, rtol=0)


def test_streaming_log_mel_with_warps_matches_whole():
    f = LogMelFeatures()
    x = torch.randn(16000 * 2 + 55) * 0.1
    m = StreamingLogMel(f, warps=[0.9, 1.0, 1.1])
    y = torch.cat([m.push(b) for b in torch.split(x, 3210)], dim=1)
    assert y.shape[0] == 3
    for i, w in enumerate([0.9, 1.0, 1.1]):
        ref, _ = f(x[None], warp=torch.tensor([w]))
        torch.testing.assert_close(y[i], ref[0], atol=1e-5, rtol=0)
    plain, _ = f(x[None])
    torch.testing.assert_close(y[1], plain[0], atol=1e-5, rtol=0)  # warp 1.0 is no warp
    assert not torch.allclose(y[0], y[2], atol=1e-2)


def test_stream_features_of_a_file(tmp_path):
    wave = torch.from_numpy(tone(3.3, rate=44100)) + 0.01 * torch.randn(int(3.3 * 44100))
    write(tmp_path / "a.wav", wave.numpy(), rate=44100)
    f = LogMelFeatures()
    feats, seconds = stream_features(tmp_path / "a.wav", f, block_seconds=0.7)
    import soundfile as sf

    whole = AF.resample(torch.from_numpy(sf.read(tmp_path / "a.wav", dtype="float32")[0]), 44100, 16000)
    ref, _ = f(whole[None])
    assert seconds == pytest.approx(3.3, abs=1e-4)
    torch.testing.assert_close(feats, ref[0], atol=1e-4, rtol=0)
    warped, _ = stream_features(tmp_path / "a.wav", f, block_seconds=0.7, warps=[1.0, 1.2])
    assert warped.shape == (2, *feats.shape)
    torch.testing.assert_close(warped[0], feats, atol=1e-5, rtol=0)
    torch.testing.assert_close(warped[1], f(whole[None], warp=torch.tensor([1.2]))[0][0], atol=1e-4, rtol=0)


def test_spec_augment_train_only():
    sa = SpecAugment(freq_masks=2, freq_width=10, time_masks=2, time_width=20, time_fraction=0.2)
    x = torch.randn(4, 200, 80) + 5
    sa.eval()
    assert torch.equal(sa(x), x)
    sa.train()
    y = sa(x)
    assert y.shape == x.shape and (y == 0).any() and not torch.equal(y[0] == 0, y[1] == 0)  # independent masks


def test_spec_augment_probability():
    torch.manual_seed(0)
    x = torch.randn(300, 100, 20) + 5  # no zeros before masking
    for p in (0.0, 0.5, 1.0):
        y = SpecAugment(freq_masks=2, freq_width=5, time_masks=2, time_width=10, time_fraction=0.2, p=p).train()(x)
        masked = (y == 0).flatten(1).any(1)
        assert torch.equal(y[~masked], x[~masked])
        assert masked.float().mean().item() == pytest.approx(p, abs=0.08)
    with pytest.raises(ValueError, match=r"p=-0.1 .*0.0"):
        SpecAugment(p=-0.1)


def test_wave_augment_keeps_padding_and_is_train_only():
    aug = WaveAugment(gain_db=6.0, snr_db=(10.0, 10.0), p=1.0)
    x = torch.randn(2, 1000) * 0.1
    x[1, 600:] = 0
    lengths = torch.tensor([1000, 600])
    aug.eval()
    assert torch.equal(aug(x, lengths), x)
    aug.train()
    y = aug(x, lengths)
    assert torch.equal(y[1, 600:], torch.zeros(400)) and not torch.equal(y[:, :600], x[:, :600])


def test_wave_augment_snr_order():
    with pytest.raises(ValueError, match=r"snr_db=\[50.0, 10.0\] must be \[low, high\]"):
        WaveAugment(snr_db=(50.0, 10.0))
    with pytest.raises(ValueError, match=r"p=1.5 .*1.0"):
        WaveAugment(p=1.5)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_wave_augment_probability_leaves_the_rest_clean(p):
    torch.manual_seed(0)
    aug = WaveAugment(gain_db=6.0, snr_db=(10.0, 10.0), p=p).train()
    x = torch.randn(400, 500) * 0.1
    y = aug(x, torch.full((400,), 500))
    clean = (y == x).all(1)
    assert bool(((y - x).abs().amax(1) > 1e-3)[~clean].all())  # a row is either untouched or augmented
    assert clean.float().mean().item() == pytest.approx(1 - p, abs=0.07)


def test_warp_frequencies_moves_a_tone_and_identity_is_exact():
    f = LogMelFeatures()
    t = torch.arange(16000) / 16000
    x = torch.sin(2 * math.pi * 1000 * t)[None].repeat(3, 1)
    plain, _ = f(x)
    same, _ = f(x, warp=torch.ones(3))
    torch.testing.assert_close(same, plain)
    spec = f.mel.spectrogram(x)  # 40 Hz bins: 1 kHz is bin 25
    warped = warp_frequencies(spec, torch.tensor([1.0, 1.5, 0.8])).mean(-1).argmax(1)
    assert warped.tolist() == [25, pytest.approx(37.5, abs=1), 20]


def test_vocal_tract_perturbation_draws_factors_in_training_only():
    torch.manual_seed(0)
    v = VocalTractPerturbation(low=0.9, high=1.2, p=0.5)
    w = v.train()(4000)
    warped = w != 1.0
    assert warped.float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert w[warped].min() >= 0.9 and w[warped].max() <= 1.2
    assert v.eval()(8) is None and VocalTractPerturbation(p=0.0).train()(8) is None
    with pytest.raises(ValueError, match=r"vtlp low=1.3 must be <= high=1.1"):
        VocalTractPerturbation(low=1.3, high=1.1)


def test_random_equalizer_gains():
    eq = RandomEqualizer(tilt_db=6.0, gain_db=4.0, bumps=2, p=1.0)
    g = eq(5, 80)
    assert g.shape == (5, 80) and (g > 0).all()
    db = 10 * torch.log10(g)
    assert db.abs().max() <= 3.0 + 2 * 4.0 + 1e-4  # half the tilt at either end plus two bumps
    assert (db.std(dim=1) > 0).all()  # every utterance equalised (p=1)
    assert RandomEqualizer(p=0.0)(5, 80) is None
    eq.eval()
    assert eq(5, 80) is None
    with pytest.raises(ValueError, match=r"width=\[5.0, 2.0\] must be \[low, high\]"):
        RandomEqualizer(width=(5.0, 2.0))


def test_log_mel_gain_scales_band_power_before_the_log():
    feats = LogMelFeatures()
    audio = torch.from_numpy(tone(0.5))[None]
    base, _ = feats(audio)
    ones, _ = feats(audio, gain=torch.ones(1, 80))
    torch.testing.assert_close(ones, base)
    silent, _ = feats(torch.zeros(1, 8000), gain=torch.full((1, 80), 10.0))
    torch.testing.assert_close(silent, feats(torch.zeros(1, 8000))[0])  # silence stays silent
    loud = feats(audio, gain=torch.full((1, 80), 10.0))[0]
    assert (loud - base).mean() > 0


def test_echo_adds_a_delayed_copy_and_keeps_padding():
    echo = Echo(delay_ms=(10.0, 10.0), amplitude=(0.5, 0.5), p=1.0)
    x = torch.randn(2, 1000)
    x[1, 600:] = 0
    lengths = torch.tensor([1000, 600])
    y = echo(x, lengths)
    d = 160
    torch.testing.assert_close(y[0, d:], x[0, d:] + 0.5 * x[0, :-d])
    torch.testing.assert_close(y[0, :d], x[0, :d])
    assert (y[1, 600:] == 0).all()
    echo.eval()
    assert echo(x, lengths) is x
    with pytest.raises(ValueError, match=r"delay_ms=\[80.0, 20.0\] must be \[low, high\]"):
        Echo(delay_ms=(80.0, 20.0))


def test_open_audio_names_a_missing_unreadable_or_truncated_file(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match=r"nope\.wav: no such audio file"):
        open_audio(tmp_path / "nope.wav")
    (tmp_path / "notes.wav").write_text("not audio")
    with pytest.raises(ValueError, match=r"notes\.wav: not audio that libsndfile reads \(WAV, FLAC, OGG, \.\.\.\): "
                                         r"LibsndfileError: "):
        open_audio(tmp_path / "notes.wav")
    wav = write(tmp_path / "cut.wav", tone(1.0))  # 16-bit PCM: 32,000 bytes of samples
    wav.write_bytes(wav.read_bytes()[:16044])
    with caplog.at_level("WARNING"), open_audio(wav) as f:
        assert f.frames == 8000
    assert re.search(r"cut\.wav is truncated: its header announces 32000 bytes of audio but the file holds 16000; "
                     r"only the 0\.5 s present are used", caplog.text), caplog.text


def test_speed_perturbation_changes_rate_and_lengths():
    """A 440 Hz tone at speed 1.1 lasts 1/1.1 as long and sounds at 484 Hz; padding stays zero; eval passes."""
    speed = SpeedPerturbation(factors=[1.1], p=1.0)
    x = torch.zeros(2, 16000)
    x[0] = torch.from_numpy(tone(1.0))
    x[1, :8000] = torch.from_numpy(tone(0.5))
    y, lengths = speed(x, torch.tensor([16000, 8000]))
    assert lengths.tolist() == [math.ceil(16000 / 1.1), math.ceil(8000 / 1.1)] and y.shape == (2, lengths[0])
    spectrum = torch.fft.rfft(y[0]).abs()
    assert abs(spectrum.argmax().item() * 16000 / y.shape[1] - 484.0) < 2.0
    assert (y[1, lengths[1]:] == 0).all()
    torch.testing.assert_close(y[1, :lengths[1]], AF.speed(x[1, :8000], 16000, 1.1)[0])
    same = SpeedPerturbation(factors=[0.9, 1.1], p=0.0)
    assert same(x, torch.tensor([16000, 8000]))[0] is x
    speed.eval()
    assert speed(x, torch.tensor([16000, 8000]))[0] is x
    with pytest.raises(ValueError, match="speed.factors must list at least one speed"):
        SpeedPerturbation(factors=[])
