"""Reading-frame features: exact against a plain loop, and wired into the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genomics.model import SequenceTransformer
from genomics.orf import NUM_FEATURES, orf_features
from genomics.tokenizers import DNATokenizer

STOPS = ({"TAA", "TAG", "TGA"}, {"TTA", "CTA", "TCA"})  # forward strand, reverse strand read forward


def _reference(seq: str, stops: set[str], frame: int, j: int) -> int:
    """Codons between the in-frame stops around base j (0 inside a stop), walking codon by codon."""
    n = len(seq)
    count = len(range(frame, n, 3))
    is_stop = lambda m: frame + 3 * m + 3 <= n and seq[frame + 3 * m:frame + 3 * m + 3] in stops  # noqa: E731
    m = min(max(j - frame, 0) // 3, count - 1)
    if is_stop(m):
        return 0
    lo, hi = m, m
    while lo > 0 and not is_stop(lo - 1):
        lo -= 1
    while hi + 1 < count and not is_stop(hi + 1):
        hi += 1
    return hi - lo + 1


@pytest.mark.parametrize("length,seed", [(3, 0), (50, 1), (301, 2)])
def test_features_match_a_plain_loop(length, seed):
    seq = "".join(np.random.default_rng(seed).choice(list("ACGT"), size=length))
    tokens = torch.as_tensor(DNATokenizer(k=1).encode(seq)).long()[None]
    got = orf_features(tokens)[0]
    assert got.shape == (length, NUM_FEATURES)
    for s, stops in enumerate(STOPS):
        for f in range(3):
            want = [math.log1p(_reference(seq, stops, f, j)) / math.log(1001) for j in range(length)]
            assert torch.allclose(got[:, 3 * s + f], torch.tensor(want), atol=1e-6), (s, f)


def test_an_open_frame_reads_long_and_a_stop_reads_zero():
    seq = "ATG" + "GCT" * 40 + "TAA" + "CCC"
    f = orf_features(torch.as_tensor(DNATokenizer(k=1).encode(seq)).long()[None])[0]
    codons = lambda v: round(math.exp(v * math.log(1001)) - 1)  # noqa: E731
    assert codons(f[10, 0]) == 41 and codons(f[3 + 40 * 3, 0]) == 0  # ATG + 40 codons, then the stop


def test_model_with_orf_features_trains_and_forward_long_agrees():
    torch.manual_seed(0)
    net = SequenceTransformer(vocab_size=9, num_outputs=2, dim=16, depth=1, num_heads=2, orf_features=True)
    tokens = torch.randint(4, 9, (2, 64))
    out = net(tokens)
    out.sum().backward()
    assert net.orf.weight.grad is not None and net.orf.weight.grad.abs().sum() > 0
    assert torch.allclose(net.forward_long(tokens, chunk=16), net(tokens), atol=1e-5)


def test_orf_features_need_dna_tokens():
    with pytest.raises(ValueError, match=r"model\.orf_features=true reads DNA tokens \(vocab_size=9.*got vocab_size=25"):
        SequenceTransformer(vocab_size=25, num_outputs=2, orf_features=True)
