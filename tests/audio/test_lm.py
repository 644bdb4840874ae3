"""The word n-gram language model (audio.lm): it normalises, KenLM reads it as written, it changes lexicon
decoding the way its text says, and the settings travel in a checkpoint and on the command lines."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from audio.decoding import make_decoder
from audio.lm import (
    BOS,
    FALLBACK_DISCOUNTS,
    UNK,
    build_lm,
    check_lm,
    count_ngrams,
    discounts,
    kneser_ney_counts,
    lm_file,
    logprob,
    mix_lms,
    read_arpa,
    write_arpa,
)
from audio.text import CharTokenizer
from tests.audio.conftest import HAS_FLASHLIGHT, bench_script

TOK = CharTokenizer()
needs_flashlight = pytest.mark.skipif(not HAS_FLASHLIGHT, reason="flashlight-text is not installed "
                                                                 "(pip install flashlight-text)")


def corpus(sentences: int, seed: int = 0) -> list[str]:
    """Sentences of a Zipf-like 300-word vocabulary: counts of counts 1-4 at every order from 400 sentences."""
    rng = random.Random(seed)
    words = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(300)]
    weights = [1 / (i + 1) for i in range(300)]
    return [" ".join(rng.choices(words, weights, k=rng.randint(2, 8))) for _ in range(sentences)]


def arpa_ngrams(path: Path) -> list[dict]:
    """n-gram -> (log10 p, log10 backoff) per order, from the file."""
    model, n = [], 0
    for line in path.read_text().splitlines():
        if line.startswith("\\") and line.endswith("-grams:"):
            n = int(line[1:].split("-")[0])
            model.append({})
        elif n and line.strip() and not line.startswith("\\"):
            fields = line.split("\t")
            model[n - 1][tuple(fields[1].split())] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else 0.0)
    return model


def prob(model: list[dict], history: tuple, word: str) -> float:
    """P(word | history) read with backoff, as an ARPA reader does."""
    history, backoff = history[len(history) - len(model) + 1:] if len(model) > 1 else (), 0.0
    while (*history, word) not in model[len(history)]:
        backoff += model[len(history) - 1].get(history, (0, 0.0))[1] if history else 0.0
        if not history:
            return 10 ** (model[0][(UNK,)][0] + backoff)
        history = history[1:]
    return 10 ** (model[len(history)][(*history, word)][0] + backoff)


@pytest.mark.parametrize("order,sentences", [(3, 400), (2, 400), (3, 3)])
def test_probabilities_sum_to_one_for_every_history(order, sentences, tmp_path):
    texts = corpus(sentences)
    model = arpa_ngrams(write_arpa(build_lm(texts, order=order, extra_words=["zebra", "wab"]), tmp_path / "lm.arpa"))
    vocab = [w for (w,) in model[0] if w != BOS]
    histories = {gram[:-1] for grams in model[1:] for gram in grams} | {(), ("zebra",), ("waa", "zebra", "wab")}
    for history in histories:
        assert sum(prob(model, history, w) for w in vocab) == pytest.approx(1.0, abs=1e-4), history
    adjusted = kneser_ney_counts(count_ngrams(texts, order))
    estimated = [discounts(c) != FALLBACK_DISCOUNTS for c in adjusted]
    assert all(estimated) if sentences > 100 else not any(estimated)  # both estimates are exercised


def test_words_only_the_lexicon_knows_share_the_unknown_words_probability(tmp_path):
    model = arpa_ngrams(write_arpa(build_lm(corpus(50), extra_words=["zebra", "yak"]), tmp_path / "lm.arpa"))
    unk = model[0][(UNK,)][0]
    assert model[0][("zebra",)][0] == model[0][("yak",)][0] == unk
    assert unk < min(p for (w,), (p, _) in model[0].items() if w.startswith("w"))
    assert model[0][(BOS,)][0] == -99.0 and not list(tmp_path.glob(".*.tmp"))  # written atomically


@needs_flashlight
def test_kenlm_scores_the_file_as_written(tmp_path):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    path = write_arpa(build_lm(corpus(200), extra_words=["zebra"]), tmp_path / "lm.arpa")
    model, words = arpa_ngrams(path), ["waa", "wab", "zebra", "wac", "waa", "</s>"]
    vocab = Dictionary()
    for w in dict.fromkeys(words):
        vocab.add_entry(w)
    lm = KenLM(str(path), vocab)
    state, history = lm.start(False), (BOS,)
    for w in words:
        state, score = lm.score(state, vocab.get_index(w))
        assert score == pytest.approx(torch.log10(torch.tensor(prob(model, history, w))).item(), abs=1e-4), w
        history = (*history, w)


@needs_flashlight
def test_the_language_model_picks_the_word_its_text_makes_likely(tmp_path):
    # "the ?at sat" where the first letter of the second word is b or c, b slightly ahead: the training text
    # says "the cat sat"; "bat" is a lexicon word it never uses (its probability is that of <unk>)
    path = ["t", "h", "e", "", " ", "c", "a", "t", "", " ", "s", "a", "t", ""]
    logits = torch.full((len(path), len(TOK)), -4.0)
    logits[torch.arange(len(path)), [TOK.index[c] if c else 0 for c in path]] = 6.0
    logits[5, TOK.index["b"]] = 6.5
    lp = logits.log_softmax(-1)
    words = ["bat", "cat", "sat", "the"]
    assert make_decoder("lexicon", TOK, beam_size=16, words=words).decode(lp, 0.04).text == "the bat sat"
    texts = ["the cat sat", "the cat sat on it", "a cat sat", "the dog sat"]
    with lm_file("train", texts=texts, words=words) as arpa:
        dec = make_decoder("lexicon", TOK, beam_size=16, words=words, lm=arpa, lm_weight=1.0)
        assert dec.decode(lp, 0.04).text == "the cat sat"
        zero = make_decoder("lexicon", TOK, beam_size=16, words=words, lm=arpa, lm_weight=0.0)
        assert zero.decode(lp, 0.04).text == "the bat sat"  # weight 0: the acoustics alone
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"audio": "x.wav", "text": t.upper() + "."}) + "\n" for t in texts))
    with lm_file(str(manifest), words=words) as arpa:  # a manifest's transcripts, normalised
        assert make_decoder("lexicon", TOK, beam_size=16, words=words, lm=arpa, lm_weight=1.0).decode(lp, 0.04).text \
            == "the cat sat"


def test_bad_settings_name_the_key_the_value_and_what_is_allowed(tmp_path):
    with pytest.raises(ValueError, match=r"lm='trian' is not allowed; expected null, 'train' \(the training "
                                         r"transcripts\), 'pocketsphinx' .* or a file: \.arpa/\.bin \(KenLM\) or "
                                         r"\.jsonl \(a manifest\)\. Did you mean 'train'\?"):
        check_lm("trian")
    with pytest.raises(ValueError, match=r"lm_mix='big\.bin' is not allowed; expected null, 'pocketsphinx', 'train', "
                                         r"or a file: \.arpa or \.jsonl"):
        check_lm("big.bin", "lm_mix")
    with pytest.raises(ValueError, match=r"lm_mix='pocketsphinx' mixes a second model into lm, which is null: set lm"), \
            lm_file(None, mix="pocketsphinx"):
        pass
    with pytest.raises(FileNotFoundError, match=r"lm='.*nope\.arpa': no such file \(expected null, 'train'"), \
            lm_file(str(tmp_path / "nope.arpa")):
        pass
    with pytest.raises(ValueError, match=r"lm='train' builds the language model from the training transcripts, "
                                         r"which this checkpoint does not carry .* give lm=<the training manifest "
                                         r"\.jsonl> or lm=<a KenLM \.arpa file>"), lm_file("train"):
        pass
    with pytest.raises(ValueError, match=r"the language model's transcripts have no words \(1 transcripts"):
        build_lm(["123 !"])
    with pytest.raises(ValueError, match=r"lm='lm\.arpa' is a word language model: it needs decoder='lexicon' "
                                         r"\(got decoder='beam'\); set lm=null"):
        make_decoder("beam", TOK, lm="lm.arpa")
    with lm_file(None) as arpa:
        assert arpa is None


class Train:
    """A datamodule with training transcripts only (what find_lexicon and find_transcripts read)."""

    def segments(self, split):
        from audio.data import Segment

        return [Segment(audio="a.wav", text=t) for t in ("The cat sat.", "the dog sat")]


def test_settings_and_transcripts_round_trip_through_a_checkpoint(untrained_ckpt, tmp_path):
    from audio.transcribe import load_recognizer

    rec = load_recognizer(untrained_ckpt, decoder="lexicon", lm="train", lm_weight=0.5, word_score=1.5)
    assert rec.find_transcripts(Train()) == ["the cat sat", "the dog sat"] and rec.find_lexicon(Train())
    ckpt = torch.load(untrained_ckpt, map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"] = dict(rec.hparams)
    rec.on_save_checkpoint(ckpt)  # what Lightning calls when it saves
    torch.save(ckpt, tmp_path / "lm.ckpt")
    back = load_recognizer(tmp_path / "lm.ckpt")
    assert (back.hparams.lm, back.hparams.lm_weight, back.hparams.word_score) == ("train", 0.5, 1.5)
    assert back.transcripts == ["the cat sat", "the dog sat"] and back.words == ["cat", "dog", "sat", "the"]
    if HAS_FLASHLIGHT:
        assert back.make_test_decoder() is not None  # the trigram is rebuilt from the stored transcripts
        with pytest.raises(ValueError, match=r"lm='train' is a word language model: it needs decoder='lexicon'"):
            back.make_test_decoder(kind="beam")
        assert back.make_test_decoder(kind="greedy") is None  # greedy reads no language model
    with pytest.raises(ValueError, match=r"lm_weight=-1\.0 is out of range; expected 0\.0 <= lm_weight <= inf"):
        load_recognizer(untrained_ckpt, lm_weight=-1.0)
    with pytest.raises(ValueError, match=r"lm='lm\.txt' is not allowed"):
        load_recognizer(untrained_ckpt, lm="lm.txt")


def test_command_lines_take_the_settings(tmp_path, capsys):
    from audio.transcribe import parse_args

    (tmp_path / "a.wav").write_bytes(b"")
    _, opts = parse_args([str(tmp_path / "a.wav"), "ckpt_path=m.ckpt", "lm=train", "lm_weight=0.5", "word_score=-1"])
    assert (opts["lm"], opts["lm_weight"], opts["word_score"]) == ("train", 0.5, -1.0)
    with pytest.raises(SystemExit):
        parse_args([str(tmp_path / "a.wav"), "ckpt_path=m.ckpt", "lm=trian"])
    assert "lm='trian' is not allowed" in capsys.readouterr().err
    peer = bench_script("asr_peer")
    assert peer.typed_options({"lm": "train", "lm_weight": "0.5", "beam_size": "8", "warps": "1.0"}) \
        == {"lm": "train", "lm_weight": 0.5, "beam_size": 8, "warps": "1.0"}
    with pytest.raises(SystemExit, match=r"--option word_score='high' must be a number"):
        peer.typed_options({"word_score": "high"})
    rows = [{"lm_weight": w, "word_score": s, "wer": 0.2 - w / 10 + s / 100, "cer": 0.1} for w in (0, 1) for s in (0, 1)]
    text = peer.tune_table(rows, "val.jsonl", ["lm=train"])
    assert "| 1 | 10.00 | 11.00 |" in text and "best: lm_weight=1 word_score=0 (WER 10.00%" in text


@needs_flashlight
def test_asr_peer_tunes_the_weights_on_a_manifest(untrained_ckpt, tmp_path):
    from tests.audio.conftest import tone, write

    peer = bench_script("asr_peer")
    write(tmp_path / "a.wav", tone(0.5))
    (tmp_path / "val.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "the cat sat"}) + "\n")
    options = {"lexicon": str(tmp_path / "val.jsonl"), "lm": str(tmp_path / "val.jsonl"), "warps": "1.0",
               "beam_size": "4"}
    rows = peer.tune_lm(peer._clips(str(tmp_path / "val.jsonl")), str(untrained_ckpt), options, [0.0, 1.0], [0.0, 2.0])
    assert [(r["lm_weight"], r["word_score"]) for r in rows] == [(0.0, 0.0), (0.0, 2.0), (1.0, 0.0), (1.0, 2.0)]
    assert all(0 <= r["wer"] for r in rows)


def test_a_trained_checkpoint_carries_its_transcripts_and_transcribes_with_lm_train(trained, tmp_path):
    from audio.text import normalize_text
    from audio.transcribe import main

    ckpt = trained["last_ckpt"]
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert stored["transcripts"] and stored["transcripts"] == [normalize_text(t) for t in stored["transcripts"]]
    assert sorted({w for t in stored["transcripts"] for w in t.split()}) == stored["lexicon"]
    recording = next((trained["data_dir"] / "audio" / "synthetic").glob("*/long-form/000.flac"))
    out = tmp_path / "t.json"
    assert main([str(recording), f"ckpt_path={ckpt}", "--format", "json", "--output", str(out), "lm=train",
                 "lm_weight=0.5", "word_score=1", "warps=1"]) == 0
    result = json.loads(out.read_text())
    assert result["decoder"] == "lexicon" and set(result["text"].split()) <= set(stored["lexicon"])


def test_a_mixture_is_the_weighted_sum_of_the_two_models_and_normalises(tmp_path):
    # two models over overlapping vocabularies: a word outside one has probability 0 in it
    words = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(80)]
    rng = random.Random(1)
    a = build_lm([" ".join(rng.choices(words[:40], k=rng.randint(2, 7))) for _ in range(300)])
    b = build_lm([" ".join(rng.choices(words[20:], k=rng.randint(2, 7))) for _ in range(300)])
    mixed = read_arpa(write_arpa(mix_lms(a, b, 0.3), tmp_path / "mix.arpa"))  # as KenLM will read it

    def p(model, gram):
        return 10 ** logprob(model, gram) if (gram[-1],) in model[0] else 0.0

    vocab = sorted({w for (w,) in mixed[0]} - {BOS})
    assert set(vocab) == set(words) | {"</s>", UNK}
    for history in [(BOS,), (words[3],), (words[25], words[30]), (words[3], words[70]), (BOS, words[22]),
                    (words[79],), (words[5], words[6])]:
        assert sum(10 ** logprob(mixed, (*history, w)) for w in vocab) == pytest.approx(1.0, abs=1e-5), history
        for w in vocab:
            gram = (*history, w)[-3:]
            if gram in mixed[len(gram) - 1]:  # listed: exactly the mixture (up to the file's 6 decimals)
                assert 10 ** logprob(mixed, gram) == pytest.approx(0.7 * p(a, gram) + 0.3 * p(b, gram), rel=2e-6)
    only_a = mix_lms(a, b, 0.0)
    assert all(only_a[n][g][0] == pytest.approx(v[0], abs=1e-9) for n in range(3) for g, v in a[n].items()
               if g[-1] != BOS)
    with pytest.raises(ValueError, match=r"lm_mix_weight=1\.5 is out of range; expected 0\.0 <= lm_mix_weight <= 1\.0"):
        mix_lms(a, b, 1.5)


def test_read_arpa_names_the_line_it_cannot_read(tmp_path):
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\thello\n-x\tworld\n\\end\\\n")
    with pytest.raises(ValueError, match=r"bad\.arpa, line 6: not an ARPA 1-gram line"):
        read_arpa(bad)
    empty = tmp_path / "empty.arpa"
    empty.write_text("nothing here\n")
    with pytest.raises(ValueError, match=r"empty\.arpa: no \\1-grams: section"):
        read_arpa(empty)


@needs_flashlight
def test_a_strong_language_model_does_not_erase_a_short_utterance():
    # one word the text never uses, spoken alone: the empty transcript pays no word cost and, at a high lm_weight,
    # would win the search; the decoder then returns the best non-empty hypothesis, since greedy hears "zed"
    path = ["", "z", "", "e", "", "d", ""]
    logits = torch.full((len(path), len(TOK)), -4.0)
    logits[torch.arange(len(path)), [TOK.index[c] if c else 0 for c in path]] = 3.0
    logits[[1, 3, 5], 0] = 1.0  # the letters' frames not quite sure
    lp = logits.log_softmax(-1)
    words = ["cat", "sat", "the", "zed"]
    with lm_file("train", texts=["the cat sat"] * 5 + ["the cat"], words=words) as arpa:
        dec = make_decoder("lexicon", TOK, beam_size=16, words=words, lm=arpa, lm_weight=8.0)
        raw = dec.decoder(lp[None].contiguous())[0]
        assert not TOK.decode([int(t) for t in raw[0].tokens]).strip()  # the search itself prefers silence
        assert dec.decode(lp, 0.04).text == "zed"
        assert dec.texts(torch.stack([lp, lp]), torch.tensor([7, 7])) == ["zed", "zed"]
        silence = torch.full((len(path), len(TOK)), -4.0)
        silence[:, 0] = 3.0
        assert dec.decode(silence.log_softmax(-1), 0.04).text == ""  # nothing heard: empty stays empty
