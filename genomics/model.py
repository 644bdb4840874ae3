"""The sequence network of the genomics app: token embedding, optional patching, a core_attn encoder, a head.

``patch_size > 1`` merges that many bases into one attention token with a strided convolution (ViT's
patch embedding in 1-D) after a "stem" convolution over the bases (``stem_kernel``: k-mer detectors that
do not depend on where a patch boundary falls), so a 100,000-base window costs 100,000 / patch_size
attention tokens; per-base
outputs then come back through an upsampling of the token features added to a per-base local branch
(a small non-causal convolution over the embeddings). ``pool="mean"`` averages tokens into one
prediction per sequence, ``pool="max"`` takes their feature-wise maximum (a motif anywhere in the
record counts, as in a convolutional classifier's global max pooling). The causal language model needs
``patch_size=1`` and a causal variant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_attn.layers import TransformerEncoder
from core_attn.streaming import Reach, check_step, position_offset, receptive_field, stream
from core_attn.validation import check_choice, check_float, check_int
from genomics import orf
from genomics.tokenizers import PAD

DNA_VOCAB = 9  # DNATokenizer(k=1, case="fold"): 4 special tokens + A, C, G, T, N


class SequenceTransformer(nn.Module):
    """Embedding -> [patching] -> :class:`core_attn.layers.TransformerEncoder` -> per-token or pooled head.

    Args:
        vocab_size: token ids ``0 .. vocab_size-1`` (0 is padding).
        num_outputs: outputs per position (``pool="none"``) or per sequence (``pool="mean"`` or ``"max"``).
        dim: model width.
        depth: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width as a multiple of ``dim``.
        patch_size: bases per attention token (1: per base).
        pool: ``none`` (per-base outputs), ``mean`` or ``max`` (one output per sequence over its tokens,
            padding excluded).
        positions: ``rotary`` (relative; lengths beyond training work), ``learned`` (needs ``max_len``) or ``none``.
        max_len: the longest input in bases, for learned positions and length-aware variants.
        dropout: dropout in the blocks.
        local_kernel: width of the per-base convolution of the upsampling branch (``patch_size > 1``).
        stem_kernel: width of a convolution over the base embeddings (1: none): before patching for
            ``patch_size > 1``, added to the embeddings (k-mer features) for ``patch_size=1``; left-padded
            (causal) when the attention is causal.
        attention: the variant: a zero-argument factory (a Hydra ``_partial_`` config), an instance, or ``None``.
        gradient_checkpointing: recompute blocks in the backward pass.
        embed_std: standard deviation of the token embeddings at init. ``None``: 1.0 when a convolution reads
            them before patching (``patch_size > 1``: ``nn.Embedding``'s own default, so the stem's k-mer
            detectors start with inputs of unit scale; at 0.02 they start 50x too small and a 16S classifier
            learns several times slower), 0.02 otherwise (GPT-2's init for per-base tokens that enter the
            residual stream directly).
        orf_features: add the six reading-frame features of :mod:`genomics.orf` (codons between the in-frame
            stops around each base, per frame and strand) to the base embeddings through a linear map; DNA
            tokens of ``DNATokenizer(k=1)`` only. For per-base annotation of protein-coding genes.
    """

    def __init__(self, *, vocab_size: int, num_outputs: int, dim: int = 128, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 2.0, patch_size: int = 1, pool: str = "none", positions: str = "rotary",
                 max_len: int | None = None, dropout: float = 0.0, local_kernel: int = 9, stem_kernel: int = 9,
                 attention: Callable[[], nn.Module] | nn.Module | None = None, gradient_checkpointing: bool = False,
                 embed_std: float | None = None, orf_features: bool = False):
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, min_value=2)
        self.num_outputs = check_int("num_outputs", num_outputs, min_value=1)
        self.patch_size = check_int("patch_size", patch_size, min_value=1)
        self.pool = check_choice("pool", pool, ("none", "mean", "max"))
        for name, k in (("local_kernel", local_kernel), ("stem_kernel", stem_kernel)):
            if check_int(name, k, min_value=1) % 2 == 0:
                raise ValueError(f"{name}={k} must be odd (a centred convolution)")
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        if orf_features and vocab_size != DNA_VOCAB:
            raise ValueError(f"model.orf_features=true reads DNA tokens (vocab_size={DNA_VOCAB}: A, C, G, T, N); "
                             f"got vocab_size={vocab_size}: use it with DNA data (data.case=fold) or set it false")
        self.orf = nn.Linear(orf.NUM_FEATURES, dim) if orf_features else None
        self.stem = nn.Conv1d(dim, dim, kernel_size=stem_kernel) if stem_kernel > 1 else None  # padded in _stem
        if patch_size > 1:
            self.patch = nn.Conv1d(dim, dim, kernel_size=patch_size, stride=patch_size)
            if pool == "none":
                self.local = nn.Conv1d(dim, dim, kernel_size=local_kernel, padding=local_kernel // 2)
        token_len = None if max_len is None else -(-max_len // patch_size)
        self.max_len = max_len if positions == "learned" else None  # a hard limit only with learned positions
        self.encoder = TransformerEncoder(dim, depth, num_heads, attention=attention, mlp_ratio=mlp_ratio,
                                          dropout=dropout, positions=positions, max_len=token_len,
                                          gradient_checkpointing=gradient_checkpointing)
        self.stem_causal = self.is_causal  # a causal model's stem sees only the current and earlier bases
        self.out_norm = nn.LayerNorm(dim) if patch_size > 1 and pool == "none" else nn.Identity()
        self.head = nn.Linear(dim, num_outputs)
        if embed_std is None:
            embed_std = 1.0 if patch_size > 1 else 0.02
        nn.init.normal_(self.embed.weight, std=check_float("embed_std", embed_std, min_value=0.0))
        with torch.no_grad():  # padding embeds to zero, as the convolutions' zero padding does
            self.embed.weight[PAD].zero_()
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def is_causal(self) -> bool:
        """True when every block's attention hides the future (what a causal LM needs)."""
        return all(getattr(b.attn.attention, "causal", False) for b in self.encoder.blocks)

    def _stem(self, x: Tensor) -> Tensor:
        """GELU of the stem convolution over bases, (B, C, L) -> (B, C, L); left-padded when causal."""
        k = self.stem.kernel_size[0]
        return F.gelu(self.stem(F.pad(x, (k - 1, 0) if self.stem_causal else (k // 2, k // 2))))

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (timm's convention)."""
        return {"encoder.pos_embed", "embed.weight"}

    def forward(self, tokens: Tensor, pad: Tensor | None = None) -> Tensor:
        """tokens (B, L) int64, pad (B, L) bool (True = padding) -> (B, L, num_outputs) or (B, num_outputs)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, L); got {tuple(tokens.shape)}")
        b, n = tokens.shape
        p = self.patch_size
        if n % p:
            raise ValueError(f"sequence length {n} is not a multiple of patch_size={p}; pad it (data.window / "
                             "data.max_len a multiple of model.patch_size)")
        if self.max_len is not None and n > self.max_len:
            raise ValueError(f"sequence of {n} bases is longer than the model allows: model.max_len={self.max_len} "
                             "(learned positions); crop it (data.window / data.max_len) or use model.positions=rotary")
        x = self.embed(tokens)  # (B, L, C)
        if self.orf is not None:
            x = x + self.orf(orf.orf_features(tokens))  # (B, L, 6) -> (B, L, C)
        token_pad = pad
        if p == 1 and self.stem is not None:  # residual k-mer features for per-base tokens
            x = x + self._stem(x.transpose(1, 2)).transpose(1, 2)
        if p > 1:
            base = x.transpose(1, 2)  # (B, C, L)
            feats = self._stem(base) if self.stem is not None else base
            x = self.patch(feats).transpose(1, 2)  # (B, L/p, C)
            if pad is not None:
                token_pad = pad.view(b, n // p, p).all(dim=-1)  # a token is padding when all its bases are
        if token_pad is not None and not bool(token_pad.any()):
            token_pad = None  # no padding: keep the variants' fast paths (e.g. SDPA without a mask)
        h = self.encoder(x, key_padding_mask=token_pad)  # (B, N, C)
        if self.pool == "max":
            if token_pad is not None:
                h = h.masked_fill(token_pad.unsqueeze(-1), float("-inf"))
            return self.head(h.amax(dim=1))
        if self.pool == "mean":
            if token_pad is None:
                return self.head(h.mean(dim=1))
            keep = (~token_pad).unsqueeze(-1).to(h.dtype)  # (B, N, 1)
            return self.head((h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0))
        if p > 1:
            up = h.repeat_interleave(p, dim=1)  # (B, L, C): each base gets its token's features
            h = self.out_norm(up + self.local(base).transpose(1, 2))
            h = F.gelu(h)
        return self.head(h)  # (B, L, num_outputs)

    def stream_reach(self) -> Reach:
        """How many bases before and after a base its output reads (the stem convolution's and every block's
        attention window added up); ``ValueError`` naming the part when some output reads the whole input."""
        if self.patch_size != 1 or self.pool != "none":
            raise ValueError(f"streaming needs a per-base model (model.patch_size=1, model.pool=none); this one has "
                             f"patch_size={self.patch_size}, pool={self.pool}")
        if self.orf is not None:
            raise ValueError("model.orf_features=true cannot be streamed exactly: a base's reading-frame feature "
                             "depends on the next in-frame stop codon, any distance away")
        reach = receptive_field(self.encoder)
        if self.stem is not None:
            k = self.stem.kernel_size[0]
            reach = reach + (Reach(k - 1, 0) if self.stem_causal else Reach(k // 2, k // 2))
        return reach

    @torch.inference_mode()
    def stream(self, chunks: Iterable[Tensor], *, step: int = 65536) -> Iterator[Tensor]:
        """Per-base outputs of one long unpadded input arriving in chunks of (B, n_i) token ids: yields
        (B, step, num_outputs) pieces (the last shorter) equal to :meth:`forward` over the whole input, in
        memory that holds ``step`` plus the receptive field (:meth:`stream_reach`), not the input."""
        reach = self.stream_reach()
        check_step(self.encoder, step)

        def forward(tokens: Tensor, offset: int) -> Tensor:
            with position_offset(self, offset):
                return self(tokens)

        yield from stream(forward, chunks, reach=reach, step=step, dim=1)

    @torch.inference_mode()
    def forward_long(self, tokens: Tensor, *, chunk: int = 65536) -> Tensor:
        """:meth:`forward` for one very long unpadded sequence, without gradients, in less memory.

        Everything but attention acts position by position, so it runs ``chunk`` positions at a time;
        only q, k, v and the attention output of one block exist at full length. Peak memory is then about
        five (N, dim) tensors instead of the dozen a plain forward holds (the MLP's hidden layer, the
        rotary temporaries, ...). Same result as :meth:`forward` (tested); per-base heads only
        (``patch_size=1``, ``pool="none"``).

        Args:
            tokens: (B, L) int64 token ids, no padding.
            chunk: positions per position-wise step.
        """
        if self.patch_size != 1 or self.pool != "none":
            raise ValueError("forward_long needs a per-base model (patch_size=1, pool='none')")
        check_int("chunk", chunk, min_value=1)
        enc = self.encoder
        b, n = tokens.shape
        x = self.embed(tokens)  # (B, N, C)
        if self.orf is not None:
            x += self.orf(orf.orf_features(tokens))
        if self.stem is not None:
            x += self._stem(x.transpose(1, 2)).transpose(1, 2)
        if enc.pos_embed is not None:
            if n > enc.max_len:
                raise ValueError(f"input length N={n} exceeds max_len={enc.max_len} of the learned positions")
            x += enc.pos_embed[:, :n]
        spans = [(s, min(n, s + chunk)) for s in range(0, n, chunk)]
        for blk in enc.blocks:
            x = self._long_block(blk, x, spans)
        out = x.new_empty(b, n, self.num_outputs)
        for s, e in spans:
            out[:, s:e] = self.head(enc.norm(x[:, s:e]))
        return out

    @staticmethod
    def _long_block(blk: nn.Module, x: Tensor, spans: list[tuple[int, int]]) -> Tensor:
        """One pre-norm block (``TransformerBlock`` in eval mode) with position-wise parts in spans."""
        mha = blk.attn
        b, n, c = x.shape
        h, hd = mha.num_heads, mha.head_dim
        q, k, v = (x.new_empty(b, h, n, hd) for _ in range(3))  # (B, H, N, hd)
        cos_sin = mha.rotary.cos_sin(n, x.device, torch.float32) if mha.rotary is not None else None
        for s, e in spans:
            qkv = mha.qkv(blk.norm1(x[:, s:e])).reshape(b, e - s, 3, h, hd).permute(2, 0, 3, 1, 4)
            for dst, src in zip((q, k, v), qkv.unbind(0)):
                dst[:, :, s:e] = src
            if cos_sin is not None:  # RoPE, as RotaryEmbedding.forward, on positions s..e-1
                cos, sin = cos_sin[0][s:e], cos_sin[1][s:e]
                for t in (q, k):
                    part = t[:, :, s:e].float()
                    x1, x2 = part.chunk(2, dim=-1)
                    t[:, :, s:e] = part * cos + torch.cat([-x2, x1], dim=-1) * sin
        att = mha.attention(q, k, v)  # (B, H, N, hd)
        del q, k, v
        for s, e in spans:
            o = att[:, :, s:e].transpose(1, 2).reshape(b, e - s, c)
            x[:, s:e] += blk.ls1(mha.proj(o))
            x[:, s:e] += blk.ls2(blk.mlp(blk.norm2(x[:, s:e])))
        return x
