"""LSH attention: queries attend to the keys that share their hash buckets (Reformer).

Kitaev, Kaiser & Levskaya 2020, "Reformer: The Efficient Transformer", arXiv:2001.04451.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from core_attn.attention.base import AttentionBase, autocast_inputs, check_qkv
from core_attn.kernels import block_sparse_attention, merge_partials
from core_attn.patterns import Part
from core_attn.registry import register_attention
from core_attn.validation import check_int

# Elements of one chunk of rotated vectors while hashing (no_grad, so peak memory stays bounded).
_HASH_ELEMENTS = 1 << 22


def _round_seed(seed: int, r: int, dim: int, num_buckets: int) -> int:
    """A generator seed that depends on (seed, round, D, num_buckets) only (not on n_hashes or N)."""
    digest = hashlib.sha256(f"lsh/{seed}/{r}/{dim}/{num_buckets}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _lookup(table: Tensor, pos: Tensor) -> Tensor:
    """``table`` (B, H, N + 1) read at original positions ``pos`` (B, H, ...); -1 reads the last slot."""
    idx = torch.where(pos >= 0, pos, table.shape[-1] - 1)
    return table.gather(2, idx.reshape(*idx.shape[:2], -1)).view(idx.shape)


def _gather_rows(x: Tensor, pos: Tensor) -> Tensor:
    """Rows of x (B, H, N, D) at pos (B, H, L) (differentiable). Slots of -1 read row 0: the kernel masks
    them (as queries and as keys), so they get zero weight and zero gradient."""
    return x.gather(2, pos.clamp(min=0)[..., None].expand(-1, -1, -1, x.shape[-1]))


@dataclass
class LSHRound:
    """One hashing round: the visiting order the kernel runs and lookup tables over original positions.

    Attributes:
        q_pos: (B, H, L) original query position in each sorted slot (-1 = padding slot).
        k_pos: (B, H, L) original key position in each sorted slot (-1 = padding slot).
        q_rank: (B, H, N + 1) sorted slot of query i (last entry: dummy for position -1).
        k_rank: (B, H, N + 1) sorted slot of key j.
        q_bucket: (B, H, N + 1) bucket of query i.
        k_bucket: (B, H, N + 1) bucket of key j.
    """

    q_pos: Tensor
    k_pos: Tensor
    q_rank: Tensor
    k_rank: Tensor
    q_bucket: Tensor
    k_bucket: Tensor


@register_attention("lsh")
class LSHAttention(AttentionBase):
    """Reformer's multi-round LSH attention over sorted, chunked buckets.

    Each round hashes unit vectors with angular LSH: a random rotation ``R`` (D, num_buckets / 2) and
    ``bucket = argmax([xR, -xR])``. Queries (and keys) are sorted by (bucket, position), cut into chunks
    of ``bucket_size`` slots, and each query chunk attends to its own key chunk and the previous one
    (wrapping around, as Reformer). The rounds are merged exactly through their log-sum-exps, and a key
    found in several rounds is counted once: round ``r`` masks the pairs that an earlier round already
    visited, so the result is softmax attention over the *union* of the rounds' visible sets (what
    Reformer's duplicate-count correction computes, without a score bias). Rotations come from a
    ``torch.Generator`` seeded by (seed, round, D, num_buckets): the same in train and eval and on every
    call; they are not parameters and not in the state dict.

    Orders:
        ``shared_qk=True``: keys are the normalised queries (``k`` is ignored), so queries and keys share
        one hash and one order, as in Reformer; a query never attends to itself unless it sees no other
        key (then its output is its own value).
        ``shared_qk=False``: queries and keys are hashed separately with the same rotations and sorted
        independently; every query also always sees its own key (added once, outside the rounds), so no
        unpadded query is left without a key.
        ``causal=True``: the chunk a token lands in depends on how many tokens, future ones included,
        fall in lower buckets, so Reformer's "chunk and previous chunk, j <= i" would leak the future
        through the choice of visible keys. Here a pair is visible in a round only when query and key
        share the bucket, ``j <= i``, and at most ``bucket_size`` sorted slots separate them, a count that
        depends on positions ``<= i`` only (and always lies inside the chunk window, so the kernel covers
        it). Without ``shared_qk``, queries and keys are sorted jointly by (bucket, position, key first)
        so that a query's bucket mates sit next to it; this doubles the sorted length.

    Padding: ``key_padding_mask`` positions are hashed into an extra last bucket, so they take no slot
    among the real tokens (outputs at real positions do not depend on padded ones at all), and are
    masked as keys. ``N`` is padded to a multiple of ``bucket_size`` with empty (-1) slots.

    Args:
        bucket_size: chunk length in sorted order (Reformer's ``m``).
        n_hashes: hashing rounds.
        num_buckets: buckets per round, even. Default ``2 * ceil(N / bucket_size)``, Reformer's
            ``n_buckets = 2 N / m`` (average bucket holds half a chunk, so a bucket rarely outgrows the
            chunk window). Hashing costs ``O(N num_buckets D)``, which with the default grows as
            ``N^2 D / bucket_size`` (below the attention cost until ``N ~ 2 bucket_size^2``); set a fixed
            value for strictly linear cost.
        seed: seed of the random rotations.
        causal: hide future keys (and never let future tokens change which past keys are visible).
        shared_qk: use the normalised queries as keys (Reformer's shared-QK attention).

    Cost per round: ``O(N log N)`` sorting, ``O(N bucket_size D)`` attention, plus ``O(r N bucket_size)``
    elementwise mask work to count duplicate keys once (``O(r^2 N bucket_size)`` over ``r = n_hashes``
    rounds). Memory: the kernel keeps one boolean mask of ``2 N bucket_size`` pairs per round.
    """

    exact = False
    time_complexity = "O(r N log N + r^2 N b)"
    memory_complexity = "O(r N b)"
    summary = "LSH buckets (Reformer)"

    @classmethod
    def bench_settings(cls, window: int) -> dict:
        return {"bucket_size": max(1, window // 2), "n_hashes": 2}  # 2 rounds x (own + previous chunk) = 2 window slots

    @classmethod
    def flops_per_head(cls, n: int, head_dim: int, settings: dict) -> float | None:
        """Each round's 2 x bucket_size keys per query (an upper bound: keys found twice are counted once)
        plus hashing q and k, 2 N D (num_buckets / 2) each."""
        bs, r = settings.get("bucket_size", 64), settings.get("n_hashes", 2)
        nb = settings.get("num_buckets") or 2 * math.ceil(n / bs)
        return r * (4.0 * head_dim * n * 2 * bs + 2 * 2.0 * n * head_dim * (nb // 2))

    def __init__(self, *, bucket_size: int = 64, n_hashes: int = 2, num_buckets: int | None = None,
                 seed: int = 0, causal: bool = False, shared_qk: bool = False):
        super().__init__(causal=causal)
        self.bucket_size = check_int("bucket_size", bucket_size, min_value=1)
        self.n_hashes = check_int("n_hashes", n_hashes, min_value=1)
        if num_buckets is not None:
            check_int("num_buckets", num_buckets, min_value=2)
            if num_buckets % 2:
                raise ValueError(f"num_buckets={num_buckets} must be even: angular LSH takes the argmax over "
                                 f"[xR, -xR] with num_buckets / 2 random directions")
        self.num_buckets = num_buckets
        self.seed = check_int("seed", seed, min_value=0)
        if not isinstance(shared_qk, bool):
            raise ValueError(f"shared_qk={shared_qk!r} must be a bool")
        self.shared_qk = shared_qk
        self._rotations: dict = {}

    # -- hashing -----------------------------------------------------------------------------------
    def buckets_for(self, n: int) -> int:
        """Buckets per round at sequence length ``n`` (``num_buckets`` or ``2 * ceil(n / bucket_size)``)."""
        return self.num_buckets if self.num_buckets is not None else 2 * math.ceil(n / self.bucket_size)

    def rotations(self, dim: int, num_buckets: int, device=None) -> Tensor:
        """(n_hashes, D, num_buckets / 2) fp32 random rotations; round ``r`` depends on (seed, r, D,
        num_buckets) only."""
        key = (dim, num_buckets, str(device))
        if key not in self._rotations:
            mats = [torch.randn(dim, num_buckets // 2,
                                generator=torch.Generator().manual_seed(_round_seed(self.seed, r, dim, num_buckets)))
                    for r in range(self.n_hashes)]
            self._rotations[key] = torch.stack(mats).to(device)
        return self._rotations[key]

    def hash_buckets(self, x: Tensor, num_buckets: int) -> Tensor:
        """(n_hashes, B, H, N) angular-LSH buckets of x (B, H, N, D): ``argmax([xR, -xR])`` of unit x."""
        rot = self.rotations(x.shape[-1], num_buckets, x.device)  # (R, D, nb / 2)
        b, h, n, _ = x.shape
        out = torch.empty(self.n_hashes, b, h, n, dtype=torch.long, device=x.device)
        step = max(1, _HASH_ELEMENTS // max(1, self.n_hashes * b * h * num_buckets))
        with torch.no_grad():
            xn = F.normalize(x.detach().float(), dim=-1)
            for s in range(0, n, step):
                xr = torch.einsum("bhnd,rdk->rbhnk", xn[:, :, s:s + step], rot)
                out[..., s:s + step] = torch.cat([xr, -xr], -1).argmax(-1)
        return out

    # -- the sorted order --------------------------------------------------------------------------
    def plan(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> tuple[list[LSHRound], int]:
        """The rounds (sorted orders and lookup tables) for q, k (B, H, N, D) and the chunk count."""
        n = q.shape[2]
        nb = self.buckets_for(n)
        hq = self.hash_buckets(q, nb)  # (R, B, H, N)
        hk = hq if self.shared_qk else self.hash_buckets(k, nb)
        if key_padding_mask is not None:  # padded positions sort after every real token
            pad = key_padding_mask.to(torch.bool)[None, :, None, :]
            hq, hk = hq.masked_fill(pad, nb), hk.masked_fill(pad, nb)
        rounds = [self._sort(hq[r], hk[r], n) for r in range(self.n_hashes)]
        return rounds, rounds[0].q_pos.shape[-1] // self.bucket_size

    def _sort(self, bq: Tensor, bk: Tensor, n: int) -> LSHRound:
        """Stable sort by (bucket, position) per (B, H) of buckets bq, bk (B, H, N)."""
        if self.shared_qk:
            q_pos = k_pos = torch.sort(bq, dim=-1, stable=True).indices
        elif not self.causal:
            q_pos = torch.sort(bq, dim=-1, stable=True).indices
            k_pos = torch.sort(bk, dim=-1, stable=True).indices
        else:  # one joint order of 2N items: item 2p is key p, item 2p + 1 is query p
            perm = torch.sort(torch.stack([bk, bq], -1).flatten(-2), dim=-1, stable=True).indices
            is_q = perm % 2 == 1
            q_pos, k_pos = torch.where(is_q, perm // 2, -1), torch.where(is_q, -1, perm // 2)
        length = math.ceil(q_pos.shape[-1] / self.bucket_size) * self.bucket_size
        q_pos = F.pad(q_pos, (0, length - q_pos.shape[-1]), value=-1).contiguous()
        k_pos = F.pad(k_pos, (0, length - k_pos.shape[-1]), value=-1).contiguous()
        return LSHRound(q_pos, k_pos, self._ranks(q_pos, n), self._ranks(k_pos, n),
                        F.pad(bq, (0, 1)), F.pad(bk, (0, 1)))

    @staticmethod
    def _ranks(pos: Tensor, n: int) -> Tensor:
        """(B, H, N + 1): the slot holding each original position (slot N collects the -1 slots)."""
        slots = torch.arange(pos.shape[-1], device=pos.device).expand_as(pos)
        rank = torch.zeros(*pos.shape[:2], n + 1, dtype=torch.long, device=pos.device)
        return rank.scatter_(2, torch.where(pos >= 0, pos, n), slots)

    def _kv_index(self, n_chunks: int, device) -> Tensor:
        """(n_chunks, C): each query chunk visits its key chunk and the previous one (wrapping unless
        causal, where a same-bucket predecessor within ``bucket_size`` slots never wraps)."""
        c = torch.arange(n_chunks, device=device)
        if n_chunks == 1:
            return c[:, None]
        prev = torch.where(c > 0, c - 1, -1) if self.causal else torch.remainder(c - 1, n_chunks)
        return torch.stack([c, prev], 1)

    # -- visibility ----------------------------------------------------------------------------------
    def visible(self, rnd: LSHRound, n_chunks: int, i: Tensor, j: Tensor) -> Tensor:
        """Whether key j is visible from query i in round ``rnd`` (before padding, self and causal masks
        common to all rounds); i, j are original positions of shape (B, H, ...)."""
        rq, rk = _lookup(rnd.q_rank, i), _lookup(rnd.k_rank, j)
        if self.causal:
            same = _lookup(rnd.q_bucket, i) == _lookup(rnd.k_bucket, j)
            return same & (j <= i) & (rq - rk <= self.bucket_size)
        bs = self.bucket_size
        return torch.remainder(torch.div(rq, bs, rounding_mode="floor") - torch.div(rk, bs, rounding_mode="floor"),
                               n_chunks) <= 1

    def _pair_mask(self, rounds: list[LSHRound], r: int, n_chunks: int, i: Tensor, j: Tensor) -> Tensor:
        """Pairs round ``r`` is responsible for: visible now, never itself, not owned by an earlier round."""
        m = (j != i) & (i >= 0) & (j >= 0)
        if self.causal:  # the chunk window is wider than the causal visible set
            m = m & self.visible(rounds[r], n_chunks, i, j)
        for earlier in rounds[:r]:  # a key found in several rounds counts once
            m = m & ~self.visible(earlier, n_chunks, i, j)
        return m

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """q, k, v: (B, H, N, D), (B, H, N, D), (B, H, N, Dv) -> (B, H, N, Dv)."""
        check_qkv(q, k, v, key_padding_mask, self_attention=True)
        q, k, v = autocast_inputs(q, k, v)
        n = q.shape[2]
        kpm = None if key_padding_mask is None else key_padding_mask.to(torch.bool)
        with torch.autocast(q.device.type, enabled=False):
            if self.shared_qk:
                k = F.normalize(q, dim=-1)  # Reformer: keys are the unit-length queries
            rounds, n_chunks = self.plan(q, k, kpm)
            key_pad = None if kpm is None else F.pad(kpm, (0, 1), value=True)  # (B, N + 1)
            kv_index = self._kv_index(n_chunks, q.device)
            outs, lses = [], []
            for r, rnd in enumerate(rounds):
                part = Part(rnd.q_pos, rnd.k_pos, kv_index, self.bucket_size, self.bucket_size,
                            functools.partial(self._pair_mask, rounds, r, n_chunks))
                o, lse = block_sparse_attention(_gather_rows(q, rnd.q_pos), _gather_rows(k, rnd.k_pos),
                                                _gather_rows(v, rnd.k_pos), part, key_pad=key_pad)
                back = rnd.q_rank[..., :n]  # (B, H, N): sorted slot of each query
                outs.append(_gather_rows(o, back))  # (B, H, N, Dv) in original order
                lses.append(lse.gather(2, back))  # (B, H, N)
            if not self.shared_qk:  # the diagonal, once: every real query sees at least its own key
                acc = lses[0].dtype  # the kernel's softmax precision: fp32, or fp64 for fp64 inputs
                lse_self = (q.to(acc) * k.to(acc)).sum(-1) / math.sqrt(q.shape[-1])  # (B, H, N)
                if kpm is not None:
                    lse_self = lse_self.masked_fill(kpm[:, None, :], float("-inf"))
                outs.append(v)
                lses.append(lse_self)
            out, lse = merge_partials(outs, lses)
            if self.shared_qk:  # Reformer: a query attends to itself only when nothing else is visible
                alone = torch.isinf(lse)
                if kpm is not None:
                    alone = alone & ~kpm[:, None, :]
                out = torch.where(alone[..., None], v, out)
            return out

    def extra_repr(self) -> str:
        return (f"bucket_size={self.bucket_size}, n_hashes={self.n_hashes}, num_buckets={self.num_buckets}, "
                f"seed={self.seed}, causal={self.causal}, shared_qk={self.shared_qk}")
