"""The Markov baseline against a known chain, and its order selection on validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genomics.baselines import MarkovChain, select_markov, unigram_log_probs


def _sample_chain(trans: np.ndarray, n: int, seed: int) -> np.ndarray:
    """An order-2 chain over 4 symbols: trans (16, 4)."""
    rng = np.random.default_rng(seed)
    x = np.empty(n, dtype=np.int64)
    x[:2] = rng.integers(0, 4, size=2)
    u = rng.random(n)
    cum = trans.cumsum(axis=1)
    for i in range(2, n):
        x[i] = min(3, int(np.searchsorted(cum[x[i - 2] * 4 + x[i - 1]], u[i])))
    return x


def _entropy_rate(trans: np.ndarray) -> float:
    """Bits per symbol of the stationary order-2 chain."""
    # transition over pair states (a, b) -> (b, c)
    p = np.zeros((16, 16))
    for s in range(16):
        for c in range(4):
            p[s, (s % 4) * 4 + c] = trans[s, c]
    w, v = np.linalg.eig(p.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    pi /= pi.sum()
    h = -(trans * np.log2(trans)).sum(axis=1)
    return float(pi @ h)


def test_markov_recovers_a_known_order_2_chain():
    rng = np.random.default_rng(0)
    trans = rng.dirichlet(np.full(4, 0.3), size=16)
    trans = (trans + 1e-3) / (trans + 1e-3).sum(axis=1, keepdims=True)
    train, val, test = (_sample_chain(trans, n, s) for n, s in ((60_000, 1), (10_000, 2), (10_000, 3)))
    sel = select_markov([train], [val], num_symbols=4, max_order=4)
    assert sel.chain.order == 2
    bits, count = sel.chain.bits_per_symbol([test])
    assert count == len(test) - 1
    assert bits == pytest.approx(_entropy_rate(trans), abs=0.02)
    assert sel.val_bits[(0, 1.0)] > sel.val_bits[(2, sel.chain.alpha)] + 0.3  # order 0 is much worse


def test_markov_probabilities_by_hand():
    chain = MarkovChain(order=1, alpha=1.0, num_symbols=2).fit([np.array([0, 0, 1, 0, 0])])
    # order-1 counts: 0->0 twice, 0->1 once, 1->0 once; order-0 counts: 0 x4, 1 x1
    lp = chain.log2_probs(np.array([1, 0, 1]))
    assert lp.shape == (2,)
    assert 2 ** lp[0] == pytest.approx((1 + 1) / (1 + 2))  # p(0 | 1)
    assert 2 ** lp[1] == pytest.approx((1 + 1) / (3 + 2))  # p(1 | 0)


def test_short_segments_use_shorter_contexts():
    chain = MarkovChain(order=3, alpha=0.5, num_symbols=2).fit([np.array([0, 1] * 20)])
    lp = chain.log2_probs(np.array([0, 1, 0]))  # positions 1 and 2 have 1 and 2 symbols of context
    assert lp.shape == (2,) and np.all(lp > math.log2(0.9))
    assert chain.log2_probs(np.array([1])).shape == (0,)


def test_markov_errors():
    with pytest.raises(ValueError, match=r"symbols must lie in \[0, 4\); got values in \[0, 7\]"):
        MarkovChain(order=1, alpha=1.0, num_symbols=4).fit([np.array([0, 7])])
    with pytest.raises(ValueError, match=r"called before fit"):
        MarkovChain(order=1, alpha=1.0, num_symbols=4).log2_probs(np.array([0, 1]))
    with pytest.raises(ValueError, match=r"alpha=0.0 is out of range"):
        MarkovChain(order=1, alpha=0.0, num_symbols=4)
    with pytest.raises(ValueError, match=r"alphas is empty"):
        select_markov([np.zeros(3, int)], [np.zeros(3, int)], num_symbols=4, alphas=())


def test_unigram_log_probs():
    lp = unigram_log_probs(np.array([3, 1, 0]), alpha=1.0)
    assert np.exp(lp).tolist() == pytest.approx([4 / 7, 2 / 7, 1 / 7])
