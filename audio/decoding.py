"""CTC decoding (greedy and beam search), word timestamps from the CTC alignment, WER and CER.

Greedy decoding takes the best class per frame, merges repeats and drops blanks (Graves et al. 2006);
each emitted character keeps the frames of its run, so a word spans from the first frame of its first
letter to the last frame of its last letter. Beam search is flashlight's CTC decoder through
``torchaudio.models.decoder.ctc_decoder`` (package ``flashlight-text``): ``beam`` is lexicon-free
(any character string), ``lexicon`` only spells words of a lexicon (by default the words of the
training transcripts, which a checkpoint carries: :func:`lexicon_words`); its word times come from the
decoder's token time steps. WER and CER are torchmetrics' (Levenshtein distance over words / characters).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor

from audio.text import VOCAB, CharTokenizer, normalize_text
from core_attn.validation import check_choice, check_float, check_int

BEAM_HINT = "beam search needs the flashlight-text package: `pip install flashlight-text` (or use decoder=greedy)"
DECODERS = ("greedy", "beam", "lexicon")
WORD_LIST_PEER = "pocketsphinx"  # word_list=pocketsphinx: the CMU dictionary in the pocketsphinx wheel


@dataclass
class Word:
    """A recognised word and its time span in seconds."""

    word: str
    start: float
    end: float


@dataclass
class Transcript:
    """Text and word timings of one recording."""

    text: str
    words: list[Word] = field(default_factory=list)


def collapse(ids: Tensor, blank: int = 0) -> tuple[list[int], list[tuple[int, int]]]:
    """CTC collapse of a frame-level path (N,): the tokens and each token's (first, last) frame."""
    ids = ids.tolist()
    tokens, spans = [], []
    prev = blank
    for t, i in enumerate(ids):
        if i != blank and i == prev:
            spans[-1] = (spans[-1][0], t)
        elif i != blank:
            tokens.append(i)
            spans.append((t, t))
        prev = i
    return tokens, spans


def words_from_tokens(tokens: Sequence[int], frames: Sequence[tuple[int, int]], tokenizer: CharTokenizer,
                      frame_seconds: float, offset: float = 0.0) -> list[Word]:
    """Group characters into words at spaces; a word spans its letters' frames (end exclusive)."""
    words, chars, first, last = [], [], None, None
    for tok, (f0, f1) in list(zip(tokens, frames)) + [(tokenizer.space, (0, 0))]:
        if tok == tokenizer.space:
            if chars:
                words.append(Word("".join(chars), round(offset + first * frame_seconds, 3),
                                  round(offset + (last + 1) * frame_seconds, 3)))
            chars, first = [], None
            continue
        chars.append(tokenizer.vocab[tok])
        first = f0 if first is None else first
        last = f1
    return words


def greedy_decode(log_probs: Tensor, tokenizer: CharTokenizer, frame_seconds: float) -> Transcript:
    """Best path of (N, V) log-probabilities, with word timestamps."""
    tokens, spans = collapse(log_probs.argmax(-1), tokenizer.blank)
    words = words_from_tokens(tokens, spans, tokenizer, frame_seconds)
    return Transcript(" ".join(w.word for w in words), words)


class GreedyStream:
    """Greedy CTC decoding of log-probabilities that arrive in pieces, words emitted as soon as they are
    final: a word ends when the next space token starts (nothing later can extend its last letter's run).
    The words of all :meth:`push` calls and :meth:`finish` are those of :func:`greedy_decode` over the
    whole sequence, times included."""

    def __init__(self, tokenizer: CharTokenizer, frame_seconds: float):
        self.tokenizer, self.frame_seconds = tokenizer, frame_seconds
        self.frames, self.prev = 0, tokenizer.blank  # frames seen; the best class of the last one
        self.chars: list[str] = []
        self.first = self.last = 0  # first frame of the open word's first letter, last of its last letter

    def push(self, log_probs: Tensor) -> list[Word]:
        """(n, V) log-probabilities of the next frames -> the words that became final."""
        tok, out = self.tokenizer, []
        for t, i in enumerate(log_probs.argmax(-1).tolist(), self.frames):
            if i == tok.blank:
                pass
            elif i == self.prev:  # the run of the last token goes on (collapse merges it)
                self.last = t if i != tok.space else self.last
            elif i == tok.space:
                out += self._close()
            else:
                self.first = t if not self.chars else self.first
                self.chars.append(tok.vocab[i])
                self.last = t
            self.prev = i
        self.frames += len(log_probs)
        return out

    def finish(self) -> list[Word]:
        """The last word, after the last frame."""
        return self._close()

    def _close(self) -> list[Word]:
        if not self.chars:
            return []
        fs = self.frame_seconds
        word = Word("".join(self.chars), round(self.first * fs, 3), round((self.last + 1) * fs, 3))
        self.chars = []
        return [word]


def greedy_texts(log_probs: Tensor, lengths: Tensor, tokenizer: CharTokenizer) -> list[str]:
    """Greedy transcripts of a batch (B, N, V) with valid ``lengths``."""
    best = log_probs.argmax(-1)
    return [" ".join(tokenizer.decode(collapse(best[b, :n], tokenizer.blank)[0]).split())
            for b, n in enumerate(lengths.tolist())]


def greedy_scored(log_probs: Tensor, lengths: Tensor, tokenizer: CharTokenizer) -> list[tuple[str, float]]:
    """Greedy transcripts of a batch (B, N, V) with their best-path log-probabilities (the score that
    picks among test-time warps when decoding greedily)."""
    best = log_probs.max(-1)
    return [(text, float(best.values[b, :n].sum()))
            for b, (text, n) in enumerate(zip(greedy_texts(log_probs, lengths, tokenizer), lengths.tolist()))]


def best_candidate(candidates: Sequence[tuple[str, float]]) -> int:
    """Index of the best-scoring ``(text, score)`` candidate (the first on a tie) among those with words, or
    among all when none has any: where some test-time warp hears speech, silence is not the answer (an empty
    hypothesis pays no word costs, so its score can beat every transcript of a short utterance)."""
    spoken = [i for i, (text, _) in enumerate(candidates) if text.strip()]
    return max(spoken or range(len(candidates)), key=lambda i: candidates[i][1])


def pause_cuts(log_probs: Tensor, min_frames: int, blank: int = 0) -> list[int]:
    """Frames at which to cut (N, V) log-probabilities into segments: the middle of every run of at least
    ``min_frames`` frames whose best class is the blank (a pause), leading and trailing runs excepted."""
    best = (log_probs.argmax(-1) == blank).tolist() + [False]
    cuts, start = [], None
    for t, is_blank in enumerate(best):
        if is_blank and start is None:
            start = t
        elif not is_blank and start is not None:
            if t - start >= min_frames and start > 0 and t < len(log_probs):
                cuts.append((start + t) // 2)
            start = None
    return cuts


def decode_at_pauses(decoder: BeamSearchDecoder, log_probs: Tensor, frame_seconds: float,
                     pause_seconds: float | None, alternatives: Sequence[Tensor] = ()) -> Transcript:
    """``decoder.decode`` of (N, V) log-probabilities, segment by segment between pauses of at least
    ``pause_seconds`` (``None`` or 0: one segment): the language model starts a new word sequence after each
    pause, as it does for every clip decoded alone, instead of scoring word histories across sentences.

    ``alternatives``: log-probabilities of the same frames at other test-time warps. Each segment (cut where
    ``log_probs`` pauses) is then decoded under every one and takes the transcript
    :func:`best_candidate` picks, as a clip decoded alone takes its best warp's."""
    if any(a.shape != log_probs.shape for a in alternatives):
        raise ValueError(f"alternatives must have the shape of log_probs {tuple(log_probs.shape)}, got "
                         f"{[tuple(a.shape) for a in alternatives]}")
    bounds = [0, len(log_probs)]
    if pause_seconds:
        min_frames = max(1, round(check_float("pause_seconds", pause_seconds, min_value=0.0) / frame_seconds))
        bounds = [0] + pause_cuts(log_probs, min_frames, decoder.tokenizer.blank) + [len(log_probs)]
    words = []
    for a, b in pairwise(bounds):
        decoded = [decoder.decode_scored(lp[a:b], frame_seconds, offset=a * frame_seconds)
                   for lp in (log_probs, *alternatives)]
        words += decoded[best_candidate([(t.text, score) for t, score in decoded])][0].words
    return Transcript(" ".join(w.word for w in words), words)


def lexicon_words(texts: Sequence[str]) -> list[str]:
    """The sorted distinct words of ``texts`` once normalised (:func:`audio.text.normalize_text`)."""
    return sorted({w for t in texts for w in normalize_text(t).split()})


def read_lexicon(path: str | Path) -> list[str]:
    """Words from a file: one per line, its first field (so a flashlight lexicon ``word w o r d |`` works too);
    a JSONL manifest (``.jsonl``, :func:`audio.data.read_manifest`) gives the words of its transcripts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lexicon={str(path)!r}: no such file (one word per line)")
    if path.suffix == ".jsonl":
        from audio.data import read_manifest

        return lexicon_words([seg.text for seg in read_manifest(path)])
    words = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lexicon_words(words):
        raise ValueError(f"lexicon={str(path)!r} has no words (expected one word per line)")
    return lexicon_words(words)


def pocketsphinx_dictionary() -> Path:
    """The CMU pronouncing dictionary inside the ``pocketsphinx`` wheel (``cmudict-en-us.dict``, about 135,000
    English words), a general word list that ships offline."""
    try:
        import pocketsphinx
    except ImportError as e:
        raise ImportError(f"word_list={WORD_LIST_PEER!r} reads the dictionary of the pocketsphinx wheel, which is not "
                          "installed: `pip install -e '.[peer]'` (or give word_list=<a file, one word per line>)") from e
    return Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"


def read_word_list(source: str | Path) -> list[str]:
    """The words of a general word list that the vocabulary can spell, lower-cased and sorted: ``source`` is
    a file (one word per line, first field; pronunciation variants ``word(2)`` count once) or ``pocketsphinx``
    (:func:`pocketsphinx_dictionary`). Words with other characters (``a.m.``, ``ad-hoc``) are left out."""
    path = pocketsphinx_dictionary() if str(source) == WORD_LIST_PEER else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"word_list={str(source)!r}: no such file (one word per line, or "
                                f"{WORD_LIST_PEER!r} for the dictionary of the pocketsphinx wheel)")
    spelt = set(VOCAB[2:])  # apostrophe and a-z: a word never holds a space
    words = {re.sub(r"\(\d+\)$", "", line.split()[0]).lower()
             for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()}
    words = sorted(w for w in words if w and set(w) <= spelt)
    if not words:
        raise ValueError(f"word_list={str(source)!r} has no words spelt in a-z and apostrophe (one word per line)")
    return words


def write_lexicon(words: Sequence[str], path: str | Path, tokenizer: CharTokenizer) -> None:
    """A flashlight lexicon file: ``word w o r d |`` per line. Every word must be spelt in the vocabulary."""
    with open(path, "w", encoding="utf-8") as f:
        for word in words:
            bad = sorted({c for c in word if c not in tokenizer.index or c == " "})
            if not word or bad:
                raise ValueError(f"lexicon word {word!r} has characters outside the vocabulary: {bad} (words are "
                                 "spelt in a-z and apostrophe; normalise them with audio.text.normalize_text)")
            f.write(f"{word} {' '.join(word)} |\n")


class BeamSearchDecoder:
    """Flashlight's CTC beam search (``torchaudio.models.decoder.ctc_decoder``), lexicon-free unless a
    lexicon is given.

    Args:
        tokenizer: the character vocabulary (blank -> ``-``, space -> ``|`` for flashlight).
        beam_size: hypotheses kept per frame.
        beam_threshold: prune hypotheses scoring this far below the best.
        lm: a KenLM language model file (``.arpa`` or ``.bin``), or ``None``.
        lexicon: a lexicon file (``word c h a r s |`` per line) restricting words, or ``None``.
        words: the lexicon as a list of words instead of a file.
        lm_weight: language model weight.
        word_score: score added per word.

    An empty transcript pays no language-model cost for words, so a strong language model can prefer silence
    over a short utterance it finds unlikely (a single letter or month name spoken alone). Where the best
    hypothesis is empty but greedy decoding of the same frames spells characters, the best non-empty
    hypothesis among the final beam's ``NBEST`` is returned instead: the language model ranks what was said,
    it does not erase it.
    """

    NBEST = 16

    def __init__(self, tokenizer: CharTokenizer, *, beam_size: int = 16, beam_threshold: float = 25.0,
                 lm: str | None = None, lexicon: str | None = None, words: Sequence[str] | None = None,
                 lm_weight: float = 2.0, word_score: float = 0.0):
        try:
            from torchaudio.models.decoder import ctc_decoder
            from flashlight.lib.text import decoder as _  # noqa: F401 - import check for the message below
        except ImportError as e:
            raise ImportError(BEAM_HINT) from e
        self.tokenizer = tokenizer
        tokens = ["-", "|"] + list(tokenizer.vocab[2:])
        kwargs = {"tokens": tokens, "lm": lm, "nbest": self.NBEST,
                  "beam_size": check_int("beam_size", beam_size, min_value=1),
                  "beam_threshold": check_float("beam_threshold", beam_threshold, min_value=0.0),
                  "lm_weight": lm_weight, "word_score": word_score, "blank_token": "-", "sil_token": "|"}
        if words is None:
            self.decoder = ctc_decoder(lexicon=lexicon, **kwargs)
            return
        if not words:
            raise ValueError("the lexicon is empty: lexicon decoding needs at least one word")
        with tempfile.TemporaryDirectory(prefix="lexicon-") as tmp:  # flashlight reads lexicons from files
            path = Path(tmp) / "lexicon.txt"
            write_lexicon(words, path, tokenizer)
            self.decoder = ctc_decoder(lexicon=str(path), **kwargs)

    def _best(self, hyps: list, log_probs: Tensor, length: int):
        """The first of ``hyps`` (best first), or the first non-empty one when that is empty but greedy decoding
        of the (N, V) ``log_probs`` over ``length`` frames spells characters."""
        def empty(hyp) -> bool:
            return not self.tokenizer.decode([int(t) for t in hyp.tokens]).strip()

        if hyps and empty(hyps[0]) and greedy_texts(log_probs[None], torch.tensor([length]), self.tokenizer)[0]:
            return next((h for h in hyps if not empty(h)), hyps[0])
        return hyps[0]

    def decode(self, log_probs: Tensor, frame_seconds: float, offset: float = 0.0) -> Transcript:
        """Best hypothesis of (N, V) log-probabilities, with word timestamps (``offset`` seconds added)."""
        return self.decode_scored(log_probs, frame_seconds, offset)[0]

    def decode_scored(self, log_probs: Tensor, frame_seconds: float, offset: float = 0.0) -> tuple[Transcript, float]:
        """:meth:`decode` and the hypothesis' beam score."""
        hyp = self._best(self.decoder(log_probs[None].float().cpu().contiguous())[0], log_probs, len(log_probs))
        tokens = [int(t) for t in hyp.tokens]
        steps = [int(s) for s in hyp.timesteps]
        keep = [(t, (s, s)) for t, s in zip(tokens, steps) if t != self.tokenizer.blank]
        words = words_from_tokens([t for t, _ in keep], [f for _, f in keep], self.tokenizer, frame_seconds, offset)
        return Transcript(" ".join(w.word for w in words), words), float(hyp.score)

    def texts(self, log_probs: Tensor, lengths: Tensor) -> list[str]:
        """Transcripts of a batch (B, N, V) with valid ``lengths``."""
        return [text for text, _ in self.scored(log_probs, lengths)]

    def scored(self, log_probs: Tensor, lengths: Tensor) -> list[tuple[str, float]]:
        """Transcripts of a batch (B, N, V) with valid ``lengths``, each with its beam score."""
        hyps = self.decoder(log_probs.float().cpu().contiguous(), lengths.cpu().to(torch.int32))
        best = [self._best(h, log_probs[b], int(lengths[b])) for b, h in enumerate(hyps)]
        return [(" ".join(self.tokenizer.decode([int(t) for t in h.tokens]).split()), float(h.score)) for h in best]


def scored_texts(decoder: BeamSearchDecoder | None, log_probs: Tensor, lengths: Tensor,
                 tokenizer: CharTokenizer) -> list[tuple[str, float]]:
    """(text, score) per utterance of a batch, by ``decoder`` (``None``: greedy)."""
    return greedy_scored(log_probs, lengths, tokenizer) if decoder is None else decoder.scored(log_probs, lengths)


def make_decoder(kind: str, tokenizer: CharTokenizer, *, beam_size: int = 16, words: Sequence[str] | None = None,
                 lm: str | None = None, lexicon: str | None = None, lm_weight: float = 2.0, word_score: float = 0.0):
    """``None`` for ``greedy``; a lexicon-free :class:`BeamSearchDecoder` for ``beam``; for ``lexicon``, one
    that only spells ``words``, scored by the word language model ``lm`` (a KenLM file) if given."""
    check_choice("decoder", kind, DECODERS)
    if lm is not None and kind != "lexicon":  # lexicon-free search would read a word LM as one over characters
        raise ValueError(f"lm={str(lm)!r} is a word language model: it needs decoder='lexicon' (got decoder={kind!r}); "
                         "set lm=null for greedy or lexicon-free beam decoding")
    if kind == "greedy":
        return None
    if kind == "lexicon" and words is None:
        raise ValueError("decoder='lexicon' needs the lexicon's words: a checkpoint trained by audio.train carries "
                         "those of its training transcripts; else give lexicon=<a file, one word per line>")
    return BeamSearchDecoder(tokenizer, beam_size=beam_size, lm=lm, lexicon=lexicon,
                             words=words if kind == "lexicon" else None, lm_weight=lm_weight, word_score=word_score)


def error_rates(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``{"wer": ..., "cer": ...}`` of whole corpora (errors summed over utterances / reference length)."""
    from torchmetrics.functional.text import char_error_rate, word_error_rate

    return {"wer": float(word_error_rate(list(predictions), list(references))),
            "cer": float(char_error_rate(list(predictions), list(references)))}
