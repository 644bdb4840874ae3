"""CTC greedy and beam decoding on constructed posteriors, word timestamps, WER/CER."""

from __future__ import annotations

import builtins
import importlib.util

import pytest
import torch

from audio.decoding import (
    BEAM_HINT,
    BeamSearchDecoder,
    collapse,
    error_rates,
    greedy_decode,
    greedy_texts,
    make_decoder,
)
from audio.text import CharTokenizer

TOK = CharTokenizer()
HAS_FLASHLIGHT = importlib.util.find_spec("flashlight") is not None


def posterior(path: list[str]) -> torch.Tensor:
    """(N, V) log-probabilities peaked on ``path`` ('' = blank), with some mass elsewhere."""
    ids = torch.tensor([TOK.index[c] if c else 0 for c in path])
    logits = torch.randn(len(path), len(TOK))
    logits[torch.arange(len(path)), ids] = 8.0
    return logits.log_softmax(-1)


# "ab ba": frames 0..11
PATH = ["", "a", "a", "b", "", " ", " ", "b", "", "a", "a", ""]


def test_collapse_merges_repeats_and_keeps_spans():
    ids = torch.tensor([0, 3, 3, 0, 3, 4, 4, 4, 0])
    tokens, spans = collapse(ids)
    assert tokens == [3, 3, 4] and spans == [(1, 2), (4, 4), (5, 7)]


def test_greedy_decode_with_word_times():
    out = greedy_decode(posterior(PATH), TOK, frame_seconds=0.04)
    assert out.text == "ab ba"
    assert [(w.word, w.start, w.end) for w in out.words] == [("ab", 0.04, 0.16), ("ba", 0.28, 0.44)]


def test_double_letters_need_a_blank():
    assert greedy_decode(posterior(["l", "", "l", "l"]), TOK, 0.04).text == "ll"
    assert greedy_decode(posterior(["l", "l", "l"]), TOK, 0.04).text == "l"


def test_greedy_texts_respects_lengths():
    lp = posterior(PATH)[None].repeat(2, 1, 1)
    assert greedy_texts(lp, torch.tensor([12, 5]), TOK) == ["ab ba", "ab"]


def test_error_rates():
    r = error_rates(["the cat sat", "hello"], ["the cat sat down", "hello"])
    assert r["wer"] == pytest.approx(1 / 5) and r["cer"] == pytest.approx(5 / 21)


def test_unknown_decoder():
    with pytest.raises(ValueError, match=r"decoder='beems' is not allowed; expected one of \['greedy', 'beam'\]. Did you mean 'beam'\?"):
        make_decoder("beems", TOK)
    assert make_decoder("greedy", TOK) is None


@pytest.mark.skipif(not HAS_FLASHLIGHT, reason="flashlight-text is not installed (pip install flashlight-text)")
def test_beam_search_matches_greedy_on_a_clear_posterior():
    lp = posterior(PATH)
    beam = make_decoder("beam", TOK, beam_size=4)
    out = beam.decode(lp, 0.04)
    assert out.text == "ab ba" and [w.word for w in out.words] == ["ab", "ba"]
    assert out.words[0].start < out.words[0].end <= out.words[1].start < out.words[1].end <= 12 * 0.04
    assert beam.texts(lp[None].repeat(2, 1, 1), torch.tensor([12, 5])) == ["ab ba", "ab"]


def test_beam_search_without_flashlight_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("flashlight"):
            raise ImportError("No module named 'flashlight'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="beam search needs the flashlight-text package: `pip install flashlight-text`"):
        BeamSearchDecoder(TOK)
    assert "decoder=greedy" in BEAM_HINT
