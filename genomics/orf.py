"""Reading-frame features of DNA tokens: how long the stop-free stretch around each base is in each of the
six reading frames.

A protein-coding region is a long stretch without an in-frame stop codon (an open reading frame), on one of
three frames of one of two strands. Gene finders start from that fact (Prodigal, GeneMark); a network that
reads bases learns it slowly, because it has to find stop codons exactly 3 bases apart across hundreds of
bases. These features give it directly: for each base and each frame, the number of codons between the
in-frame stop codon before it and the one after it (0 inside a stop codon), as ``log1p(codons) / log(1001)``.
Fixed arithmetic on the tokens, no parameters; the same in training, evaluation and prediction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NUM_FEATURES = 6  # 3 frames x 2 strands
_A, _C, _G, _T = 4, 5, 6, 7  # DNATokenizer(k=1) ids of A, C, G, T (after the 4 special tokens)
FORWARD_STOPS = ((_T, _A, _A), (_T, _A, _G), (_T, _G, _A))  # TAA, TAG, TGA
REVERSE_STOPS = ((_T, _T, _A), (_C, _T, _A), (_T, _C, _A))  # their reverse complements, read on this strand
_SCALE = math.log(1001.0)  # 1,000 codons -> 1.0


def _stops(tokens: Tensor, codons: tuple[tuple[int, int, int], ...]) -> Tensor:
    """(B, L) bool: a codon of ``codons`` starts at this base (never in the last two bases)."""
    first, second, third = tokens[:, :-2], tokens[:, 1:-1], tokens[:, 2:]
    hit = torch.zeros_like(first, dtype=torch.bool)
    for a, b, c in codons:
        hit |= (first == a) & (second == b) & (third == c)
    return torch.nn.functional.pad(hit, (0, 2))


def _run_lengths(stop: Tensor, frame: int) -> Tensor:
    """(B, L) codons between the in-frame stops around each base, for codons starting at ``frame`` mod 3."""
    b, n = stop.shape
    starts = stop[:, frame::3]  # (B, M): codon m starts at base frame + 3 m
    m = starts.shape[1]
    idx = torch.arange(m, device=stop.device).expand(b, m)
    prev = torch.where(starts, idx, torch.full_like(idx, -1)).cummax(dim=1).values  # last stop at or before m
    nxt = torch.where(starts, idx, torch.full_like(idx, m)).flip(1).cummin(dim=1).values.flip(1)  # first at or after
    run = torch.where(starts, torch.zeros_like(idx), nxt - prev - 1)  # (B, M)
    # base j belongs to codon (j - frame) // 3; the bases before the first whole codon to codon 0
    codon = ((torch.arange(n, device=stop.device) - frame).clamp(min=0) // 3).clamp(max=m - 1)
    return run[:, codon]


def orf_features(tokens: Tensor) -> Tensor:
    """(B, L) DNA token ids (``DNATokenizer(k=1)``) -> (B, L, 6) float features: for frames 0, 1, 2 of the
    forward strand, then of the reverse strand, ``log1p(codons) / log(1001)`` of the stop-free stretch
    around each base. Stretches that reach the sequence's end count the codons up to it."""
    if tokens.shape[1] < 3:
        return torch.zeros(*tokens.shape, NUM_FEATURES, device=tokens.device)
    feats = []
    for codons in (FORWARD_STOPS, REVERSE_STOPS):
        stop = _stops(tokens, codons)
        feats += [_run_lengths(stop, f) for f in range(3)]
    return torch.log1p(torch.stack(feats, dim=-1).float()) / _SCALE
