"""The LightningModule of the audio app: CTC training, WER/CER in validation and test."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn
from torchmetrics import MinMetric
from torchmetrics.text import CharErrorRate, WordErrorRate

from audio.decoding import (
    DECODERS,
    best_candidate,
    greedy_texts,
    lexicon_words,
    make_decoder,
    read_lexicon,
    read_word_list,
    scored_texts,
)
from audio.lm import check_lm, lm_file
from audio.text import VOCAB, CharTokenizer, normalize_text
from core_attn.attention.adaptive_span import total_span_loss
from core_attn.training.bases import TaskModule
from core_attn.validation import check_choice, check_float

log = logging.getLogger(__name__)


def oov_rate(words: list[str], texts: list[str]) -> float:
    """Share of the running words of ``texts`` (normalised) that are not in ``words``."""
    known = set(words)
    running = [w for t in texts for w in normalize_text(t).split()]
    return sum(w not in known for w in running) / max(len(running), 1)


class SpeechRecognizer(TaskModule):
    """Trains a CTC speech model; logs ``{train,val,test}/loss``, ``{val,test}/{wer,cer}`` and ``val/wer_best``.

    Validation decodes greedily (the acoustic model alone picks the best checkpoint); the test decodes with
    ``decoder``: ``greedy``, ``beam`` (lexicon-free beam search) or ``lexicon`` (beam search that only spells
    words of the lexicon). The lexicon is the words of ``lexicon`` (a file, one word per line, or a JSONL
    manifest's transcripts) or else of the training transcripts (the datamodule's ``segments("train")``); it is
    saved in the checkpoint (``checkpoint["lexicon"]``), so evaluation and ``audio.transcribe`` use the same
    words. ``word_list`` adds the words of a general word list to it at decoding time (:meth:`decoding_words`;
    the checkpoint keeps the hyper-parameter, not the words). ``lm`` scores lexicon decoding's words with a word
    n-gram language model (:mod:`audio.lm`); ``train`` builds it from the training transcripts, which the
    checkpoint also carries (``checkpoint["transcripts"]``, normalised), whatever ``lm`` is. With
    ``test_warps``, each test utterance is decoded with its frequency axis scaled by each factor and the
    hypothesis the decoder scores best is kept: test-time vocal tract length normalisation, the warp chosen
    by maximum likelihood as in Lee & Rose (1996), per utterance. The
    hyper-parameters are plain configs, so ``SpeechRecognizer.load_from_checkpoint(path)`` rebuilds the
    network (features included: a checkpoint is all ``audio.transcribe`` needs).

    Args:
        model: the network's config (``audio.model.ConformerCTC`` with its features and encoder).
        optimizer: a ``_partial_`` optimizer config.
        scheduler: a ``_partial_`` scheduler config, or ``None``/empty for a constant learning rate.
        decoder: test decoding, ``greedy``, ``beam`` or ``lexicon``.
        beam_size: beam width of ``beam`` and ``lexicon``.
        lexicon: a word list file for ``lexicon`` decoding; ``None``: the words of the training transcripts.
        word_list: a general word list added to the lexicon (:func:`audio.decoding.read_word_list`): a file,
            or ``pocketsphinx`` for the CMU dictionary of the pocketsphinx wheel; ``None``: none.
        test_warps: frequency axis factors tried per test utterance (``None`` or ``[1.0]``: none).
        lm: the word language model of ``lexicon`` decoding: ``None``; ``train``, a trigram of the training
            transcripts (:func:`audio.lm.lm_file`); a KenLM ``.arpa``/``.bin`` file; or a ``.jsonl`` manifest
            whose transcripts train one; ``pocketsphinx``, the general English trigram of the pocketsphinx wheel.
        lm_mix: a second model mixed into ``lm`` (:func:`audio.lm.mix_lms`): ``pocketsphinx``, ``train``, an
            ``.arpa`` file or a ``.jsonl`` manifest; ``None``: none.
        lm_mix_weight: ``lm_mix``'s share of the mixture (0-1).
        lm_weight: the language model's weight (its log10 probabilities against the acoustic log-probabilities).
        word_score: score added per word by ``lexicon`` decoding (with or without a language model).
    """

    def __init__(self, *, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None,
                 decoder: str = "greedy", beam_size: int = 16, lexicon: str | None = None,
                 word_list: str | None = None, test_warps: list[float] | None = None, lm: str | None = None,
                 lm_weight: float = 2.0, word_score: float = 0.0, lm_mix: str | None = None,
                 lm_mix_weight: float = 0.5):
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module = instantiate(model)
        self.tokenizer = CharTokenizer()
        if self.net.vocab_size != len(VOCAB):
            raise ValueError(f"model.vocab_size={self.net.vocab_size} but the character vocabulary has {len(VOCAB)} "
                             "tokens (audio.text.VOCAB); set model.vocab_size to it")
        check_choice("decoder", decoder, DECODERS)
        # a lexicon file read now wins over the words a checkpoint carries; one missing here (a checkpoint
        # trained elsewhere with module.lexicon=<file>) falls back to them, and fails only if they are absent
        self._lexicon_file = lexicon if lexicon and not Path(lexicon).is_file() else None
        self.words: list[str] | None = read_lexicon(lexicon) if lexicon and not self._lexicon_file else None
        self.extra_words: list[str] | None = read_word_list(word_list) if word_list else None
        check_lm(lm)
        check_lm(lm_mix, "lm_mix")
        check_float("lm_mix_weight", lm_mix_weight, min_value=0.0, max_value=1.0)
        check_float("lm_weight", lm_weight, min_value=0.0)
        check_float("word_score", word_score)
        self.transcripts: list[str] | None = None  # the training transcripts (normalised), for lm=train
        self.test_decoder = None  # built when the test starts (the lexicon may come from the data)
        self.test_warps = [check_float("test_warps", w, min_value=0.5, max_value=2.0) for w in (test_warps or [])]
        self.wer = nn.ModuleDict({s: WordErrorRate() for s in ("val", "test")})
        self.cer = nn.ModuleDict({s: CharErrorRate() for s in ("val", "test")})
        self.val_wer_best = MinMetric()

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L) samples -> (B, N, V) log-probabilities and (B,) frame counts."""
        return self.net(audio, lengths)

    def _loss(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        log_probs, lengths = self(batch["audio"], batch["audio_lens"])
        loss = F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], lengths, batch["target_lens"],
                          blank=self.tokenizer.blank, reduction="mean", zero_infinity=True)
        return loss, log_probs, lengths

    def find_lexicon(self, datamodule: Any = None) -> list[str] | None:
        """The lexicon's words: those already known (given or from the checkpoint), else the words of the
        ``datamodule``'s training transcripts (``None`` if it has none)."""
        if self.words is None and self._lexicon_file:
            read_lexicon(self._lexicon_file)  # raises: the file is missing
        if self.words is None and datamodule is not None and hasattr(datamodule, "segments"):
            self.words = lexicon_words([seg.text for seg in datamodule.segments("train")]) or None
        return self.words

    def find_transcripts(self, datamodule: Any = None) -> list[str] | None:
        """The training transcripts, normalised: those the checkpoint carries, else the ``datamodule``'s."""
        if self.transcripts is None and datamodule is not None and hasattr(datamodule, "segments"):
            self.transcripts = [normalize_text(seg.text) for seg in datamodule.segments("train")] or None
        return self.transcripts

    def decoding_words(self, datamodule: Any = None) -> list[str] | None:
        """The words lexicon decoding spells: :meth:`find_lexicon`'s plus those of ``word_list``."""
        words = self.find_lexicon(datamodule)
        if not self.extra_words:
            return words
        return sorted(set(words or ()) | set(self.extra_words))

    def make_test_decoder(self, datamodule: Any = None, *, kind: str | None = None, beam_size: int | None = None):
        """The test decoder (``None`` for greedy); ``lexicon`` spells the words of :meth:`decoding_words`, scored by
        the language model ``lm`` if any. ``kind`` and ``beam_size`` replace ``decoder`` and ``beam_size``."""
        kind = kind or self.hparams.decoder
        settings = {"beam_size": beam_size or self.hparams.beam_size, "lm_weight": self.hparams.lm_weight,
                    "word_score": self.hparams.word_score}
        if kind != "lexicon":  # greedy reads no language model; make_decoder refuses one for lexicon-free beam search
            return make_decoder(kind, self.tokenizer, lm=self.hparams.lm if kind == "beam" else None, **settings)
        words = self.decoding_words(datamodule)
        with self.lm_file(self.hparams.lm, words, datamodule) as lm:
            return make_decoder(kind, self.tokenizer, words=words, lm=lm, **settings)

    def lm_file(self, lm: str | None, words: list[str] | None, datamodule: Any = None):
        """A context manager giving the KenLM file of the ``lm`` setting (``None`` for none) with ``words`` (the
        lexicon) in its vocabulary, ``lm_mix`` mixed in: :func:`audio.lm.lm_file` over :meth:`find_transcripts`
        for ``train``."""
        mix = self.hparams.lm_mix
        texts = self.find_transcripts(datamodule) if "train" in (lm, mix) else None
        return lm_file(lm, texts=texts, words=words or (), mix=mix, mix_weight=self.hparams.lm_mix_weight)

    def setup(self, stage: str) -> None:
        if stage == "fit":  # the checkpoint carries the training words and transcripts whatever the test decoder
            self.find_lexicon(self.trainer.datamodule)
            self.find_transcripts(self.trainer.datamodule)

    def on_test_start(self) -> None:
        datamodule = self.trainer.datamodule
        self.test_decoder = self.make_test_decoder(datamodule)
        if self.hparams.decoder == "lexicon" and hasattr(datamodule, "segments"):
            words = self.decoding_words(datamodule)
            rate = oov_rate(words, [seg.text for seg in datamodule.segments("test")])
            log.info("lexicon decoding: %d words; %.2f%% of the test words are outside the lexicon (never "
                     "recognised; module.word_list=pocketsphinx or <a file> to widen it)", len(words), 100 * rate)
            log.info("language model: lm=%s, lm_mix=%s (weight %g), lm_weight=%g, word_score=%g", self.hparams.lm,
                     self.hparams.lm_mix, self.hparams.lm_mix_weight, self.hparams.lm_weight,
                     self.hparams.word_score)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lexicon"] = self.words
        checkpoint["transcripts"] = self.transcripts
        checkpoint["vocab"] = list(self.tokenizer.vocab)

    def check_init_from(self, checkpoint: dict[str, Any], path: Path) -> None:
        """``init_from`` (:func:`core_attn.training.finetune.init_weights`) must share this model's vocabulary:
        the stored one, or for a checkpoint that stores none, one of the same size (the CTC head's rows)."""
        ours = list(self.tokenizer.vocab)
        theirs = checkpoint.get("vocab")
        head = checkpoint.get("state_dict", {}).get("net.head.weight")
        size = len(theirs) if theirs is not None else head.shape[0] if head is not None else len(ours)
        if (theirs is not None and list(theirs) != ours) or size != len(ours):
            shown = repr("".join(t for t in theirs if len(t) == 1)) if theirs is not None else "(not stored)"
            raise ValueError(f"init_from={str(path)!r} was trained with another vocabulary: checkpoint {size} tokens "
                             f"{shown}, this model {len(ours)} tokens {''.join(ours[1:])!r} (audio.text.VOCAB); "
                             "fine-tune from a checkpoint of the same vocabulary")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.words is None:  # a lexicon file given now wins over the stored words
            self.words = checkpoint.get("lexicon")
        self.transcripts = checkpoint.get("transcripts")

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, _, _ = self._loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["texts"]))
        return loss + total_span_loss(self.net)  # 0 unless attention=adaptive_span

    def _eval_step(self, batch: dict, stage: str) -> None:
        loss, log_probs, lengths = self._loss(batch)
        if stage == "test" and self.test_warps:
            hyps = self.warped_texts(batch, log_probs, lengths)
        elif stage == "test" and self.test_decoder is not None:
            hyps = self.test_decoder.texts(log_probs, lengths)
        else:
            hyps = greedy_texts(log_probs, lengths, self.tokenizer)
        refs = batch["texts"]
        self.wer[stage](hyps, refs)
        self.cer[stage](hyps, refs)
        n = len(refs)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", batch_size=n)
        self.log(f"{stage}/wer", self.wer[stage], on_epoch=True, prog_bar=True, batch_size=n)
        self.log(f"{stage}/cer", self.cer[stage], on_epoch=True, prog_bar=True, batch_size=n)

    def warped_texts(self, batch: dict, log_probs: Tensor, lengths: Tensor) -> list[str]:
        """Per utterance, the best-scoring transcript over ``test_warps`` (``log_probs``: the unwarped pass), an
        empty one only when every warp's is (:func:`audio.decoding.best_candidate`)."""
        candidates = [[] for _ in range(len(lengths))]
        for w in self.test_warps:
            lp = log_probs if w == 1.0 else self.net(batch["audio"], batch["audio_lens"], warp=w)[0]
            for i, hyp in enumerate(scored_texts(self.test_decoder, lp, lengths, self.tokenizer)):
                candidates[i].append(hyp)
        return [c[best_candidate(c)][0] for c in candidates]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_wer_best(self.wer["val"].compute())
        self.log("val/wer_best", self.val_wer_best.compute(), prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")
