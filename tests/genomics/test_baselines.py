"""The Markov baseline against a known chain, and its order selection on validation; the k-mer naive Bayes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genomics.baselines import KmerNaiveBayes, MarkovChain, kmer_codes, select_markov, unigram_log_probs


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


def test_kmer_codes_match_a_brute_force_count_and_skip_invalid_symbols():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=200)
    x[[17, 90]] = 4  # an N: no word may hold it
    want = set()
    for i in range(len(x) - 3 + 1):
        w = x[i:i + 3]
        if (w < 4).all():
            want.add(int(w[0]) * 16 + int(w[1]) * 4 + int(w[2]))
    assert set(kmer_codes(x, 3, 4).tolist()) == want
    assert kmer_codes(x[:2], 3, 4).size == 0


def test_kmer_naive_bayes_separates_classes_that_differ_in_words():
    """Three classes, each a family of mutated copies (8% substitutions, random crops) of its own ancestor,
    as genes of one phylum are: NB classifies unseen members; its word probabilities follow RDP's formula."""
    rng = np.random.default_rng(1)
    ancestors = [rng.integers(0, 4, size=400) for _ in range(3)]

    def sample(y):
        x = ancestors[y].copy()
        hit = rng.random(x.size) < 0.08
        x[hit] = rng.integers(0, 4, size=int(hit.sum()))
        start = int(rng.integers(0, 100))
        return x[start:start + 300]

    ytr = rng.integers(0, 3, size=60)
    yte = rng.integers(0, 3, size=60)
    nb = KmerNaiveBayes(k=8, num_symbols=4).fit([sample(y) for y in ytr], ytr, 3)
    assert np.array_equal(nb.predict([sample(y) for y in yte]), yte)
    shuffled = KmerNaiveBayes(k=8, num_symbols=4).fit([sample(y) for y in ytr], rng.permutation(ytr), 3)
    assert np.mean(shuffled.predict([sample(y) for y in yte]) == yte) < 0.8  # the labels carry the signal
    # RDP: P(w) = (n(w) + 0.5) / (N + 1); log p(w | c) = log((m(c, w) + P(w)) / (M(c) + 1))
    one = KmerNaiveBayes(k=2, num_symbols=4).fit([np.array([0, 1, 2]), np.array([0, 1])], [0, 1], 2)
    p01 = (2 + 0.5) / 3  # "AC" (code 1) is in both records
    assert math.isclose(one.log_probs[1, 1], math.log((1 + p01) / 2))
    p12 = (1 + 0.5) / 3  # "CG" (code 6) only in the class-0 record
    assert math.isclose(one.log_probs[1, 6], math.log((0 + p12) / 2))
    with pytest.raises(ValueError, match=r"lower k"):
        KmerNaiveBayes(k=13, num_symbols=4)
    with pytest.raises(ValueError, match=r"fit needs as many labels as records, at least one; got 2 records, 1 labels"):
        KmerNaiveBayes(k=2).fit([np.array([0, 1]), np.array([1, 2])], [0], 2)
    with pytest.raises(ValueError, match=r"before fit"):
        KmerNaiveBayes(k=2).predict([np.array([0, 1])])
