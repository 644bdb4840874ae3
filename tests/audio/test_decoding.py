"""CTC greedy and beam decoding on constructed posteriors, word timestamps, WER/CER."""

from __future__ import annotations

import builtins
import importlib.util

import pytest
import torch

from audio.decoding import (
    BEAM_HINT,
    BeamSearchDecoder,
    best_candidate,
    collapse,
    decode_at_pauses,
    error_rates,
    greedy_decode,
    greedy_texts,
    lexicon_words,
    make_decoder,
    pause_cuts,
    read_lexicon,
    write_lexicon,
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
    with pytest.raises(ValueError, match=r"decoder='beems' is not allowed; expected one of \['greedy', 'beam', 'lexicon'\]. Did you mean 'beam'\?"):
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


def test_lexicon_words_normalise_and_sort():
    assert lexicon_words(["The cat, the DOG.", "Don't stop-now"]) == ["cat", "dog", "don't", "now", "stop", "the"]


def test_read_lexicon(tmp_path):
    (tmp_path / "words.txt").write_text("sat\ncat c a t |\n\nCat\n")
    assert read_lexicon(tmp_path / "words.txt") == ["cat", "sat"]
    with pytest.raises(FileNotFoundError, match=r"lexicon='.*nope\.txt': no such file \(one word per line\)"):
        read_lexicon(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"lexicon='.*empty\.txt' has no words \(expected one word per line\)"):
        read_lexicon(tmp_path / "empty.txt")


def test_lexicon_words_must_be_spelt_in_the_vocabulary(tmp_path):
    with pytest.raises(ValueError, match=r"lexicon word 'caf3' has characters outside the vocabulary: \['3'\]"):
        write_lexicon(["cat", "caf3"], tmp_path / "lex.txt", TOK)


def test_lexicon_decoder_needs_words():
    with pytest.raises(ValueError, match="decoder='lexicon' needs the lexicon's words"):
        make_decoder("lexicon", TOK)


@pytest.mark.skipif(not HAS_FLASHLIGHT, reason="flashlight-text is not installed (pip install flashlight-text)")
def test_lexicon_decoding_spells_only_lexicon_words():
    # "cat sat" where the frame of the second 'a' is nearly a 'q': greedy misspells, the lexicon cannot
    path = ["c", "a", "t", "", " ", "s", "a", "t", ""]
    lp = posterior(path)
    logits = lp.clone()
    logits[6, TOK.index["q"]] = logits[6, TOK.index["a"]] + 0.5
    lp = logits.log_softmax(-1)
    assert greedy_decode(lp, TOK, 0.04).text == "cat sqt"
    dec = make_decoder("lexicon", TOK, beam_size=8, words=["cat", "mat", "sat"])
    out = dec.decode(lp, 0.04)
    assert out.text == "cat sat" and [w.word for w in out.words] == ["cat", "sat"]
    assert 0.0 <= out.words[0].start < out.words[0].end <= out.words[1].start < out.words[1].end <= 9 * 0.04
    assert dec.texts(lp[None].repeat(2, 1, 1), torch.tensor([9, 4])) == ["cat sat", "cat"]
    assert make_decoder("beam", TOK, beam_size=8).decode(lp, 0.04).text == "cat sqt"  # lexicon-free
    with pytest.raises(ValueError, match="the lexicon is empty"):
        make_decoder("lexicon", TOK, words=[])


def test_best_candidate_prefers_a_transcript_with_words():
    # an empty transcript pays no word costs and can outscore every spoken one: it wins only when all are empty
    assert best_candidate([("", -1.0), ("zed", -5.0), ("said", -4.0)]) == 2
    assert best_candidate([("", -3.0), (" ", -1.0), ("", -2.0)]) == 1  # all empty: the best score
    assert best_candidate([("a", -2.0), ("b", -2.0)]) == 0  # a tie: the first


def test_pause_cuts_at_the_middle_of_long_blank_runs():
    path = ["", "", "a", "", "", "", "", "", "", "b", "", "", "c", "", "", "", "", ""]
    lp = posterior(path)
    assert pause_cuts(lp, 6) == [6]  # frames 3..8; the run at 10..11 is short, leading/trailing runs are no pause
    assert pause_cuts(lp, 2) == [6, 11]
    assert pause_cuts(lp, 7) == []


@pytest.mark.skipif(not HAS_FLASHLIGHT, reason="flashlight-text is not installed (pip install flashlight-text)")
def test_decode_at_pauses_decodes_each_stretch_on_its_own():
    first = ["c", "a", "t", "", " ", "s", "a", "t"]
    second = ["m", "a", "t", "", " ", "c", "a", "t"]
    pause = [""] * 10
    lp = posterior(first + pause + second)
    dec = make_decoder("lexicon", TOK, beam_size=8, words=["cat", "mat", "sat"])
    whole = dec.decode(lp, 0.04)
    assert decode_at_pauses(dec, lp, 0.04, None).words == whole.words  # no pauses: one word sequence
    assert decode_at_pauses(dec, lp, 0.04, 0.0).words == whole.words
    assert decode_at_pauses(dec, lp, 0.04, 0.5).words == whole.words  # 0.4 s of blanks is no 0.5 s pause
    out = decode_at_pauses(dec, lp, 0.04, 0.4)
    cut = 8 + 5  # the middle of the pause
    a, b = dec.decode(lp[:cut], 0.04), dec.decode(lp[cut:], 0.04)
    assert out.text == "cat sat mat cat" == f"{a.text} {b.text}"
    assert [w.start for w in out.words] == [w.start for w in a.words] + [round(w.start + cut * 0.04, 3) for w in b.words]
    assert out.words[2].start >= len(first + pause) * 0.04 - 1e-6
    with pytest.raises(ValueError, match="pause_seconds=-1.0 is out of range"):
        decode_at_pauses(dec, lp, 0.04, -1.0)


def test_decode_at_pauses_gives_each_stretch_the_warp_it_scores_best():
    def peaked(parts: list[tuple[str, float]]) -> torch.Tensor:  # (text, peak) stretches, '_' = blank frame
        path = [(c if c != "_" else "", peak) for text, peak in parts for c in text]
        logits = torch.zeros(len(path), len(TOK))
        for t, (c, peak) in enumerate(path):
            logits[t, TOK.index[c] if c else 0] = peak
        return logits.log_softmax(-1)

    pause = "_" * 10
    warp_a = peaked([("cat_ sat", 8.0), (pause, 8.0), ("mat_ mat", 2.0)])  # clear, then mumbled
    warp_b = peaked([("mat_ mat", 2.0), (pause, 8.0), ("mat_ cat", 8.0)])  # mumbled, then clear
    dec = make_decoder("lexicon", TOK, beam_size=8, words=["cat", "mat", "sat"])
    out = decode_at_pauses(dec, warp_a, 0.04, 0.4, alternatives=[warp_b])
    assert out.text == "cat sat mat cat"
    cut = 8 + 5
    second = dec.decode(warp_b[cut:], 0.04, offset=cut * 0.04)
    assert out.words[2:] == second.words  # the second stretch, times and all, from the other warp
    assert decode_at_pauses(dec, warp_a, 0.04, 0.4, alternatives=[warp_a]).words == decode_at_pauses(
        dec, warp_a, 0.04, 0.4).words
    with pytest.raises(ValueError, match="alternatives must have the shape of log_probs"):
        decode_at_pauses(dec, warp_a, 0.04, 0.4, alternatives=[warp_b[:-1]])
