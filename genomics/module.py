"""The LightningModules of the genomics app, one per task, all over :class:`genomics.model.SequenceTransformer`.

- :class:`CausalLM`: next-base prediction; ``{val,test}/bpb`` (bits per base) and, at test, the Markov
  baseline's ``test/markov_bpb`` on the same positions.
- :class:`MaskedLM`: ESM-style masked residues; ``{val,test}/ppl`` and, at test, ``test/unigram_ppl``.
- :class:`SequenceClassifier`: one label per record; ``acc`` and ``f1`` (macro).
- :class:`TokenClassifier`: per-base labels (coding or not); ``acc``, ``f1`` (coding class), ``mcc``.

Each takes the same plain-config hyper-parameters (``model``, ``optimizer``, ``scheduler``), saved with
``save_hyperparameters`` so ``load_from_checkpoint`` rebuilds the network.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MinMetric
from torchmetrics.classification import (BinaryF1Score, BinaryMatthewsCorrCoef, MulticlassAccuracy,
                                         MulticlassF1Score)

from core_attn.attention.adaptive_span import total_span_loss
from core_attn.training.bases import TaskModule
from core_attn.training.runtime import load_run_config
from core_attn.validation import check_choice
from genomics.baselines import OrfDecoder, binary_mcc, select_orf_decoder
from genomics.datasets import IGNORE, GenomeTiles, Segment
from genomics.tokenizers import SPECIALS

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
STAGES = ("train", "val", "test")
CLASS_NAMES_KEY = "class_names"  # where a SequenceClassifier checkpoint keeps its labels, in output order
ORF_DECODER_KEY = "orf_decoder"  # where a TokenClassifier checkpoint keeps the ORF decoder chosen on validation
DECODES = ("argmax", "orf")


class GenomicsModule(TaskModule):
    """The base of the task modules: builds the network from its config, optimizer and scheduler from
    ``_partial_`` configs. ``GenomicsModule.load_from_checkpoint(path)`` returns the task's subclass named
    in the checkpoint's stored run config (so one evaluation config serves every task)."""

    monitor_best: type = MaxMetric

    def __init__(self, *, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module = instantiate(model)
        self.best = self.monitor_best()

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):  # noqa: D102 - Lightning's signature
        if cls is not GenomicsModule:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        stored = load_run_config(checkpoint_path)
        target = (stored.get("module") or {}).get("_target_")
        sub = get_class(target) if target else None
        if sub is None or not issubclass(sub, GenomicsModule):
            raise ValueError(f"{checkpoint_path} stores module._target_={target!r}, not a genomics task module; "
                             "pass module._target_=genomics.module.<CausalLM|MaskedLM|SequenceClassifier|TokenClassifier>")
        return sub.load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def forward(self, tokens: Tensor, pad: Tensor | None = None) -> Tensor:
        return self.net(tokens, pad)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train") + total_span_loss(self.net)  # 0 unless attention=adaptive_span

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _per_stage(self, name: str, factory) -> None:
        """One metric per stage, as attributes ``train_<name>``, ``val_<name>``, ``test_<name>``."""
        for stage in STAGES:
            setattr(self, f"{stage}_{name}", factory())

    def metric(self, stage: str, name: str):
        """The ``name`` metric of ``stage``."""
        return getattr(self, f"{stage}_{name}")

    def _log_best(self, value: Tensor, name: str) -> None:
        if self.trainer.sanity_checking:
            return
        self.best(value)
        self.log(name, self.best.compute(), prog_bar=True)

    def _datamodule(self):
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None


def _scored_nll(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(mean negative log-likelihood in nats over targets != IGNORE, their count)."""
    count = (targets != IGNORE).sum()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss / count.clamp(min=1), count


class CausalLM(GenomicsModule):
    """Causal per-base DNA language model; predicts the next base among the alphabet's symbols.

    Logs ``{stage}/bpb`` (bits per base over the scored positions), ``val/bpb_best``, and at test the
    Markov baseline of the data module (``test/markov_bpb``, ``test/markov_order``) on the same positions.
    """

    monitor_best = MinMetric

    def __init__(self, *, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None):
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler)
        if not getattr(self.net, "is_causal", False):
            raise ValueError("the DNA language model needs a causal attention variant (attention.causal=true; "
                             "causal variants: local, linear, lsh, hierarchical, bigbird, sparse_*, dense)")
        if getattr(self.net, "patch_size", 1) != 1 or getattr(self.net, "pool", "none") != "none":
            raise ValueError("the DNA language model predicts every base: needs model.patch_size=1 and model.pool=none")
        self._per_stage("bpb", MeanMetric)

    def log_probs(self, tokens: Tensor, pad: Tensor | None = None) -> Tensor:
        """(B, L, S) natural-log probabilities of the next base over the S alphabet symbols."""
        return torch.log_softmax(self(tokens, pad)[..., len(SPECIALS):].float(), dim=-1)

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        targets = batch["targets"]
        targets = torch.where(targets == IGNORE, targets, targets - len(SPECIALS))  # symbol index
        logits = self(batch["tokens"], batch["pad"])[..., len(SPECIALS):]
        nll, count = _scored_nll(logits, targets)
        self.metric(stage, "bpb")(nll / LN2, weight=count)
        self.log(f"{stage}/loss", nll, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 batch_size=len(targets))
        self.log(f"{stage}/bpb", self.metric(stage, "bpb"), on_step=False, on_epoch=True, prog_bar=stage != "train")
        return nll

    def on_validation_epoch_end(self) -> None:
        self._log_best(self.metric("val", "bpb").compute(), "val/bpb_best")

    def on_test_epoch_end(self) -> None:
        dm = self._datamodule()
        if dm is not None and hasattr(dm, "markov_baseline"):
            base = dm.markov_baseline()
            self.log("test/markov_bpb", float(base["test_bpb"]))
            self.log("test/markov_order", float(base["order"]))


class MaskedLM(GenomicsModule):
    """Masked language model over residues (ESM-style masking is done by the data module).

    Logs ``{stage}/loss`` (nats per masked residue), ``{stage}/ppl``, and at test the unigram baseline's
    perplexity on the same masked residues (``test/unigram_ppl``) and the relative gain
    ``test/ppl_gain = 1 - ppl / unigram_ppl``.
    """

    monitor_best = MinMetric

    def __init__(self, *, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None):
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler)
        self._per_stage("nll", MeanMetric)
        self.unigram_nll = MeanMetric()
        self._unigram: Tensor | None = None

    def on_test_epoch_start(self) -> None:
        dm = self._datamodule()
        self._unigram = dm.unigram_log_probs().to(self.device) if hasattr(dm, "unigram_log_probs") else None

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        targets = batch["targets"]
        logits = self(batch["tokens"], batch["pad"])
        nll, count = _scored_nll(logits, targets)
        self.metric(stage, "nll")(nll, weight=count)
        self.log(f"{stage}/loss", nll, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 batch_size=len(targets))
        if stage == "test" and self._unigram is not None:
            chosen = targets[targets != IGNORE]
            self.unigram_nll(-self._unigram[chosen].mean(), weight=chosen.numel())
        return nll

    def _epoch_end(self, stage: str) -> Tensor:
        ppl = torch.exp(self.metric(stage, "nll").compute())
        self.log(f"{stage}/ppl", ppl, prog_bar=True)
        self.metric(stage, "nll").reset()
        return ppl

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._log_best(self._epoch_end("val"), "val/ppl_best")

    def on_test_epoch_end(self) -> None:
        ppl = self._epoch_end("test")
        if self._unigram is not None:
            uni = torch.exp(self.unigram_nll.compute())
            self.log("test/unigram_ppl", uni)
            self.log("test/ppl_gain", 1.0 - ppl / uni)
            self.unigram_nll.reset()


class SequenceClassifier(GenomicsModule):
    """One class per record (e.g. 16S gene -> phylum); logs ``acc``, macro ``f1`` and, at test, the majority
    class baseline ``test/majority_acc`` and the k-mer naive Bayes (RDP classifier) baseline
    ``test/kmer_nb_acc``, ``test/kmer_nb_f1`` on the same records."""

    def __init__(self, *, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None):
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler)
        c = self.net.num_outputs
        if getattr(self.net, "pool", "mean") not in ("mean", "max"):
            raise ValueError("sequence classification needs one output per record: model.pool=mean or model.pool=max")
        self._per_stage("acc", lambda: MulticlassAccuracy(c, average="micro"))
        self._per_stage("f1", lambda: MulticlassF1Score(c, average="macro"))

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        y = batch["label"]
        logits = self(batch["tokens"], batch["pad"])
        loss = F.cross_entropy(logits.float(), y)
        pred = logits.argmax(dim=-1)
        self.metric(stage, "acc")(pred, y)
        self.metric(stage, "f1")(pred, y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}/acc", self.metric(stage, "acc"), on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}/f1", self.metric(stage, "f1"), on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def on_validation_epoch_end(self) -> None:
        self._log_best(self.metric("val", "acc").compute(), "val/acc_best")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the data module's class names (output index -> label) under ``"class_names"``, so
        predictions name their labels without reading the training data again."""
        names = getattr(self._datamodule(), "classes", None)
        if names:
            checkpoint[CLASS_NAMES_KEY] = list(names)

    def on_test_epoch_end(self) -> None:
        dm = self._datamodule()
        if dm is not None and hasattr(dm, "majority_baseline"):
            self.log("test/majority_acc", dm.majority_baseline("test"))
        if dm is not None and hasattr(dm, "kmer_baseline"):
            kmer = dm.kmer_baseline("test")
            self.log("test/kmer_nb_acc", kmer["acc"])
            self.log("test/kmer_nb_f1", kmer["f1"])


class TokenClassifier(GenomicsModule):
    """Per-base binary labels (in a coding sequence or not); logs ``acc``, ``f1`` of the positive class,
    ``mcc`` (0 for a constant prediction) and, at test, the majority-label baseline ``test/majority_acc``
    and the open-reading-frame baseline ``test/orf_mcc`` (``test/orf_min_codons``) on the same bases.

    ``decode``: how per-base probabilities become calls. ``argmax``: each base on its own. ``orf``: through
    open reading frames (:class:`genomics.baselines.OrfDecoder`), its settings chosen after every validation
    epoch on the validation region (``val/orf_decode_mcc``) and saved in the checkpoint; test metrics are
    then those of the decoded calls (``test/mcc_argmax``: the undecoded ones), and ``genomics.predict``
    writes the kept ORFs with their strand.
    """

    def __init__(self, *, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None,
                 decode: str = "argmax"):
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler)
        if self.net.num_outputs != 2 or getattr(self.net, "pool", "none") != "none":
            raise ValueError("per-base annotation needs model.num_outputs=2 and model.pool=none")
        self.decode = check_choice("module.decode", decode, DECODES)
        self.orf_decoder: OrfDecoder | None = None
        self._per_stage("acc", lambda: MulticlassAccuracy(2, average="micro", ignore_index=IGNORE))
        self._per_stage("f1", lambda: BinaryF1Score(ignore_index=IGNORE))
        self._per_stage("mcc", lambda: BinaryMatthewsCorrCoef(ignore_index=IGNORE))

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        targets = batch["targets"]
        logits = self(batch["tokens"], batch["pad"])  # (B, L, 2)
        loss, _ = _scored_nll(logits, targets)
        pred = logits.argmax(dim=-1)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(targets))
        if stage == "test" and self.decode == "orf":
            return loss  # the decoded calls are scored on whole test segments at the end
        for name in ("acc", "f1", "mcc"):
            metric = self.metric(stage, name)
            metric(pred, targets)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "mcc",
                     batch_size=len(targets))
        return loss

    def on_validation_epoch_end(self) -> None:
        self._log_best(self.metric("val", "mcc").compute(), "val/mcc_best")
        if self.decode == "orf" and not self.trainer.sanity_checking:
            self.orf_decoder = self._choose_decoder(self._genome_datamodule())

    def on_test_epoch_end(self) -> None:
        dm = self._datamodule()
        if self.decode == "orf":
            self._log_decoded_test(self._genome_datamodule())
        if dm is not None and hasattr(dm, "majority_baseline"):
            self.log("test/majority_acc", dm.majority_baseline("test"))
        if dm is not None and hasattr(dm, "orf_baseline"):
            orf = dm.orf_baseline()
            self.log("test/orf_mcc", orf["test_mcc"])
            self.log("test/orf_min_codons", orf["min_codons"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.orf_decoder is not None:
            checkpoint[ORF_DECODER_KEY] = self.orf_decoder.as_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get(ORF_DECODER_KEY)
        self.orf_decoder = OrfDecoder(**stored) if stored else None

    # -- ORF decoding over whole segments ----------------------------------------------------------------
    def _genome_datamodule(self):
        dm = self._datamodule()
        if dm is None or not hasattr(dm, "load_segments"):
            raise ValueError("module.decode=orf reads whole genome regions: it needs the genome data module "
                             "(data=genomics_genome with data.task=annotate); set module.decode=argmax otherwise")
        return dm

    def _segment_probs(self, dm, split: str) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
        """(sequences, per-base probabilities, labels) of every segment of ``split``."""
        was_training = self.training
        self.eval()
        segs = dm.load_segments()[split]
        window, batch = int(dm.hparams.window), int(dm.hparams.batch_size)
        probs = [per_base(self, seg.tokens, task="annotate", window=window, batch_size=batch) for seg in segs]
        self.train(was_training)
        return [dm.tokenizer.decode(seg.tokens).upper() for seg in segs], probs, [seg.labels for seg in segs]

    def _choose_decoder(self, dm) -> OrfDecoder:
        seqs, probs, labels = self._segment_probs(dm, "val")
        if not seqs:
            raise ValueError("module.decode=orf chooses its settings on the validation region, which is empty; "
                             "set data.val_fraction > 0 or module.decode=argmax")
        sel = select_orf_decoder(seqs, probs, labels)
        self.log("val/orf_decode_mcc", sel.val_mcc)
        log.info("ORF decoder chosen on validation (MCC %.4f over %d settings): %s", sel.val_mcc, sel.tried,
                 sel.decoder)
        return sel.decoder

    def _log_decoded_test(self, dm) -> None:
        if self.orf_decoder is None:  # a checkpoint saved before any validation epoch
            log.warning("the checkpoint holds no ORF decoder; choosing one on the validation region now")
            self.orf_decoder = self._choose_decoder(dm)
        seqs, probs, labels = self._segment_probs(dm, "test")
        if not seqs:
            return
        truth = np.concatenate(labels).astype(bool)
        pred = np.concatenate([self.orf_decoder.decode(s, p) for s, p in zip(seqs, probs)]).astype(bool)
        tp = float(np.sum(pred & truth))
        d = self.orf_decoder
        metrics = {"test/acc": float(np.mean(pred == truth)),
                   "test/f1": 2 * tp / max(float(pred.sum() + truth.sum()), 1.0),
                   "test/mcc": binary_mcc(pred, truth),
                   "test/mcc_argmax": binary_mcc(np.concatenate(probs) >= 0.5, truth),
                   "test/decode_min_codons": float(d.min_codons),
                   "test/decode_long_codons": float(d.long_codons or 0),
                   "test/decode_min_prob": d.min_prob, "test/decode_start_codons": float(len(d.starts))}
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name == "test/mcc")


# data.task -> the module that trains it, its selection metric (monitor, monitor_mode), an experiment setting both
TASKS = {"lm": (CausalLM, "val/bpb", "min", "genomics_dna_lm"),
         "mlm": (MaskedLM, "val/ppl", "min", "genomics_protein_mlm"),
         "classify": (SequenceClassifier, "val/acc", "max", "genomics_classify_16s"),
         "annotate": (TokenClassifier, "val/mcc", "max", "genomics_annotate")}


def check_task(task: str | None, target: str | None) -> None:
    """``ValueError`` when ``module._target_`` (a genomics task module) does not train ``data.task``, naming the
    module and the experiment to use, before any data is read (the wrong module fails in its first step)."""
    if task not in TASKS or not target or not target.startswith("genomics.module."):
        return
    cls, monitor, mode, experiment = TASKS[task]
    if get_class(target) is not cls:
        name = f"{cls.__module__}.{cls.__name__}"
        raise ValueError(f"data.task={task!r} is trained by {name}, but module._target_={target}: start from "
                         f"experiment={experiment} (and override its data), or add module._target_={name} "
                         f"monitor={monitor} monitor_mode={mode}")


# -- per-base values of a whole record -----------------------------------------------------------------
def target_bits(logits: Tensor, targets: Tensor) -> Tensor:
    """(...) bits, ``-log2 p``, of each target token (ids, specials first) under the causal LM's (..., V)
    ``logits`` (the alphabet's symbols only); garbage where a target is not a symbol (IGNORE, padding)."""
    logp = torch.log_softmax(logits[..., len(SPECIALS):].float(), dim=-1)
    symbol = (targets - len(SPECIALS)).clamp(min=0)  # IGNORE -> 0, masked by the caller
    return -logp.gather(-1, symbol[..., None])[..., 0] / LN2


def _lm_bits(module: GenomicsModule, batch: dict[str, Tensor]) -> Tensor:
    """(B, W) bits of each target base (garbage where the target is IGNORE)."""
    return target_bits(module(batch["tokens"], batch["pad"]), batch["targets"])


def _annotate_prob(module: GenomicsModule, batch: dict[str, Tensor]) -> Tensor:
    """(B, W) probability of the positive (feature) class at each base."""
    return module(batch["tokens"], batch["pad"]).float().softmax(dim=-1)[..., 1]


@torch.inference_mode()
def per_base(module: GenomicsModule, tokens: np.ndarray, *, task: str, window: int, batch_size: int) -> np.ndarray:
    """(L,) float32 per-base values of one record: bits (``lm``; NaN at base 0, which has no context) or the
    feature probability (``annotate``), computed over :class:`GenomeTiles` windows ``batch_size`` at a time
    on the module's device."""
    labels = np.zeros(len(tokens), np.uint8) if task == "annotate" else None  # tiles read labels; none here
    tiles = GenomeTiles([Segment("", 0, tokens, labels)], window=window, task=task)
    value = _lm_bits if task == "lm" else _annotate_prob
    shift = 1 if task == "lm" else 0  # an LM window's position j predicts base start + j + 1
    device = next(module.parameters()).device
    out = np.full(len(tokens), np.nan, dtype=np.float32)
    for first in range(0, len(tiles), batch_size):
        index = range(first, min(first + batch_size, len(tiles)))
        items = [tiles[i] for i in index]
        batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}  # (B, W) each
        values = value(module, batch).float().cpu().numpy()
        scored = (batch["targets"] != IGNORE).cpu().numpy()
        for row, i in enumerate(index):
            _, start, _ = tiles.tiles[i]
            j = np.flatnonzero(scored[row])
            out[start + shift + j] = values[row, j]
    return out
