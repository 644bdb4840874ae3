"""Log-mel features, SpecAugment, and their streaming forms for recordings of any length.

Park et al. 2019, "SpecAugment: A Simple Data Augmentation Method for Automatic Speech Recognition"
(arXiv:1904.08779). The streaming resampler and log-mel give the same frames as the whole-file
computation (tested), so one-pass transcription reads a file block by block and never holds more than
the features of the recording (80 floats per 10 ms: 115 MB per hour).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
import torchaudio.functional as AF
from torch import Tensor, nn

from core_attn.validation import check_float, check_int, check_range

log = logging.getLogger(__name__)

# Fixed normalisation of log-mel values (measured on the built-in corpus: mean -5.3, std 5.3). A fixed
# affine, unlike per-utterance statistics, is the same for a 3 s utterance and an hour-long recording.
LOG_MEL_MEAN = -5.3
LOG_MEL_STD = 5.3


class LogMelFeatures(nn.Module):
    """Normalised log-mel filterbank features of 16 kHz (or ``sample_rate``) audio.

    Frames are not centred: frame ``t`` covers samples ``[t * hop, t * hop + n_fft)``, so a recording
    can be cut into blocks and featurised block by block with identical results.

    Args:
        sample_rate: audio sample rate.
        n_fft: window length in samples (400: 25 ms).
        hop_length: frame step in samples (160: 10 ms).
        n_mels: mel bands.
        f_min / f_max: band edges in Hz (``f_max`` None: Nyquist).
    """

    def __init__(self, *, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160, n_mels: int = 80,
                 f_min: float = 20.0, f_max: float | None = None):
        super().__init__()
        self.sample_rate = check_int("sample_rate", sample_rate, min_value=1000)
        self.n_fft = check_int("n_fft", n_fft, min_value=16)
        self.hop_length = check_int("hop_length", hop_length, min_value=1, max_value=n_fft)
        self.n_mels = check_int("n_mels", n_mels, min_value=1)
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                                                        f_min=check_float("f_min", f_min, min_value=0.0),
                                                        f_max=f_max, center=False, power=2.0)

    @property
    def frame_seconds(self) -> float:
        return self.hop_length / self.sample_rate

    def num_frames(self, lengths: Tensor) -> Tensor:
        """Frames of waveforms with ``lengths`` samples (0 when shorter than one window)."""
        return torch.where(lengths >= self.n_fft, 1 + (lengths - self.n_fft).div(self.hop_length, rounding_mode="floor"), 0)

    def forward(self, audio: Tensor, lengths: Tensor | None = None, warp: Tensor | None = None,
                gain: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, L) samples -> (B, T, n_mels) features and (B,) frame counts. ``warp``: optional (B,) factors
        that scale each utterance's frequency axis before the mel filterbank (:class:`VocalTractPerturbation`):
        content at ``f`` Hz moves to ``warp * f``. ``gain``: optional (B, n_mels) power gains of each mel
        band (:class:`RandomEqualizer`), applied before the log (silence stays silent)."""
        if audio.dim() != 2:
            raise ValueError(f"audio must have shape (B, L); got {tuple(audio.shape)}")
        if audio.shape[-1] < self.n_fft:
            raise ValueError(f"audio of {audio.shape[-1]} samples is shorter than one analysis window "
                             f"(n_fft={self.n_fft} samples, {self.n_fft / self.sample_rate * 1000:.0f} ms)")
        if lengths is None:
            lengths = torch.full((audio.shape[0],), audio.shape[-1], device=audio.device)
        with torch.autocast(audio.device.type, enabled=False):
            if warp is None:
                mel = self.mel(audio.float())  # (B, n_mels, T)
            else:
                mel = self.mel.mel_scale(warp_frequencies(self.mel.spectrogram(audio.float()), warp))
            if gain is not None:
                mel = mel * gain[:, :, None].to(mel.dtype)
            feats = (torch.log(mel + 1e-6) - LOG_MEL_MEAN) / LOG_MEL_STD
        return feats.transpose(1, 2), self.num_frames(lengths)


def warp_frequencies(spec: Tensor, warp: Tensor) -> Tensor:
    """(B, F, T) power spectra, (B,) factors -> spectra whose bin ``f`` holds the input at ``f / warp``
    (linear interpolation; bins beyond the input's top read its last bin)."""
    n = spec.shape[1]
    bins = torch.arange(n, device=spec.device, dtype=spec.dtype)
    src = (bins[None, :] / warp[:, None].to(spec.dtype)).clamp(max=n - 1)
    i0 = src.floor().long()
    i1 = (i0 + 1).clamp(max=n - 1)
    w = (src - i0.to(spec.dtype))[..., None]
    t = spec.shape[2]
    lo = spec.gather(1, i0[..., None].expand(-1, -1, t))
    hi = spec.gather(1, i1[..., None].expand(-1, -1, t))
    return lo * (1 - w) + hi * w


class VocalTractPerturbation(nn.Module):
    """VTLP (Jaitly & Hinton 2013, "Vocal Tract Length Perturbation (VTLP) improves speech recognition"):
    in training, a share ``p`` of the utterances get their frequency axis scaled by a factor uniform in
    ``[low, high]`` before the mel filterbank, so formants and pitch move as between speakers with other
    vocal tract lengths. Draws the factors; :class:`LogMelFeatures` applies them. Evaluation: none.

    Args:
        low / high: range of the factors (> 1 moves content up, as a shorter vocal tract does).
        p: probability that an utterance is warped.
    """

    def __init__(self, *, low: float = 0.85, high: float = 1.3, p: float = 0.5):
        super().__init__()
        self.low = check_float("low", low, min_value=0.1)
        self.high = check_float("high", high, min_value=0.1)
        if self.low > self.high:
            raise ValueError(f"vtlp low={low} must be <= high={high}")
        self.p = check_float("p", p, min_value=0.0, max_value=1.0)

    def forward(self, batch: int, device=None) -> Tensor | None:
        """(batch,) factors (1.0 for utterances left alone), or ``None`` when nothing is warped."""
        if not self.training or self.p == 0.0:
            return None
        f = torch.empty(batch, device=device).uniform_(self.low, self.high)
        return torch.where(torch.rand(batch, device=device) < self.p, f, torch.ones_like(f))


class RandomEqualizer(nn.Module):
    """A random smooth equaliser per utterance, in training only: the mel bands' power is scaled by a
    spectral tilt (uniform in ``[-tilt_db, tilt_db]`` dB from the lowest band to the highest) plus ``bumps``
    Gaussian peaks or dips (gain uniform in ``[-gain_db, gain_db]`` dB, centre uniform over the bands, width
    uniform in ``width`` bands). Voices differ in spectral balance and formant strength (espeak-ng's
    ``tone`` and formant-amplitude settings, microphones and rooms in real recordings) as well as in formant
    positions, which :class:`VocalTractPerturbation` covers. Draws the (B, n_mels) gains;
    :class:`LogMelFeatures` applies them before the log.

    Args:
        tilt_db: largest tilt across the band, in dB.
        gain_db: largest gain of a bump, in dB.
        bumps: number of bumps per utterance.
        width: ``[low, high]`` standard deviation of a bump, in mel bands.
        p: probability that an utterance is equalised.
    """

    def __init__(self, *, tilt_db: float = 10.0, gain_db: float = 10.0, bumps: int = 2,
                 width: tuple[float, float] = (2.0, 10.0), p: float = 0.5):
        super().__init__()
        self.tilt_db = check_float("tilt_db", tilt_db, min_value=0.0)
        self.gain_db = check_float("gain_db", gain_db, min_value=0.0)
        self.bumps = check_int("bumps", bumps, min_value=0)
        self.width = check_range("width", width, min_value=0, exclusive_min=True, unit="bands")
        self.p = check_float("p", p, min_value=0.0, max_value=1.0)

    def forward(self, batch: int, n_mels: int, device=None) -> Tensor | None:
        """(batch, n_mels) power gains (1.0 for utterances left alone), or ``None`` in evaluation."""
        if not self.training or self.p == 0.0:
            return None
        idx = torch.arange(n_mels, device=device, dtype=torch.float32)[None, :]  # (1, F)
        tilt = torch.empty(batch, 1, device=device).uniform_(-self.tilt_db, self.tilt_db)
        db = tilt * (idx / max(n_mels - 1, 1) - 0.5)
        for _ in range(self.bumps):
            centre = torch.rand(batch, 1, device=device) * (n_mels - 1)
            sd = torch.empty(batch, 1, device=device).uniform_(*self.width)
            peak = torch.empty(batch, 1, device=device).uniform_(-self.gain_db, self.gain_db)
            db = db + peak * torch.exp(-0.5 * ((idx - centre) / sd) ** 2)
        chosen = (torch.rand(batch, 1, device=device) < self.p).to(db.dtype)
        return 10 ** (db * chosen / 10)


class Echo(nn.Module):
    """A single echo per utterance, in training only: ``x[t] + a * x[t - d]`` with the delay ``d`` uniform in
    ``delay_ms`` and the amplitude ``a`` uniform in ``amplitude`` (espeak-ng voices such as Alicia speak
    with one; rooms add many). Padding stays zero.

    Args:
        delay_ms: ``[low, high]`` delay in milliseconds.
        amplitude: ``[low, high]`` echo amplitude relative to the direct sound.
        sample_rate: of the waveforms.
        p: probability that an utterance gets an echo.
    """

    def __init__(self, *, delay_ms: tuple[float, float] = (20.0, 80.0), amplitude: tuple[float, float] = (0.2, 0.6),
                 sample_rate: int = 16000, p: float = 0.3):
        super().__init__()
        self.delay_ms = check_range("delay_ms", delay_ms, min_value=0)
        self.amplitude = check_range("amplitude", amplitude, min_value=0)
        self.sample_rate = check_int("sample_rate", sample_rate, min_value=1000)
        self.p = check_float("p", p, min_value=0.0, max_value=1.0)

    def forward(self, audio: Tensor, lengths: Tensor) -> Tensor:
        """(B, L) -> (B, L)."""
        if not self.training or self.p == 0.0:
            return audio
        b, n = audio.shape
        chosen = (torch.rand(b) < self.p).tolist()
        delays = torch.empty(b).uniform_(*self.delay_ms).mul(self.sample_rate / 1000).long().tolist()
        amps = torch.empty(b).uniform_(*self.amplitude).tolist()
        out = audio.clone()
        for i in range(b):
            d = delays[i]
            if chosen[i] and 0 < d < n:
                out[i, d:] += amps[i] * audio[i, :n - d]
        valid = torch.arange(n, device=audio.device)[None, :] < lengths[:, None]
        return out * valid


class SpeedPerturbation(nn.Module):
    """Speed perturbation per utterance, in training only (Ko et al. 2015, Kaldi's ``speed`` 0.9/1.0/1.1):
    the waveform resampled so that it plays ``factor`` times as fast, shorter or longer and with pitch and
    formants moved together, as a faster or slower speaker with another vocal tract (torchaudio's
    ``functional.speed``). VTLP moves only the frequency axis; this also changes the speaking rate.
    Each chosen utterance draws one of ``factors``; the batch is re-padded and the lengths returned.

    Args:
        factors: the speeds to draw from (1.0 among them keeps some utterances as recorded).
        sample_rate: of the waveforms.
        p: probability that an utterance is perturbed at all.
    """

    def __init__(self, *, factors: Sequence[float] = (0.9, 1.0, 1.1), sample_rate: int = 16000, p: float = 1.0):
        super().__init__()
        if not factors:
            raise ValueError("speed.factors must list at least one speed (e.g. [0.9, 1.0, 1.1]); got []")
        self.factors = [check_float("speed.factors[]", f, min_value=0.5, max_value=2.0) for f in factors]
        self.sample_rate = check_int("sample_rate", sample_rate, min_value=1000)
        self.p = check_float("p", p, min_value=0.0, max_value=1.0)

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L), (B,) -> (B, L'), (B,): the perturbed utterances re-padded with zeros."""
        if not self.training or self.p == 0.0:
            return audio, lengths
        b = audio.shape[0]
        chosen = (torch.rand(b) < self.p).tolist()
        picks = torch.randint(len(self.factors), (b,)).tolist()
        waves = []
        for i in range(b):
            wave, factor = audio[i, :int(lengths[i])], self.factors[picks[i]]
            if chosen[i] and factor != 1.0:
                wave = AF.speed(wave, self.sample_rate, factor)[0]
            waves.append(wave)
        out = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
        return out, torch.tensor([len(w) for w in waves], device=lengths.device, dtype=lengths.dtype)


class SpecAugment(nn.Module):
    """Frequency and time masks (torchaudio's ``FrequencyMasking``/``TimeMasking``, independent per
    utterance), applied in training only.

    Args:
        freq_masks: number of frequency masks.
        freq_width: largest frequency mask, in mel bands.
        time_masks: number of time masks.
        time_width: largest time mask, in frames.
        time_fraction: a time mask covers at most this fraction of the utterance.
        p: probability that an utterance is masked at all (the others pass through unchanged).
    """

    def __init__(self, *, freq_masks: int = 2, freq_width: int = 15, time_masks: int = 5, time_width: int = 40,
                 time_fraction: float = 0.05, p: float = 1.0):
        super().__init__()
        self.p = check_float("p", p, min_value=0.0, max_value=1.0)
        self.freq_masks = check_int("freq_masks", freq_masks, min_value=0)
        self.time_masks = check_int("time_masks", time_masks, min_value=0)
        self.freq = torchaudio.transforms.FrequencyMasking(check_int("freq_width", freq_width, min_value=0), iid_masks=True)
        self.time = torchaudio.transforms.TimeMasking(check_int("time_width", time_width, min_value=0), iid_masks=True,
                                                      p=check_float("time_fraction", time_fraction, min_value=0.0, max_value=1.0))

    def forward(self, feats: Tensor) -> Tensor:
        """(B, T, F) -> (B, T, F) with masked stretches set to 0 (the normalised mean)."""
        if not self.training or self.p == 0.0:
            return feats
        x = feats.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
        for _ in range(self.freq_masks):
            x = self.freq(x)
        for _ in range(self.time_masks):
            x = self.time(x)
        masked = x.squeeze(1).transpose(1, 2)
        if self.p == 1.0:
            return masked
        chosen = torch.rand(feats.shape[0], device=feats.device) < self.p
        return torch.where(chosen[:, None, None], masked, feats)


class WaveAugment(nn.Module):
    """Random gain and additive white noise per utterance, in training only (synthetic speech has
    digital silence and one loudness; real recordings have neither).

    Args:
        gain_db: the gain is uniform in ``[-gain_db, gain_db]`` dB.
        snr_db: noise at a signal-to-noise ratio uniform in ``[snr_db[0], snr_db[1]]`` dB.
        p: probability that an utterance is augmented; the others stay as recorded, so training also sees
            the clean audio that evaluation sees (with ``p=1`` a clean test set is out of distribution).
    """

    def __init__(self, *, gain_db: float = 6.0, snr_db: tuple[float, float] = (15.0, 50.0), p: float = 0.5):
        super().__init__()
        self.p = check_float("p", p, min_value=0.0, max_value=1.0)
        self.gain_db = check_float("gain_db", gain_db, min_value=0.0)
        self.snr_db = check_range("snr_db", snr_db)

    def forward(self, audio: Tensor, lengths: Tensor) -> Tensor:
        """(B, L) -> (B, L); padding stays zero."""
        if not self.training:
            return audio
        b = audio.shape[0]
        valid = torch.arange(audio.shape[1], device=audio.device)[None, :] < lengths[:, None]  # (B, L)
        rms = (audio.square().sum(1) / lengths.clamp_min(1)).sqrt()  # (B,)
        snr = torch.empty(b, device=audio.device).uniform_(*self.snr_db)
        gain = 10 ** (torch.empty(b, device=audio.device).uniform_(-self.gain_db, self.gain_db) / 20)
        chosen = torch.rand(b, device=audio.device) < self.p
        gain = torch.where(chosen, gain, torch.ones_like(gain))
        noise = torch.randn_like(audio) * (rms * 10 ** (-snr / 20) * chosen)[:, None]
        return (audio + noise * valid) * gain[:, None]


# -- streaming ---------------------------------------------------------------------------------------
class StreamingResampler:
    """``torchaudio.functional.resample`` of a long signal given in blocks, with the same output as
    resampling it whole: each block is resampled with enough context on both sides for the sinc
    filter, at input positions that are multiples of ``orig / gcd``, so output samples line up."""

    def __init__(self, orig_freq: int, new_freq: int):
        g = math.gcd(orig_freq, new_freq)
        self.orig, self.new, self.og, self.ng = orig_freq, new_freq, orig_freq // g, new_freq // g
        width = math.ceil(6 * self.og / (min(self.og, self.ng) * 0.99))  # torchaudio's filter half-width
        self.ctx = self.og * math.ceil((width + self.og + 1) / self.og)
        self.buf = torch.zeros(0)
        self.buf_start = 0  # global input index of buf[0]
        self.done = 0  # inputs [0, done) have been emitted; a multiple of og

    def _run(self, end: int, final: bool) -> Tensor:
        left = min(self.ctx, self.done)
        a = self.done - left
        seg = self.buf[a - self.buf_start:(end if final else end + self.ctx) - self.buf_start]
        y = AF.resample(seg, self.orig, self.new)
        first = left // self.og * self.ng
        out = y[first:] if final else y[first:first + (end - self.done) // self.og * self.ng]
        self.done = end
        keep_from = max(0, end - self.ctx) - self.buf_start
        self.buf, self.buf_start = self.buf[keep_from:], self.buf_start + keep_from
        return out

    def push(self, x: Tensor) -> Tensor:
        """Add samples; return the output samples that are final."""
        if self.orig == self.new:
            return x
        self.buf = torch.cat([self.buf, x])
        total = self.buf_start + len(self.buf)
        end = (total - self.ctx) // self.og * self.og
        return self._run(end, False) if end > self.done else x.new_zeros(0)

    def flush(self) -> Tensor:
        """The rest of the output, after the last block."""
        if self.orig == self.new:
            return torch.zeros(0)
        return self._run(self.buf_start + len(self.buf), True)


class StreamingLogMel:
    """:class:`LogMelFeatures` of a signal given in blocks; frames identical to the whole-signal ones.
    With ``warps``, the features of each frequency warp (:func:`warp_frequencies`) side by side: (W, T, n_mels)."""

    def __init__(self, features: LogMelFeatures, warps: Sequence[float] | None = None):
        self.features = features
        self.warps = torch.tensor([float(w) for w in warps]) if warps else None
        self.buf = torch.zeros(0)

    def push(self, x: Tensor) -> Tensor:
        """Add samples; return the new complete frames ((T, n_mels), or (W, T, n_mels) with warps)."""
        self.buf = torch.cat([self.buf, x])
        f = self.features
        lead = () if self.warps is None else (len(self.warps),)
        if len(self.buf) < f.n_fft:
            return torch.zeros(*lead, 0, f.n_mels)
        n = 1 + (len(self.buf) - f.n_fft) // f.hop_length
        used = (n - 1) * f.hop_length + f.n_fft
        if self.warps is None:
            feats, _ = f(self.buf[None, :used])
        else:
            feats, _ = f(self.buf[None, :used].expand(len(self.warps), -1), warp=self.warps)
        self.buf = self.buf[n * f.hop_length:]
        return feats if self.warps is not None else feats[0]


_CHUNK_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def header_shortfall(info: str) -> tuple[int, int] | None:
    """``(announced, actual)`` bytes of audio when a WAV/AIFF file is shorter than its header says, from
    libsndfile's ``extra_info`` (it clamps a data chunk that runs past the end of the file and notes the size
    it should have had); ``None`` otherwise. Streaming writers leave a placeholder size (0 or near 2**31 /
    2**32), which is not a truncation."""
    m = _CHUNK_SIZE.search(info)
    if m:
        announced, actual = int(m.group(1)), int(m.group(2))
        if 0 < announced < 0x7FFF0000 and actual < announced:
            return announced, actual
    return None


def open_audio(path: str | Path) -> sf.SoundFile:
    """``soundfile.SoundFile(path)``; ``FileNotFoundError`` or ``ValueError`` naming the file when it is missing
    or not audio libsndfile reads, and a warning when the file is shorter than its header says."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # libsndfile's LibsndfileError says only "Format not recognised" / "System error"
        raise ValueError(f"{path}: not audio that libsndfile reads (WAV, FLAC, OGG, ...): "
                         f"{type(e).__name__}: {e}") from e
    shortfall = header_shortfall(f.extra_info)
    if shortfall:
        log.warning("%s is truncated: its header announces %d bytes of audio but the file holds %d; only the "
                    "%.1f s present are used", path, *shortfall, f.frames / f.samplerate)
    return f


def read_blocks(path: str | Path, block_seconds: float = 30.0) -> Iterator[tuple[Tensor, int]]:
    """Mono float32 blocks of ``path`` and its sample rate, read with soundfile (any length; :func:`open_audio`)."""
    with open_audio(path) as f:
        block = max(1, int(block_seconds * f.samplerate))
        while True:
            data = f.read(block, dtype="float32", always_2d=True)
            if data.shape[0] == 0:
                return
            yield torch.from_numpy(np.ascontiguousarray(data.mean(axis=1))), f.samplerate


def feature_blocks(path: str | Path, features: LogMelFeatures, *, block_seconds: float = 30.0,
                   warps: Sequence[float] | None = None) -> Iterator[tuple[Tensor, float]]:
    """The features of a recording as they become complete, one piece per block read ((T_i, n_mels), or
    (W, T_i, n_mels) with ``warps``; together the whole-recording frames), each with the seconds of audio
    read so far."""
    resampler: StreamingResampler | None = None
    mel = StreamingLogMel(features, warps)
    samples, rate = 0, features.sample_rate
    for block, rate in read_blocks(path, block_seconds):
        if resampler is None:
            resampler = StreamingResampler(rate, features.sample_rate)
        samples += len(block)
        yield mel.push(resampler.push(block)), samples / rate
    if resampler is None:
        raise ValueError(f"{path}: no audio samples")
    yield mel.push(resampler.flush()), samples / rate


def stream_features(path: str | Path, features: LogMelFeatures, *, block_seconds: float = 30.0,
                    warps: Sequence[float] | None = None) -> tuple[Tensor, float]:
    """Features (T, n_mels) of a whole recording computed block by block, and its duration in seconds.
    With ``warps``: (W, T, n_mels), the features of each frequency warp."""
    chunks, duration = [], 0.0
    for feats, duration in feature_blocks(path, features, block_seconds=block_seconds, warps=warps):
        chunks.append(feats)
    feats = torch.cat(chunks, dim=-2)
    if feats.shape[-2] == 0:
        raise ValueError(f"{path}: shorter than one analysis window ({features.n_fft / features.sample_rate * 1000:.0f} ms)")
    return feats, duration
