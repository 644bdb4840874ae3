"""A Conformer-CTC speech recogniser whose self-attention is any core_attn variant.

Gulati et al. 2020, "Conformer: Convolution-augmented Transformer for Speech Recognition"
(arXiv:2005.08100); the subsampling and the long-form recipe (a local window plus global tokens,
LayerNorm instead of BatchNorm in the convolution module) follow NeMo's FastConformer, Rekesh et al.
2023, "Fast Conformer with Linearly Scalable Attention for Efficient Speech Recognition"
(arXiv:2305.05084). Graves et al. 2006, "Connectionist Temporal Classification" (the head).

Every part is length-agnostic: the subsampling and convolutions are local, the attention variant
decides the context, and there are no absolute positions (``positions="rotary"`` adds relative ones),
so a model trained on 3-second utterances runs over an hour-long recording in one pass, with memory
linear in its length under a linear variant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from audio.features import (Echo, LogMelFeatures, RandomEqualizer, SpecAugment, SpeedPerturbation, VocalTractPerturbation,
                            WaveAugment)
from core_attn.layers import AttentionSpec, MultiheadAttention, attention_factory
from core_attn.streaming import Reach, check_step, position_offset, receptive_field, stream
from core_attn.validation import check_choice, check_float, check_int


def padding_mask(lengths: Tensor, n: int) -> Tensor:
    """(B, n) bool, True at padding (the torch.nn.MultiheadAttention convention)."""
    return torch.arange(n, device=lengths.device)[None, :] >= lengths[:, None]


class ConvSubsampling(nn.Module):
    """FastConformer's depthwise-striding subsampling: a 3x3 stride-2 convolution, then depthwise-separable
    stride-2 stages, then a linear map of (channels x remaining mel bands) to ``dim``.

    Args:
        in_features: mel bands.
        channels: convolution channels.
        dim: output width.
        factor: time reduction, 2, 4 or 8 (one stage per factor of 2).
    """

    def __init__(self, *, in_features: int, channels: int, dim: int, factor: int):
        super().__init__()
        self.factor = check_choice("subsampling", factor, (2, 4, 8))
        self.stages = int(math.log2(factor))
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.ReLU()]
        for _ in range(self.stages - 1):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels),
                       nn.Conv2d(channels, channels, 1), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        f = in_features
        for _ in range(self.stages):
            f = (f - 1) // 2 + 1
        self.out = nn.Linear(channels * f, dim)

    def out_lengths(self, lengths: Tensor) -> Tensor:
        for _ in range(self.stages):
            lengths = (lengths - 1).div(2, rounding_mode="floor") + 1
        return lengths.clamp_min(0)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, F) -> (B, ceil(T / factor), dim); padded frames must be zero (they then act as the end)."""
        y = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        return self.out(y.permute(0, 2, 1, 3).flatten(2))

    def forward_chunked(self, x: Tensor, chunk: int = 4096) -> Tensor:
        """(T, F) -> (T', dim), exactly ``forward`` on the whole input, computed ``chunk`` frames at a time
        (the first convolution's output would be 36x the features: 4 GB for an hour at 144 channels).
        Each chunk starts at a multiple of ``factor`` and carries ``2 * factor`` frames of context on each
        side, more than the receptive radius ``factor - 1``, so edges never reach kept outputs."""
        s = self.factor
        chunk = max(s, chunk // s * s)
        ctx = 2 * s
        t = x.shape[0]
        t_out = int(self.out_lengths(torch.tensor(t)))
        outs = []
        for start in range(0, t, chunk):
            a, b = max(0, start - ctx), min(t, start + chunk + ctx)
            y = self(x[None, a:b])[0]  # local output i is global a // s + i
            g0, g1 = start // s, min(t_out, (start + chunk) // s)
            outs.append(y[g0 - a // s:g1 - a // s])
        return torch.cat(outs)

    def stream(self, chunks: Iterable[Tensor], *, step: int = 1024) -> Iterator[Tensor]:
        """(B, T_i, F) feature chunks of one unpadded input -> (B, n_j, dim) pieces, in order, equal to
        ``forward`` over the whole input; each run covers at most ``step`` outputs.

        Output ``j`` reads frames ``s j - (s - 1) .. s j + (s - 1)`` (``s = factor``; the zero padding of each
        stride-2 stage sits at ``-1`` and past the end). So outputs ``j0 .. j1 - 1`` are computed from frames
        ``s (j0 - 1) .. s j1 - 1``: a slice starting at a multiple of ``s`` keeps the stride phase, the frame
        group before ``j0`` covers its left reach, and its right reach ends inside the slice. Output ``j``
        is final once frame ``s j + s - 1`` has arrived; the last ones wait for the end of the input."""
        s, buf, start, done = self.factor, None, 0, 0  # buf: frames start.. (a multiple of s); done: outputs yielded

        def run(stop: int) -> Tensor:  # outputs done .. stop - 1
            a = max(0, s * (done - 1))
            y = self(buf[:, a - start:s * stop - start])
            return y[:, done - a // s:stop - a // s]

        for piece in chunks:
            buf = piece if buf is None else torch.cat([buf, piece], dim=1)
            while (ready := min((start + buf.shape[1]) // s, done + step)) > done:
                yield run(ready)
                done = ready
                keep = max(0, s * (done - 1))  # the left reach of the next output
                buf, start = buf[:, keep - start:], keep
        if buf is not None:
            end = -(-(start + buf.shape[1]) // s)  # ceil(T / s): the last outputs read the zero padding past T
            while done < end:
                stop = min(end, done + step)
                yield run(stop)
                done = stop


class FeedForward(nn.Module):
    """Pre-norm feed-forward with Swish (the Conformer's macaron halves)."""

    def __init__(self, dim: int, mult: float, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, int(dim * mult)), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(int(dim * mult), dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of (B, N, C) frames whose statistics (in training) count real frames
    only: padding neither shifts the batch statistics nor the running ones, so an utterance's output in
    evaluation does not depend on how much padding its batch had."""

    def forward(self, x: Tensor, pad: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if pad is None or not self.training:
            return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        keep = ~pad
        return x.new_zeros(x.shape).index_put((keep,), super().forward(x[keep]))


class ConvModule(nn.Module):
    """Conformer convolution module: pointwise + GLU, depthwise convolution, norm, Swish, pointwise.
    Padded frames are zeroed before the depthwise convolution so they never leak into real ones.

    ``norm`` after the depthwise convolution: ``batch`` (Gulati et al.'s BatchNorm, statistics over real
    frames only: :class:`MaskedBatchNorm`) or ``layer`` (LayerNorm, batch-independent)."""

    def __init__(self, dim: int, kernel: int, dropout: float, norm: str = "batch"):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"conv_kernel={kernel} must be odd (a centred depthwise convolution)")
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, 2 * dim)
        self.dw = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm2 = MaskedBatchNorm(dim) if check_choice("conv_norm", norm, ("batch", "layer")) == "batch" \
            else nn.LayerNorm(dim)
        self.pw2 = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pad: Tensor | None) -> Tensor:
        y = F.glu(self.pw1(self.norm(x)), dim=-1)  # (B, N, C)
        if pad is not None:
            y = y.masked_fill(pad[..., None], 0.0)
        y = self.dw(y.transpose(1, 2)).transpose(1, 2)
        y = self.norm2(y, pad) if isinstance(self.norm2, MaskedBatchNorm) else self.norm2(y)
        return self.drop(self.pw2(F.silu(y)))


class ConformerBlock(nn.Module):
    """``x + FF/2, + MHSA, + Conv, + FF/2, LayerNorm`` (Gulati et al. 2020) with any attention variant."""

    def __init__(self, dim: int, num_heads: int, *, attention, ffn_mult: float, conv_kernel: int, dropout: float,
                 rotary: bool, conv_norm: str = "batch"):
        super().__init__()
        self.ff1 = FeedForward(dim, ffn_mult, dropout)
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = MultiheadAttention(dim, num_heads, attention=attention, rotary=rotary, dropout=dropout)
        self.conv = ConvModule(dim, conv_kernel, dropout, conv_norm)
        self.ff2 = FeedForward(dim, ffn_mult, dropout)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pad: Tensor | None) -> Tensor:
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn(self.norm_attn(x), key_padding_mask=pad)
        x = x + self.conv(x, pad)
        x = x + 0.5 * self.ff2(x)
        return self.norm_out(x)


def accepted_length(attention: nn.Module, n: int) -> int:
    """The shortest length >= ``n`` that ``attention`` accepts (its ``check_length``, if any).

    The encoder pads shorter inputs with masked frames up to it: for ``local`` with a window wider than
    the input this is exactly full attention over the input (the masked keys get no weight), the clear
    rule the variant's ``window <= N`` check asks for, instead of rebuilding the variant per length.
    """
    check = getattr(attention, "check_length", None)
    if check is None:
        return n
    for m in range(n, n + 65536):
        try:
            check(m)
            return m
        except ValueError:
            continue
    raise ValueError(f"attention {type(attention).__name__} accepts no length in [{n}, {n + 65536})")


class ConformerEncoder(nn.Module):
    """Subsampling then a stack of Conformer blocks.

    Args:
        in_features: mel bands.
        dim: model width.
        depth: Conformer blocks.
        num_heads: attention heads.
        ffn_mult: feed-forward width as a multiple of ``dim``.
        conv_kernel: depthwise convolution width in (subsampled) frames; odd.
        conv_norm: the convolution module's norm, ``batch`` (Gulati et al.; real frames only) or ``layer``.
        subsampling: time reduction 2, 4 or 8 (4 for characters: 8x leaves fewer frames than letters).
        subsampling_channels: channels of the subsampling convolutions.
        dropout: dropout in every block.
        attention: the variant: a zero-argument factory (a Hydra ``_partial_`` config, called per block),
            an instance (deep-copied per block) or ``None`` (dense).
        positions: ``none`` (the convolutions carry position) or ``rotary`` (RoPE in every block).
        gradient_checkpointing: recompute each block in the backward pass while training (less memory:
            only the blocks' inputs are kept).
    """

    def __init__(self, *, in_features: int = 80, dim: int = 144, depth: int = 8, num_heads: int = 4,
                 ffn_mult: float = 4.0, conv_kernel: int = 15, conv_norm: str = "batch", subsampling: int = 4,
                 subsampling_channels: int = 144,
                 dropout: float = 0.1, attention: AttentionSpec = None, positions: str = "none",
                 gradient_checkpointing: bool = False):
        super().__init__()
        check_int("depth", depth, min_value=1)
        check_float("dropout", dropout, min_value=0.0, max_value=1.0)
        check_choice("positions", positions, ("none", "rotary"))
        self.dim = dim
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.subsampling = ConvSubsampling(in_features=in_features, channels=subsampling_channels, dim=dim,
                                           factor=subsampling)
        make_attention = attention_factory(attention, {"num_heads": num_heads, "head_dim": dim // num_heads})
        self.blocks = nn.ModuleList(
            ConformerBlock(dim, num_heads, attention=make_attention(), ffn_mult=ffn_mult, conv_kernel=conv_kernel,
                           dropout=dropout, rotary=positions == "rotary", conv_norm=conv_norm) for _ in range(depth))

    def accepted_length(self, n: int) -> int:
        return max(accepted_length(b.attn.attention, n) for b in self.blocks)

    def forward_subsampled(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """The blocks over subsampled frames (B, N, dim) with valid ``lengths``; output (B, N, dim).

        ``lengths=None`` means every frame is real: then whether there is padding is known from the shapes
        alone (no data-dependent branch), which is what lets ``torch.export`` trace the encoder.
        """
        n = x.shape[1]
        m = self.accepted_length(n)
        if m > n:
            x = F.pad(x, (0, 0, 0, m - n))
        if lengths is None:
            pad = padding_mask(torch.full((x.shape[0],), n, device=x.device), m) if m > n else None
        else:
            pad = padding_mask(lengths, m)
            pad = pad if bool(pad.any()) else None
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, pad, use_reentrant=False)  # dropout masks replayed (RNG state kept)
            else:
                x = block(x, pad)
        return x[:, :n]

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, F) features with ``lengths`` frames -> (B, N, dim) and (B,) subsampled lengths."""
        feats = feats.masked_fill(padding_mask(lengths, feats.shape[1])[..., None], 0.0)
        x = self.subsampling(feats)
        out_lengths = self.subsampling.out_lengths(lengths)
        return self.forward_subsampled(x, out_lengths), out_lengths


class ConformerCTC(nn.Module):
    """Waveform in, per-frame character log-probabilities out: features, augmentation (training only),
    :class:`ConformerEncoder`, linear CTC head.

    Args:
        features: the log-mel front end.
        encoder: the Conformer encoder.
        vocab_size: CTC classes including the blank (29 for :data:`audio.text.VOCAB`).
        augment: waveform gain and noise in training (``None``: none).
        spec_augment: SpecAugment masks in training (``None``: none).
        vtlp: vocal tract length perturbation in training (``None``: none).
        equalizer: random spectral balance in training (``None``: none).
        echo: a random echo in training (``None``: none).
        speed: speed perturbation in training (``None``: none); it changes the utterances' lengths, so the
            frame counts returned follow the perturbed audio.
    """

    def __init__(self, *, features: LogMelFeatures, encoder: ConformerEncoder, vocab_size: int = 29,
                 augment: WaveAugment | None = None, spec_augment: SpecAugment | None = None,
                 vtlp: VocalTractPerturbation | None = None, equalizer: RandomEqualizer | None = None,
                 echo: Echo | None = None, speed: SpeedPerturbation | None = None):
        super().__init__()
        self.features, self.encoder = features, encoder
        self.speed = speed
        self.augment, self.spec_augment, self.vtlp = augment, spec_augment, vtlp
        self.equalizer, self.echo = equalizer, echo
        self.vocab_size = check_int("vocab_size", vocab_size, min_value=2)
        self.head = nn.Linear(encoder.dim, vocab_size)

    @property
    def frame_seconds(self) -> float:
        """Seconds per output frame (feature hop x subsampling)."""
        return self.features.frame_seconds * self.encoder.subsampling.factor

    def forward(self, audio: Tensor, lengths: Tensor, warp: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, L) samples -> (B, N, vocab) log-probabilities and (B,) frame counts. ``warp``: a frequency
        axis factor for every utterance (a float) or each ((B,) tensor), in place of VTLP's random draw (the
        test-time warps of :class:`audio.module.SpeechRecognizer`)."""
        if self.speed is not None:
            audio, lengths = self.speed(audio, lengths)
        if self.echo is not None:
            audio = self.echo(audio, lengths)
        if self.augment is not None:
            audio = self.augment(audio, lengths)
        if warp is not None:
            warp = torch.as_tensor(warp, dtype=torch.float32, device=audio.device).expand(audio.shape[0])
        elif self.vtlp is not None:
            warp = self.vtlp(audio.shape[0], audio.device)
        gain = (self.equalizer(audio.shape[0], self.features.n_mels, audio.device)
                if self.equalizer is not None else None)
        feats, flens = self.features(audio, lengths, warp, gain)
        if self.spec_augment is not None:
            feats = self.spec_augment(feats)
        return self.forward_features(feats, flens)

    def forward_features(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, F) features -> (B, N, vocab) log-probabilities and (B,) frame counts."""
        x, out_lengths = self.encoder(feats, lengths)
        return self.head(x).float().log_softmax(-1), out_lengths

    def log_probs(self, feats: Tensor) -> Tensor:
        """(B, T, F) features, every frame real (no padding) -> (B, N, vocab) log-probabilities: the
        network an exported artefact holds (``audio.export``), free of length-dependent branches."""
        x = self.encoder.forward_subsampled(self.encoder.subsampling(feats), None)
        return self.head(x).float().log_softmax(-1)

    def stream_reach(self) -> Reach:
        """How many subsampled frames before and after a frame its log-probabilities read: each block's
        attention window (times dilation) plus its depthwise convolution's half-width, added up (LayerNorm,
        the feed-forwards and BatchNorm in evaluation act frame by frame). ``ValueError`` naming the block
        when an output reads the whole input (global tokens, dense or approximate attention)."""
        reach = receptive_field(self.encoder)
        for block in self.encoder.blocks:
            k = block.conv.dw.kernel_size[0]
            reach = reach + Reach(k // 2, k // 2)
        return reach

    @torch.inference_mode()
    def stream(self, chunks: Iterable[Tensor], *, step: int = 8192, subsample_step: int = 1024) -> Iterator[Tensor]:
        """(B, T_i, F) feature chunks of one unpadded recording -> (B, n_j, vocab) log-probabilities, in
        order, ``step`` subsampled frames at a time (the last piece shorter), equal to :meth:`log_probs_long`
        over the whole recording; memory holds ``step`` frames plus the receptive field (:meth:`stream_reach`)
        of every block, not the recording. Each step recomputes the receptive field on both sides (with the
        default model, 568 frames: 14% more encoder work at ``step=8192``); the subsampling, whose halo is
        one frame group, runs ``subsample_step`` outputs at a time (its first convolution's output is the
        largest tensor). Evaluation mode only (in training, BatchNorm's statistics span the batch and
        dropout is random)."""
        if self.training:
            raise ValueError("streaming runs the network in evaluation mode: call .eval() first (in training, "
                             "BatchNorm's statistics span the input and dropout is random)")
        reach = self.stream_reach()
        check_step(self.encoder, step)

        def forward(x: Tensor, offset: int) -> Tensor:  # (B, n, dim) subsampled frames from offset
            with position_offset(self.encoder, offset):
                h = self.encoder.forward_subsampled(x, None)
            return self.head(h).float().log_softmax(-1)

        frames = self.encoder.subsampling.stream(chunks, step=subsample_step)
        yield from stream(forward, frames, reach=reach, step=step)

    def log_probs_long(self, feats: Tensor, *, subsample_chunk: int = 4096) -> Tensor:
        """(T, F) features of a whole recording -> (N, vocab), in one pass: the subsampling runs in chunks
        (exact), the encoder over the whole sequence (memory linear in N under a linear variant)."""
        x = self.encoder.subsampling.forward_chunked(feats, subsample_chunk)  # (N, dim)
        lengths = torch.tensor([x.shape[0]], device=x.device)
        x = self.encoder.forward_subsampled(x[None], lengths)[0]
        return self.head(x).float().log_softmax(-1)

    def log_probs_chunked(self, feats: Tensor, *, window: int, overlap: int) -> Tensor:
        """(T, F) -> (N, vocab) by overlapping windows of ``window`` feature frames: each window keeps its
        output frames except ``overlap`` frames at either inner edge, and the kept frames are concatenated
        (the buffered decoding of NeMo's chunked inference). For comparison with :meth:`log_probs_long`."""
        s = self.encoder.subsampling.factor
        window, overlap = window // s * s, overlap // s * s
        if window <= 2 * overlap:
            raise ValueError(f"chunk window ({window} frames) must be longer than twice the overlap ({overlap})")
        t = feats.shape[0]
        t_out = int(self.encoder.subsampling.out_lengths(torch.tensor(t)))
        outs, pos, a = [], 0, 0
        while True:
            b = min(t, a + window)
            lp = self.log_probs_long(feats[a:b])
            keep_end = t_out if b == t else (b - overlap) // s
            outs.append(lp[pos - a // s:keep_end - a // s])
            pos = keep_end
            if b == t:
                return torch.cat(outs)
            a += window - 2 * overlap
