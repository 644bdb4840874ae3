"""Genomics data modules, and the data set command line.

- :class:`GenomeDataModule`: one genome (FASTA, gzipped FASTA or GenBank) cut into train / val / test
  regions; windows of ``window`` bases for the causal DNA language model (``task=lm``) or per-base CDS
  annotation (``task=annotate``, labels from the GenBank CDS features or a GFF3 / GTF file).
- :class:`SequenceDataModule`: a file of records (FASTA, or BED intervals over a reference FASTA), split by
  record; classification (labels from a header regex or a CSV/TSV table) or masked language modelling.

Command line::

    python -m genomics.data list                       # the data sets and whether they are prepared
    python -m genomics.data prepare 16s [--data-dir data]   # fetch a Debian-packaged data set
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.classification import multiclass_f1_score

from core_attn.errors import run_main
from core_attn.training.bases import TaskDataModule
from core_attn.validation import check_choice, check_float, check_int
from genomics import prepare as prep
from genomics.annotation import FEATURES, label_records
from genomics.baselines import KmerNaiveBayes, select_markov, select_orf_length, unigram_log_probs
from genomics.datasets import GENOME_TASKS, GenomeTiles, GenomeWindows, RecordCrops, Segment
from genomics.io import (ON_ERROR, DataError, Skipped, bed_records, handle, header_label, iter_records,
                         read_label_table)
from genomics.tokenizers import SPECIALS, DNATokenizer, ProteinTokenizer, build_tokenizer

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def resolve_path(dataset: str, path: str | None, data_dir: str) -> Path:
    """The sequence file: ``path`` when ``dataset == "path"``, else the named data set's file."""
    if dataset == "path":
        if not path:
            raise ValueError("dataset=path needs data.path=<a FASTA / FASTA.gz / GenBank file>")
        return Path(path)
    if path:
        raise ValueError(f"data.path={path!r} is only read with dataset=path; got dataset={dataset!r}")
    return prep.dataset_path(dataset, data_dir)


class _GenomicsDataModule(TaskDataModule):
    """Loaders over ``self.datasets[split]`` (set by ``setup``), shared by the genomics data modules."""

    def __init__(self):
        super().__init__()
        self.datasets: dict[str, Dataset] = {}
        self.skipped = Skipped()

    def _check_sizes(self, vocab_size: int, num_outputs: int, expected_outputs: int, what: str) -> None:
        if vocab_size != self.tokenizer.vocab_size:
            raise ValueError(f"data.vocab_size={vocab_size} does not match the tokenizer {self.tokenizer!r}; "
                             f"set data.vocab_size={self.tokenizer.vocab_size}")
        if num_outputs != expected_outputs:
            raise ValueError(f"data.num_outputs={num_outputs} but {what} needs {expected_outputs}; "
                             f"set data.num_outputs={expected_outputs}")

    def _loader(self, split: str) -> DataLoader:
        return self.loader(split, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers,
                           drop_last=False, pin_memory=False)


# -- genomes -----------------------------------------------------------------------------------------
def split_regions(lengths: list[int], val_fraction: float, test_fraction: float) -> dict[str, list[tuple[int, int, int]]]:
    """Cut the concatenated records into train | val | test regions (test last, val just before it).

    Returns, per split, ``(record index, start, end)`` stretches within records."""
    total = sum(lengths)
    test_start = total - int(round(total * test_fraction))
    val_start = test_start - int(round(total * val_fraction))
    bounds = {"train": (0, val_start), "val": (val_start, test_start), "test": (test_start, total)}
    out: dict[str, list[tuple[int, int, int]]] = {s: [] for s in SPLITS}
    offset = 0
    for i, n in enumerate(lengths):
        for split, (a, b) in bounds.items():
            lo, hi = max(a, offset), min(b, offset + n)
            if hi > lo:
                out[split].append((i, lo - offset, hi - offset))
        offset += n
    return out


class GenomeDataModule(_GenomicsDataModule):
    """A genome in windows: the causal DNA LM (``task=lm``) or per-base CDS annotation (``task=annotate``).

    The records (contigs) are concatenated in file order; the last ``test_fraction`` of the bases is the
    test region and the ``val_fraction`` before it the validation region. Training draws
    ``train_samples`` random windows per epoch from training stretches at least a window long (shorter
    ones raise, or with ``on_error=skip`` are counted); evaluation tiles every stretch so that each base
    is scored once (:class:`~genomics.datasets.GenomeTiles`).

    Args:
        dataset: a data set name (``builtin_genome``, ``leptospira``, ``lambda``) or ``path``.
        path: the FASTA / FASTA.gz / GenBank file when ``dataset=path``.
        data_dir: where named data sets live (``<data_dir>/genomics/<name>/``).
        task: ``lm`` or ``annotate`` (labels from GenBank features, or from ``annotation``).
        annotation: ``task=annotate``: a GFF3 or GTF file (``.gff3``, ``.gff``, ``.gtf``, optionally ``.gz``)
            whose ``feature`` intervals, on either strand, are the positive bases; its seqids are matched to
            the records' ids (the first word of a FASTA header). ``None``: the GenBank file's features.
        feature: the feature type labelled 1: ``CDS``, ``exon`` or ``gene``.
        window: bases per window.
        case: soft-masked lowercase ``fold`` (to upper case) or ``keep`` (own tokens).
        val_fraction / test_fraction: of the genome's bases.
        train_samples: training windows per epoch.
        reverse_complement: probability that a training window is read from the other strand.
        batch_size / num_workers: loaders.
        on_error: ``raise`` on bad records and too-short training stretches, or ``skip`` and count them.
        vocab_size / num_outputs: checked against the tokenizer and the task (the model is sized by them).
        markov_max_order: the highest order the Markov baseline tries (:meth:`markov_baseline`).
    """

    def __init__(self, *, dataset: str = "builtin_genome", path: str | None = None, data_dir: str = "data",
                 task: str = "lm", annotation: str | None = None, feature: str = "CDS", window: int = 2048,
                 case: str = "fold", val_fraction: float = 0.05,
                 test_fraction: float = 0.1, train_samples: int = 256, reverse_complement: float = 0.5,
                 batch_size: int = 4, num_workers: int = 0, on_error: str = "raise", vocab_size: int = 9,
                 num_outputs: int = 9, markov_max_order: int = 10):
        super().__init__()
        self.save_hyperparameters()
        check_choice("task", task, GENOME_TASKS)
        check_choice("feature", feature, FEATURES)
        if annotation is not None and task != "annotate":
            raise ValueError(f"data.annotation={annotation!r} is only read with data.task=annotate; got task={task!r}")
        check_choice("on_error", on_error, ON_ERROR)
        check_int("window", window, min_value=1)
        check_float("val_fraction", val_fraction, min_value=0.0, max_value=0.5)
        check_float("test_fraction", test_fraction, min_value=0.0, max_value=0.5)
        check_int("markov_max_order", markov_max_order, min_value=0)
        self.tokenizer = DNATokenizer(k=1, case=case)
        self._check_sizes(vocab_size, num_outputs, self.tokenizer.vocab_size if task == "lm" else 2, f"task={task}")
        self.segments: dict[str, list[Segment]] = {}
        self.record_tokens: list[np.ndarray] = []
        self._baseline: dict[str, Any] | None = None
        self._orf: dict[str, Any] | None = None

    @property
    def file(self) -> Path:
        h = self.hparams
        return resolve_path(h.dataset, h.path, h.data_dir)

    def prepare_data(self) -> None:
        _ = self.file  # generates a built-in data set once, or says how to prepare a real one

    def load_segments(self) -> dict[str, list[Segment]]:
        """Read the genome and cut it into per-split segments (cached)."""
        if self.segments:
            return self.segments
        h = self.hparams
        if h.dataset.startswith("builtin"):
            log.info("genomics: built-in synthetic genome. %s", prep.HINT)
        self.skipped = Skipped()
        from_genbank = h.task == "annotate" and h.annotation is None
        records = list(iter_records(self.file, self.tokenizer, cds_labels=from_genbank, feature=h.feature,
                                    on_error=h.on_error, skipped=self.skipped))
        if not records:
            raise DataError(f"{self.file}: no usable records")
        if h.task == "annotate" and not from_genbank:
            label_records(records, h.annotation, feature=h.feature, source=self.file, on_error=h.on_error,
                          skipped=self.skipped)
        self.record_tokens = [r.tokens for r in records]
        regions = split_regions([len(r) for r in records], h.val_fraction, h.test_fraction)
        for split in SPLITS:
            segs = []
            for i, a, b in regions[split]:
                r = records[i]
                segs.append(Segment(r.id, a, r.tokens[a:b], None if r.labels is None else r.labels[a:b]))
            self.segments[split] = segs
        span = h.window + (h.task == "lm")
        for seg in self.segments["train"]:
            if len(seg) < span:
                handle(DataError(f"{self.file}, record {seg.record!r}: training stretch [{seg.start}, "
                                 f"{seg.start + len(seg)}) has {len(seg)} bases, fewer than a window of {span} "
                                 "(window + 1 for the LM); lower data.window or set data.on_error=skip"),
                       "shorter_than_window", h.on_error, self.skipped)
        self.skipped.report(str(self.file))
        return self.segments

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        segments = self.load_segments()
        if "train" not in self.datasets:
            self.datasets["train"] = GenomeWindows(segments["train"], window=h.window, task=h.task,
                                                   samples=h.train_samples, tokenizer=self.tokenizer,
                                                   reverse_complement=h.reverse_complement)
            for split in ("val", "test"):
                self.datasets[split] = GenomeTiles(segments[split], window=h.window, task=h.task)

    # -- baselines -----------------------------------------------------------------------------------
    def _symbols(self, split: str) -> list[np.ndarray]:
        return [seg.tokens.astype(np.int64) - len(SPECIALS) for seg in self.load_segments()[split]]

    def markov_baseline(self) -> dict[str, Any]:
        """The order-k Markov chain (order and add-alpha chosen on val) scored on the test region, over
        exactly the positions the LM's test tiles score: ``{"order", "alpha", "val_bpb", "test_bpb"}``."""
        if self._baseline is None:
            sel = select_markov(self._symbols("train"), self._symbols("val"),
                                num_symbols=len(self.tokenizer.symbols), max_order=self.hparams.markov_max_order)
            test_bits, count = sel.chain.bits_per_symbol(self._symbols("test"))
            self._baseline = {"order": sel.chain.order, "alpha": sel.chain.alpha,
                              "val_bpb": sel.val_bits[(sel.chain.order, sel.chain.alpha)], "test_bpb": test_bits,
                              "test_positions": count}
            log.info("Markov baseline: order %d, alpha %g: val %.4f, test %.4f bits per base", sel.chain.order,
                     sel.chain.alpha, self._baseline["val_bpb"], test_bits)
        return self._baseline

    def majority_baseline(self, split: str = "test") -> float:
        """Accuracy of always predicting the most frequent per-base label of the training region."""
        segs = self.load_segments()
        train = np.concatenate([s.labels for s in segs["train"]])
        majority = int(np.bincount(train, minlength=2).argmax())
        test = np.concatenate([s.labels for s in segs[split]]) if segs[split] else np.zeros(0, np.uint8)
        return float((test == majority).mean()) if test.size else float("nan")

    def orf_baseline(self) -> dict[str, float]:
        """Open reading frames as the annotation (:func:`genomics.baselines.select_orf_length`): ATG..stop on
        both strands, the minimum length chosen on the training region by MCC, scored on every test base
        (the positions the test tiles score): ``{"min_codons", "train_mcc", "test_mcc"}``."""
        if self._orf is None:
            segs = self.load_segments()
            text = {s: [self.tokenizer.decode(seg.tokens).upper() for seg in segs[s]] for s in ("train", "test")}
            sel = select_orf_length(text["train"], [seg.labels for seg in segs["train"]])
            test_mcc = sel.mcc(text["test"], [seg.labels for seg in segs["test"]])
            self._orf = {"min_codons": float(sel.min_codons), "train_mcc": sel.train_mcc[sel.min_codons],
                         "test_mcc": test_mcc}
            log.info("ORF baseline: open reading frames of at least %d codons (chosen on train, MCC %.4f): "
                     "test MCC %.4f", sel.min_codons, self._orf["train_mcc"], test_mcc)
        return self._orf


# -- record files ------------------------------------------------------------------------------------
def split_records(n: int, val_fraction: float, test_fraction: float, seed: int, strata: list[Any] | None = None,
                  groups: list[Any] | None = None) -> dict[str, np.ndarray]:
    """Record indices per split: random with ``seed``, stratified by ``strata`` (labels) and keeping each
    group (e.g. genes of one genome) in one split."""
    rng = np.random.default_rng(seed)
    groups = list(range(n)) if groups is None else groups
    strata = [0] * n if strata is None else strata
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_stratum: dict[Any, list[Any]] = {}
    for g, idx in members.items():
        by_stratum.setdefault(strata[idx[0]], []).append(g)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for stratum in sorted(by_stratum, key=str):
        gs = by_stratum[stratum]
        order = rng.permutation(len(gs))
        n_test, n_val = int(round(len(gs) * test_fraction)), int(round(len(gs) * val_fraction))
        for rank, j in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            out[split].extend(members[gs[j]])
    return {s: np.array(sorted(v), dtype=np.int64) for s, v in out.items()}


class SequenceDataModule(_GenomicsDataModule):
    """Records of a FASTA file (or BED intervals over a reference) for classification or masked LM.

    Args:
        dataset: ``builtin_labelled``, ``builtin_proteins``, ``16s``, ``uniprot20k`` or ``path``.
        path: the FASTA / FASTA.gz file (``dataset=path``), or the reference FASTA of ``bed``.
        bed: a BED file of intervals over ``path`` (random access); their sequences are the records.
        data_dir: where named data sets live.
        task: ``classify`` or ``mlm`` (ESM-style 15% masking, 80/10/10).
        tokenizer: ``{alphabet: dna|protein, k: 1, case: fold}``.
        labels: ``{source: header|table, regex, file, id_column, label_column, min_count, group_regex}``:
            the label from the header line (first regex group) or a CSV/TSV table beside the file; classes
            with fewer than ``min_count`` records are left out (counted); ``group_regex`` keeps records whose
            headers share the match (e.g. one organism) in the same split.
        max_len: tokens per item (crops of longer records; evaluation tiles them for ``mlm``).
        val_fraction / test_fraction / split_seed: the record split (stratified by label).
        mask_prob: MLM masking rate (validation and test; training too unless ``train_mask_prob`` is set).
        train_mask_prob: MLM masking rate of the training crops; ``None``: ``mask_prob``.
        reverse_complement: training probability of the other strand (DNA).
        homologs: ``None``, or ``{k: 6, min_shared: 2}`` (``task=mlm``, proteins): each item also holds its
            protein's nearest training protein (most shared k-mers, at least ``min_shared``; never itself),
            aligned and interleaved with the crop (:mod:`genomics.homologs`); computed once per data
            set and split and cached in ``<data_dir>/cache/``.
        batch_size / num_workers: loaders.
        on_error: ``raise`` or ``skip`` (and count) bad records and unlabelled ones.
        vocab_size / num_outputs: checked (num_outputs: classes, or vocab_size for ``mlm``).
    """

    def __init__(self, *, dataset: str = "builtin_labelled", path: str | None = None, bed: str | None = None,
                 data_dir: str = "data", task: str = "classify", tokenizer: dict | None = None,
                 labels: dict | None = None, max_len: int = 1024, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, split_seed: int = 0, mask_prob: float = 0.15,
                 train_mask_prob: float | None = None, reverse_complement: float = 0.0, batch_size: int = 16,
                 num_workers: int = 0, homologs: dict | None = None,
                 on_error: str = "raise", vocab_size: int = 9, num_outputs: int = 4):
        super().__init__()
        self.save_hyperparameters()
        check_choice("task", task, ("classify", "mlm"))
        check_choice("on_error", on_error, ON_ERROR)
        check_float("mask_prob", mask_prob, min_value=0.0, max_value=1.0)
        if train_mask_prob is not None:
            check_float("train_mask_prob", train_mask_prob, min_value=0.0, max_value=1.0)
        self.tokenizer = build_tokenizer(**(tokenizer or {"alphabet": "dna"}))
        self.label_cfg = {"source": "header", "regex": None, "file": None, "id_column": "id", "label_column": "label",
                          "min_count": 1, "group_regex": None, **(labels or {})}
        unknown = set(self.label_cfg) - {"source", "regex", "file", "id_column", "label_column", "min_count", "group_regex"}
        if unknown:
            raise ValueError(f"data.labels has unknown keys {sorted(unknown)}; allowed: source, regex, file, "
                             "id_column, label_column, min_count, group_regex")
        if task == "classify":
            check_choice("labels.source", self.label_cfg["source"], ("header", "table"))
            self._check_sizes(vocab_size, num_outputs, num_outputs, "classification")
        else:
            self._check_sizes(vocab_size, num_outputs, self.tokenizer.vocab_size, "task=mlm")
        self.homolog_cfg = None
        if homologs is not None:
            unknown = set(homologs) - {"k", "min_shared"}
            if unknown:
                raise ValueError(f"data.homologs has unknown keys {sorted(unknown)}; allowed: k, min_shared")
            if task != "mlm" or not isinstance(self.tokenizer, ProteinTokenizer):
                raise ValueError("data.homologs needs task=mlm and tokenizer.alphabet=protein (it retrieves "
                                 f"related training proteins); got task={task!r}, alphabet="
                                 f"{self.tokenizer.alphabet_name!r}")
            self.homolog_cfg = {"k": check_int("homologs.k", homologs.get("k", 6), min_value=2, max_value=12),
                                "min_shared": check_int("homologs.min_shared", homologs.get("min_shared", 2),
                                                        min_value=1)}
        self.classes: list[str] = []
        self.records: dict[str, list[np.ndarray]] = {}
        self.targets: dict[str, list[int] | None] = {}
        self._unigram: np.ndarray | None = None

    @property
    def file(self) -> Path:
        h = self.hparams
        if h.bed is not None:
            if not h.path:
                raise ValueError("data.bed needs data.path=<the reference FASTA> (with dataset=path)")
        return resolve_path(h.dataset, h.path, h.data_dir)

    def prepare_data(self) -> None:
        _ = self.file

    def _read(self) -> list:
        h = self.hparams
        if h.dataset.startswith("builtin"):
            log.info("genomics: built-in synthetic %s. %s", h.dataset, prep.HINT)
        if h.bed is not None:
            return list(bed_records(h.bed, self.file, self.tokenizer, on_error=h.on_error, skipped=self.skipped))
        return list(iter_records(self.file, self.tokenizer, on_error=h.on_error, skipped=self.skipped))

    def _labels(self, records: list) -> tuple[list, list[str], list[Any] | None]:
        """Keep the records that have a (frequent enough) label; return them, their labels, their groups."""
        cfg, h, source = self.label_cfg, self.hparams, str(self.file)
        table = None
        if cfg["source"] == "table":
            if not cfg["file"]:
                raise ValueError("labels.source=table needs labels.file=<a CSV or TSV with an id and a label column>")
            table = read_label_table(cfg["file"], id_column=cfg["id_column"], label_column=cfg["label_column"])
        elif not cfg["regex"]:
            raise ValueError("labels.source=header needs labels.regex (its first group is the label)")
        pattern = re.compile(cfg["regex"]) if cfg["regex"] else None
        kept, labels = [], []
        for rec in records:
            try:
                if table is not None:
                    if rec.id not in table:
                        raise DataError(f"{source}, record {rec.id!r}: no label in {cfg['file']}")
                    label = table[rec.id]
                else:
                    label = header_label(rec, pattern, source)
            except DataError as e:
                handle(e, "no_label", h.on_error, self.skipped)
                continue
            kept.append(rec)
            labels.append(label)
        counts = Counter(labels)
        rare = {c for c, n in counts.items() if n < cfg["min_count"]}
        for c in sorted(rare):
            self.skipped.counts["rare_class"] += counts[c]
        keep = [i for i, lab in enumerate(labels) if lab not in rare]
        if rare:
            log.info("left out %d classes with fewer than %d records: %s", len(rare), cfg["min_count"], sorted(rare))
        kept, labels = [kept[i] for i in keep], [labels[i] for i in keep]
        groups = None
        if cfg["group_regex"]:
            gp = re.compile(cfg["group_regex"])
            groups = []
            for rec in kept:
                m = gp.search(rec.description)
                groups.append((m.group(1) if m.groups() else m.group(0)) if m else rec.id)
        return kept, labels, groups

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        self.skipped = Skipped()
        records = self._read()
        strata, groups = None, None
        if h.task == "classify":
            records, names, groups = self._labels(records)
            self.classes = sorted(set(names))
            self._check_sizes(h.vocab_size, h.num_outputs, len(self.classes),
                              f"{self.file} (labels: {len(self.classes)} classes, {self.classes[:8]})")
            index = {c: i for i, c in enumerate(self.classes)}
            strata = [index[n] for n in names]
        self.skipped.report(str(self.file))
        if not records:
            raise DataError(f"{self.file}: no usable records")
        parts = split_records(len(records), h.val_fraction, h.test_fraction, h.split_seed, strata, groups)
        mlm = None
        if h.task == "mlm":
            replace = (self.tokenizer.standard_ids if isinstance(self.tokenizer, ProteinTokenizer)
                       else self.tokenizer.symbol_ids)
            mlm = {"mask_prob": h.mask_prob, "replace_ids": replace}
        train_prob = h.train_mask_prob
        for split in SPLITS:
            self.records[split] = [records[i].tokens for i in parts[split]]
        homologs = self._homologs() if self.homolog_cfg is not None else {}
        for split in SPLITS:
            idx = parts[split]
            split_mlm = mlm
            if mlm is not None and split == "train" and train_prob is not None:
                split_mlm = {**mlm, "mask_prob": train_prob}
            self.targets[split] = None if strata is None else [strata[i] for i in idx]
            self.datasets[split] = RecordCrops(
                self.records[split], self.targets[split], max_len=h.max_len, train=split == "train", mlm=split_mlm,
                tile=h.task == "mlm", reverse_complement=h.reverse_complement if split == "train" else 0.0,
                tokenizer=self.tokenizer, seed=h.split_seed, homologs=homologs.get(split),
                homolog_records=self.records["train"] if homologs else None)
        log.info("genomics: %s records train/val/test = %d/%d/%d", self.file.name,
                 *(len(self.records[s]) for s in SPLITS))

    def _homologs(self) -> dict[str, list]:
        """Each split's relatives in the training split (:func:`genomics.homologs.find_homologs`), from the
        cache when the same records, split and settings were seen before."""
        import hashlib
        import time

        from genomics.homologs import CACHE_VERSION, find_homologs, load_homologs, save_homologs

        digest = hashlib.sha1(json.dumps([CACHE_VERSION, self.homolog_cfg]).encode())
        for split in SPLITS:
            digest.update(split.encode())
            for rec in self.records[split]:
                digest.update(np.asarray(rec, dtype=np.uint8).tobytes() + b"|")
        cache = Path(self.hparams.data_dir) / "cache" / f"homologs-{digest.hexdigest()[:16]}.npz"
        if cache.is_file():
            return load_homologs(cache)
        t0, out = time.perf_counter(), {}
        for split in SPLITS:
            out[split] = find_homologs(self.records[split], self.records["train"], tokens=self.tokenizer.tokens,
                                       exclude_self=split == "train", **self.homolog_cfg)
        found = {s: sum(r is not None for r in out[s]) for s in SPLITS}
        log.info("genomics: homologs found for train/val/test = %d/%d/%d records (%.0f s); cached in %s",
                 *(found[s] for s in SPLITS), time.perf_counter() - t0, cache)
        save_homologs(cache, out)
        return out

    def unigram_log_probs(self) -> torch.Tensor:
        """(vocab_size,) natural-log symbol frequencies of the training records (add-1), specials -inf:
        the unigram baseline of the masked LM."""
        if self._unigram is None:
            self.setup()
            counts = np.zeros(self.tokenizer.vocab_size, dtype=np.int64)
            for rec in self.records["train"]:
                counts += np.bincount(rec, minlength=self.tokenizer.vocab_size)
            lp = np.full(self.tokenizer.vocab_size, -np.inf)
            lp[len(SPECIALS):] = unigram_log_probs(counts[len(SPECIALS):], alpha=1.0)
            self._unigram = lp
        return torch.from_numpy(self._unigram).float()

    def majority_baseline(self, split: str = "test") -> float:
        """Accuracy of always predicting the most frequent training class."""
        self.setup()
        majority = Counter(self.targets["train"]).most_common(1)[0][0]
        test = self.targets[split]
        return float(np.mean([t == majority for t in test])) if test else float("nan")

    def kmer_baseline(self, split: str = "test", k: int | None = None) -> dict[str, float]:
        """The k-mer naive Bayes classifier (RDP's method, :class:`genomics.baselines.KmerNaiveBayes`) fitted
        on the training records, scored on ``split``: ``{"acc", "f1" (macro), "k"}``. ``k``: None picks 8
        for DNA (RDP's word length; N breaks words) and the largest k with at most 2**20 words otherwise."""
        self.setup()
        if self.targets[split] is None:
            raise ValueError("kmer_baseline needs labelled records (data.task=classify)")
        symbols = self.tokenizer.vocab_size - len(SPECIALS)
        if isinstance(self.tokenizer, DNATokenizer) and self.tokenizer.k == 1:
            symbols = min(symbols, 4)  # A, C, G, T (N and IUPAC codes come after them)
        if k is None:
            k = 8 if symbols == 4 else max(1, int(np.log(2 ** 20) / np.log(symbols)))
        shift = len(SPECIALS)
        nb = KmerNaiveBayes(k=k, num_symbols=symbols).fit(
            [r - shift for r in self.records["train"]], self.targets["train"], len(self.classes))
        pred = nb.predict([r - shift for r in self.records[split]])
        truth = np.asarray(self.targets[split])
        f1 = multiclass_f1_score(torch.from_numpy(pred), torch.from_numpy(truth), len(self.classes), average="macro")
        return {"acc": float(np.mean(pred == truth)), "f1": float(f1), "k": float(k)}


# -- command line ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``list`` the data sets or ``prepare NAME`` one."""
    parser = argparse.ArgumentParser(prog="python -m genomics.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="the data sets and whether they are prepared")
    p_prep = sub.add_parser("prepare", help="fetch a data set into <data-dir>/genomics/NAME/")
    p_prep.add_argument("name", choices=prep.dataset_names())
    p_prep.add_argument("--force", action="store_true", help="fetch again even if present")
    for p in (p_list, p_prep):
        p.add_argument("--data-dir", default="data", help="the data directory (paths.data_dir; default: data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "list":
        for name, ds in prep.DEBIAN.items():
            there = (Path(args.data_dir) / "genomics" / name / ds.filename).is_file()
            print(f"{name:16s} {'prepared' if there else 'missing ':8s}  Debian {ds.package}: {ds.description}")
        for name, (_, desc) in prep.BUILTIN.items():
            print(f"{name:16s} {'built in':8s}  {desc}")
        return 0
    path = prep.prepare(args.name, args.data_dir, force=args.force)
    print(path)
    return 0


if __name__ == "__main__":
    run_main(main)
